//! The coordinator's handling of what peers send, after decoding: adverts into the registry (from
//! raw gossip frames, through the same `Signed::open` the swarm uses) and requests for work,
//! refusals, deliveries with any marks a hostile peer can earn, lost peers, cancels and time into
//! the scheduler. Nothing may panic, and:
//! - the scheduler's answers are a function of its inputs: the same inputs, each sent through the
//!   journal's encoding (postcard) and replayed into a fresh scheduler, give the same outputs, as
//!   the journal's crash recovery relies on;
//! - units are assigned only to peers that asked, no more than they asked for, within their job; a unit is accepted at most once;
//!   a job's done, failed and running units never exceed its units;
//! - the registry stays within its bound and never counts more online peers than it lists.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use hearth_coordinator::scheduler::{Input, Output};
use hearth_coordinator::{Delivery, Fault, JobSpec, Offer, Policy, Registry, Scheduler, UnitSpec};
use hearth_protocol::{Digest, KernelFamily, Message, ModelId, PeerId, SecretKey, Signed};
use libfuzzer_sys::fuzz_target;

const PEERS: u8 = 5;

fn peer(i: u8) -> PeerId {
    static PEER_IDS: std::sync::OnceLock<Vec<PeerId>> = std::sync::OnceLock::new();
    PEER_IDS.get_or_init(|| {
        (1..=PEERS)
            .map(|seed| SecretKey::from_bytes(&[seed; 32]).public().peer_id())
            .collect()
    })[usize::from(i % PEERS)]
}

fn digest(tag: &str, n: u8) -> Digest {
    Digest::of(tag, &[n])
}

/// Reads the fuzzer's bytes as a little program; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn chunk(&mut self) -> &[u8] {
        let n = (self.byte() as usize).min(self.0.len());
        let (chunk, rest) = self.0.split_at(n);
        self.0 = rest;
        chunk
    }
}

fuzz_target!(|data: &[u8]| {
    let model = ModelId(digest("model", 0));
    let mut bytes = Bytes(data);
    let mut now_ms = 1_000_000u64;
    let mut inputs: Vec<(u64, Input)> = Vec::new();
    let mut registry = Registry::default();
    let mut next_job = 1u64;
    let mut units_of: BTreeMap<u64, u64> = BTreeMap::new();
    while !bytes.0.is_empty() && inputs.len() < 256 {
        let op = bytes.byte();
        let a = bytes.byte();
        let input = match op % 9 {
            0 => {
                let units: Vec<UnitSpec> = (0..=a % 6)
                    .map(|u| UnitSpec {
                        input: digest("input", u),
                        items: u32::from(a / 8 % 8) + 1,
                    })
                    .collect();
                units_of.insert(next_job, units.len() as u64);
                let spec = JobSpec {
                    id: next_job,
                    family: KernelFamily::Embed,
                    model,
                    replicas: match a / 64 {
                        0 => None,
                        r => Some(u32::from(r)),
                    },
                    units,
                    submitter: (a & 1 == 1).then(|| peer(a)),
                };
                next_job += 1;
                Input::Submit(spec)
            }
            1 | 2 => {
                let b = bytes.byte();
                Input::Ready {
                    peer: peer(a),
                    slots: u32::from(b % 5),
                    until_ms: now_ms + u64::from(b) * 100,
                    offer: std::sync::Arc::new(Offer {
                        classes: [(KernelFamily::Embed, format!("class{}", b / 32 % 2))].into(),
                        models: if b & 1 == 0 { vec![model] } else { Vec::new() },
                        score: f64::from(a / 5) + 0.5,
                        network: Some(format!("10.0.{}.0/24", b / 64)),
                    }),
                }
            }
            3 | 4 => {
                let (b, c) = (bytes.byte(), bytes.byte());
                let job = u64::from(b % 4);
                let unit = u64::from(b / 4 % 8);
                let subject = if c & 1 == 0 {
                    (job, unit)
                } else {
                    (job, unit + 1)
                };
                Input::Delivered(Delivery {
                    peer: peer(a),
                    job,
                    unit,
                    signer: if c & 2 == 0 {
                        peer(a)
                    } else {
                        peer(a.wrapping_add(1))
                    },
                    signature_ok: c & 4 == 0,
                    subject,
                    input: digest("input", if c & 8 == 0 { unit as u8 } else { 99 }),
                    output: digest("output", c / 16 % 3),
                    output_ok: c & 64 == 0,
                    class: format!("class{}", c / 128).into(),
                    agrees_across: (0..PEERS)
                        .filter(|p| a >> (p + 3) & 1 == 1)
                        .map(peer)
                        .collect(),
                })
            }
            5 => {
                let b = bytes.byte();
                Input::Refused {
                    peer: peer(a),
                    job: u64::from(b % 4),
                    unit: u64::from(b / 4 % 8),
                }
            }
            6 => Input::PeerLost(peer(a)),
            7 => match a % 4 {
                0 => Input::Cancel(u64::from(a / 4 % 4)),
                1 => Input::StageVerdict {
                    peer: peer(a / 4),
                    class: "class0".into(),
                    fault: [None, Some(Fault::Mismatch), Some(Fault::LostQuorum)]
                        [usize::from(a / 32 % 3)],
                },
                _ => {
                    now_ms += u64::from(a) * 250;
                    registry.handle(now_ms, hearth_coordinator::Input::Tick);
                    Input::Tick
                }
            },
            _ => {
                // A gossip frame off the wire, decoded and checked as the swarm does.
                let frame = bytes.chunk().to_vec();
                if let Ok((from, Message::Advert(advert))) = Signed::open(&frame) {
                    registry.handle(
                        now_ms,
                        hearth_coordinator::Input::Advert {
                            from,
                            advert: Box::new(advert),
                        },
                    );
                }
                let listed = registry.entries(now_ms).len();
                assert!(listed <= hearth_coordinator::PEERS_MAX_DEFAULT);
                assert!(registry.online() <= listed);
                continue;
            }
        };
        inputs.push((now_ms, input));
    }

    let run = |inputs: &[(u64, Input)]| -> Vec<Vec<Output>> {
        let mut scheduler = Scheduler::new(Policy::seeded(0x4845_4152_5448));
        // Units each peer may still be given: what its last request asked for (at least one).
        let mut budget: BTreeMap<PeerId, u32> = BTreeMap::new();
        let mut accepted: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut all = Vec::new();
        for (now, input) in inputs {
            match input {
                Input::Ready { peer, slots, .. } => {
                    budget.insert(*peer, (*slots).max(1));
                }
                Input::PeerLost(peer) => {
                    budget.remove(peer);
                }
                _ => {}
            }
            let outputs = scheduler.handle(*now, input.clone());
            for output in &outputs {
                match output {
                    Output::Assign {
                        peer, job, unit, ..
                    } => {
                        let left = budget
                            .get_mut(peer)
                            .expect("assigned to a peer that never asked");
                        assert!(*left > 0, "assigned more units than the peer asked for");
                        *left -= 1;
                        assert!(*unit < units_of[job], "assigned a unit outside its job");
                    }
                    Output::Accepted { job, unit, .. } => {
                        assert!(accepted.insert((*job, *unit)), "a unit accepted twice");
                    }
                    _ => {}
                }
            }
            for job in scheduler.jobs() {
                assert!(
                    job.units_done + job.units_failed + job.units_running <= job.units_total,
                    "{job:?}"
                );
            }
            all.push(outputs);
        }
        all
    };
    let first = run(&inputs);
    // Through the journal's encoding, into a fresh scheduler: the same answers.
    let replayed: Vec<(u64, Input)> = inputs
        .iter()
        .map(|(now, input)| {
            let bytes = postcard::to_stdvec(input).expect("inputs encode");
            (*now, postcard::from_bytes(&bytes).expect("inputs decode"))
        })
        .collect();
    assert_eq!(replayed, inputs);
    assert_eq!(run(&replayed), first, "replay diverged");
});
