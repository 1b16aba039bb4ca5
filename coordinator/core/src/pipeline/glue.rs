//! What every driver of [`super::Driver`]s does around it, shared by the coordinator's sessions
//! shell and the simulator so both run the same decisions: which peers may serve a route, when a
//! step is late enough to call its stage failed, and what a caught stage costs in the ledger.

use std::collections::BTreeMap;

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
    registry
        .online_capabilities()
        .into_iter()
        .filter(|(peer, capabilities)| {
            capabilities.models.contains(model)
                && capabilities.numeric_class.contains_key(&KernelFamily::Llm)
                && !standing(peer).quarantined
        })
        .map(|(peer, capabilities)| Candidate {
            peer: *peer,
            score: capabilities.score,
            memory_free_bytes: capabilities.memory_free_bytes,
        })
        .collect()
}

/// The scheduler's input for a stage a driver caught returning wrong results
/// ([`super::Action::Fault`]): a strike in its LLM class (a window compared by tolerance across
/// classes proves nothing more, so it is never a proof of malice).
pub fn stage_fault(registry: &Registry, peer: PeerId) -> Input {
    let class = registry
        .capabilities(&peer)
        .and_then(|c| c.numeric_class.get(&KernelFamily::Llm).cloned())
        .unwrap_or_else(|| "unknown".into());
    Input::StageVerdict {
        peer,
        class,
        fault: Some(Fault::Mismatch),
    }
}

/// When each session's step in flight went out, so a stage that does not answer within
/// [`STEP_TIMEOUT_MS`] is called failed.
#[derive(Debug, Default)]
pub struct StepTimeouts {
    sent_ms: BTreeMap<u64, u64>,
}

impl StepTimeouts {
    /// Session `session` sent a step at `now_ms` (replacing any earlier one).
    pub fn sent(&mut self, session: u64, now_ms: u64) {
        self.sent_ms.insert(session, now_ms);
    }

    /// Session `session`'s step was answered, or the session ended.
    pub fn answered(&mut self, session: u64) {
        self.sent_ms.remove(&session);
    }

    /// The sessions whose step has waited longer than [`STEP_TIMEOUT_MS`] at `now_ms`, in order;
    /// each is forgotten until it sends again.
    pub fn late(&mut self, now_ms: u64) -> Vec<u64> {
        let late: Vec<u64> = self
            .sent_ms
            .iter()
            .filter(|(_, sent)| now_ms.saturating_sub(**sent) > STEP_TIMEOUT_MS)
            .map(|(session, _)| *session)
            .collect();
        for session in &late {
            self.sent_ms.remove(session);
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_late_only_past_the_timeout_and_once() {
        let mut timeouts = StepTimeouts::default();
        timeouts.sent(1, 1_000);
        timeouts.sent(2, 2_000);
        timeouts.sent(3, 2_000);
        timeouts.answered(3);
        assert!(timeouts.late(1_000 + STEP_TIMEOUT_MS).is_empty());
        assert_eq!(timeouts.late(1_001 + STEP_TIMEOUT_MS), vec![1]);
        assert!(timeouts.late(1_001 + STEP_TIMEOUT_MS).is_empty(), "once");
        // A new step restarts the clock.
        timeouts.sent(2, 3_000);
        assert!(timeouts.late(2_001 + STEP_TIMEOUT_MS).is_empty());
        assert_eq!(timeouts.late(3_001 + STEP_TIMEOUT_MS), vec![2]);
    }
}
