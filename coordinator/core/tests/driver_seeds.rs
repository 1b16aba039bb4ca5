//! The pipeline driver's own choices (which windows `sampled` checks, which peers verify) come from
//! the seed its caller passes, and from nothing a peer sees: two seeds choose differently over the
//! same sessions, one seed chooses the same again.

mod common;

use common::{LAYERS, Peers, answer, mix, sign, start};
use hearth_core::pipeline::{Action, Verify, plan};
use hearth_protocol::PeerId;

const PEERS: u8 = 12;
const SESSIONS: u64 = 60;
const TOKENS: usize = 64;

/// One window's check: the session, its steps, the layers, and the verifier (none: unchecked).
type Choice = (u64, (u64, u64), (u32, u32), Option<PeerId>);

/// Every window a session checked (or left unchecked) and by whom, in order.
fn choices(seed: u64) -> Vec<Choice> {
    let peers = Peers::new(PEERS);
    let candidates = &peers.candidates;
    let mut all = Vec::new();
    for session in 1..=SESSIONS {
        let route = plan(candidates, LAYERS, 3, 1).expect("route");
        // Each session's seed is derived from the caller's, as the coordinator derives it.
        let (mut driver, mut actions) = start(
            session,
            route,
            TOKENS,
            Verify::Sampled,
            mix(seed ^ mix(session)),
        );
        let mut finished = false;
        while !finished {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    Action::Send { peer, forward } => {
                        let output = answer(&forward);
                        let receipt = sign(peers.key_of(&peer), &forward, &output);
                        next.extend(driver.on_result(output, receipt, candidates));
                    }
                    Action::Finished { error, .. } => {
                        assert_eq!(error, None);
                        finished = true;
                    }
                    Action::Fault { peer, reason } => panic!("{peer} faulted: {reason}"),
                    Action::Token(_) | Action::Correction(_) => {}
                    Action::Route { .. }
                    | Action::Chain { .. }
                    | Action::Fetch { .. }
                    | Action::Check { .. } => {
                        panic!("a stepped session sent a chained message")
                    }
                }
            }
            assert!(finished || !next.is_empty(), "the session stalled");
            actions = next;
        }
        all.extend(
            driver
                .checks
                .iter()
                .map(|c| (session, c.steps, c.layers, c.verifier)),
        );
    }
    all
}

#[test]
fn seeds_not_sessions_decide_which_windows_are_checked_and_by_whom() {
    let a = choices(1);
    let checked = a.iter().filter(|c| c.3.is_some()).count();
    assert!(a.len() >= 1_000, "only {} decisions", a.len());
    assert!(
        checked > 100 && checked < a.len(),
        "{checked} of {} windows checked",
        a.len()
    );
    assert_eq!(a, choices(1), "the same seed chooses the same");
    let b = choices(2);
    assert_ne!(a, b, "another seed chooses otherwise");
    let verifiers = |c: &[Choice]| c.iter().map(|x| x.3).collect::<Vec<_>>();
    let same = verifiers(&a)
        .iter()
        .zip(verifiers(&b).iter())
        .filter(|(x, y)| x == y)
        .count();
    assert!(
        same < a.len().min(b.len()) * 9 / 10,
        "{same} of {} alike",
        a.len()
    );
}

/// A session cancelled (its client went away) while a verifier replays one of its windows names
/// every peer holding its state, the verifier in flight included, and awaits nothing more.
#[test]
fn a_cancelled_session_names_every_peer_holding_its_state() {
    let peers = Peers::new(PEERS);
    let candidates = &peers.candidates;
    let route = plan(candidates, LAYERS, 3, 1).expect("route");
    let stages: Vec<PeerId> = route.iter().map(|h| h.peer_id).collect();
    let (mut driver, mut actions) = start(1, route, TOKENS, Verify::Window, 7);
    let verifier = loop {
        let Some(Action::Send { peer, forward }) = actions.pop() else {
            panic!("the session stalled before a check");
        };
        if !stages.contains(&peer) {
            break peer;
        }
        let output = answer(&forward);
        let receipt = sign(peers.key_of(&peer), &forward, &output);
        actions = driver.on_result(output, receipt, candidates);
        actions.retain(|a| matches!(a, Action::Send { .. }));
    };
    assert_eq!(driver.awaiting(), Some(verifier));
    let Action::Finished { error, peers } = driver.cancel("the client went away") else {
        panic!("a cancelled session finishes");
    };
    assert_eq!(error.as_deref(), Some("the client went away"));
    assert!(peers.contains(&verifier), "the verifier in flight is told");
    assert!(
        stages.iter().all(|s| peers.contains(s)),
        "every stage is told"
    );
    assert_eq!(driver.awaiting(), None, "nothing is awaited after a cancel");
}
