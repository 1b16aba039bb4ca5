//! The scheduler driven through its public inputs only, as the simulator will drive it.

use std::collections::{BTreeMap, BTreeSet};

use hearth_core::scheduler::{Input, Output};
use hearth_core::{
    Delivery, Fault, JobSpec, JobState, LedgerOutput, Offer, Policy, Scheduler, UnitSpec, UnitState,
};
use hearth_protocol::{Digest, KernelFamily, ModelId, PeerId, SecretKey};

const CLASS: &str = "k0/embed/cpu/test";
/// The tests' spot-check seed (a coordinator draws its own).
const SEED: u64 = 0x4845_4152_5448;

fn peer(n: u8) -> PeerId {
    SecretKey::from_bytes(&[n; 32]).public().peer_id()
}

fn model() -> ModelId {
    ModelId::of_bytes(b"embedder")
}

fn offer(network: &str) -> Offer {
    Offer {
        classes: BTreeMap::from([(KernelFamily::Embed, CLASS.to_string())]),
        models: vec![model()],
        score: 20.0,
        network: Some(network.into()),
    }
}

fn job(id: u64, units: u64, replicas: Option<u32>) -> JobSpec {
    JobSpec {
        id,
        family: KernelFamily::Embed,
        model: model(),
        replicas,
        units: (0..units)
            .map(|u| UnitSpec {
                input: Digest::of("input", &[id as u8, u as u8]),
                items: 4,
            })
            .collect(),
        submitter: None,
    }
}

/// The right answer to a unit, and a wrong one.
fn truth(job: u64, unit: u64) -> Digest {
    Digest::of("truth", &[job as u8, unit as u8])
}

fn lie(job: u64, unit: u64) -> Digest {
    Digest::of("lie", &[job as u8, unit as u8])
}

fn delivery(p: PeerId, job: u64, unit: u64, output: Digest) -> Delivery {
    Delivery {
        peer: p,
        job,
        unit,
        signer: p,
        signature_ok: true,
        subject: (job, unit),
        input: Digest::of("input", &[job as u8, unit as u8]),
        output,
        output_ok: true,
        class: CLASS.into(),
        agrees_across: BTreeSet::new(),
    }
}

/// How a simulated peer answers a unit.
type Answer = fn(u64, u64) -> Digest;

/// Drives a scheduler with peers that answer every assignment at once.
struct World {
    s: Scheduler,
    now: u64,
    log: Vec<Output>,
}

impl World {
    fn new(policy: Policy) -> Self {
        Self {
            s: Scheduler::new(policy),
            now: 1_000,
            log: Vec::new(),
        }
    }

    fn handle(&mut self, input: Input) -> Vec<Output> {
        let out = self.s.handle(self.now, input);
        self.log.extend(out.clone());
        out
    }

    fn ready(&mut self, p: PeerId, network: &str) -> Vec<(u64, u64)> {
        let until_ms = self.now + 10_000;
        self.handle(Input::Ready {
            peer: p,
            slots: 1,
            until_ms,
            offer: std::sync::Arc::new(offer(network)),
        })
        .into_iter()
        .filter_map(|o| match o {
            Output::Assign {
                peer, job, unit, ..
            } if peer == p => Some((job, unit)),
            _ => None,
        })
        .collect()
    }

    /// Run until nothing is assigned any more: each peer asks, answers with `answer`.
    fn run(&mut self, peers: &[(PeerId, &str, Answer)]) {
        for _ in 0..10_000 {
            let mut any = false;
            for &(p, network, answer) in peers {
                for (job, unit) in self.ready(p, network) {
                    any = true;
                    self.handle(Input::Delivered(delivery(p, job, unit, answer(job, unit))));
                }
            }
            self.now += 10;
            if !any {
                return;
            }
        }
        panic!("did not settle");
    }

    fn accepted(&self) -> BTreeMap<(u64, u64), Digest> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::Accepted {
                    job, unit, digest, ..
                } => Some(((*job, *unit), *digest)),
                _ => None,
            })
            .collect()
    }

    fn quarantined(&self) -> Vec<PeerId> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::Ledger(LedgerOutput::Quarantined { peer, .. }) => Some(*peer),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn replicas_go_to_distinct_peers_and_agreeing_results_are_accepted() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 10, Some(2))));
    let honest = [
        (peer(1), "net-a", truth as Answer),
        (peer(2), "net-b", truth),
        (peer(3), "net-c", truth),
    ];
    w.run(&honest);
    let status = w.s.job(1).expect("job");
    assert_eq!(status.state, JobState::Done);
    assert_eq!((status.units_done, status.units_failed), (10, 0));
    assert_eq!(status.executions, 20, "exactly two executions per unit");
    for unit in w.s.units(1).expect("units") {
        assert_eq!(unit.state, UnitState::Done);
        let distinct: BTreeSet<_> = unit.accepted.iter().collect();
        assert_eq!(distinct.len(), 2, "unit {} ran twice on one peer", unit.id);
    }
    assert!(w.accepted().iter().all(|(&(j, u), d)| *d == truth(j, u)));
    let credit: f64 = (1..=3).map(|n| w.s.standing(&peer(n), w.now).credit).sum();
    assert_eq!(
        credit,
        10.0 * 4.0 * 2.0,
        "credit for each verified input, per replica"
    );
}

#[test]
fn a_liar_loses_its_quorum_is_quarantined_and_nothing_wrong_is_accepted() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 40, Some(2))));
    let liar = peer(9);
    let peers = [
        (liar, "net-x", lie as Answer),
        (peer(1), "net-a", truth),
        (peer(2), "net-b", truth),
        (peer(3), "net-c", truth),
    ];
    w.run(&peers);
    assert_eq!(w.s.job(1).expect("job").state, JobState::Done);
    let accepted = w.accepted();
    assert_eq!(accepted.len(), 40);
    assert!(accepted.iter().all(|(&(j, u), d)| *d == truth(j, u)));
    assert!(w.quarantined().contains(&liar));
    let standing = w.s.standing(&liar, w.now);
    assert!(standing.quarantined && standing.credit == 0.0);
    assert!(w.log.iter().any(|o| matches!(
        o,
        Output::Verdict { peer, fault: Some(Fault::LostQuorum), .. } if *peer == liar
    )));
    // Once quarantined it gets nothing.
    w.handle(Input::Submit(job(2, 5, Some(2))));
    assert!(w.ready(liar, "net-x").is_empty());
}

#[test]
fn bad_receipts_quarantine_at_once_and_the_unit_goes_elsewhere() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 1, Some(2))));
    let (a, b, c) = (peer(1), peer(2), peer(3));
    let (job_id, unit) = w.ready(a, "n1")[0];
    let mut forged = delivery(a, job_id, unit, truth(job_id, unit));
    forged.subject = (job_id, unit + 7); // a receipt for another unit (replay)
    let out = w.handle(Input::Delivered(forged));
    assert!(out.iter().any(|o| matches!(o, Output::Rejected { .. })));
    assert!(w.quarantined().contains(&a));
    for p in [b, c] {
        for (j, u) in w.ready(p, "n2") {
            w.handle(Input::Delivered(delivery(p, j, u, truth(j, u))));
        }
    }
    assert_eq!(w.s.job(1).expect("job").state, JobState::Done);
}

#[test]
fn missed_deadlines_and_lost_peers_reopen_units() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 2, Some(1))));
    let (a, b) = (peer(1), peer(2));
    assert_eq!(w.ready(a, "n").len(), 1);
    assert_eq!(w.ready(b, "n").len(), 1);
    // a vanishes; b sits on its unit past the deadline.
    w.handle(Input::PeerLost(a));
    w.now += 10 * 60 * 1000;
    let out = w.handle(Input::Tick);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Verdict {
            fault: Some(Fault::Timeout),
            ..
        }
    )));
    // A new peer gets both units back, one by one.
    let c = peer(3);
    let mut done = 0;
    for _ in 0..2 {
        for (j, u) in w.ready(c, "n") {
            w.handle(Input::Delivered(delivery(c, j, u, truth(j, u))));
            done += 1;
        }
    }
    assert_eq!(done, 2);
    assert_eq!(w.s.job(1).expect("job").state, JobState::Done);
    // b's late result is refused, not counted.
    let late = w.handle(Input::Delivered(delivery(b, 1, 1, truth(1, 1))));
    assert!(late.iter().any(|o| matches!(o, Output::Rejected { .. })));
}

#[test]
fn disagreement_without_a_majority_fails_the_unit_visibly() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 1, Some(2))));
    // Every peer answers differently.
    for n in 1..=10u8 {
        for (j, u) in w.ready(peer(n), &format!("n{n}")) {
            let d = Digest::of("chaos", &[n]);
            w.handle(Input::Delivered(delivery(peer(n), j, u, d)));
        }
    }
    assert!(w.log.iter().any(|o| matches!(o, Output::UnitFailed { .. })));
    let status = w.s.job(1).expect("job");
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.executions, 5, "2 replicas plus the cap of 3 more");
}

#[test]
fn adaptive_replication_lets_trusted_peers_run_alone_with_spot_checks() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 200, None)));
    let peers = [
        (peer(1), "net-a", truth as Answer),
        (peer(2), "net-b", truth),
    ];
    w.run(&peers);
    let status = w.s.job(1).expect("job");
    assert_eq!(status.state, JobState::Done);
    let singles =
        w.s.units(1)
            .expect("units")
            .iter()
            .filter(|u| u.replicas == 1)
            .count();
    // Untrusted for the first units (replicated), then mostly alone, but never always.
    assert!(singles > 100, "{singles} units ran alone");
    assert!(singles < 195, "{singles} units ran alone: no spot checks?");
    assert!(
        w.log
            .iter()
            .any(|o| matches!(o, Output::Ledger(LedgerOutput::Trusted { .. })))
    );
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let script = |w: &mut World| {
        w.handle(Input::Submit(job(1, 30, None)));
        w.run(&[
            (peer(1), "a", truth as Answer),
            (peer(2), "b", truth),
            (peer(3), "c", lie),
        ]);
        w.log.clone()
    };
    let first = script(&mut World::new(Policy::seeded(SEED)));
    let second = script(&mut World::new(Policy::seeded(SEED)));
    assert_eq!(first, second);
}

#[test]
fn a_redelivered_result_is_not_counted_twice() {
    let mut w = World::new(Policy::seeded(SEED));
    w.handle(Input::Submit(job(1, 1, Some(2))));
    let (a, b) = (peer(1), peer(2));
    let (j, u) = w.ready(a, "x")[0];
    w.handle(Input::Delivered(delivery(a, j, u, truth(j, u))));
    let again = w.handle(Input::Delivered(delivery(a, j, u, truth(j, u))));
    assert!(again.is_empty(), "{again:?}");
    let (j, u) = w.ready(b, "y")[0];
    w.handle(Input::Delivered(delivery(b, j, u, truth(j, u))));
    assert_eq!(w.s.job(1).expect("job").executions, 2);
    assert_eq!(w.accepted().len(), 1);
}

#[test]
fn a_busy_swarm_serves_members_who_contributed_more_first() {
    // Member A's node earns credit on a first job (replicas 1: each accepted unit is credit).
    let mut w = World::new(Policy {
        replicas: Some(1),
        ..Policy::seeded(SEED)
    });
    let (a_node, b_member) = (peer(1), peer(2));
    w.handle(Input::Submit(job(1, 15, None)));
    w.run(&[(a_node, "a", truth as Answer)]);
    assert_eq!(w.s.job(1).expect("job").executions, 15);

    // Two jobs at once, one from A (whose node contributed) and one from B (who did not), B's
    // first; twelve workers (on networks of their own) ask for a unit each.
    let mut from_b = job(2, 40, None);
    from_b.submitter = Some(b_member);
    let mut from_a = job(3, 40, None);
    from_a.submitter = Some(a_node);
    w.handle(Input::Submit(from_b));
    w.handle(Input::Submit(from_a));
    let mut given = Vec::new();
    for i in 0..12u8 {
        given.extend(w.ready(peer(10 + i), &format!("n{i}")));
    }
    let count = |j: u64| given.iter().filter(|(job, _)| *job == j).count();
    // Weights 1 + log2(1 + credit): A ≈ 5 (credit 15), B = 1, so A gets about five units to B's one.
    assert_eq!(count(2) + count(3), 12);
    assert!(count(3) >= 4 * count(2), "A {} vs B {}", count(3), count(2));
    assert!(count(2) >= 1, "B is served too");

    // With no credit anywhere, the oldest job first, as before.
    let mut w = World::new(Policy::seeded(SEED));
    let mut x = job(1, 10, None);
    x.submitter = Some(peer(7));
    let mut y = job(2, 10, None);
    y.submitter = Some(peer(8));
    w.handle(Input::Submit(x));
    w.handle(Input::Submit(y));
    let first = w.ready(peer(9), "n");
    assert_eq!(first[0].0, 1);
}
