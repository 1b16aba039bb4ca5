//! Chained sessions' driver: the coordinator gives the route, starts the first step, and takes one
//! report per token, checking its chain of receipts. Here a made-up chain of honest stages (and a
//! few dishonest ones) runs the steps the stages would run, so every path is driven: the route
//! acknowledged, reports in and out of order, a stage that signs what its predecessor did not send,
//! a report that lies about its token, a stage that fails, and a chain that stalls.

mod common;

use common::{LAYERS, Peers, answer, sign};
use hearth_core::pipeline::{Action, CHAIN_STALLS_MAX, Driver, Hop, Verify, plan};
use hearth_protocol::work::{ChainReport, ChainStep, Forward, StageData, StageResult};
use hearth_protocol::{ModelId, PeerId};

const PROMPT: [u32; 4] = [1, 2, 3, 4];

fn chained(route: Vec<Hop>, tokens: usize) -> (Driver, Vec<Action>) {
    Driver::chained(
        1,
        ModelId::of_bytes(b"test"),
        route,
        PROMPT.to_vec(),
        tokens,
        0,
        1 << 20,
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

#[test]
fn reports_that_overtake_each_other_are_taken_in_order_and_stale_ones_ignored() {
    let peers = Peers::new(5);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    let want = stepped_tokens(&peers, route.clone(), 6);
    let (mut driver, actions) = chained(route.clone(), 6);
    let (epoch, _, mut first) = ack_routes(&mut driver, actions);
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
    let peers = Peers::new(5);
    let route = plan(&peers.candidates, LAYERS, 3, 1).expect("route");
    let want = stepped_tokens(&peers, route.clone(), 8);
    let (mut driver, actions) = chained(route.clone(), 8);
    let (epoch, _, mut first) = ack_routes(&mut driver, actions);
    let mut got = Vec::new();
    for _ in 0..3 {
        let report = run_chain(&peers, &route, epoch, &first, None);
        first = next_first(&first, &report);
        got.extend(tokens_of(&driver.on_report(report, &peers.candidates)));
    }
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
    while got.len() < want.len() {
        let report = run_chain(&peers, &new_route, epoch, &first, None);
        first = next_first(&first, &report);
        got.extend(tokens_of(&driver.on_report(report, &peers.candidates)));
    }
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
