//! Pipeline sessions in the simulator, driven as the coordinator's sessions shell drives them: the
//! real planner over the shell's [`candidates`], the real [`Driver`], the shell's step timeouts
//! ([`StepTimeouts`]) and its ledger input for a caught stage ([`stage_fault`]). Stages answer
//! with the simulated model ([`crate::model`]), so a lie anywhere in a route reaches the tokens.

use hearth_core::pipeline::{Action, Candidate, Driver, Verify, candidates, plan, stage_fault};
use hearth_protocol::{PeerId, Receipt, ReceiptBody, Subject};

use crate::model::{self, LAYERS};
use crate::{Behaviour, Event, SIM_LLM_CLASS, Sim, SimSession, llm_model};

impl Sim<'_> {
    /// Peers that may serve stages now (refreshed each tick and after a failure).
    fn stage_candidates(&mut self) -> Vec<Candidate> {
        if self.candidates.is_empty() {
            let (scheduler, now) = (&self.scheduler, self.now);
            self.candidates = candidates(
                &self.registry,
                |p: &PeerId| scheduler.standing(p, now),
                &llm_model(),
            );
        }
        self.candidates.clone()
    }

    pub(crate) fn start_session(&mut self, i: u32) {
        let p = self
            .scenario
            .pipeline
            .clone()
            .expect("sessions come from [pipeline]");
        let candidates = self.stage_candidates();
        let verify = match p.verify.as_str() {
            "sampled" => Verify::Sampled,
            "after" => Verify::After,
            "off" => Verify::Off,
            _ => Verify::Window,
        };
        let mut session = SimSession::new(self.now);
        match plan(&candidates, LAYERS, p.stages as usize, 1) {
            Ok(route) => {
                let prompt: Vec<u32> = (0..p.prompt_tokens).collect();
                let (mut driver, actions) = Driver::new(
                    u64::from(i) + 1,
                    llm_model(),
                    route,
                    prompt,
                    p.tokens as usize,
                    Vec::new(),
                    1 << 20,
                    verify,
                    self.rng.next(),
                );
                // The simulated model gives the same bits however a window is batched.
                driver.compare_exactly([SIM_LLM_CLASS.to_string()]);
                session.driver = Some(driver);
                self.sessions[i as usize] = session;
                self.act(i, actions);
            }
            Err(_) => {
                session.ended = Some(self.now);
                session.failed = true;
                self.sessions[i as usize] = session;
            }
        }
    }

    /// The token an honest route releases at index `k` of session `i`.
    fn expected(&mut self, i: u32, k: usize) -> u32 {
        let prompt = self
            .scenario
            .pipeline
            .as_ref()
            .map_or(1, |p| p.prompt_tokens);
        let session = &mut self.sessions[i as usize];
        while session.expected.len() <= k {
            let n = session.expected.len();
            let input = session.expected.last().copied().unwrap_or(prompt - 1);
            let position = u64::from(prompt) - 1 + n as u64;
            session.expected.push(model::next(input, position));
        }
        session.expected[k]
    }

    fn act(&mut self, i: u32, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { peer, forward } => {
                    let p = self.by_id[&peer];
                    let rows = forward.input.rows() as f64;
                    let share = f64::from(forward.layers.1 - forward.layers.0) / f64::from(LAYERS);
                    let compute = (rows * share * self.peers[p as usize].ms_per_item) as u64;
                    let delay = self.latency() + compute + self.latency();
                    self.next_ticket += 1;
                    let epoch = self.peers[p as usize].epoch;
                    self.calls.insert(self.next_ticket, (i, p, epoch, forward));
                    // The fake model's steps are all short: the fixed part of a budget.
                    self.timeouts.sent(
                        u64::from(i),
                        self.now,
                        hearth_core::limits::STEP_TIMEOUT_MS,
                    );
                    self.at(delay, Event::StageAnswer(self.next_ticket));
                }
                Action::Token(token) => {
                    let k = self.sessions[i as usize].released as usize;
                    let expected = self.expected(i, k);
                    let session = &mut self.sessions[i as usize];
                    if token != expected {
                        session.wrong += 1;
                    }
                    session.released += 1;
                }
                Action::Correction(from) => {
                    let session = &mut self.sessions[i as usize];
                    session.corrections += session.released - from as u64;
                    session.released = from as u64;
                    session.wrong = 0;
                }
                Action::Fault { peer, .. } => {
                    // Where it sat: in the route still, or in the route it was just taken out of
                    // (or, a lying verifier, the layers it replayed).
                    let layers = self.sessions[i as usize].driver.as_ref().and_then(|d| {
                        d.route()
                            .iter()
                            .find(|h| h.peer_id == peer)
                            .map(|h| h.layers)
                            .or_else(|| {
                                d.reroutes
                                    .iter()
                                    .rev()
                                    .find(|r| r.failed_peer == peer)
                                    .map(|r| r.layers)
                            })
                            .or_else(|| {
                                d.checks
                                    .iter()
                                    .rev()
                                    .find(|c| c.verifier == Some(peer))
                                    .map(|c| c.layers)
                            })
                    });
                    if let Some(layers) = layers {
                        self.caught.count(layers, LAYERS);
                    }
                    let out = self
                        .scheduler
                        .handle(self.now, stage_fault(&self.registry, peer));
                    self.apply(out);
                }
                // The simulator's sessions step through the driver; it starts none chained.
                Action::Route { .. }
                | Action::Chain { .. }
                | Action::Fetch { .. }
                | Action::Check { .. } => {
                    unreachable!("no chained session is started here")
                }
                Action::Finished { error, .. } => {
                    self.timeouts.answered(u64::from(i));
                    let session = &mut self.sessions[i as usize];
                    session.ended = Some(self.now);
                    session.failed = error.is_some();
                }
            }
        }
    }

    pub(crate) fn stage_answer(&mut self, ticket: u64) {
        let Some((i, p, epoch, forward)) = self.calls.remove(&ticket) else {
            return;
        };
        let peer = &self.peers[p as usize];
        if peer.crashed || peer.epoch != epoch {
            // A peer that is gone never answers: its step times out, or the registry notices.
            return;
        }
        self.timeouts.answered(u64::from(i));
        let lie = match &self.scenario.population[peer.group].behaviour {
            Behaviour::Honest | Behaviour::BadSignature | Behaviour::Colluder { .. } => false,
            Behaviour::Liar { probability } => self.rng.unit() < *probability,
            Behaviour::Adaptive { after_valid } => peer.valid >= *after_valid,
        };
        // Each liar lies its own way (independent liars do not agree with each other).
        let output = model::stage(&forward, lie.then_some(p + 1));
        // A verifier replays under the session's check id; receipts name the session's steps.
        let session = hearth_core::pipeline::session_of(forward.session);
        let receipt = Receipt::sign(
            &peer.key,
            ReceiptBody {
                subject: Subject::Step {
                    session,
                    step: forward.step,
                    layer_start: forward.layers.0,
                },
                model: forward.model,
                input: forward.digest(),
                output: output.digest(),
                numeric_class: SIM_LLM_CLASS.into(),
            },
        );
        let candidates = self.stage_candidates();
        let Some(driver) = self.sessions[i as usize].driver.as_mut() else {
            return;
        };
        let actions = driver.on_result(output, receipt, &candidates);
        self.act(i, actions);
    }

    /// A stage's peer of session `i` failed: the driver moves on without it.
    pub(crate) fn stage_failed(&mut self, i: u32, peer: PeerId, reason: &str) {
        if self.sessions[i as usize].ended.is_some() {
            return;
        }
        self.candidates.clear();
        let candidates = self.stage_candidates();
        let Some(driver) = self.sessions[i as usize].driver.as_mut() else {
            return;
        };
        let awaited = driver.awaiting() == Some(peer);
        let actions = driver.on_failure(peer, reason, &candidates);
        if awaited {
            self.calls.retain(|_, (s, _, _, _)| *s != i);
        }
        self.act(i, actions);
    }
}
