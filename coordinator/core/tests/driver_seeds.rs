//! The pipeline driver's own choices (which windows `sampled` checks, which peers verify) come from
//! the seed its caller passes, and from nothing a peer sees: two seeds choose differently over the
//! same sessions, one seed chooses the same again.

use hearth_core::pipeline::{Action, Candidate, Driver, Verify, plan};
use hearth_protocol::work::{Forward, StageData, StageResult};
use hearth_protocol::{ModelId, PeerId, Receipt, ReceiptBody, SecretKey, Subject};

const LAYERS: u32 = 12;
const PEERS: u8 = 12;
const SESSIONS: u64 = 60;
const TOKENS: usize = 64;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An honest stage: each row's state a mix of its input and the layers (the same row computed
/// alone or in a prefill gives the same bits).
fn answer(f: &Forward) -> StageResult {
    let first = u64::from(f.pos);
    let states: Vec<u64> = match &f.input {
        StageData::Tokens(ids) => ids
            .iter()
            .enumerate()
            .map(|(i, t)| mix(u64::from(*t) ^ mix(first + i as u64)))
            .collect(),
        data => data
            .floats()
            .chunks(2)
            .map(|c| (c[0] as u64) | ((c[1] as u64) << 20))
            .collect(),
    };
    let states: Vec<u64> = states
        .into_iter()
        .map(|s| mix(s ^ u64::from(f.layers.1)) & ((1 << 40) - 1))
        .collect();
    if f.layers.1 < LAYERS {
        let floats: Vec<f32> = states
            .iter()
            .flat_map(|s| [(s & 0xF_FFFF) as f32, (s >> 20) as f32])
            .collect();
        return StageResult::Hidden(StageData::hidden(states.len() as u32, &floats));
    }
    let token = |s: &u64| (s % 1000) as u32 + 3;
    if f.all_positions {
        return StageResult::NextEach(
            states
                .iter()
                .map(|s| (token(s), vec![(token(s), 1.0)]))
                .collect(),
        );
    }
    let t = token(states.last().expect("rows"));
    StageResult::Next {
        token: t,
        top: vec![(t, 1.0)],
    }
}

/// An honest stage's receipt for `output` of `forward`.
fn sign(key: &SecretKey, forward: &Forward, output: &StageResult) -> Receipt {
    Receipt::sign(
        key,
        ReceiptBody {
            subject: Subject::Step {
                session: hearth_core::pipeline::session_of(forward.session),
                step: forward.step,
                layer_start: forward.layers.0,
            },
            model: forward.model,
            input: forward.digest(),
            output: output.digest(),
            numeric_class: "k0/llm/test".into(),
        },
    )
}

/// One window's check: the session, its steps, the layers, and the verifier (none: unchecked).
type Choice = (u64, (u64, u64), (u32, u32), Option<PeerId>);

/// Every window a session checked (or left unchecked) and by whom, in order.
fn choices(seed: u64) -> Vec<Choice> {
    let keys: Vec<SecretKey> = (1..=PEERS)
        .map(|n| SecretKey::from_bytes(&[n; 32]))
        .collect();
    let key_of = |peer: &PeerId| {
        keys.iter()
            .find(|k| k.public().peer_id() == *peer)
            .expect("a known peer")
    };
    let candidates: Vec<Candidate> = keys
        .iter()
        .map(|k| Candidate::new(k.public().peer_id(), 1.0, u64::MAX / 2))
        .collect();
    let mut all = Vec::new();
    for session in 1..=SESSIONS {
        let route = plan(&candidates, LAYERS, 3, 1).expect("route");
        // Each session's seed is derived from the caller's, as the coordinator derives it.
        let (mut driver, mut actions) = Driver::new(
            session,
            ModelId::of_bytes(b"test"),
            route,
            vec![1, 2, 3, 4],
            TOKENS,
            0,
            1 << 20,
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
                        let receipt = sign(key_of(&peer), &forward, &output);
                        next.extend(driver.on_result(output, receipt, &candidates));
                    }
                    Action::Finished { error, .. } => {
                        assert_eq!(error, None);
                        finished = true;
                    }
                    Action::Fault { peer, reason } => panic!("{peer} faulted: {reason}"),
                    Action::Token(_) | Action::Correction(_) => {}
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
    let keys: Vec<SecretKey> = (1..=PEERS)
        .map(|n| SecretKey::from_bytes(&[n; 32]))
        .collect();
    let candidates: Vec<Candidate> = keys
        .iter()
        .map(|k| Candidate::new(k.public().peer_id(), 1.0, u64::MAX / 2))
        .collect();
    let route = plan(&candidates, LAYERS, 3, 1).expect("route");
    let stages: Vec<PeerId> = route.iter().map(|h| h.peer_id).collect();
    let (mut driver, mut actions) = Driver::new(
        1,
        ModelId::of_bytes(b"test"),
        route,
        vec![1, 2, 3, 4],
        TOKENS,
        0,
        1 << 20,
        Verify::Window,
        7,
    );
    let verifier = loop {
        let Some(Action::Send { peer, forward }) = actions.pop() else {
            panic!("the session stalled before a check");
        };
        if !stages.contains(&peer) {
            break peer;
        }
        let key = keys
            .iter()
            .find(|k| k.public().peer_id() == peer)
            .expect("a known peer");
        let output = answer(&forward);
        let receipt = sign(key, &forward, &output);
        actions = driver.on_result(output, receipt, &candidates);
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
