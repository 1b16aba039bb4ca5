//! What the API says about sharded jobs: the submission it takes, the status it shows and the
//! output lines it renders.

use hearth_protocol::work::UnitOutput;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use hearth_protocol::{UNIT_INPUT_BYTES_MAX, UNIT_ITEMS_MAX};

use crate::limits::{JOB_INPUTS_MAX, REPLICAS_MAX};
use crate::scheduler::{JobState, JobStatus};

/// `POST /v1/jobs`.
#[derive(Clone, Debug, Deserialize)]
pub struct SubmitJob {
    /// `embed` or `generate`.
    pub kind: String,
    /// The model's id (blake3 of its file, hex).
    pub model: hearth_protocol::ModelId,
    /// The inputs: `{"id", "text"}`.
    pub inputs: Vec<JobInput>,
    /// Tokens per prompt (`generate` only).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Replicas per unit; absent for the coordinator's policy.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Inputs per unit; absent to size units by the swarm's scores.
    #[serde(default)]
    pub unit_size: Option<u32>,
    /// The co-op member submitting (from the API key, never from the body): its share.
    #[serde(skip)]
    pub submitter: Option<hearth_protocol::PeerId>,
}

/// One input of a job.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobInput {
    /// The submitter's id for it (any JSON value), echoed in the output.
    pub id: Value,
    /// The text (or prompt).
    pub text: String,
}

/// `GET /v1/jobs/{id}`: a job's progress, with what it was asked.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    /// Its progress.
    #[serde(flatten)]
    pub status: JobStatus,
    /// `embed` or `generate`.
    pub kind: &'static str,
    /// The model.
    pub model: hearth_protocol::ModelId,
    /// Inputs in it.
    pub inputs: usize,
    /// Inputs per unit.
    pub unit_size: u32,
    /// Replicas asked for, if any.
    pub replicas: Option<u32>,
    /// When it was submitted (ms since the Unix epoch).
    pub submitted_ms: u64,
    /// Each unit (with `?units=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<UnitView>>,
}

/// One unit of a [`JobView`].
#[derive(Clone, Debug, Serialize)]
pub struct UnitView {
    /// Its progress.
    #[serde(flatten)]
    pub unit: crate::scheduler::UnitStatus,
    /// Times the journal records it accepted: 1 for a done unit, 0 otherwise.
    pub journal_accepts: u32,
}

/// Why a job is refused at submission (`POST /v1/jobs` answers 400 with this message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Neither `embed` nor `generate`.
    #[error("unknown job kind {0:?} (embed, generate)")]
    Kind(String),
    /// A generate job without a usable `max_tokens`.
    #[error("generate needs max_tokens in 1..={max}", max = hearth_protocol::GENERATE_TOKENS_MAX)]
    MaxTokens,
    /// Nothing to do.
    #[error("the job has no inputs")]
    NoInputs,
    /// Over [`JOB_INPUTS_MAX`].
    #[error("more than {max} inputs in one job", max = JOB_INPUTS_MAX)]
    TooManyInputs,
    /// Over [`REPLICAS_MAX`] (or 0).
    #[error("replicas must be 1..={max}", max = REPLICAS_MAX)]
    Replicas,
    /// Over [`UNIT_ITEMS_MAX`] (or 0).
    #[error("unit_size must be 1..={max}", max = UNIT_ITEMS_MAX)]
    UnitSize,
    /// A unit whose texts are over [`UNIT_INPUT_BYTES_MAX`].
    #[error("unit {0} holds more than {max} bytes of text; use a smaller unit size", max = UNIT_INPUT_BYTES_MAX)]
    UnitTooLarge(u64),
}

/// A job's output or receipts cannot be had (yet).
#[derive(Debug)]
pub enum Unavailable {
    /// No such job.
    NotFound,
    /// Not done yet, or failed/cancelled.
    NotDone(JobState),
    /// The journal failed.
    Journal(String),
}

/// The output lines of one unit: `{"id":…,"embedding":[…]}` or `{"id":…,"token_ids":[…],"text":…}`,
/// `ids` being each input's id as JSON text. Embedding components are printed as the f64 of the
/// f32, which parses back to the same f32 bits on any reader (`hearth verify` relies on it).
pub fn output_lines(ids: &[String], output: &UnitOutput, text: &mut String) {
    use std::fmt::Write;
    match output {
        UnitOutput::Embeddings(vectors) => {
            for (id, embedding) in ids.iter().zip(vectors) {
                let wide: Vec<f64> = embedding.iter().map(|&x| f64::from(x)).collect();
                let numbers = serde_json::to_string(&wide).expect("finite floats encode");
                let _ = writeln!(text, r#"{{"id":{id},"embedding":{numbers}}}"#);
            }
        }
        UnitOutput::Completions(completions) => {
            for (id, c) in ids.iter().zip(completions) {
                let ids = serde_json::to_string(&c.token_ids).expect("integers encode");
                let words = serde_json::to_string(&c.text).expect("strings encode");
                let _ = writeln!(text, r#"{{"id":{id},"token_ids":{ids},"text":{words}}}"#);
            }
        }
    }
}
