//! Chained sessions' driver: the coordinator gives the route, starts the first step, and takes one
//! report per token, checking its chain of receipts. Here a made-up chain of honest stages (and a
//! few dishonest ones) runs the steps the stages would run, so every path is driven: the route
//! acknowledged, reports in and out of order, a stage that signs what its predecessor did not send,
//! a report that lies about its token, a stage that fails, and a chain that stalls.

mod common;

use common::{LAYERS, Peers, answer, lie, sign};
use hearth_core::pipeline::Candidate;
use hearth_core::pipeline::{
    Action, CHAIN_STALLS_MAX, Driver, Hop, Verify, WindowCheck, WindowOutcome, plan,
};
use hearth_protocol::work::{
    ChainReport, ChainStep, CheckRequest, Forward, StageData, StageResult, digest_list,
};
use hearth_protocol::{ModelId, PeerId, Receipt, ReceiptBody, Subject};

const PROMPT: [u32; 4] = [1, 2, 3, 4];

/// An unchecked chained session of the made-up model.
fn chained(route: Vec<Hop>, tokens: usize) -> (Driver, Vec<Action>) {
    chained_checked(route, tokens, Verify::Off)
}

fn chained_checked(route: Vec<Hop>, tokens: usize, verify: Verify) -> (Driver, Vec<Action>) {
    Driver::chained(
        1,
        ModelId::of_bytes(b"test"),
        route,
        PROMPT.to_vec(),
        tokens,
        vec![0],
        1 << 20,
        verify,
        None,
        7,
    )
}

/// What an honest chain reports for the step that starts at the first stage with `first`: each
/// stage's output handed to the next, every stage's receipt. `lie` changes one stage's output
/// before it is handed on (the stage signs what it computed, not what it sent).
fn run_chain(
    peers: &Peers,
    route: &[Hop],
    epoch: u32,
    first: &Forward,
    lie: Option<usize>,
) -> ChainReport {
    let mut forward = first.clone();
    let mut receipts = Vec::new();
    for (hop, h) in route.iter().enumerate() {
        forward.layers = h.layers;
        let output = answer(&forward);
        receipts.push(sign(peers.key_of(&h.peer_id), &forward, &output));
        match output {
            StageResult::Hidden(mut data) => {
                if lie == Some(hop) {
                    let mut floats = data.floats();
                    floats[0] += 1.0;
                    data = StageData::hidden(data.rows() as u32, &floats);
                }
                forward.input = data;
            }
            output => {
                return ChainReport {
                    session: 1,
                    epoch,
                    step: first.step,
                    output,
                    receipts,
                    rtts: vec![Some(0.5); route.len()],
                };
            }
        }
    }
    unreachable!("the last stage answers with a token")
}

/// The next step's first-stage input after `report`.
fn next_first(previous: &Forward, report: &ChainReport) -> Forward {
    let StageResult::Next { token, .. } = report.output else {
        panic!("a token");
    };
    Forward {
        step: previous.step + 1,
        pos: previous.pos + previous.input.rows() as u32,
        input: StageData::Tokens(vec![token]),
        ..previous.clone()
    }
}

/// Acknowledge every route of `actions`; the chained first step they lead to.
fn ack_routes(driver: &mut Driver, actions: Vec<Action>) -> (u32, PeerId, Forward) {
    let mut first = None;
    for action in actions {
        let Action::Route { peer, route } = action else {
            panic!("a new epoch starts with routes, not {action:?}");
        };
        for next in driver.on_route_ack(peer, route.epoch) {
            let Action::Chain { peer, step } = next else {
                panic!("the routes lead to the first step, not {next:?}");
            };
            let ChainStep {
                epoch,
                forward,
                receipts,
                previous,
                ..
            } = *step;
            assert!(receipts.is_empty() && previous.is_none());
            first = Some((epoch, peer, forward));
        }
    }
    first.expect("the first step goes out once every stage took the route")
}

/// The tokens a stepped session with no checks releases along `route`: what a chain must give.
fn stepped_tokens(peers: &Peers, route: Vec<Hop>, tokens: usize) -> Vec<u32> {
    let (mut driver, mut actions) = common::start(1, route, tokens, Verify::Off, 7);
    let mut out = Vec::new();
    while !actions.is_empty() {
        let mut next = Vec::new();
        for action in actions {
            match action {
                Action::Send { peer, forward } => {
                    let output = answer(&forward);
                    let receipt = sign(peers.key_of(&peer), &forward, &output);
                    next.extend(driver.on_result(output, receipt, &peers.candidates));
                }
                Action::Token(t) => out.push(t),
                _ => {}
            }
        }
        actions = next;
    }
    out
}

fn tokens_of(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Token(t) => Some(*t),
            _ => None,
        })
        .collect()
}

#[test]
fn a_chain_releases_what_a_stepped_session_does_with_every_receipt_checked() {
    let peers = Peers::new(5);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    let want = stepped_tokens(&peers, route.clone(), 10);
    let (mut driver, actions) = chained(route.clone(), 10);
    assert_eq!(
        actions.len(),
        3,
        "one route per stage, and no step before they took it"
    );
    let (epoch, to, mut first) = ack_routes(&mut driver, actions);
    assert_eq!((epoch, to), (1, route[0].peer_id));
    assert_eq!(first.input, StageData::Tokens(PROMPT.to_vec()));
    let mut got = Vec::new();
    let mut finished = false;
    while !finished {
        let report = run_chain(&peers, &route, epoch, &first, None);
        first = next_first(&first, &report);
        let actions = driver.on_report(report, &peers.candidates);
        got.extend(tokens_of(&actions));
        finished = actions
            .iter()
            .any(|a| matches!(a, Action::Finished { error: None, .. }));
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, Action::Token(_) | Action::Finished { .. })),
            "{actions:?}"
        );
    }
    assert_eq!(got, want);
    assert_eq!(driver.receipts.len(), 3 * want.len());
}

/// A chained session of `tokens` tokens on 3 of 5 honest peers, its route taken: the peers, the
/// route, the tokens a stepped session releases, the driver, the epoch and its first step.
fn started(tokens: usize) -> (Peers, Vec<Hop>, Vec<u32>, Driver, u32, Forward) {
    let peers = Peers::new(5);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    let want = stepped_tokens(&peers, route.clone(), tokens);
    let (mut driver, actions) = chained(route.clone(), tokens);
    let (epoch, _, first) = ack_routes(&mut driver, actions);
    (peers, route, want, driver, epoch, first)
}

/// Run `steps` honest steps of the chain from `first` (left at the next step's input); the
/// tokens the driver released.
fn run_steps(
    driver: &mut Driver,
    peers: &Peers,
    route: &[Hop],
    epoch: u32,
    first: &mut Forward,
    steps: usize,
) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..steps {
        let report = run_chain(peers, route, epoch, first, None);
        *first = next_first(first, &report);
        got.extend(tokens_of(&driver.on_report(report, &peers.candidates)));
    }
    got
}

#[test]
fn reports_that_overtake_each_other_are_taken_in_order_and_stale_ones_ignored() {
    let (peers, route, want, mut driver, epoch, mut first) = started(6);
    let mut reports = Vec::new();
    for _ in 0..6 {
        let report = run_chain(&peers, &route, epoch, &first, None);
        first = next_first(&first, &report);
        reports.push(report);
    }
    // Steps 1 and 2 first: held; then step 0 releases all three; a repeat of step 1 and a report
    // of another epoch change nothing.
    assert!(
        driver
            .on_report(reports[2].clone(), &peers.candidates)
            .is_empty()
    );
    assert!(
        driver
            .on_report(reports[1].clone(), &peers.candidates)
            .is_empty()
    );
    let released = tokens_of(&driver.on_report(reports[0].clone(), &peers.candidates));
    assert_eq!(released, want[..3]);
    assert!(
        driver
            .on_report(reports[1].clone(), &peers.candidates)
            .is_empty()
    );
    let stale = ChainReport {
        epoch: epoch + 1,
        ..reports[3].clone()
    };
    assert!(driver.on_report(stale, &peers.candidates).is_empty());
    let mut rest = Vec::new();
    for report in &reports[3..] {
        rest.extend(tokens_of(
            &driver.on_report(report.clone(), &peers.candidates),
        ));
    }
    assert_eq!(rest, want[3..]);
}

#[test]
fn a_stage_that_signs_an_input_it_was_not_sent_is_blamed_and_replaced() {
    let (peers, route, want, mut driver, epoch, mut first) = started(8);
    let mut got = run_steps(&mut driver, &peers, &route, epoch, &mut first, 3);
    // Stage 0 hands on other states than it signed: stage 1's receipt (of what it got) does not
    // follow from stage 0's. The receipts name stage 1 as the one whose signature breaks the chain.
    let report = run_chain(&peers, &route, epoch, &first, Some(0));
    let actions = driver.on_report(report, &peers.candidates);
    let blamed = route[1].peer_id;
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Fault { peer, .. } if *peer == blamed)),
        "{actions:?}"
    );
    assert!(
        tokens_of(&actions).is_empty(),
        "no token from a broken chain"
    );
    // A new epoch on a route without the blamed stage restarts from the tokens so far.
    let new_route = driver.route().to_vec();
    assert!(new_route.iter().all(|h| h.peer_id != blamed));
    assert_eq!(driver.reroutes.len(), 1);
    let (epoch, _, mut first) = ack_routes(
        &mut driver,
        actions
            .into_iter()
            .filter(|a| matches!(a, Action::Route { .. }))
            .collect(),
    );
    assert_eq!(epoch, 2);
    let mut restart = PROMPT.to_vec();
    restart.extend(&got);
    assert_eq!(
        (first.step, first.pos, &first.input),
        (3, 0, &StageData::Tokens(restart))
    );
    let rest = want.len() - got.len();
    got.extend(run_steps(
        &mut driver,
        &peers,
        &new_route,
        epoch,
        &mut first,
        rest,
    ));
    assert_eq!(got, want, "the same tokens as an unbroken chain");
}

#[test]
fn a_report_of_another_token_than_the_last_stage_signed_is_not_released() {
    let peers = Peers::new(5);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    let (mut driver, actions) = chained(route.clone(), 8);
    let (epoch, _, first) = ack_routes(&mut driver, actions);
    let mut report = run_chain(&peers, &route, epoch, &first, None);
    let StageResult::Next { token, top } = report.output else {
        panic!("a token");
    };
    report.output = StageResult::Next {
        token: token + 1,
        top,
    };
    let actions = driver.on_report(report, &peers.candidates);
    assert!(tokens_of(&actions).is_empty());
    let last = route[2].peer_id;
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Fault { peer, .. } if *peer == last)),
        "{actions:?}"
    );
    // A report missing a receipt: the last stage, which assembled it, fails (no strike: nothing
    // it signed is wrong).
    let (mut driver, actions) = chained(route.clone(), 8);
    let (epoch, _, first) = ack_routes(&mut driver, actions);
    let mut report = run_chain(&peers, &route, epoch, &first, None);
    report.receipts.pop();
    let actions = driver.on_report(report, &peers.candidates);
    assert!(tokens_of(&actions).is_empty());
    assert!(!actions.iter().any(|a| matches!(a, Action::Fault { .. })));
    assert_eq!(driver.reroutes[0].failed_peer, last);
}

#[test]
fn a_failed_stage_is_replaced_and_a_chain_that_keeps_stalling_gives_up() {
    let peers = Peers::new(4);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    let (mut driver, actions) = chained(route.clone(), 8);
    let (epoch, _, first) = ack_routes(&mut driver, actions);
    let report = run_chain(&peers, &route, epoch, &first, None);
    assert_eq!(
        tokens_of(&driver.on_report(report, &peers.candidates)).len(),
        1
    );
    // Stage 1 leaves: the one peer outside the route takes its layers; a new epoch begins.
    let gone = route[1].peer_id;
    let actions = driver.on_failure(gone, "left the swarm", &peers.candidates);
    assert_eq!(driver.epoch(), 2);
    assert!(driver.route().iter().all(|h| h.peer_id != gone));
    let (_, _, first) = ack_routes(&mut driver, actions);
    assert_eq!((first.step, first.pos), (1, 0));
    // A route taken by a peer of an older epoch changes nothing.
    assert!(driver.on_route_ack(route[0].peer_id, 1).is_empty());
    // No report in time: the epoch starts again on the same route; after CHAIN_STALLS_MAX in a
    // row, the session ends with an error.
    for stall in 1..=CHAIN_STALLS_MAX {
        let actions = driver.on_stall(1_000);
        if stall < CHAIN_STALLS_MAX {
            assert!(
                actions.iter().all(|a| matches!(a, Action::Route { .. })),
                "{actions:?}"
            );
        } else {
            assert!(
                matches!(&actions[..], [Action::Finished { error: Some(e), .. }] if e.contains("within 1000 ms")),
                "{actions:?}"
            );
        }
    }
}

/// A made-up swarm around one checked chained session: stages hand each step on and keep their
/// inputs; liars compute wrong and sign what they computed (so every chain of receipts holds and
/// only replays can tell); requests (fetches, replays) fail now and then.
struct Swarm {
    peers: Peers,
    liars: Vec<u8>,
    /// Peers that compute honestly but serve altered inputs when asked what they kept.
    forgers: Vec<u8>,
    fail: f64,
    draw: u64,
    kept: std::collections::BTreeMap<(PeerId, u32), Vec<Forward>>,
    route: Vec<(PeerId, (u32, u32))>,
    epoch: u32,
    next: Option<Forward>,
    tokens: u64,
}

impl Swarm {
    /// What stage `peer` serves of the inputs it kept for the range starting at `layer_start`,
    /// steps `from..to`: what it was sent, unless it forges them.
    fn kept(&self, peer: PeerId, layer_start: u32, from: u64, to: u64) -> Vec<Forward> {
        let forger = self.forgers.contains(&self.peers.number(&peer));
        self.kept
            .get(&(peer, layer_start))
            .into_iter()
            .flatten()
            .filter(|f| f.step >= from && f.step < to)
            .map(|f| {
                let mut f = f.clone();
                if forger && let StageData::Hidden { bytes, .. } = &mut f.input {
                    bytes[0] ^= 1;
                }
                f
            })
            .collect()
    }

    fn compute(&self, peer: &PeerId, f: &Forward) -> StageResult {
        let n = self.peers.number(peer);
        let honest = answer(f);
        if self.liars.contains(&n) {
            lie(honest, n)
        } else {
            honest
        }
    }

    /// What verifier `peer` answers to `check`: it fetches the stage's kept inputs, replays them
    /// (a liar lies here too), and signs each step's output digest.
    fn check(
        &self,
        driver: &mut Driver,
        peer: PeerId,
        check: &CheckRequest,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let mut forward = check.forward.clone();
        if let Some(source) = &check.source {
            let kept = self.kept(source.peer, forward.layers.0, source.from, forward.step + 1);
            let signed = kept.len() == source.inputs.len()
                && kept
                    .iter()
                    .zip(&source.inputs)
                    .all(|(f, d)| f.digest() == *d);
            if !signed {
                return driver.on_check_refused(peer, candidates);
            }
            let floats: Vec<f32> = kept.iter().flat_map(|f| f.input.floats()).collect();
            let rows = kept.iter().map(|f| f.input.rows() as u32).sum();
            forward.input = StageData::hidden(rows, &floats);
        }
        let output = self.compute(&peer, &forward);
        let outputs = check.step_outputs(&output).expect("a replay of every row");
        let receipt = Receipt::sign(
            self.peers.key_of(&peer),
            ReceiptBody {
                subject: Subject::Step {
                    session: forward.session,
                    step: forward.step,
                    layer_start: forward.layers.0,
                },
                model: forward.model,
                input: check.input_digest(),
                output: digest_list(&outputs),
                numeric_class: common::CLASS.into(),
            },
        );
        driver.on_checked(peer, outputs, receipt, true, candidates)
    }

    fn fails(&mut self) -> bool {
        self.draw = common::mix(self.draw);
        ((self.draw % 10_000) as f64 / 10_000.0) < self.fail
    }

    /// The chain runs one step, if it runs: its report.
    fn step(&mut self) -> Option<ChainReport> {
        let first = self.next.take()?;
        let mut forward = first.clone();
        let mut receipts = Vec::new();
        for (peer, layers) in self.route.clone() {
            forward.layers = layers;
            let list = self.kept.entry((peer, layers.0)).or_default();
            if forward.pos == 0 {
                list.clear();
            }
            list.push(forward.clone());
            let output = self.compute(&peer, &forward);
            receipts.push(sign(self.peers.key_of(&peer), &forward, &output));
            match output {
                StageResult::Hidden(data) => forward.input = data,
                StageResult::Next { token, .. } => {
                    let next_pos = forward.pos + forward.input.rows() as u32;
                    if token != 0 && first.step + 1 < self.tokens {
                        self.next = Some(Forward {
                            step: first.step + 1,
                            pos: next_pos,
                            input: StageData::Tokens(vec![token]),
                            ..first.clone()
                        });
                    }
                    return Some(ChainReport {
                        session: 1,
                        epoch: self.epoch,
                        step: first.step,
                        output,
                        receipts,
                        rtts: Vec::new(),
                    });
                }
                StageResult::NextEach(_) => unreachable!("a step asks for the last position"),
            }
        }
        unreachable!("the last stage answers with a token")
    }
}

/// One checked chained session with `liars` (peer numbers) and requests failing with probability
/// `fail`, its chain stepping between the driver's checks: the tokens released in the end, whether
/// it finished, and the strikes. To look into a failing seed: `CHAIN_SEED=N` runs only that seed of
/// the property test, and `CHAIN_DEBUG=1` prints each session's checks, reroutes and corrections.
fn chained_session(
    seed: u64,
    liars: &[u8],
    fail: f64,
    tokens: usize,
    verify: Verify,
) -> (Vec<u32>, bool, usize) {
    let (released, finished, faults, _) =
        chained_session_checks(seed, liars, &[], fail, tokens, verify);
    (released, finished, faults)
}

/// Every window check a session made, the route it ended on, and how many checks went by
/// digests.
type Checked = (Vec<WindowCheck>, Vec<Hop>, usize);

/// [`chained_session`], with every window check the driver made and the route it ended on.
fn chained_session_checks(
    seed: u64,
    liars: &[u8],
    forgers: &[u8],
    fail: f64,
    tokens: usize,
    verify: Verify,
) -> (Vec<u32>, bool, usize, Checked) {
    let peers = Peers::new(12);
    let mut candidates = peers.candidates.clone();
    for c in &mut candidates {
        c.score =
            1.0 + (common::mix(seed ^ u64::from(peers.number(&c.peer))) % 1000) as f64 / 100_000.0;
    }
    let route = plan(&candidates, LAYERS, 3, 1).expect("route");
    let (mut driver, mut actions) = Driver::chained(
        1,
        ModelId::of_bytes(b"test"),
        route,
        PROMPT.to_vec(),
        tokens,
        vec![0],
        1 << 20,
        verify,
        None,
        common::mix(seed),
    );
    driver.compare_exactly([common::CLASS.to_string()]);
    let candidates = peers.candidates.clone();
    let mut swarm = Swarm {
        peers,
        liars: liars.to_vec(),
        forgers: forgers.to_vec(),
        fail,
        draw: common::mix(seed ^ 0x5eed),
        kept: Default::default(),
        route: Vec::new(),
        epoch: 0,
        next: None,
        tokens: tokens as u64,
    };
    let (mut released, mut faults, mut checks_by_digests) = (Vec::new(), 0, 0);
    for _ in 0..100_000 {
        let mut next = Vec::new();
        for action in actions {
            match action {
                Action::Route { peer, route } => {
                    if route.epoch != swarm.epoch {
                        // A new epoch: the old chain stops.
                        swarm.epoch = route.epoch;
                        swarm.route = route.hops.clone();
                        swarm.next = None;
                    }
                    next.extend(driver.on_route_ack(peer, route.epoch));
                }
                Action::Chain { step, .. } => swarm.next = Some(step.forward),
                Action::Fetch {
                    peer,
                    layers,
                    steps,
                } => {
                    if swarm.fails() {
                        next.extend(driver.on_failure(peer, "no answer", &candidates));
                        continue;
                    }
                    let inputs = swarm.kept(peer, layers.0, steps.0, steps.1);
                    next.extend(driver.on_kept(peer, inputs, &candidates));
                }
                Action::Send { peer, forward } => {
                    if swarm.fails() {
                        next.extend(driver.on_failure(peer, "no answer", &candidates));
                        continue;
                    }
                    let output = swarm.compute(&peer, &forward);
                    let receipt = sign(swarm.peers.key_of(&peer), &forward, &output);
                    next.extend(driver.on_result(output, receipt, &candidates));
                }
                Action::Check { peer, check } => {
                    if swarm.fails() {
                        next.extend(driver.on_failure(peer, "no answer", &candidates));
                        continue;
                    }
                    checks_by_digests += 1;
                    next.extend(swarm.check(&mut driver, peer, &check, &candidates));
                }
                Action::Token(t) => released.push(t),
                Action::Correction(from) => released.truncate(from),
                Action::Fault { .. } => faults += 1,
                Action::Finished { error, .. } => {
                    if std::env::var("CHAIN_DEBUG").is_ok() {
                        for c in &driver.checks {
                            eprintln!("{c:?}");
                        }
                        for r in &driver.reroutes {
                            eprintln!("{r:?}");
                        }
                        eprintln!("{:?} {:?}", driver.corrections, error);
                    }
                    let checks = (
                        driver.checks.clone(),
                        driver.route().to_vec(),
                        checks_by_digests,
                    );
                    return (released, error.is_none(), faults, checks);
                }
            }
        }
        // The stages go on between the driver's checks.
        if let Some(report) = swarm.step() {
            next.extend(driver.on_report(report, &candidates));
        }
        assert!(
            !next.is_empty() || swarm.next.is_some(),
            "seed {seed}: the session stalled"
        );
        actions = next;
    }
    panic!("seed {seed}: the session never ended");
}

#[test]
fn a_checked_chain_releases_only_checked_tokens_and_they_are_the_honest_ones() {
    let (honest, finished, faults) = chained_session(0, &[], 0.0, 24, Verify::Window);
    assert!(finished && honest.len() == 24 && faults == 0);
    // What a stepped session on a route cut the same way (4/4/4) releases.
    let peers = Peers::new(12);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    assert_eq!(honest, stepped_tokens(&peers, route, 24));
    for seed in [1, 2, 3] {
        assert_eq!(
            chained_session(seed, &[], 0.0, 24, Verify::Window).0,
            honest,
            "seed {seed}"
        );
    }
    // Three liars of twelve, a different three each time; requests failing 1 in 100.
    let (mut finished, mut caught) = (0, 0);
    let only: Option<u64> = std::env::var("CHAIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in (1..=200).filter(|s| only.is_none_or(|o| o == *s)) {
        let liars: Vec<u8> = (0..3)
            .map(|i| (common::mix(seed * 7 + i) % 12) as u8 + 1)
            .collect();
        let (released, done, faults) = chained_session(seed, &liars, 0.01, 24, Verify::Window);
        if done {
            finished += 1;
            assert_eq!(
                released, honest,
                "seed {seed}, liars {liars:?}: released tokens differ from the honest ones"
            );
        }
        caught += faults;
    }
    println!("{finished} of 200 sessions finished; liars caught {caught} times");
    assert!(finished >= 180, "only {finished} of 200 sessions finished");
    assert!(caught > 100, "liars were caught only {caught} times");
}

/// Window checks replay on peers that serve no stage of the route when the swarm has any, so the
/// replays do not hold up the steps queued behind them on a stage's peer.
#[test]
fn checks_replay_on_peers_outside_the_route() {
    for seed in [0, 1, 2] {
        let (_, finished, _, (checks, route, by_digests)) =
            chained_session_checks(seed, &[], &[], 0.0, 24, Verify::Window);
        assert!(finished);
        // No activations reach the coordinator: every stage is checked by digests.
        assert_eq!(by_digests, checks.len(), "seed {seed}");
        assert_eq!(checks.len(), 3 * 3, "three windows of three stages");
        for check in &checks {
            assert_eq!(check.outcome, WindowOutcome::Agreed);
            let verifier = check.verifier.expect("checked");
            assert!(
                route.iter().all(|h| h.peer_id != verifier),
                "seed {seed}: {verifier} serves a stage and checked {:?}",
                check.layers
            );
        }
    }
}

/// A stage that serves its verifier other inputs than those its receipts signed: the verifier
/// refuses the check, the coordinator fetches the inputs itself, sees the forgery against the
/// stage's own receipts, strikes the stage and generates the window again without it.
#[test]
fn a_stage_that_forges_its_kept_inputs_is_caught_through_the_coordinator() {
    let (honest, ..) = chained_session(0, &[], 0.0, 24, Verify::Window);
    let mut struck = 0;
    for seed in 0..4 {
        // The second stage of the route: its inputs are hidden states.
        let peers = Peers::new(12);
        let mut candidates = peers.candidates.clone();
        for c in &mut candidates {
            c.score = 1.0
                + (common::mix(seed ^ u64::from(peers.number(&c.peer))) % 1000) as f64 / 100_000.0;
        }
        let forger = peers.number(&plan(&candidates, LAYERS, 3, 1).expect("route")[1].peer_id);
        let (released, finished, faults, (checks, route, _)) =
            chained_session_checks(seed, &[], &[forger], 0.0, 24, Verify::Window);
        assert!(finished, "seed {seed}");
        assert_eq!(released, honest, "seed {seed}");
        assert!(
            route.iter().all(|h| peers.number(&h.peer_id) != forger),
            "seed {seed}: the forger still serves"
        );
        assert!(faults >= 1, "seed {seed}: no strike");
        assert!(checks.iter().all(|c| c.outcome == WindowOutcome::Agreed));
        struck += faults;
    }
    assert!(struck >= 4);
}

/// `--verify after`, chained: tokens are released as the stages make them and the checks run
/// beside; a lie caught later is corrected, and what stands released at the end is the honest
/// tokens.
#[test]
fn a_chain_checked_after_corrects_what_it_released_to_the_honest_tokens() {
    let (honest, ..) = chained_session(0, &[], 0.0, 24, Verify::Window);
    let (mut finished, mut caught) = (0, 0);
    for seed in 1..=100 {
        let liars: Vec<u8> = (0..3)
            .map(|i| (common::mix(seed * 11 + i) % 12) as u8 + 1)
            .collect();
        let (released, done, faults) = chained_session(seed, &liars, 0.01, 24, Verify::After);
        if done {
            finished += 1;
            assert_eq!(released, honest, "seed {seed}, liars {liars:?}");
        }
        caught += faults;
    }
    println!("after: {finished} of 100 sessions finished; liars caught {caught} times");
    assert!(finished >= 90, "only {finished} of 100 sessions finished");
    assert!(caught > 50, "liars were caught only {caught} times");
}
