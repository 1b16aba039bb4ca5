//! What a simulation found, and its readable summary.

use serde::Serialize;

/// What the simulation found. Nothing in it depends on the host.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// Peers simulated.
    pub peers: u64,
    /// Units submitted.
    pub units: u64,
    /// Units accepted.
    pub units_accepted: u64,
    /// Units that failed (no quorum within the cap).
    pub units_failed: u64,
    /// Accepted units whose accepted result is wrong.
    pub wrong_accepted: u64,
    /// Results delivered and judged.
    pub executions: u64,
    /// Executions per accepted unit over the whole run.
    pub executions_per_accepted_unit: f64,
    /// The same over the second half of the units accepted.
    pub executions_per_accepted_unit_second_half: f64,
    /// Virtual time until every job finished (or the time limit).
    pub makespan_s: f64,
    /// Accepted units per virtual second.
    pub throughput_units_per_s: f64,
    /// Peers that lie at least sometimes.
    pub liars: u64,
    /// Of those, quarantined at least once.
    pub liars_quarantined: u64,
    /// Honest peers quarantined (should be 0).
    pub honest_quarantined: u64,
    /// Mean virtual seconds from start to a liar's first quarantine (quarantined liars only).
    pub mean_time_to_quarantine_s: Option<f64>,
    /// The longest of those.
    pub max_time_to_quarantine_s: Option<f64>,
    /// Mean credit of an honest peer.
    pub credit_per_honest_peer: f64,
    /// Whether every job finished within the time limit.
    pub finished: bool,
    /// Events processed.
    pub events: u64,
    /// Pipeline sessions started.
    pub pipeline_sessions: u64,
    /// Of those, finished without error.
    pub pipeline_sessions_done: u64,
    /// Tokens released to clients.
    pub pipeline_tokens: u64,
    /// Released tokens that were wrong (and not corrected).
    pub pipeline_wrong_tokens: u64,
    /// Mean tokens per second of a finished session, over its whole life.
    pub pipeline_tokens_per_s: f64,
    /// Stages replaced mid-session (failures and caught liars).
    pub pipeline_reroutes: u64,
    /// Released tokens later corrected (`verify = "after"`).
    pub pipeline_corrections: u64,
    /// Stages caught returning wrong results, by their place in the route.
    pub pipeline_caught: StagesCaught,
    /// Peers whose reputation the ledger had to forget to make room (0 when the coordinator's
    /// `peers_max` is sized for the swarm).
    pub ledger_evictions: u64,
}

impl Report {
    /// The readable summary.
    pub fn summary(&self) -> String {
        let mut text = self.sharded_summary();
        if self.pipeline_sessions > 0 {
            text.push_str(&format!(
                "\npipeline: {}/{} sessions done, {} tokens ({} wrong, {} corrected), {:.1} tokens/s per session, {} reroutes",
                self.pipeline_sessions_done,
                self.pipeline_sessions,
                self.pipeline_tokens,
                self.pipeline_wrong_tokens,
                self.pipeline_corrections,
                self.pipeline_tokens_per_s,
                self.pipeline_reroutes,
            ));
        }
        text
    }

    fn sharded_summary(&self) -> String {
        format!(
            "{}: {} peers ({} liars), {} units: {} accepted, {} failed, {} wrong accepted\n\
             executions per accepted unit {:.3} (second half {:.3}); makespan {:.1} s, {:.1} units/s\n\
             liars quarantined {}/{} (mean {} s after start); honest quarantined {}; credit per honest peer {:.1}",
            self.scenario,
            self.peers,
            self.liars,
            self.units,
            self.units_accepted,
            self.units_failed,
            self.wrong_accepted,
            self.executions_per_accepted_unit,
            self.executions_per_accepted_unit_second_half,
            self.makespan_s,
            self.throughput_units_per_s,
            self.liars_quarantined,
            self.liars,
            self.mean_time_to_quarantine_s
                .map_or("-".into(), |t| format!("{t:.1}")),
            self.honest_quarantined,
            self.credit_per_honest_peer,
        )
    }
}

/// Stages caught returning wrong results, by where they sat in their route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StagesCaught {
    /// Serving the first layers (from the tokens).
    pub first: u64,
    /// Serving neither end: hidden states in, hidden states out.
    pub middle: u64,
    /// Serving the last layers (the token out).
    pub last: u64,
}

impl StagesCaught {
    /// Count a stage caught serving `layers` of a model of `total` layers.
    pub(crate) fn count(&mut self, layers: (u32, u32), total: u32) {
        if layers.0 == 0 {
            self.first += 1;
        } else if layers.1 >= total {
            self.last += 1;
        } else {
            self.middle += 1;
        }
    }
}
