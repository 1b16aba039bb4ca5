//! The node's side of chained sessions: the routes its coordinators gave it, and which steps it
//! takes from whom. A stage takes a session's step only from the peer the route puts before it (the
//! coordinator for an epoch's first step, the last stage for each step after), only for the route's
//! epoch, and only with the signed receipt that binds what it was sent: its predecessor's output
//! digest must be the digest of the input it got. So no peer can make a node compute for a session
//! it was not given, and a stage that forwards something other than what it signed is refused at
//! the next stage.

use std::collections::HashMap;

use hearth_protocol::work::{
    ChainRoute, ChainStep, CheckRequest, Forward, StageData, StageResult, WorkResponse,
    digest_list, step_receipt_ok,
};
use hearth_protocol::{PeerId, Receipt, ReceiptBody, SecretKey};

/// Sessions a node keeps routes for; past it, the least recently used route is dropped (its
/// session's next step is refused, and its coordinator restarts it).
pub(crate) const CHAIN_ROUTES_MAX: usize = 1024;

/// A route and who gave it.
#[derive(Clone, Debug)]
pub(crate) struct Given {
    /// The route.
    pub(crate) route: ChainRoute,
    /// The coordinator that gave it, where reports go.
    pub(crate) coordinator: PeerId,
    /// When it was last used (a counter), for eviction.
    used: u64,
    /// When it was last used, in ms of the node's monotonic clock, for expiry.
    used_ms: u64,
}

/// The routes of the sessions this node serves in, by session.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    by_session: HashMap<u64, Given>,
    clock: u64,
}

impl Routes {
    /// `coordinator` gives a session's route for an epoch. A route of an older epoch than the one
    /// held is refused.
    pub(crate) fn give(&mut self, coordinator: PeerId, route: ChainRoute) -> Result<(), String> {
        if let Some(held) = self.by_session.get(&route.session)
            && (held.coordinator != coordinator || held.route.epoch > route.epoch)
        {
            return Err(format!(
                "session {} already has a newer route (epoch {})",
                route.session, held.route.epoch
            ));
        }
        if !self.by_session.contains_key(&route.session)
            && self.by_session.len() >= CHAIN_ROUTES_MAX
            && let Some(oldest) = self
                .by_session
                .iter()
                .min_by_key(|(_, g)| g.used)
                .map(|(s, _)| *s)
        {
            tracing::info!(
                session = oldest,
                "route dropped: {CHAIN_ROUTES_MAX} sessions held"
            );
            self.by_session.remove(&oldest);
        }
        self.clock += 1;
        self.by_session.insert(
            route.session,
            Given {
                route,
                coordinator,
                used: self.clock,
                used_ms: hearth_net::monotonic_ms(),
            },
        );
        Ok(())
    }

    /// The route of `session`, if held and of `epoch`.
    pub(crate) fn get(&self, session: u64, epoch: u32) -> Option<&Given> {
        self.by_session
            .get(&session)
            .filter(|g| g.route.epoch == epoch)
    }

    /// `session` ended: forget its route.
    pub(crate) fn end(&mut self, session: u64) {
        self.by_session.remove(&session);
    }

    /// Forget the routes unused for `ttl_ms` at `now_ms` (their coordinator went away without
    /// ending them); the sessions forgotten.
    pub(crate) fn expire(&mut self, now_ms: u64, ttl_ms: u64) -> Vec<u64> {
        let gone: Vec<u64> = self
            .by_session
            .iter()
            .filter(|(_, g)| now_ms.saturating_sub(g.used_ms) > ttl_ms)
            .map(|(s, _)| *s)
            .collect();
        for session in &gone {
            self.by_session.remove(session);
        }
        gone
    }

    /// The coordinator of `session`, if this node holds its route.
    pub(crate) fn coordinator(&self, session: u64) -> Option<PeerId> {
        self.by_session.get(&session).map(|g| g.coordinator)
    }

    /// Whether this node (`me`) takes `step` from `from`; the stage index it is for.
    pub(crate) fn admit(
        &mut self,
        me: PeerId,
        from: PeerId,
        step: &ChainStep,
    ) -> Result<usize, String> {
        let f = &step.forward;
        self.clock += 1;
        let clock = self.clock;
        let given = self
            .by_session
            .get_mut(&f.session)
            .ok_or_else(|| format!("no route for session {}", f.session))?;
        given.used = clock;
        given.used_ms = hearth_net::monotonic_ms();
        let route = &given.route;
        if step.epoch != route.epoch {
            return Err(format!(
                "step of epoch {} for a route of epoch {}",
                step.epoch, route.epoch
            ));
        }
        if f.model != route.model
            || f.sampling != route.sampling
            || f.all_positions
            || f.step >= route.steps_end
        {
            return Err("a step that is not the route's".into());
        }
        let hop = route
            .hops
            .iter()
            .position(|(peer, layers)| *peer == me && *layers == f.layers)
            .ok_or("this node serves no such stage of the route")?;
        let (session, model) = (route.session, route.model);
        if hop > 0 {
            let (before, layers) = route.hops[hop - 1];
            let linked = step.receipts.len() == hop
                && matches!(f.input, StageData::Hidden { .. })
                && step.receipts.last().is_some_and(|r| {
                    step_receipt_ok(
                        r,
                        &before,
                        session,
                        f.step,
                        layers.0,
                        &model,
                        &f.input.digest(),
                    )
                });
            if from != before || !linked {
                return Err(format!(
                    "step {} is not what stage {}..{} signed it sent",
                    f.step, layers.0, layers.1
                ));
            }
            return Ok(hop);
        }
        if !step.receipts.is_empty() {
            return Err("the first stage's step carries receipts".into());
        }
        match &step.previous {
            None if from == given.coordinator => Ok(0),
            None => Err("only the coordinator starts an epoch".into()),
            Some((output, receipt)) => {
                let (last, layers) = *route.hops.last().expect("routes have stages");
                let StageResult::Next { token, .. } = output else {
                    return Err("the previous step is not a token".into());
                };
                let linked = f.step > 0
                    && f.input == StageData::Tokens(vec![*token])
                    && route.goes_on(f.step - 1, *token, f.pos)
                    && step_receipt_ok(
                        receipt,
                        &last,
                        session,
                        f.step - 1,
                        layers.0,
                        &model,
                        &output.digest(),
                    );
                if from != last || !linked {
                    return Err(format!(
                        "step {} is not the token the last stage signed",
                        f.step
                    ));
                }
                Ok(0)
            }
        }
    }
}

/// Bytes of inputs a node keeps for the checks of the chained sessions it serves; past it, the
/// session whose inputs were least recently added loses them (its next check fails to fetch them,
/// and its coordinator starts it again from its last checked token).
pub(crate) const KEPT_BYTES_MAX: usize = 512 << 20;

/// The inputs a node received for chained sessions that are checked, kept for the coordinator's
/// checks ([`hearth_protocol::work::WorkRequest::Kept`]).
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// (session, first layer) → the steps' inputs in order, from the epoch's first step.
    steps: HashMap<(u64, u32), Vec<hearth_protocol::work::Forward>>,
    /// When each session last had an input added (a counter), and the bytes held.
    used: HashMap<u64, u64>,
    bytes: usize,
    clock: u64,
}

fn size(f: &hearth_protocol::work::Forward) -> usize {
    match &f.input {
        StageData::Tokens(ids) => ids.len() * 4,
        StageData::Hidden { bytes, .. } => bytes.len(),
    }
}

impl Kept {
    /// Keep `f`, an input taken for a stage; a step at position 0 starts the range's list afresh.
    pub(crate) fn keep(&mut self, f: hearth_protocol::work::Forward) {
        let key = (f.session, f.layers.0);
        if f.pos == 0
            && let Some(old) = self.steps.remove(&key)
        {
            self.bytes -= old.iter().map(size).sum::<usize>();
        }
        self.clock += 1;
        self.used.insert(f.session, self.clock);
        self.bytes += size(&f);
        self.steps.entry(key).or_default().push(f);
        while self.bytes > KEPT_BYTES_MAX {
            let Some(oldest) = self.used.iter().min_by_key(|(_, t)| **t).map(|(s, _)| *s) else {
                break;
            };
            tracing::info!(
                session = oldest,
                "kept inputs dropped: {KEPT_BYTES_MAX} bytes held"
            );
            self.end(oldest);
        }
    }

    /// The inputs kept of `session` at the stage starting at `layer_start`, steps `from..to`.
    pub(crate) fn get(
        &self,
        session: u64,
        layer_start: u32,
        (from, to): (u64, u64),
    ) -> Result<Vec<hearth_protocol::work::Forward>, String> {
        let list = self
            .steps
            .get(&(session, layer_start))
            .ok_or_else(|| format!("no inputs kept of session {session} at layer {layer_start}"))?;
        let got: Vec<_> = list
            .iter()
            .filter(|f| f.step >= from && f.step < to)
            .cloned()
            .collect();
        if got.len() as u64 != to.saturating_sub(from) {
            return Err(format!(
                "{} of steps {from}..{to} of session {session} are kept",
                got.len()
            ));
        }
        Ok(got)
    }

    /// `session` ended: forget its inputs.
    pub(crate) fn end(&mut self, session: u64) {
        let gone: Vec<(u64, u32)> = self
            .steps
            .keys()
            .filter(|(s, _)| *s == session)
            .copied()
            .collect();
        for key in gone {
            if let Some(list) = self.steps.remove(&key) {
                self.bytes -= list.iter().map(size).sum::<usize>();
            }
        }
        self.used.remove(&session);
    }
}

/// The replay input of `check` from the inputs its stage kept: each exactly the step its
/// receipt signed (which binds session, step, layers, position and bytes), with the rows the
/// coordinator counted, put one after another.
pub(crate) fn check_input(check: &CheckRequest, inputs: &[Forward]) -> Result<StageData, String> {
    let source = check
        .source
        .as_ref()
        .ok_or("the check names no stage to fetch from")?;
    if inputs.len() != source.inputs.len() || inputs.len() != check.rows.len() {
        return Err(format!(
            "the stage gave {} inputs for {} steps",
            inputs.len(),
            source.inputs.len()
        ));
    }
    if inputs.first().is_some_and(|f| f.pos != check.forward.pos) {
        return Err("the stage's first input is not at the check's position".into());
    }
    let (mut rows, mut bytes) = (0u32, Vec::new());
    for (i, f) in inputs.iter().enumerate() {
        if f.digest() != source.inputs[i] || f.input.rows() != check.rows[i] as usize {
            return Err(format!(
                "the stage's input of step {} is not the one its receipt signed",
                source.from + i as u64
            ));
        }
        let StageData::Hidden { rows: r, bytes: b } = &f.input else {
            return Err("the stage kept tokens where hidden states go".into());
        };
        rows += r;
        bytes.extend_from_slice(b);
    }
    Ok(StageData::Hidden { rows, bytes })
}

/// The answer to a check by digests from the stage thread's answer to its replay: each step's
/// output digest, under a receipt of this node's binding the check's input and those digests.
pub(crate) fn check_answer(
    key: &SecretKey,
    check: &CheckRequest,
    response: WorkResponse,
) -> WorkResponse {
    let (output, receipt) = match response {
        WorkResponse::Forwarded { output, receipt } => (output, receipt),
        other => return other,
    };
    let Some(outputs) = check.step_outputs(&output) else {
        return WorkResponse::Rejected(
            "the replay did not give a row for each of the steps' rows".into(),
        );
    };
    let receipt = Receipt::sign(
        key,
        ReceiptBody {
            subject: receipt.body.subject,
            model: receipt.body.model,
            input: check.input_digest(),
            output: digest_list(&outputs),
            numeric_class: receipt.body.numeric_class,
        },
    );
    WorkResponse::Checked { outputs, receipt }
}

#[cfg(test)]
mod tests {
    use hearth_protocol::work::Forward;
    use hearth_protocol::{ModelId, Receipt, ReceiptBody, SecretKey, Subject};

    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    fn peer(n: u8) -> PeerId {
        key(n).public().peer_id()
    }

    fn route(epoch: u32) -> ChainRoute {
        ChainRoute {
            session: 7,
            epoch,
            model: ModelId::of_bytes(b"m"),
            hops: vec![(peer(1), (0, 10)), (peer(2), (10, 20))],
            sampling: None,
            ends: vec![2],
            steps_end: 8,
            context: 100,
            keep_inputs: true,
            addrs: Vec::new(),
        }
    }

    fn forward(step: u64, layers: (u32, u32), input: StageData) -> Forward {
        Forward {
            session: 7,
            step,
            model: ModelId::of_bytes(b"m"),
            layers,
            pos: 3,
            input,
            all_positions: false,
            sampling: None,
        }
    }

    fn sign(signer: u8, step: u64, layer_start: u32, output: hearth_protocol::Digest) -> Receipt {
        Receipt::sign(
            &key(signer),
            ReceiptBody {
                subject: Subject::Step {
                    session: 7,
                    step,
                    layer_start,
                },
                model: ModelId::of_bytes(b"m"),
                input: hearth_protocol::Digest::of("x", b"y"),
                output,
                numeric_class: "c".into(),
            },
        )
    }

    #[test]
    fn a_stage_takes_only_what_its_predecessor_signed() {
        let coordinator = peer(9);
        let mut routes = Routes::default();
        routes.give(coordinator, route(1)).expect("given");
        let data = StageData::hidden(1, &[1.0, 2.0]);
        let good = ChainStep {
            epoch: 1,
            forward: forward(4, (10, 20), data.clone()),
            receipts: vec![sign(1, 4, 0, data.digest())],
            previous: None,
            rtts: vec![Some(0.3)],
        };
        assert_eq!(routes.admit(peer(2), peer(1), &good), Ok(1));
        // From anyone but stage 1, for another epoch, or with other bytes than were signed.
        assert!(routes.admit(peer(2), peer(3), &good).is_err());
        let stale = ChainStep {
            epoch: 2,
            ..good.clone()
        };
        assert!(routes.admit(peer(2), peer(1), &stale).is_err());
        let tampered = ChainStep {
            forward: forward(4, (10, 20), StageData::hidden(1, &[1.0, 2.5])),
            ..good.clone()
        };
        assert!(routes.admit(peer(2), peer(1), &tampered).is_err());
        // Signed by another peer than stage 1.
        let forged = ChainStep {
            receipts: vec![sign(3, 4, 0, data.digest())],
            ..good
        };
        assert!(routes.admit(peer(2), peer(1), &forged).is_err());
    }

    #[test]
    fn the_first_stage_takes_the_coordinators_start_and_the_last_stages_signed_token() {
        let coordinator = peer(9);
        let mut routes = Routes::default();
        routes.give(coordinator, route(1)).expect("given");
        let start = ChainStep {
            epoch: 1,
            forward: forward(0, (0, 10), StageData::Tokens(vec![5, 6, 7])),
            receipts: Vec::new(),
            previous: None,
            rtts: Vec::new(),
        };
        assert_eq!(routes.admit(peer(1), coordinator, &start), Ok(0));
        assert!(routes.admit(peer(1), peer(2), &start).is_err());
        let output = StageResult::Next {
            token: 11,
            top: vec![(11, 3.0)],
        };
        let next = ChainStep {
            epoch: 1,
            forward: forward(4, (0, 10), StageData::Tokens(vec![11])),
            receipts: Vec::new(),
            previous: Some((output.clone(), sign(2, 3, 10, output.digest()))),
            rtts: Vec::new(),
        };
        assert_eq!(routes.admit(peer(1), peer(2), &next), Ok(0));
        // Another token than the one signed; past the route's last step; after the eos token.
        let swapped = ChainStep {
            forward: forward(4, (0, 10), StageData::Tokens(vec![12])),
            ..next.clone()
        };
        assert!(routes.admit(peer(1), peer(2), &swapped).is_err());
        let late = ChainStep {
            forward: forward(8, (0, 10), StageData::Tokens(vec![11])),
            previous: Some((output.clone(), sign(2, 7, 10, output.digest()))),
            ..next.clone()
        };
        assert!(routes.admit(peer(1), peer(2), &late).is_err());
        let eos = StageResult::Next {
            token: 2,
            top: vec![(2, 3.0)],
        };
        let after_eos = ChainStep {
            forward: forward(4, (0, 10), StageData::Tokens(vec![2])),
            previous: Some((eos.clone(), sign(2, 3, 10, eos.digest()))),
            ..next
        };
        assert!(routes.admit(peer(1), peer(2), &after_eos).is_err());
    }

    #[test]
    fn kept_inputs_are_served_by_step_and_start_afresh_at_position_0() {
        let mut kept = Kept::default();
        let at = |step: u64, pos: u32| {
            let mut f = forward(step, (10, 20), StageData::hidden(1, &[step as f32, 0.0]));
            f.pos = pos;
            f
        };
        for step in 0..4 {
            kept.keep(at(step, 3 + step as u32));
        }
        let got = kept.get(7, 10, (1, 3)).expect("kept");
        assert_eq!(got.iter().map(|f| f.step).collect::<Vec<_>>(), vec![1, 2]);
        assert!(kept.get(7, 10, (2, 6)).is_err(), "steps not kept");
        assert!(kept.get(7, 0, (0, 1)).is_err(), "another stage");
        // A restart (position 0) at step 2: the list starts again there.
        kept.keep(at(2, 0));
        assert!(kept.get(7, 10, (0, 1)).is_err());
        assert_eq!(kept.get(7, 10, (2, 3)).expect("kept")[0].pos, 0);
        kept.end(7);
        assert!(kept.get(7, 10, (2, 3)).is_err());
        assert_eq!(kept.bytes, 0);
    }

    #[test]
    fn a_newer_epoch_replaces_the_route_and_an_older_one_is_refused() {
        let coordinator = peer(9);
        let mut routes = Routes::default();
        routes.give(coordinator, route(2)).expect("given");
        assert!(routes.give(coordinator, route(1)).is_err());
        assert!(
            routes.give(peer(8), route(3)).is_err(),
            "another coordinator"
        );
        routes.give(coordinator, route(3)).expect("newer");
        assert!(routes.get(7, 3).is_some());
        assert!(routes.get(7, 2).is_none());
        routes.end(7);
        assert!(routes.get(7, 3).is_none());
        // A route left unused past its time is forgotten.
        routes.give(coordinator, route(1)).expect("given");
        let now = hearth_net::monotonic_ms();
        assert!(routes.expire(now, 60_000).is_empty());
        assert_eq!(routes.expire(now + 60_001, 60_000), vec![7]);
        assert!(routes.get(7, 1).is_none());
    }

    /// A check of steps 4..6 at the stage starting at layer 10: its inputs as the stage kept them
    /// (1, 2 and 1 rows of width 2, from position 3).
    fn check_of_kept() -> (CheckRequest, Vec<Forward>) {
        let mut pos = 3;
        let kept: Vec<Forward> = [1u32, 2, 1]
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let floats: Vec<f32> = (0..rows * 2).map(|v| (i as u32 * 10 + v) as f32).collect();
                let mut f = forward(4 + i as u64, (10, 20), StageData::hidden(rows, &floats));
                f.pos = pos;
                pos += rows;
                f
            })
            .collect();
        let check = CheckRequest {
            forward: Forward {
                session: 7 | (1 << 62),
                step: 6,
                pos: 3,
                input: StageData::Hidden {
                    rows: 0,
                    bytes: Vec::new(),
                },
                all_positions: true,
                ..forward(6, (10, 20), StageData::Tokens(Vec::new()))
            },
            source: Some(hearth_protocol::work::KeptSource {
                peer: peer(2),
                addrs: Vec::new(),
                session: 7,
                from: 4,
                inputs: kept.iter().map(Forward::digest).collect(),
                grant: hearth_protocol::Signature([0; 64]),
            }),
            rows: vec![1, 2, 1],
        };
        (check, kept)
    }

    #[test]
    fn a_verifier_replays_only_the_inputs_the_stages_receipts_signed() {
        let (check, kept) = check_of_kept();
        let StageData::Hidden { rows, bytes } = check_input(&check, &kept).expect("signed inputs")
        else {
            panic!("hidden states");
        };
        assert_eq!(rows, 4);
        let expected: Vec<u8> = kept
            .iter()
            .flat_map(|f| match &f.input {
                StageData::Hidden { bytes, .. } => bytes.clone(),
                StageData::Tokens(_) => Vec::new(),
            })
            .collect();
        assert_eq!(bytes, expected);
        // One byte changed, one step missing, the steps out of order: refused, naming the step.
        let mut forged = kept.clone();
        if let StageData::Hidden { bytes, .. } = &mut forged[1].input {
            bytes[0] ^= 1;
        }
        let why = check_input(&check, &forged).expect_err("forged");
        assert!(why.contains("step 5"), "{why}");
        assert!(check_input(&check, &kept[..2]).is_err());
        let swapped = vec![kept[1].clone(), kept[0].clone(), kept[2].clone()];
        assert!(check_input(&check, &swapped).is_err());
    }

    #[test]
    fn a_verifier_answers_each_steps_output_digest_under_its_own_receipt() {
        let (check, _) = check_of_kept();
        let floats: Vec<f32> = (0..8).map(|v| v as f32 * 0.5).collect();
        let output = StageResult::Hidden(StageData::hidden(4, &floats));
        let stage_receipt = Receipt::sign(
            &key(5),
            ReceiptBody {
                subject: Subject::Step {
                    session: check.forward.session,
                    step: 6,
                    layer_start: 10,
                },
                model: ModelId::of_bytes(b"m"),
                input: check.forward.digest(),
                output: output.digest(),
                numeric_class: "c".into(),
            },
        );
        let answer = check_answer(
            &key(5),
            &check,
            WorkResponse::Forwarded {
                output,
                receipt: stage_receipt,
            },
        );
        let WorkResponse::Checked { outputs, receipt } = answer else {
            panic!("checked: {answer:?}");
        };
        // Step 5's two rows are what a stage computing it alone would have signed.
        assert_eq!(outputs[1], StageData::hidden(2, &floats[2..6]).digest());
        assert_eq!(outputs.len(), 3);
        assert!(receipt.verify().is_ok());
        assert_eq!(receipt.peer_id(), peer(5));
        assert_eq!(receipt.body.input, check.input_digest());
        assert_eq!(receipt.body.output, digest_list(&outputs));
        // A replay with other rows than the steps': refused, not misread.
        let short = WorkResponse::Forwarded {
            output: StageResult::Hidden(StageData::hidden(3, &floats[..6])),
            receipt,
        };
        assert!(matches!(
            check_answer(&key(5), &check, short),
            WorkResponse::Rejected(_)
        ));
    }
}
