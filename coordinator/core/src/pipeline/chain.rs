//! Chained sessions: the stages hand each step to each other and the coordinator is off the token
//! path. The coordinator gives every stage the route ([`ChainRoute`]), sends the first stage the
//! prompt ([`ChainStep`]), and from then on is sent one small message per token: the last stage's
//! [`ChainReport`], with the token and every stage's receipt. Nothing else passes through it: no
//! activations, no request per stage.
//!
//! The driver checks each report's chain of receipts: the first stage's input is the prompt (or
//! the previous token), each later stage's input digest follows from its predecessor's signed
//! output digest ([`Forward::digest_with`]), and the last stage signed the token it reported. A
//! link that does not hold is blamed on the stage whose receipt breaks it.
//!
//! A failure (a stage that leaves, refuses, or is reported broken by its neighbour) restarts the
//! session in a new epoch: a replacement takes the failed stage's layers, every stage is given the
//! new route, and the first stage is sent the prompt and every token so far as one prefill. The
//! kernels are batch-invariant, so the rebuilt caches hold the same bits the lost ones did and the
//! tokens that follow are the ones an unbroken chain would have drawn.

use std::collections::{BTreeMap, BTreeSet};

use hearth_protocol::work::{
    ChainReport, ChainRoute, ChainStep, CheckRequest, Forward, KeptSource, StageData, StageResult,
    digest_list, step_receipt_signed,
};
use hearth_protocol::{Digest, PeerId, Receipt, Signature, Subject};

use super::{
    Action, Candidate, Driver, Pending, Purpose, Tie, VERIFY_WINDOW_TOKENS, Verify, check_session,
};

/// Reports kept that arrived ahead of the one awaited (their messages may overtake each other).
pub const CHAIN_EARLY_MAX: usize = 64;

/// Restarts in a row with no report between them before a session gives up.
pub const CHAIN_STALLS_MAX: u32 = 2;

/// A chained session's state besides the driver's own.
#[derive(Clone, Debug, Default)]
pub(super) struct Chained {
    /// The route's epoch (bumped at every restart).
    pub(super) epoch: u32,
    /// Peers that have not yet acknowledged this epoch's route; the first step waits for them.
    pub(super) unacked: BTreeSet<PeerId>,
    /// The first stage's input of the step in flight.
    pub(super) current: Option<Forward>,
    /// Reports ahead of their turn, by step.
    pub(super) early: BTreeMap<u64, ChainReport>,
    /// Stalls (no report within its time) since the last report.
    pub(super) stalls: u32,
    /// The epoch's first step.
    pub(super) start: u64,
    /// This epoch's stage receipts, by step and first layer: what fetched inputs must match.
    pub(super) receipts: BTreeMap<(u64, u32), Receipt>,
    /// Per range, the steps from the epoch's start whose inputs the driver holds (up to, not
    /// including, this one).
    pub(super) fetched: BTreeMap<(u32, u32), u64>,
    /// The fetch in flight: the stage's index, its peer, the steps, and the check waiting for it.
    pub(super) fetching: Option<Fetching>,
    /// Each stage's last reported round trip to the next (the last stage's: to the first).
    pub(super) rtts: Vec<Option<f32>>,
    /// Checks (window start, hop) that go through the coordinator after all: a verifier could
    /// not get the stage's inputs, or is of another numeric class than the stage.
    pub(super) via_coordinator: BTreeSet<(u64, usize)>,
}

/// A fetch of a stage's kept inputs, for the check of `hop` in `window`.
#[derive(Clone, Debug)]
pub(super) struct Fetching {
    stage: usize,
    peer: PeerId,
    steps: (u64, u64),
    window: (u64, u64),
    hop: usize,
}

impl Driver {
    /// A session whose stages forward to each other ([`super`]'s chained mode): greedy, or drawn
    /// with `sampling`, checked as `verify` says while the stages generate on: each window's
    /// inputs are fetched from the stages that kept them and replayed by other peers; a window's
    /// tokens are released once it is checked (`window`, `sampled`), or at once (`after`, `off`).
    #[allow(clippy::too_many_arguments)]
    pub fn chained(
        session: u64,
        model: hearth_protocol::ModelId,
        route: Vec<super::Hop>,
        prompt: Vec<u32>,
        max_tokens: usize,
        ends: Vec<u32>,
        context: usize,
        verify: Verify,
        sampling: Option<hearth_protocol::work::Sampling>,
        seed: u64,
    ) -> (Self, Vec<Action>) {
        let (mut driver, _) = Self::sampled(
            session, model, route, prompt, max_tokens, ends, context, verify, sampling, seed,
        );
        // `sampled` began a stepped session: nothing was sent yet, so it is dropped unsent.
        driver.awaiting = None;
        driver.history.clear();
        driver.chain = Some(Chained::default());
        let actions = driver.chain_restart();
        (driver, actions)
    }

    /// Whether the stages forward to each other.
    pub fn is_chained(&self) -> bool {
        self.chain.is_some()
    }

    /// The route's epoch (0 for a session that is not chained).
    pub fn epoch(&self) -> u32 {
        self.chain.as_ref().map_or(0, |c| c.epoch)
    }

    /// Each stage's round trip to the next, in ms, as the stages last reported them (the last
    /// stage's: to the first). Empty before the first report.
    pub fn chain_rtts(&self) -> &[Option<f32>] {
        self.chain.as_ref().map_or(&[], |c| &c.rtts)
    }

    /// The first stage's input of the epoch's first step.
    pub fn chain_first(&self) -> Option<&Forward> {
        self.chain.as_ref().and_then(|c| c.current.as_ref())
    }

    /// Start an epoch: every stage is told the route; the first step waits for their answers. A
    /// checked session starts again from its last checked token (tokens after it were not checked,
    /// and the checks in flight are dropped); an unchecked one from its last token.
    pub(super) fn chain_restart(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.verify != Verify::Off {
            let keep = self.verified as usize;
            if self.released > keep {
                self.corrections
                    .push((keep, self.generated[keep..self.released].to_vec()));
                actions.push(Action::Correction(keep));
                self.released = keep;
            }
            self.generated.truncate(keep);
            self.finishing = false;
            self.awaiting = None;
            self.history.clear();
            self.outputs.clear();
            self.verifiers.clear();
        }
        let route = ChainRoute {
            session: self.session,
            epoch: self.epoch() + 1,
            model: self.model,
            hops: self.route.iter().map(|h| (h.peer_id, h.layers)).collect(),
            sampling: self.sampling,
            ends: self.ends.clone(),
            steps_end: self.max_tokens as u64,
            context: u32::try_from(self.context).unwrap_or(u32::MAX),
            keep_inputs: self.verify != Verify::Off,
            // The shell fills in where each stage listens.
            addrs: Vec::new(),
        };
        let Some(chain) = self.chain.as_mut() else {
            return actions;
        };
        chain.epoch = route.epoch;
        chain.unacked = self.route.iter().map(|h| h.peer_id).collect();
        chain.current = None;
        chain.early.clear();
        chain.start = self.generated.len() as u64;
        chain.receipts.clear();
        chain.fetched.clear();
        chain.fetching = None;
        chain.via_coordinator.clear();
        self.step = self.generated.len() as u64;
        actions.extend(chain.unacked.iter().map(|peer| Action::Route {
            peer: *peer,
            route: route.clone(),
        }));
        actions
    }

    /// `peer` took this epoch's route (`epoch`); once every stage has, the first step goes out:
    /// the prompt and the tokens so far, as one prefill from position 0.
    pub fn on_route_ack(&mut self, peer: PeerId, epoch: u32) -> Vec<Action> {
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        if self.done || epoch != chain.epoch || !chain.unacked.remove(&peer) {
            return Vec::new();
        }
        if !chain.unacked.is_empty() {
            return Vec::new();
        }
        let mut tokens = self.prompt.clone();
        tokens.extend(&self.generated);
        let forward = Forward {
            session: self.session,
            step: self.generated.len() as u64,
            model: self.model,
            layers: self.route[0].layers,
            pos: 0,
            input: StageData::Tokens(tokens),
            all_positions: false,
            sampling: self.sampling,
        };
        chain.current = Some(forward.clone());
        vec![Action::Chain {
            peer: self.route[0].peer_id,
            step: Box::new(ChainStep {
                epoch: chain.epoch,
                forward,
                receipts: Vec::new(),
                previous: None,
                rtts: Vec::new(),
            }),
        }]
    }

    /// The last stage's report of a step. Reports of other epochs are stale and ignored; one ahead
    /// of its turn waits for the ones before it.
    pub fn on_report(&mut self, report: ChainReport, candidates: &[Candidate]) -> Vec<Action> {
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        if self.done || report.epoch != chain.epoch || report.session != self.session {
            return Vec::new();
        }
        let due = self.generated.len() as u64;
        if report.step > due {
            if chain.early.len() < CHAIN_EARLY_MAX {
                chain.early.insert(report.step, report);
            }
            return Vec::new();
        }
        if report.step < due {
            return Vec::new();
        }
        let mut actions = self.chain_step(report, candidates);
        loop {
            let due = self.generated.len() as u64;
            let Some(next) = self
                .chain
                .as_mut()
                .filter(|_| !self.done)
                .and_then(|c| c.early.remove(&due))
            else {
                return actions;
            };
            actions.extend(self.chain_step(next, candidates));
        }
    }

    /// The first stage's input at step `step`, which the chain's receipts must start from.
    fn chain_first_input(&self, step: u64) -> Option<Forward> {
        let chain = self.chain.as_ref()?;
        let current = chain.current.as_ref()?;
        if step == current.step {
            return Some(current.clone());
        }
        // A decode step: the previous token, at the position after everything before it.
        let token = *self
            .generated
            .get(usize::try_from(step).ok()?.checked_sub(1)?)?;
        Some(Forward {
            step,
            pos: u32::try_from(self.prompt.len() as u64 + step - 1).ok()?,
            input: StageData::Tokens(vec![token]),
            ..current.clone()
        })
    }

    /// Check a report's chain of receipts, then take its token.
    fn chain_step(&mut self, report: ChainReport, candidates: &[Candidate]) -> Vec<Action> {
        let last = self.route.len() - 1;
        if report.receipts.len() != self.route.len() {
            let peer = self.route[last].peer_id;
            return self.on_failure(
                peer,
                &format!(
                    "its report of step {} carries {} receipts for {} stages",
                    report.step,
                    report.receipts.len(),
                    self.route.len()
                ),
                candidates,
            );
        }
        let Some(first) = self.chain_first_input(report.step) else {
            return vec![self.finish(Some(format!(
                "step {} was reported before its input was known",
                report.step
            )))];
        };
        // Each receipt in turn: its stage, step and model, its input (the previous output), and
        // for the last its output (the reported token).
        let mut input = first.digest();
        for (hop, receipt) in report.receipts.iter().enumerate() {
            let h = &self.route[hop];
            let forward = Forward {
                layers: h.layers,
                ..first.clone()
            };
            if hop > 0 {
                input = forward.digest_with(report.receipts[hop - 1].body.output);
            }
            let signed_by_stage = step_receipt_signed(
                receipt,
                &h.peer_id,
                self.session,
                report.step,
                h.layers.0,
                &self.model,
            );
            if !signed_by_stage {
                // Whoever assembled the report put in a receipt its stage did not sign.
                let peer = self.route[last].peer_id;
                return self.on_failure(
                    peer,
                    &format!(
                        "its report of step {} carries a receipt not signed by stage {}..{}",
                        report.step, h.layers.0, h.layers.1
                    ),
                    candidates,
                );
            }
            let output_ok = hop < last || receipt.body.output == report.output.digest();
            if receipt.body.input != input || !output_ok {
                // The stage signed an input its predecessor did not send (or an output it did
                // not report): its own signature is the evidence.
                let peer = h.peer_id;
                let reason = format!(
                    "its receipt for step {} does not follow from the one before it in the chain",
                    report.step
                );
                let mut actions = vec![Action::Fault {
                    peer,
                    reason: reason.clone(),
                }];
                actions.extend(self.on_failure(peer, &reason, candidates));
                return actions;
            }
        }
        let StageResult::Next { token, .. } = report.output else {
            let peer = self.route[last].peer_id;
            return self.on_failure(peer, "reported a step that is not a token", candidates);
        };
        let rows = first.input.rows() as u32;
        let next_pos = first.pos + rows;
        let step = report.step;
        if let Some(chain) = self.chain.as_mut() {
            chain.stalls = 0;
            if self.verify != Verify::Off {
                // What the checks need: every stage's receipt, the first stage's input and the
                // last stage's output (the others' come from the stages when a window is checked).
                for (h, receipt) in self.route.iter().zip(&report.receipts) {
                    chain.receipts.insert((step, h.layers.0), receipt.clone());
                }
                chain.fetched.insert(self.route[0].layers, step + 1);
                self.history
                    .entry(self.route[0].layers)
                    .or_default()
                    .push(first);
                self.outputs
                    .insert((self.route[last].layers, step), report.output.clone());
            }
        }
        if let Some(chain) = self.chain.as_mut()
            && report.rtts.len() == self.route.len()
        {
            chain.rtts = report.rtts;
        }
        // Each stage's numeric class, as its receipt names it: what decides whether its replays
        // must agree bit for bit.
        for (h, receipt) in self.route.iter().zip(&report.receipts) {
            self.classes
                .insert(h.peer_id, receipt.body.numeric_class.clone());
        }
        self.receipts.extend(report.receipts);
        self.generated.push(token);
        self.step = self.generated.len() as u64;
        let mut actions = Vec::new();
        if matches!(self.verify, Verify::Off | Verify::After) {
            actions.extend(self.release(self.generated.len()));
        }
        let end = self.ends.contains(&token)
            || self.generated.len() >= self.max_tokens
            || next_pos as usize + 1 >= self.context;
        if end {
            self.finishing = true;
        }
        actions.extend(self.chain_check(candidates));
        actions
    }

    /// Check the next window if it is in and no check is under way; finish once the last
    /// window is checked.
    pub(super) fn chain_check(&mut self, candidates: &[Candidate]) -> Vec<Action> {
        let fetching = self.chain.as_ref().is_some_and(|c| c.fetching.is_some());
        if self.done || self.awaiting.is_some() || fetching {
            return Vec::new();
        }
        let steps = self.generated.len() as u64;
        let due = self.verify != Verify::Off
            && self.verified < steps
            && (self.finishing || steps - self.verified >= VERIFY_WINDOW_TOKENS);
        if due {
            return self.next_check(candidates);
        }
        if self.finishing && (self.verify == Verify::Off || self.verified >= steps) {
            let mut actions = self.release(self.generated.len());
            actions.push(self.finish(None));
            return actions;
        }
        Vec::new()
    }

    /// The fetch the check of `hop` in `window` waits for, if any: the stage's own inputs (its
    /// history from the epoch's start) and its successor's (its outputs). The first stage's
    /// inputs and the last stage's outputs came with the reports.
    pub(super) fn chain_fetch(&mut self, window: (u64, u64), hop: usize) -> Option<Action> {
        let chain = self.chain.as_mut()?;
        for stage in [hop, hop + 1] {
            if stage == 0 || stage >= self.route.len() {
                continue;
            }
            let layers = self.route[stage].layers;
            let upto = chain.fetched.get(&layers).copied().unwrap_or(chain.start);
            if upto < window.1 {
                let peer = self.route[stage].peer_id;
                chain.fetching = Some(Fetching {
                    stage,
                    peer,
                    steps: (upto, window.1),
                    window,
                    hop,
                });
                return Some(Action::Fetch {
                    peer,
                    layers,
                    steps: (upto, window.1),
                });
            }
        }
        None
    }

    /// A stage's kept inputs ([`Action::Fetch`]): each must be exactly the input its receipt for
    /// the step signed. They become the stage's history and its predecessor's outputs, and the
    /// check that waited for them goes on. Inputs other than those signed are a lie: the stage is
    /// struck and its window generated again without it.
    pub fn on_kept(
        &mut self,
        peer: PeerId,
        inputs: Vec<Forward>,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        let Some(fetch) = chain.fetching.take_if(|f| f.peer == peer) else {
            return Vec::new();
        };
        if self.done {
            return Vec::new();
        }
        let layers = self.route[fetch.stage].layers;
        let (from, to) = fetch.steps;
        let signed = inputs.len() as u64 == to - from
            && inputs.iter().zip(from..to).all(|(f, step)| {
                f.session == self.session
                    && f.step == step
                    && f.layers == layers
                    && chain
                        .receipts
                        .get(&(step, layers.0))
                        .is_some_and(|r| r.body.input == f.digest())
            });
        if !signed {
            let reason = format!(
                "the inputs it kept for steps {from}..{to} are not those its receipts signed"
            );
            return self.regenerate(
                fetch.window,
                fetch.stage,
                peer,
                &reason,
                Some(reason.clone()),
                candidates,
            );
        }
        chain.fetched.insert(layers, to);
        let before = self.route[fetch.stage - 1].layers;
        for f in &inputs {
            self.outputs
                .insert((before, f.step), StageResult::Hidden(f.input.clone()));
        }
        self.history.entry(layers).or_default().extend(inputs);
        self.check_hop(fetch.window, fetch.hop, candidates)
    }

    /// Whether the check of `hop` in `window` goes by digests: a chained session whose stage's
    /// numeric class computes the same bits on every peer ([`Driver::compare_exactly`]), unless
    /// this check already had to go through the coordinator.
    pub(super) fn by_digests(&self, window: (u64, u64), hop: usize) -> bool {
        let Some(chain) = self.chain.as_ref() else {
            return false;
        };
        let exact = self
            .classes
            .get(&self.route[hop].peer_id)
            .is_some_and(|class| self.exact.contains(class));
        exact && !chain.via_coordinator.contains(&(window.0, hop))
    }

    /// Ask `verifier` to replay hop `hop`'s steps `from..window.1` (from the epoch's start when
    /// `from` is before it), fetching their inputs from the stage that kept them (the first
    /// stage's tokens are sent along), and answer each step's output digest: compared with the
    /// stage's receipts, they check the window with no activations reaching the coordinator.
    /// `first`: this is the tie-break after that verifier's digests disagreed.
    pub(super) fn digest_check(
        &mut self,
        window: (u64, u64),
        hop: usize,
        verifier: PeerId,
        from: u64,
        first: Option<Box<(PeerId, u64, Vec<Digest>)>>,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let layers = self.route[hop].layers;
        // Every stage's step has the rows the first stage's had; the first stage's inputs are
        // the prompt and tokens the driver sent.
        let steps: Vec<(u64, u32, u32)> = self
            .history
            .get(&self.route[0].layers)
            .into_iter()
            .flatten()
            .filter(|f| f.step >= from && f.step < window.1)
            .map(|f| (f.step, f.pos, f.input.rows() as u32))
            .collect();
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        let inputs: Option<Vec<Digest>> = steps
            .iter()
            .map(|(step, ..)| chain.receipts.get(&(*step, layers.0)).map(|r| r.body.input))
            .collect();
        let (Some(&(first_step, pos, _)), Some(inputs)) = (steps.first(), inputs) else {
            // Not every step's receipt is at hand: compare the activations instead.
            chain.via_coordinator.insert((window.0, hop));
            return self.check_hop(window, hop, candidates);
        };
        let rows: Vec<u32> = steps.iter().map(|(.., rows)| *rows).collect();
        let (forward, source) = if hop == 0 {
            (self.replay_request(layers, from, window.1), None)
        } else {
            let forward = Forward {
                session: check_session(self.session),
                step: window.1 - 1,
                model: self.model,
                layers,
                pos,
                input: StageData::Hidden {
                    rows: 0,
                    bytes: Vec::new(),
                },
                all_positions: true,
                sampling: self.sampling,
            };
            let source = KeptSource {
                peer: self.route[hop].peer_id,
                addrs: Vec::new(),
                session: self.session,
                from: first_step,
                inputs,
                grant: Signature([0; 64]),
            };
            (forward, Some(source))
        };
        let check = Box::new(CheckRequest {
            forward,
            source,
            rows,
        });
        // What is awaited, sized as the replay is (the shell times it, and counts it as work
        // the verifier's stage is doing).
        let sized = Forward {
            input: match &check.forward.input {
                StageData::Tokens(tokens) => StageData::Tokens(tokens.clone()),
                StageData::Hidden { .. } => StageData::Hidden {
                    rows: check.rows.iter().sum(),
                    bytes: Vec::new(),
                },
            },
            ..check.forward.clone()
        };
        self.awaiting = Some(Pending {
            hop,
            peer: verifier,
            forward: sized,
            purpose: Purpose::Digests {
                window,
                first_step,
                check: check.clone(),
                first,
            },
        });
        vec![Action::Check {
            peer: verifier,
            check,
        }]
    }

    /// Whether the answer awaited is a verifier's check by digests ([`Action::Check`]).
    pub fn checking_by_digests(&self) -> bool {
        matches!(
            self.awaiting,
            Some(Pending {
                purpose: Purpose::Digests { .. },
                ..
            })
        )
    }

    /// A verifier's digests ([`Action::Check`]), with its receipt (`signature_ok`: the shell
    /// checked the signature). Each step of the window must have the output digest the stage's
    /// receipt signed; a disagreement goes to a tie-breaker, as replays compared in full do.
    pub fn on_checked(
        &mut self,
        peer: PeerId,
        outputs: Vec<Digest>,
        receipt: Receipt,
        signature_ok: bool,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        let Some(pending) = self
            .awaiting
            .take_if(|p| p.peer == peer && matches!(p.purpose, Purpose::Digests { .. }))
        else {
            return Vec::new();
        };
        let hop = pending.hop;
        let Purpose::Digests {
            window,
            first_step,
            check,
            first,
        } = pending.purpose.clone()
        else {
            return Vec::new();
        };
        let bound = signature_ok
            && receipt.peer_id() == peer
            && receipt.body.subject
                == (Subject::Step {
                    session: check.forward.session,
                    step: check.forward.step,
                    layer_start: check.forward.layers.0,
                })
            && receipt.body.model == self.model
            && receipt.body.input == check.input_digest()
            && receipt.body.output == digest_list(&outputs)
            && outputs.len() == check.rows.len();
        if !bound {
            self.awaiting = Some(pending);
            return self.on_failure(peer, "its check's receipt did not check", candidates);
        }
        self.classes
            .insert(peer, receipt.body.numeric_class.clone());
        self.receipts.push(receipt);
        let stage = self.route[hop].peer_id;
        let same_class = self.same_class(&stage, &peer);
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        if !same_class {
            // Digests of two classes' bits prove nothing: compare the activations.
            chain.via_coordinator.insert((window.0, hop));
            return self.check_hop(window, hop, candidates);
        }
        let layers = self.route[hop].layers;
        let at = |from: u64, digests: &[Digest], step: u64| {
            step.checked_sub(from)
                .and_then(|i| digests.get(i as usize))
                .copied()
        };
        let stage_agrees = (window.0..window.1).all(|step| {
            chain
                .receipts
                .get(&(step, layers.0))
                .is_some_and(|r| Some(r.body.output) == at(first_step, &outputs, step))
        });
        let replays_agree = first.as_ref().is_some_and(|f| {
            let (_, their_first, theirs) = &**f;
            (window.0..window.1).all(|step| {
                let mine = at(first_step, &outputs, step);
                mine.is_some() && mine == at(*their_first, theirs, step)
            })
        });
        self.settle(
            window,
            hop,
            peer,
            first.map(|f| f.0),
            stage_agrees.then_some(0.0),
            replays_agree,
            Tie::Digests(first_step, outputs),
            candidates,
        )
    }

    /// A verifier could not check by digests (the stage did not give it the inputs its
    /// receipts signed, or it could not run them): the check goes through the coordinator,
    /// which fetches the inputs itself and so can tell which of the two is wrong.
    pub fn on_check_refused(&mut self, peer: PeerId, candidates: &[Candidate]) -> Vec<Action> {
        let Some(pending) = self
            .awaiting
            .take_if(|p| p.peer == peer && matches!(p.purpose, Purpose::Digests { .. }))
        else {
            return Vec::new();
        };
        let Some(window) = pending.purpose.window() else {
            return Vec::new();
        };
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        chain.via_coordinator.insert((window.0, pending.hop));
        self.check_hop(window, pending.hop, candidates)
    }

    /// No report came within the time the step was given. The stages hold no request of ours to
    /// time out, so nothing says which one stalled: the session starts its epoch again on the same
    /// route (a lost message costs one restart), and gives up after [`CHAIN_STALLS_MAX`] restarts
    /// in a row with no report between them.
    pub fn on_stall(&mut self, budget_ms: u64) -> Vec<Action> {
        let Some(chain) = self.chain.as_mut() else {
            return Vec::new();
        };
        if self.done {
            return Vec::new();
        }
        chain.stalls += 1;
        if chain.stalls >= CHAIN_STALLS_MAX {
            return vec![self.finish(Some(format!(
                "no stage reported step {} within {budget_ms} ms, {CHAIN_STALLS_MAX} times in a row",
                self.generated.len()
            )))];
        }
        self.chain_restart()
    }

    /// A chained session's stage failed: the layers it served go to a replacement and the session
    /// starts a new epoch.
    pub(super) fn chain_failure(
        &mut self,
        peer: PeerId,
        reason: &str,
        candidates: &[Candidate],
    ) -> Vec<Action> {
        if !self.route.iter().any(|h| h.peer_id == peer) {
            self.failed.insert(peer);
            self.verifiers.retain(|_, (p, _)| *p != peer);
            // A verifier that fails: its window is checked again by another.
            if let Some((window, hop)) = self
                .awaiting
                .as_ref()
                .filter(|p| p.peer == peer)
                .and_then(|p| p.purpose.window().map(|w| (w, p.hop)))
            {
                self.awaiting = None;
                return self.check_hop(window, hop, candidates);
            }
            return Vec::new();
        }
        if let Err(why) = self.replace(peer, reason, candidates, self.generated.len() as u64) {
            return vec![self.finish(Some(why))];
        }
        self.chain_restart()
    }
}
