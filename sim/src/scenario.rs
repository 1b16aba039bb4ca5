//! Scenario files: the workload, the population and the network, in TOML.

use serde::Deserialize;

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, for the report.
    pub name: String,
    /// Seed when `--seed` is not given.
    #[serde(default)]
    pub seed: u64,
    /// What is computed.
    pub workload: Workload,
    /// How messages travel.
    #[serde(default)]
    pub network: Network,
    /// Who computes it: groups of peers.
    pub population: Vec<Group>,
    /// Pipelined generation sessions run beside the sharded jobs.
    #[serde(default)]
    pub pipeline: Option<Pipeline>,
    /// Stop after this much virtual time, done or not.
    #[serde(default = "default_time_limit_s")]
    pub time_limit_s: u64,
}

fn default_time_limit_s() -> u64 {
    24 * 3600
}

/// Sharded jobs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Jobs, submitted at time 0.
    #[serde(default = "one")]
    pub jobs: u32,
    /// Units per job.
    pub units_per_job: u64,
    /// Inputs per unit.
    #[serde(default = "four")]
    pub items_per_unit: u32,
    /// Replicas per unit; absent for adaptive replication.
    #[serde(default)]
    pub replicas: Option<u32>,
}

fn one() -> u32 {
    1
}

fn four() -> u32 {
    4
}

/// Pipelined generation: sessions over the default model's 30 layers, started at time 0.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Sessions.
    pub sessions: u32,
    /// Tokens each generates.
    #[serde(default = "thirty_two")]
    pub tokens: u32,
    /// Prompt tokens.
    #[serde(default = "sixteen")]
    pub prompt_tokens: u32,
    /// Stages per route.
    #[serde(default = "three")]
    pub stages: u32,
    /// How sessions are checked: `window`, `sampled`, `after` or `off`.
    #[serde(default = "window")]
    pub verify: String,
}

fn thirty_two() -> u32 {
    32
}

fn sixteen() -> u32 {
    16
}

fn three() -> u32 {
    3
}

fn window() -> String {
    "window".into()
}

/// The network model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// One-way latency of a message, in ms.
    #[serde(default = "twenty")]
    pub latency_ms: u64,
    /// Uniform extra latency, up to this, in ms.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability that a result's delivery is lost (the node's outbox sends it again).
    #[serde(default)]
    pub loss: f64,
}

fn twenty() -> u64 {
    20
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: 20,
            jitter_ms: 0,
            loss: 0.0,
        }
    }
}

/// A group of alike peers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// How many.
    pub count: u32,
    /// How they behave.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Hardware: `cpu`, `cuda` or `metal` (each its own numeric class).
    #[serde(default = "cpu")]
    pub backend: String,
    /// Milliseconds per input, drawn uniformly from this range per peer.
    #[serde(default = "speed")]
    pub ms_per_item: [f64; 2],
    /// Networks the group's peers are spread over (each a distinct /24).
    #[serde(default)]
    pub networks: Option<u32>,
    /// Churn: mean seconds online before leaving (absent: never leaves).
    #[serde(default)]
    pub mean_online_s: Option<f64>,
    /// Churn: mean seconds offline before coming back.
    #[serde(default = "sixty")]
    pub mean_offline_s: f64,
    /// Crash for good after this many seconds, on average (absent: never).
    #[serde(default)]
    pub mean_crash_s: Option<f64>,
}

fn cpu() -> String {
    "cpu".into()
}

fn speed() -> [f64; 2] {
    [8.0, 12.0]
}

fn sixty() -> f64 {
    60.0
}

/// How a group's peers answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Behaviour {
    /// Always right.
    #[default]
    Honest,
    /// Wrong with this probability, each its own wrong answer.
    Liar {
        /// Probability of lying on a unit.
        probability: f64,
    },
    /// Right until trusted (after this many accepted results), then always wrong.
    Adaptive {
        /// Accepted results before it turns.
        after_valid: u32,
    },
    /// Right answers under receipts whose signature does not verify (the shell's mark).
    BadSignature,
    /// Members of one group return the same wrong answer.
    Colluder {
        /// Lie only when every peer given the unit so far is a colluder of the group.
        only_when_all: bool,
    },
}

/// What is wrong with a scenario file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not TOML of a scenario's shape.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// No peers.
    #[error("the population is empty")]
    NoPopulation,
    /// An unknown verification mode.
    #[error("pipeline verify {0:?}: window, sampled, after or off")]
    Verify(String),
    /// No units.
    #[error("the workload is empty")]
    NoWork,
    /// An unknown backend.
    #[error("backend {0:?}: cpu, cuda or metal")]
    Backend(String),
    /// Not a range of positive speeds.
    #[error("ms_per_item {0:?}: a range of positive numbers")]
    MsPerItem([f64; 2]),
}

impl Scenario {
    /// Parse a scenario from TOML.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Self = toml::from_str(text)?;
        if scenario.population.iter().map(|g| g.count).sum::<u32>() == 0 {
            return Err(ScenarioError::NoPopulation);
        }
        if let Some(p) = &scenario.pipeline
            && !["window", "sampled", "after", "off"].contains(&p.verify.as_str())
        {
            return Err(ScenarioError::Verify(p.verify.clone()));
        }
        if scenario.workload.units_per_job == 0 || scenario.workload.jobs == 0 {
            return Err(ScenarioError::NoWork);
        }
        for g in &scenario.population {
            if !["cpu", "cuda", "metal"].contains(&g.backend.as_str()) {
                return Err(ScenarioError::Backend(g.backend.clone()));
            }
            if !(g.ms_per_item[0] > 0.0 && g.ms_per_item[0] <= g.ms_per_item[1]) {
                return Err(ScenarioError::MsPerItem(g.ms_per_item));
            }
        }
        Ok(scenario)
    }
}
