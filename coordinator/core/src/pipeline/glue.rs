//! What every driver of [`super::Driver`]s does around it, shared by the coordinator's sessions
//! shell and the simulator so both run the same decisions: which peers may serve a route, when a
//! step is late enough to call its stage failed, and what a caught stage costs in the ledger.

use std::collections::BTreeMap;

use hearth_protocol::work::{Forward, StageData};
use hearth_protocol::{KernelFamily, ModelId, PeerId};

use super::Candidate;
use crate::limits::STEP_TIMEOUT_MS;
use crate::registry::Registry;
use crate::scheduler::Input;
use crate::{Fault, Standing};

/// The peers that may serve stages of `model`: online, holding it, able to run LLMs, not
/// quarantined (`standing` says, from the ledger).
pub fn candidates(
    registry: &Registry,
    standing: impl Fn(&PeerId) -> Standing,
    model: &ModelId,
) -> Vec<Candidate> {
    able(registry, standing, model, true)
}

/// The peers that may serve stages of `model` once they fetch their range of it from its holders:
/// online, able to run LLMs, not quarantined, not holding it (those are [`candidates`]), each with
/// the ranges it holds in part.
pub fn fetchers(
    registry: &Registry,
    standing: impl Fn(&PeerId) -> Standing,
    model: &ModelId,
) -> Vec<Candidate> {
    able(registry, standing, model, false)
}

/// Online peers able to run LLMs, not quarantined, that hold `model` whole (`holds`) or not.
fn able(
    registry: &Registry,
    standing: impl Fn(&PeerId) -> Standing,
    model: &ModelId,
    holds: bool,
) -> Vec<Candidate> {
    registry
        .online_capabilities()
        .into_iter()
        .filter(|(peer, capabilities)| {
            capabilities.models.contains(model) == holds
                && capabilities.numeric_class.contains_key(&KernelFamily::Llm)
                && !standing(peer).quarantined
        })
        .map(|(peer, capabilities)| Candidate {
            holds,
            held_layers: if holds {
                Vec::new()
            } else {
                registry.held_layers(peer, model)
            },
            ..Candidate::new(*peer, capabilities.score, capabilities.memory_free_bytes)
        })
        .collect()
}

/// The scheduler's input for a stage a driver caught returning wrong results
/// ([`super::Action::Fault`]): a strike in its LLM class (a window compared by tolerance across
/// classes proves nothing more, so it is never a proof of malice).
pub fn stage_fault(registry: &Registry, peer: PeerId) -> Input {
    llm_fault(registry, peer, Fault::Mismatch)
}

/// The ledger's verdict on `peer` for serving model bytes that do not verify against the model's
/// id (its signed statement and the bytes are the proof): quarantined at once.
pub fn weights_fault(registry: &Registry, peer: PeerId) -> Input {
    llm_fault(registry, peer, Fault::BadWeights)
}

/// A fault of `peer` in its LLM class.
fn llm_fault(registry: &Registry, peer: PeerId, fault: Fault) -> Input {
    let class = registry
        .capabilities(&peer)
        .and_then(|c| c.numeric_class.get(&KernelFamily::Llm).cloned())
        .unwrap_or_else(|| "unknown".into());
    Input::StageVerdict {
        peer,
        class,
        fault: Some(fault),
    }
}

/// The arithmetic of one layer of a model, for the time a stage is given for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    /// Width of the hidden state.
    pub hidden: u64,
    /// Width of the keys and values (key/value heads × head width).
    pub kv: u64,
    /// Width of the feed-forward layer.
    pub ffn: u64,
}

impl LayerShape {
    /// Floating-point operations of one layer's weights for one row.
    fn weight_flops(&self) -> f64 {
        let (h, kv, ffn) = (self.hidden as f64, self.kv as f64, self.ffn as f64);
        2.0 * (2.0 * h * h + 2.0 * h * kv + 3.0 * h * ffn)
    }

    /// Floating-point operations of one layer for one token at position `pos`.
    pub fn token_flops(&self, pos: u32) -> f64 {
        self.weight_flops() + 4.0 * self.hidden as f64 * (f64::from(pos) + 1.0)
    }

    /// Floating-point operations `forward` asks of its stage: per row and layer, 2 for each weight
    /// (query and output `hidden²`, key and value `hidden × kv`, the feed-forward `3 × hidden ×
    /// ffn`) and 4 × `hidden` for each position the row attends to (scores and weighted sum), so a
    /// long prompt's quadratic attention is counted.
    pub fn flops(&self, forward: &Forward) -> f64 {
        let rows = match &forward.input {
            StageData::Tokens(tokens) => tokens.len() as f64,
            StageData::Hidden { rows, .. } => f64::from(*rows),
        };
        let layers = f64::from(forward.layers.1.saturating_sub(forward.layers.0));
        // Row i (from 0) at position pos + i attends to pos + i + 1 positions.
        let attended = rows * f64::from(forward.pos) + rows * (rows + 1.0) / 2.0;
        layers * (rows * self.weight_flops() + 4.0 * self.hidden as f64 * attended)
    }
}

/// A stage is given [`STEP_TIMEOUT_MS`] (the trip, a queue, a slow start) plus this many times
/// what the step's arithmetic takes at the speed its peer measured for itself.
pub const STEP_COMPUTE_SLACK: f64 = 4.0;

/// Speed assumed for a peer that claims less (GFLOP/s), so a peer advertising a speed near zero
/// cannot hold a session for the longest budget on every step.
pub const STEP_GFLOPS_FLOOR: f64 = 1.0;

/// The longest a stage is ever given for one step; the work protocol's request timeout is this.
pub const STEP_BUDGET_MS_MAX: u64 = 600_000;

/// The time a stage with a benchmark of `gflops` (its advert's score) is given for a step of
/// `flops`: [`STEP_TIMEOUT_MS`] plus [`STEP_COMPUTE_SLACK`] × the compute time, at most
/// [`STEP_BUDGET_MS_MAX`]. A decode step gets about the fixed part; a long prefill, what it needs.
pub fn step_budget_ms(flops: f64, gflops: f64) -> u64 {
    let compute_ms = flops.max(0.0) / (gflops.max(STEP_GFLOPS_FLOOR) * 1e6);
    let budget = STEP_TIMEOUT_MS as f64 + STEP_COMPUTE_SLACK * compute_ms;
    (budget as u64).min(STEP_BUDGET_MS_MAX)
}

/// Each session's step in flight and when it is due, so a stage that does not answer within its
/// budget ([`step_budget_ms`]) is called failed.
#[derive(Debug, Default)]
pub struct StepTimeouts {
    /// Per session: (sent at, budget), in ms.
    sent_ms: BTreeMap<u64, (u64, u64)>,
}

impl StepTimeouts {
    /// Session `session` sent a step at `now_ms` with `budget_ms` to answer it (replacing any
    /// earlier one).
    pub fn sent(&mut self, session: u64, now_ms: u64, budget_ms: u64) {
        self.sent_ms.insert(session, (now_ms, budget_ms));
    }

    /// Session `session`'s step was answered, or the session ended.
    pub fn answered(&mut self, session: u64) {
        self.sent_ms.remove(&session);
    }

    /// The sessions whose step has waited longer than its budget at `now_ms`, in order, each with
    /// that budget; each is forgotten until it sends again.
    pub fn late(&mut self, now_ms: u64) -> Vec<(u64, u64)> {
        let late: Vec<(u64, u64)> = self
            .sent_ms
            .iter()
            .filter(|(_, (sent, budget))| now_ms.saturating_sub(*sent) > *budget)
            .map(|(session, (_, budget))| (*session, *budget))
            .collect();
        for (session, _) in &late {
            self.sent_ms.remove(session);
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_late_only_past_its_budget_and_once() {
        let mut timeouts = StepTimeouts::default();
        timeouts.sent(1, 1_000, STEP_TIMEOUT_MS);
        timeouts.sent(2, 2_000, STEP_TIMEOUT_MS);
        timeouts.sent(3, 2_000, STEP_TIMEOUT_MS);
        timeouts.sent(4, 1_000, 100_000);
        timeouts.answered(3);
        assert!(timeouts.late(1_000 + STEP_TIMEOUT_MS).is_empty());
        assert_eq!(
            timeouts.late(1_001 + STEP_TIMEOUT_MS),
            vec![(1, STEP_TIMEOUT_MS)]
        );
        assert!(timeouts.late(1_001 + STEP_TIMEOUT_MS).is_empty(), "once");
        // A new step restarts the clock.
        timeouts.sent(2, 3_000, STEP_TIMEOUT_MS);
        assert!(timeouts.late(2_001 + STEP_TIMEOUT_MS).is_empty());
        assert_eq!(
            timeouts.late(3_001 + STEP_TIMEOUT_MS),
            vec![(2, STEP_TIMEOUT_MS)]
        );
        // A step given longer (a long prefill) is not late at the fixed timeout.
        assert!(timeouts.late(100_000).is_empty());
        assert_eq!(timeouts.late(101_001), vec![(4, 100_000)]);
    }

    fn forward(input: StageData, pos: u32, layers: (u32, u32)) -> Forward {
        Forward {
            session: 1,
            step: 0,
            model: ModelId::of_bytes(b"m"),
            layers,
            pos,
            input,
            all_positions: false,
            sampling: None,
        }
    }

    #[test]
    fn a_steps_arithmetic_counts_weights_and_attention() {
        let shape = LayerShape {
            hidden: 2,
            kv: 1,
            ffn: 3,
        };
        // Per row: 2 × (q, o: 2 × 4; k, v: 2 × 2; gate, up, down: 3 × 6) = 60. Two rows at
        // positions 3 and 4 attend to 4 + 5 = 9 positions, 4 × 2 each: 72. One layer.
        let two_rows = forward(StageData::Tokens(vec![7, 8]), 3, (5, 6));
        assert_eq!(shape.flops(&two_rows), 192.0);
        // Hidden rows count the same; three layers, three times.
        let hidden = forward(StageData::hidden(2, &[0.0; 4]), 3, (0, 3));
        assert_eq!(shape.flops(&hidden), 576.0);
    }

    #[test]
    fn a_long_prefill_is_given_the_time_its_arithmetic_takes() {
        // A decode step on a 20 GFLOP/s peer: about the fixed part.
        assert_eq!(step_budget_ms(1e8, 20.0), STEP_TIMEOUT_MS + 20);
        // 1 TFLOP of prefill at 20 GFLOP/s is 50 s; the stage gets four times that more.
        assert_eq!(step_budget_ms(1e12, 20.0), STEP_TIMEOUT_MS + 200_000);
        // A peer claiming no speed is held to the floor; nothing waits past the ceiling.
        assert_eq!(step_budget_ms(1e9, 0.0), STEP_TIMEOUT_MS + 4_000);
        assert_eq!(step_budget_ms(1e15, 20.0), STEP_BUDGET_MS_MAX);
    }
}
