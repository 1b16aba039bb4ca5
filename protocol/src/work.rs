//! The work protocol: how the units of a sharded job travel between the coordinator and its nodes.
//!
//! Nodes pull, as BOINC clients do: a node asks for work ([`WorkRequest::Fetch`]); the coordinator
//! answers at once with assignments or holds the request until it has some (a long poll, answered
//! empty after a while). The node computes, keeps the result in its outbox, and delivers it
//! ([`WorkRequest::Deliver`]) with a signed [`Receipt`]; the coordinator answers [`WorkResponse::Ack`]
//! only once the result is committed to its journal, and the node then forgets it.
//!
//! ## Canonical encodings
//! A receipt binds digests, not bytes; the bytes digested are:
//! - **input**: blake3 in derive-key mode, context `hearth 2026 unit input v1`, over the postcard
//!   encoding of `(job: u64, unit: u64, model: ModelId, task: Task)`. Binding job and unit means a
//!   receipt for one unit can never pass as another's.
//! - **output**: blake3 in derive-key mode, context `hearth 2026 unit output v1`, over
//!   [`UnitOutput::canonical`]: a kind byte (`0` embeddings, `1` completions), the item count as
//!   `u32` little-endian, then per item, in input order: for an embedding the dimension (`u32` LE)
//!   and each `f32`'s bits (LE); for a completion the token count (`u32` LE), each token id (`u32`
//!   LE), the text's byte length (`u32` LE) and its UTF-8 bytes. Anyone holding the output lines can
//!   recompute it (`hearth verify`).

use serde::{Deserialize, Serialize};

use crate::{
    Digest, Error, GENERATE_TOKENS_MAX, KernelFamily, ModelId, PeerId, Receipt, Result, Signature,
    UNIT_INPUT_BYTES_MAX, UNIT_ITEMS_MAX,
};

/// libp2p protocol name of the work protocol.
pub const WORK_PROTOCOL: &str = "/hearth/work/2";

/// Domain of a unit's input digest.
const INPUT_CONTEXT: &str = "hearth 2026 unit input v1";
/// Domain of a unit's output digest.
const OUTPUT_CONTEXT: &str = "hearth 2026 unit output v1";

/// Widest embedding a result may carry (MiniLM's is 384).
pub const EMBEDDING_DIMS_MAX: usize = 8192;

/// What a unit asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Embed each text.
    Embed {
        /// The texts, in order.
        texts: Vec<String>,
    },
    /// Complete each prompt greedily.
    Generate {
        /// The prompts, in order.
        prompts: Vec<String>,
        /// Most tokens to generate per prompt.
        max_tokens: u32,
    },
}

impl Task {
    /// The kernel family that runs it (and whose numeric class its results carry).
    pub fn family(&self) -> KernelFamily {
        match self {
            Self::Embed { .. } => KernelFamily::Embed,
            Self::Generate { .. } => KernelFamily::Llm,
        }
    }

    /// Inputs in the unit.
    pub fn items(&self) -> usize {
        match self {
            Self::Embed { texts } => texts.len(),
            Self::Generate { prompts, .. } => prompts.len(),
        }
    }

    /// Bytes of input text in the unit.
    pub fn input_bytes(&self) -> usize {
        match self {
            Self::Embed { texts: t } | Self::Generate { prompts: t, .. } => {
                t.iter().map(String::len).sum()
            }
        }
    }

    /// Check the limits the schema cannot express.
    pub fn validate(&self) -> Result<()> {
        let items = self.items();
        if items == 0 || items > UNIT_ITEMS_MAX {
            return Err(Error::Limit(format!(
                "a unit holds 1..={UNIT_ITEMS_MAX} inputs, not {items}"
            )));
        }
        if self.input_bytes() > UNIT_INPUT_BYTES_MAX {
            return Err(Error::Limit(format!(
                "a unit's inputs exceed {UNIT_INPUT_BYTES_MAX} bytes"
            )));
        }
        if let Self::Generate { max_tokens, .. } = self
            && (*max_tokens == 0 || *max_tokens > GENERATE_TOKENS_MAX)
        {
            return Err(Error::Limit(format!(
                "max_tokens must be 1..={GENERATE_TOKENS_MAX}, not {max_tokens}"
            )));
        }
        Ok(())
    }
}

/// The input digest a receipt for `(job, unit)` must carry (see the module docs).
pub fn input_digest(job: u64, unit: u64, model: &ModelId, task: &Task) -> Digest {
    let bytes = postcard::to_stdvec(&(job, unit, model, task)).expect("a task always encodes");
    Digest::of(INPUT_CONTEXT, &bytes)
}

/// One unit given to one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: u64,
    /// The unit within the job.
    pub unit: u64,
    /// The model to run, by the blake3 of its file.
    pub model: ModelId,
    /// What to compute.
    pub task: Task,
    /// Milliseconds the node has, from now, before the unit is given to someone else.
    pub deadline_ms: u64,
}

/// One completion of a batch-generate unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated token ids (the prompt's not included).
    pub token_ids: Vec<u32>,
    /// Their decoded text.
    pub text: String,
}

/// A unit's result, one item per input, in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnitOutput {
    /// One vector per text.
    Embeddings(Vec<Vec<f32>>),
    /// One completion per prompt.
    Completions(Vec<Completion>),
}

impl UnitOutput {
    /// Items in the output.
    pub fn items(&self) -> usize {
        match self {
            Self::Embeddings(v) => v.len(),
            Self::Completions(c) => c.len(),
        }
    }

    /// Whether this output answers `task` in shape: the right kind, one item per input.
    pub fn fits(&self, task: &Task) -> bool {
        let kind = matches!(
            (self, task),
            (Self::Embeddings(_), Task::Embed { .. })
                | (Self::Completions(_), Task::Generate { .. })
        );
        kind && self.items() == task.items()
            && match self {
                Self::Embeddings(v) => v.iter().all(|e| e.len() <= EMBEDDING_DIMS_MAX),
                Self::Completions(_) => true,
            }
    }

    /// The canonical bytes its digest covers (see the module docs).
    pub fn canonical(&self) -> Vec<u8> {
        let len = |n: usize| {
            u32::try_from(n)
                .expect("bounded by the frame limit")
                .to_le_bytes()
        };
        let mut out = Vec::new();
        match self {
            Self::Embeddings(vectors) => {
                out.push(0);
                out.extend(len(vectors.len()));
                for v in vectors {
                    out.extend(len(v.len()));
                    for x in v {
                        out.extend(x.to_bits().to_le_bytes());
                    }
                }
            }
            Self::Completions(completions) => {
                out.push(1);
                out.extend(len(completions.len()));
                for c in completions {
                    out.extend(len(c.token_ids.len()));
                    for id in &c.token_ids {
                        out.extend(id.to_le_bytes());
                    }
                    out.extend(len(c.text.len()));
                    out.extend(c.text.as_bytes());
                }
            }
        }
        out
    }

    /// The output digest a receipt for it must carry.
    pub fn digest(&self) -> Digest {
        digest_canonical(&self.canonical())
    }

    /// Parse [`UnitOutput::canonical`] bytes, refusing anything over the limits or left over.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        let kind = r.take(1)?[0];
        let items = r.len(UNIT_ITEMS_MAX)?;
        let output = match kind {
            0 => {
                let mut vectors = Vec::with_capacity(items);
                for _ in 0..items {
                    let dims = r.len(EMBEDDING_DIMS_MAX)?;
                    let raw = r.take(dims * 4)?;
                    vectors.push(
                        raw.chunks_exact(4)
                            .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                            .collect(),
                    );
                }
                Self::Embeddings(vectors)
            }
            1 => {
                let mut completions = Vec::with_capacity(items);
                for _ in 0..items {
                    let n = r.len(GENERATE_TOKENS_MAX as usize)?;
                    let raw = r.take(n * 4)?;
                    let token_ids = raw
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let len = r.len(crate::WORK_FRAME_BYTES_MAX)?;
                    let text = std::str::from_utf8(r.take(len)?)
                        .map_err(|e| Error::Malformed(format!("completion text: {e}")))?
                        .to_string();
                    completions.push(Completion { token_ids, text });
                }
                Self::Completions(completions)
            }
            other => return Err(Error::Malformed(format!("unknown output kind {other}"))),
        };
        if !r.0.is_empty() {
            return Err(Error::Malformed(format!("{} trailing bytes", r.0.len())));
        }
        Ok(output)
    }
}

/// The output digest of canonical output bytes (see the module docs).
pub fn digest_canonical(bytes: &[u8]) -> Digest {
    Digest::of(OUTPUT_CONTEXT, bytes)
}

/// A cursor over canonical bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(Error::Truncated {
                got: self.0.len(),
                need: n,
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A `u32` count, at most `max`.
    fn len(&mut self, max: usize) -> Result<usize> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if n > max {
            return Err(Error::Limit(format!("count {n} over {max}")));
        }
        Ok(n)
    }
}

/// Little-endian f32s from bytes (a trailing partial float is ignored; callers check lengths).
pub fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Domain of a pipeline step's input digest.
const STEP_INPUT_CONTEXT: &str = "hearth 2026 step input v2";
/// Domain of a pipeline step's output digest.
const STEP_OUTPUT_CONTEXT: &str = "hearth 2026 step output v1";

/// Most candidates a last stage returns with its chosen token.
pub const TOP_LOGITS_MAX: usize = 16;

/// What flows into a pipeline stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageData {
    /// Token ids, for the first stage.
    Tokens(Vec<u32>),
    /// Hidden states: `rows` rows of the model's width, f32 little-endian, row-major.
    Hidden {
        /// Rows (positions).
        rows: u32,
        /// The floats' bytes.
        bytes: Vec<u8>,
    },
}

impl StageData {
    /// Hidden states from `rows` rows of floats (row-major).
    pub fn hidden(rows: u32, floats: &[f32]) -> Self {
        Self::Hidden {
            rows,
            bytes: floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The floats of hidden states (empty for tokens).
    pub fn floats(&self) -> Vec<f32> {
        match self {
            Self::Tokens(_) => Vec::new(),
            Self::Hidden { bytes, .. } => floats(bytes),
        }
    }

    /// Its digest: the same as [`StageResult::digest`] of `StageResult::Hidden(self)`, so the
    /// hidden states a stage signed as its output are, digest for digest, its successor's input.
    pub fn digest(&self) -> Digest {
        #[derive(Serialize)]
        enum AsResult<'a> {
            Hidden(&'a StageData),
        }
        Digest::of(
            STEP_OUTPUT_CONTEXT,
            &postcard::to_stdvec(&AsResult::Hidden(self)).expect("stage data always encodes"),
        )
    }

    /// Positions it covers.
    pub fn rows(&self) -> usize {
        match self {
            Self::Tokens(ids) => ids.len(),
            Self::Hidden { rows, .. } => *rows as usize,
        }
    }
}

/// What a pipeline stage returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageResult {
    /// Hidden states for the next stage.
    Hidden(StageData),
    /// The last stage: the greedy next token (the lowest id among equal maxima) and the highest
    /// logits of the last position, best first.
    Next {
        /// The chosen token.
        token: u32,
        /// `(token, logit)` pairs, best first, at most [`TOP_LOGITS_MAX`].
        top: Vec<(u32, f32)>,
    },
    /// The last stage, for every position of the input: `(token, top)` as in [`StageResult::Next`].
    NextEach(Vec<(u32, Vec<(u32, f32)>)>),
}

impl StageResult {
    /// The digest a step receipt for it carries: blake3 (context `hearth 2026 step output v1`) of
    /// its postcard encoding.
    pub fn digest(&self) -> Digest {
        Digest::of(
            STEP_OUTPUT_CONTEXT,
            &postcard::to_stdvec(self).expect("a stage result always encodes"),
        )
    }
}

/// One step of a pipeline session at one stage: run `input`, at positions `pos..`, through layers
/// `layers.0..layers.1` of `model`, in the stage's cache for `session`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    /// The session.
    pub session: u64,
    /// The step (0 is the prompt's prefill, then one per generated token).
    pub step: u64,
    /// The model, by file digest.
    pub model: ModelId,
    /// The layer range `[start, end)`.
    pub layers: (u32, u32),
    /// Position of the input's first row (0 starts the session afresh).
    pub pos: u32,
    /// The input.
    pub input: StageData,
    /// The last stage answers for every position ([`StageResult::NextEach`]), not just the last:
    /// what a verifier replaying a window needs.
    pub all_positions: bool,
    /// How the last stage picks tokens; greedy when absent.
    pub sampling: Option<Sampling>,
}

impl Sampling {
    /// A finite temperature of at least 0 and a `top_p` within (0, 1].
    pub fn validate(&self) -> Result<()> {
        let valid = self.temperature.is_finite()
            && self.temperature >= 0.0
            && self.top_p > 0.0
            && self.top_p <= 1.0;
        if !valid {
            return Err(Error::Limit(format!(
                "sampling needs a finite temperature ≥ 0 and top_p in (0, 1], not {} and {}",
                self.temperature, self.top_p
            )));
        }
        Ok(())
    }
}

/// Seeded sampling: the token after position `p` is drawn with a generator keyed by `(seed, p)`, so a
/// replay of any window, on any peer with the same kernels, draws the same tokens. A `temperature` of
/// 0 is greedy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Logits are divided by it before the softmax; 0 picks the largest.
    pub temperature: f32,
    /// Nucleus: only the most likely tokens whose probabilities add up to this are drawn from.
    pub top_p: f32,
    /// The generator's seed.
    pub seed: u64,
}

impl Forward {
    /// The input digest a step receipt for it carries: blake3 (context `hearth 2026 step input v2`)
    /// of the postcard encoding of the request with its input replaced by the input's digest
    /// ([`StageData::digest`]), which binds session, step, model, layers, position, input and
    /// sampling. Digesting the input's digest, not its bytes, lets a coordinator that never sees
    /// activations check a chain of stages: a stage's input digest follows from its predecessor's
    /// signed output digest ([`Forward::digest_with`]).
    pub fn digest(&self) -> Digest {
        self.digest_with(self.input.digest())
    }

    /// [`Forward::digest`] of this request with an input whose [`StageData::digest`] is `input`.
    pub fn digest_with(&self, input: Digest) -> Digest {
        #[derive(Serialize)]
        struct Head<'a> {
            session: u64,
            step: u64,
            model: &'a ModelId,
            layers: (u32, u32),
            pos: u32,
            input: Digest,
            all_positions: bool,
            sampling: &'a Option<Sampling>,
        }
        let head = Head {
            session: self.session,
            step: self.step,
            model: &self.model,
            layers: self.layers,
            pos: self.pos,
            input,
            all_positions: self.all_positions,
            sampling: &self.sampling,
        };
        Digest::of(
            STEP_INPUT_CONTEXT,
            &postcard::to_stdvec(&head).expect("a step's head always encodes"),
        )
    }
}

/// Most stages a chained route may have.
pub const CHAIN_HOPS_MAX: usize = 64;

/// A session's route, which the coordinator gives each of its stages before the first step of an
/// epoch: who serves which layers, how the last stage picks tokens, and when it stops. With it,
/// stages hand each step straight to the next stage ([`ChainStep`]) and the last stage hands the
/// token back to the first; the coordinator is sent only the token and the step's receipts
/// ([`ChainReport`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainRoute {
    /// The session.
    pub session: u64,
    /// Bumped at every restart of the session (a reroute); a stage refuses steps of other epochs.
    pub epoch: u32,
    /// The model, by file digest.
    pub model: ModelId,
    /// Each stage's peer and layers `[start, end)`, in order.
    pub hops: Vec<(crate::PeerId, (u32, u32))>,
    /// How the last stage picks tokens; greedy when absent.
    pub sampling: Option<Sampling>,
    /// The last stage starts no step after any of these tokens (the model's ends of generation):
    /// at most [`CHAIN_ENDS_MAX`].
    pub ends: Vec<u32>,
    /// No step at or past this one is started.
    pub steps_end: u64,
    /// No position at or past this one is computed (the model's context).
    pub context: u32,
    /// Stages keep the inputs they get (for the coordinator's checks to fetch with
    /// [`WorkRequest::Kept`]).
    pub keep_inputs: bool,
    /// Where each stage listens (multiaddrs, as the coordinator's identify learnt them), so each
    /// can dial the next at once: at most [`CHAIN_ADDRS_MAX`] a stage.
    pub addrs: Vec<Vec<String>>,
}

/// Most end-of-generation tokens a route names; vocabularies have a handful.
pub const CHAIN_ENDS_MAX: usize = 32;

/// Addresses a route gives for each stage, and the longest one.
pub const CHAIN_ADDRS_MAX: usize = 8;
/// The longest address a route carries, in bytes.
pub const CHAIN_ADDR_BYTES_MAX: usize = 256;

impl ChainRoute {
    /// Whether the last stage, having drawn `token` at `step` with the next position `next_pos`,
    /// starts another step.
    pub fn goes_on(&self, step: u64, token: u32, next_pos: u32) -> bool {
        !self.ends.contains(&token) && step + 1 < self.steps_end && next_pos + 1 < self.context
    }
}

/// One step handed along a chained route: from the coordinator to the first stage (a session's
/// first step, or a restart), from each stage to the next, and from the last stage to the first
/// (the next step, its input the token just drawn).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainStep {
    /// The route's epoch.
    pub epoch: u32,
    /// The step at the receiving stage.
    pub forward: Forward,
    /// The receipts of this step's earlier stages, in route order: the last one signs, as its
    /// output, exactly the input the receiver gets.
    pub receipts: Vec<Receipt>,
    /// From the last stage to the first: the previous step's output (its token is this step's
    /// input) and the last stage's receipt for it.
    pub previous: Option<(StageResult, Receipt)>,
    /// Each earlier stage's round trip to the stage it handed this step to, as its ping last
    /// measured it, in ms (informational: what the route's hops cost).
    pub rtts: Vec<Option<f32>>,
}

/// Whether `receipt` is `peer`'s signed statement that it ran `layer_start`'s stage of `model` at
/// `(session, step)`, whatever it output.
pub fn step_receipt_signed(
    receipt: &Receipt,
    peer: &crate::PeerId,
    session: u64,
    step: u64,
    layer_start: u32,
    model: &ModelId,
) -> bool {
    receipt.peer_id() == *peer
        && receipt.body.subject
            == (crate::Subject::Step {
                session,
                step,
                layer_start,
            })
        && receipt.body.model == *model
        && receipt.verify().is_ok()
}

/// [`step_receipt_signed`], and the output it signed has digest `output`.
pub fn step_receipt_ok(
    receipt: &Receipt,
    peer: &crate::PeerId,
    session: u64,
    step: u64,
    layer_start: u32,
    model: &ModelId,
    output: &Digest,
) -> bool {
    receipt.body.output == *output
        && step_receipt_signed(receipt, peer, session, step, layer_start, model)
}

/// The last stage's account of a step, to the coordinator: the token drawn and every stage's
/// receipt, in route order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainReport {
    /// The session.
    pub session: u64,
    /// The route's epoch.
    pub epoch: u32,
    /// The step.
    pub step: u64,
    /// The last stage's output ([`StageResult::Next`]).
    pub output: StageResult,
    /// Each stage's receipt for the step, in route order.
    pub receipts: Vec<Receipt>,
    /// Each stage's round trip to the next (the last stage's: to the first), as its ping last
    /// measured it, in ms.
    pub rtts: Vec<Option<f32>>,
}

/// A node's request on the work protocol.
// A delivery is the big variant by design; each request is decoded once and moved, never stored.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkRequest {
    /// Give me up to `slots` units (held until there is work, or answered empty after a while).
    Fetch {
        /// Units the node can take now.
        slots: u32,
    },
    /// Here is a result for the unit `(job, unit)` this node was assigned.
    Deliver {
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// The signed statement of what was computed.
        receipt: Receipt,
        /// The result in its canonical encoding ([`UnitOutput::canonical`]): the receiver checks
        /// the receipt's signature and this digest before it parses a byte of it.
        output: Vec<u8>,
    },
    /// Run one pipeline step (from the coordinator to a stage node).
    Forward(Forward),
    /// The session is over: free its caches (from the coordinator to a stage node).
    EndSession {
        /// The session.
        session: u64,
    },
    /// A session's route for this epoch (from the coordinator to each stage, before the epoch's
    /// first step).
    Route(ChainRoute),
    /// A step along a chained route (to a stage, from its predecessor or the coordinator).
    Chain(Box<ChainStep>),
    /// A step's token and receipts (from the last stage to the coordinator).
    Report(ChainReport),
    /// A chained step could not go on: `peer` (the sender itself, or the stage it handed the
    /// step to) failed or refused it (from a stage to the coordinator).
    Broken {
        /// The session.
        session: u64,
        /// The route's epoch.
        epoch: u32,
        /// The step.
        step: u64,
        /// The stage that failed.
        peer: crate::PeerId,
        /// What happened.
        reason: String,
    },
    /// The inputs a stage kept of a chained session (steps `from..to` at the stage starting at
    /// `layer_start`), for a check: from the coordinator, or from the verifier it sent a
    /// [`CheckRequest`] with `grant`, the coordinator's signature of [`kept_grant`] for that
    /// verifier.
    Kept {
        /// The session.
        session: u64,
        /// The stage's first layer.
        layer_start: u32,
        /// First step.
        from: u64,
        /// One past the last step.
        to: u64,
        /// The session's coordinator's leave for the asking peer (none when the coordinator asks).
        grant: Option<Signature>,
    },
    /// Bytes `start..end` of a model file, as a verified range (from any peer to one that holds
    /// the model): at most [`WEIGHTS_CHUNK_BYTES_MAX`], cut at the file's end (so a fetcher that
    /// does not know the size yet asks for the first chunk); answered [`WorkResponse::Weights`].
    Weights {
        /// The model (the blake3 of its file, the root every block is checked against).
        model: ModelId,
        /// First byte.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// Check a stage's steps of a chained session (from the coordinator to a verifier): replay
    /// them, fetching their inputs from the stage that kept them, and answer
    /// [`WorkResponse::Checked`] with each step's output digest.
    Check(Box<CheckRequest>),
    /// I cannot run this unit (model missing, input the kernels refuse); give it to someone else.
    Refuse {
        /// The job.
        job: u64,
        /// The unit.
        unit: u64,
        /// Why, for the coordinator's log.
        reason: String,
    },
    /// Hold what a stage of these layers reads (from the coordinator to a node about to serve
    /// them): a node that lacks the model fetches the header and exactly those layers' bytes from
    /// the holders named, every block verified, and answers [`WorkResponse::Prepared`] once it
    /// holds them (at once when it holds them already).
    Prepare(Box<Prepare>),
    /// A holder served bytes that do not verify (from a node that fetched them to its
    /// coordinator): the holder's own signed statement, checkable by anyone.
    BadWeights(Box<WeightsEvidence>),
}

/// What a stage's node is to hold before a session starts ([`WorkRequest::Prepare`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    /// The model (the root every fetched block is checked against).
    pub model: ModelId,
    /// The stage's layers, `[start, end)`.
    pub layers: (u32, u32),
    /// Peers that hold the model, and where they listen: at most [`PREPARE_HOLDERS_MAX`], each
    /// with at most [`CHAIN_ADDRS_MAX`] addresses.
    pub holders: Vec<(PeerId, Vec<String>)>,
}

/// Most holders a [`Prepare`] names.
pub const PREPARE_HOLDERS_MAX: usize = 16;

/// A holder's signed answer for a range of a model, that the fetcher found does not verify
/// ([`WorkRequest::BadWeights`], and `POST /v1/evidence/weights` in base64).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsEvidence {
    /// The holder.
    pub peer: PeerId,
    /// The model.
    pub model: ModelId,
    /// The file's size, as the holder said.
    pub size: u64,
    /// First byte asked.
    pub start: u64,
    /// One past the last byte served.
    pub end: u64,
    /// What it sent.
    pub encoded: Vec<u8>,
    /// Its signature of [`weights_statement`] for it.
    pub signature: Signature,
}

impl WeightsEvidence {
    /// Whether `peer` signed this statement (else anyone could have made it up).
    pub fn is_signed(&self) -> bool {
        let statement =
            weights_statement(&self.model, self.size, self.start, self.end, &self.encoded);
        self.peer
            .public_key()
            .verify(&statement, &self.signature)
            .is_ok()
    }
}

/// The coordinator's answer.
// As with requests: each answer is decoded once and moved, never stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkResponse {
    /// Units to run (empty: none now, ask again).
    Assign(Vec<Assignment>),
    /// The delivery or refusal is committed; forget it.
    Ack,
    /// The delivery is refused for good (the unit is unknown or no longer yours); forget it too.
    Rejected(String),
    /// The inputs a stage kept ([`WorkRequest::Kept`]), in step order: each exactly the step its
    /// receipt signed as input.
    Kept(Vec<Forward>),
    /// A pipeline step's result, with the stage's signed receipt (subject: the step).
    Forwarded {
        /// The result.
        output: StageResult,
        /// Binds session, step, layer start, model, input digest and output digest.
        receipt: Receipt,
    },
    /// A verified range of a model file ([`WorkRequest::Weights`]): the blocks covering it with
    /// the hashes from the model's id down to them, and the holder's signature of
    /// [`weights_statement`] for exactly these bytes, so a range that does not verify is evidence
    /// anyone can check against the holder.
    Weights {
        /// The file's size, as the holder says (a wrong one makes every block fail to verify:
        /// the tree's shape, and so its root, depends on it).
        size: u64,
        /// One past the last byte served (the request's end, or the file's).
        end: u64,
        /// The verified encoding (bao-tree, 16 KiB blocks).
        encoded: Vec<u8>,
        /// The holder's signature of [`weights_statement`].
        signature: Signature,
    },
    /// A node holds what a [`WorkRequest::Prepare`] named.
    Prepared {
        /// Bytes it fetched from peers for it (0 when it held them already).
        bytes_received: u64,
    },
    /// A verifier's replay ([`WorkRequest::Check`]): the output digest of each step, the digest
    /// its stage's receipt would carry for the same output.
    Checked {
        /// One per step, in order.
        outputs: Vec<Digest>,
        /// The verifier's receipt (subject: the replay's forward): input
        /// [`CheckRequest::input_digest`], output [`digest_list`] of `outputs`.
        receipt: Receipt,
    },
}

/// Most bytes of a model file one [`WorkRequest::Weights`] asks for.
pub const WEIGHTS_CHUNK_BYTES_MAX: u64 = 1 << 20;

/// Domain of a holder's statement of a range it served.
const WEIGHTS_STATEMENT_CONTEXT: &str = "hearth 2026 weights range v1";

/// What a holder signs for a range of `model` (a file of `size` bytes) it serves (bytes
/// `start..end`, sent as `encoded`): with the bytes, the evidence that it served them, whatever
/// they turn out to be.
pub fn weights_statement(
    model: &ModelId,
    size: u64,
    start: u64,
    end: u64,
    encoded: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(WEIGHTS_STATEMENT_CONTEXT.len() + 104);
    m.extend_from_slice(WEIGHTS_STATEMENT_CONTEXT.as_bytes());
    m.extend_from_slice(&model.0.0);
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(&start.to_le_bytes());
    m.extend_from_slice(&end.to_le_bytes());
    m.extend_from_slice(blake3::hash(encoded).as_bytes());
    m
}

/// Most steps one check replays (its request carries a digest and a row count for each).
pub const CHECK_STEPS_MAX: usize = 1 << 17;

/// Domain of the coordinator's leave for a verifier to fetch a stage's kept inputs.
const KEPT_GRANT_CONTEXT: &str = "hearth 2026 kept grant v1";
/// Domain of a list of digests.
const DIGEST_LIST_CONTEXT: &str = "hearth 2026 digest list v1";

/// What a coordinator signs to let `verifier` fetch the inputs a stage kept of `session`, steps
/// `from..to` at the stage starting at `layer_start`.
pub fn kept_grant(
    session: u64,
    layer_start: u32,
    from: u64,
    to: u64,
    verifier: &PeerId,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(KEPT_GRANT_CONTEXT.len() + 60);
    m.extend_from_slice(KEPT_GRANT_CONTEXT.as_bytes());
    m.extend_from_slice(&session.to_le_bytes());
    m.extend_from_slice(&layer_start.to_le_bytes());
    m.extend_from_slice(&from.to_le_bytes());
    m.extend_from_slice(&to.to_le_bytes());
    m.extend_from_slice(&verifier.public_key().to_bytes());
    m
}

/// The digest of a list of digests, in order.
pub fn digest_list(digests: &[Digest]) -> Digest {
    let bytes: Vec<u8> = digests.iter().flat_map(|d| d.0).collect();
    Digest::of(DIGEST_LIST_CONTEXT, &bytes)
}

/// Where a verifier fetches a check's inputs: the stage that kept them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptSource {
    /// The stage's peer.
    pub peer: PeerId,
    /// Where it listens.
    pub addrs: Vec<String>,
    /// The session (not the verifier's: [`CheckRequest::forward`] names that).
    pub session: u64,
    /// First step.
    pub from: u64,
    /// The input digest the stage's receipt signed for each step from `from` on.
    pub inputs: Vec<Digest>,
    /// The coordinator's signature of [`kept_grant`] for the verifier.
    pub grant: Signature,
}

/// A verifier's check of one stage's steps ([`WorkRequest::Check`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The replay, all positions: its input is the steps' inputs one after another, given here
    /// (the first stage's tokens) or, with `source`, fetched from the stage that kept them.
    pub forward: Forward,
    /// The stage that kept the inputs, when they are not in `forward`.
    pub source: Option<KeptSource>,
    /// Rows of each step, in order.
    pub rows: Vec<u32>,
}

impl CheckRequest {
    /// The input digest of the verifier's receipt: the digest of the forward as sent, or with its
    /// inputs fetched, of the stage's signed input digests.
    pub fn input_digest(&self) -> Digest {
        match &self.source {
            None => self.forward.digest(),
            Some(source) => {
                let mut all = vec![self.forward.digest()];
                all.extend_from_slice(&source.inputs);
                digest_list(&all)
            }
        }
    }

    /// The output digest of each step from a replay's `output` (hidden states of all the steps'
    /// rows, or every position's token): the digest the stage's receipt carries for the step's
    /// own output (hidden states; the last position's token). `None` when the output does not
    /// have the rows the steps have.
    pub fn step_outputs(&self, output: &StageResult) -> Option<Vec<Digest>> {
        let total: usize = self.rows.iter().map(|r| *r as usize).sum();
        match output {
            StageResult::Hidden(StageData::Hidden { rows, bytes }) => {
                if *rows as usize != total || total == 0 || bytes.len() % total != 0 {
                    return None;
                }
                let width = bytes.len() / total;
                let mut at = 0;
                Some(
                    self.rows
                        .iter()
                        .map(|&r| {
                            let part = &bytes[at * width..(at + r as usize) * width];
                            at += r as usize;
                            StageResult::Hidden(StageData::Hidden {
                                rows: r,
                                bytes: part.to_vec(),
                            })
                            .digest()
                        })
                        .collect(),
                )
            }
            StageResult::NextEach(each) => {
                if each.len() != total || self.rows.contains(&0) {
                    return None;
                }
                let mut at = 0;
                Some(
                    self.rows
                        .iter()
                        .map(|&r| {
                            at += r as usize;
                            let (token, top) = each[at - 1].clone();
                            StageResult::Next { token, top }.digest()
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

/// Encode a work request or response as a message of frames ([`crate::codec::encode_message`]).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    crate::codec::encode_message(
        value,
        crate::WORK_FRAME_BYTES_MAX,
        crate::WORK_MESSAGE_BYTES_MAX,
    )
}

/// A reader of work messages, frame by frame ([`crate::codec::MessageReader`]).
pub fn message_reader() -> crate::codec::MessageReader {
    crate::codec::MessageReader::new(crate::WORK_FRAME_BYTES_MAX, crate::WORK_MESSAGE_BYTES_MAX)
}

/// Decode a work request from a message (one frame or several), checking its limits.
pub fn decode_request(message: &[u8]) -> Result<WorkRequest> {
    request_from_payload(&work_payload(message)?)
}

/// Decode a work request from a message's payload ([`message_reader`]), checking its limits.
pub fn request_from_payload(payload: &[u8]) -> Result<WorkRequest> {
    let request: WorkRequest = crate::codec::from_postcard(payload)?;
    let sampling = match &request {
        WorkRequest::Forward(f) => f.sampling,
        WorkRequest::Chain(c) => {
            if c.receipts.len() > CHAIN_HOPS_MAX || c.rtts.len() > CHAIN_HOPS_MAX {
                return Err(Error::Limit(format!(
                    "a chained step carries at most {CHAIN_HOPS_MAX} receipts"
                )));
            }
            c.forward.sampling
        }
        WorkRequest::Route(r) => {
            let addrs_ok = r.addrs.len() <= r.hops.len()
                && r.addrs.iter().all(|a| {
                    a.len() <= CHAIN_ADDRS_MAX && a.iter().all(|s| s.len() <= CHAIN_ADDR_BYTES_MAX)
                });
            if !addrs_ok {
                return Err(Error::Limit(format!(
                    "a route gives at most {CHAIN_ADDRS_MAX} addresses of at most {CHAIN_ADDR_BYTES_MAX} bytes a stage"
                )));
            }
            if r.ends.len() > CHAIN_ENDS_MAX {
                return Err(Error::Limit(format!(
                    "a route names at most {CHAIN_ENDS_MAX} end tokens, not {}",
                    r.ends.len()
                )));
            }
            if r.hops.is_empty() || r.hops.len() > CHAIN_HOPS_MAX {
                return Err(Error::Limit(format!(
                    "a route has 1..={CHAIN_HOPS_MAX} stages, not {}",
                    r.hops.len()
                )));
            }
            r.sampling
        }
        WorkRequest::Weights { start, end, .. }
            if *end <= *start || end - start > WEIGHTS_CHUNK_BYTES_MAX =>
        {
            return Err(Error::Limit(format!(
                "a weights request asks for 1..={WEIGHTS_CHUNK_BYTES_MAX} bytes, not {start}..{end}"
            )));
        }
        WorkRequest::Prepare(p)
            if p.holders.len() > PREPARE_HOLDERS_MAX
                || p.layers.0 >= p.layers.1
                || p.holders.iter().any(|(_, a)| {
                    a.len() > CHAIN_ADDRS_MAX || a.iter().any(|s| s.len() > CHAIN_ADDR_BYTES_MAX)
                }) =>
        {
            return Err(Error::Limit(format!(
                "a prepare names a non-empty range of layers and at most {PREPARE_HOLDERS_MAX} holders of at most {CHAIN_ADDRS_MAX} addresses of at most {CHAIN_ADDR_BYTES_MAX} bytes"
            )));
        }
        WorkRequest::BadWeights(e) if e.encoded.len() as u64 > 2 * WEIGHTS_CHUNK_BYTES_MAX => {
            return Err(Error::Limit(format!(
                "evidence of bad weights carries at most {} bytes",
                2 * WEIGHTS_CHUNK_BYTES_MAX
            )));
        }
        WorkRequest::Check(c) => {
            let steps = c.source.as_ref().map_or(0, |s| s.inputs.len());
            let addrs = c.source.as_ref().map_or(0, |s| s.addrs.len());
            let addr_bytes_ok = c
                .source
                .as_ref()
                .is_none_or(|s| s.addrs.iter().all(|a| a.len() <= CHAIN_ADDR_BYTES_MAX));
            if c.rows.len() > CHECK_STEPS_MAX
                || steps > CHECK_STEPS_MAX
                || addrs > CHAIN_ADDRS_MAX
                || !addr_bytes_ok
            {
                return Err(Error::Limit(format!(
                    "a check covers at most {CHECK_STEPS_MAX} steps, its source at most {CHAIN_ADDRS_MAX} addresses of at most {CHAIN_ADDR_BYTES_MAX} bytes"
                )));
            }
            c.forward.sampling
        }
        WorkRequest::Report(r)
            if r.receipts.len() > CHAIN_HOPS_MAX || r.rtts.len() > CHAIN_HOPS_MAX =>
        {
            return Err(Error::Limit(format!(
                "a step report carries at most {CHAIN_HOPS_MAX} receipts"
            )));
        }
        _ => None,
    };
    if let Some(s) = sampling {
        s.validate()?;
    }
    Ok(request)
}

/// Decode a work response from a message (one frame or several), checking its limits.
pub fn decode_response(message: &[u8]) -> Result<WorkResponse> {
    response_from_payload(&work_payload(message)?)
}

/// Decode a work response from a message's payload ([`message_reader`]), checking its limits.
pub fn response_from_payload(payload: &[u8]) -> Result<WorkResponse> {
    let response: WorkResponse = crate::codec::from_postcard(payload)?;
    match &response {
        WorkResponse::Assign(assignments) => {
            for a in assignments {
                a.task.validate()?;
            }
        }
        WorkResponse::Checked { outputs, .. } if outputs.len() > CHECK_STEPS_MAX => {
            return Err(Error::Limit(format!(
                "a check answers for at most {CHECK_STEPS_MAX} steps"
            )));
        }
        _ => {}
    }
    Ok(response)
}

fn work_payload(message: &[u8]) -> Result<Vec<u8>> {
    crate::codec::message_payload(
        message,
        crate::WORK_FRAME_BYTES_MAX,
        crate::WORK_MESSAGE_BYTES_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_max;
    use crate::{ReceiptBody, SecretKey, Subject, WORK_FRAME_BYTES_MAX};

    #[test]
    fn a_checks_step_outputs_are_the_digests_each_steps_stage_signs() {
        let check = CheckRequest {
            forward: Forward {
                session: 1,
                step: 2,
                model: ModelId::of_bytes(b"m"),
                layers: (20, 30),
                pos: 0,
                input: StageData::Tokens(vec![1, 2, 3, 4]),
                all_positions: true,
                sampling: None,
            },
            source: None,
            rows: vec![2, 1, 1],
        };
        // The last stage: each step's token is its last row's.
        let each: Vec<(u32, Vec<(u32, f32)>)> = (0..4).map(|t| (t, vec![(t, t as f32)])).collect();
        let digests = check
            .step_outputs(&StageResult::NextEach(each.clone()))
            .expect("a row for each");
        let signed: Vec<Digest> = [1usize, 2, 3]
            .iter()
            .map(|&row| {
                let (token, top) = each[row].clone();
                StageResult::Next { token, top }.digest()
            })
            .collect();
        assert_eq!(digests, signed);
        assert!(
            check
                .step_outputs(&StageResult::NextEach(each[..3].to_vec()))
                .is_none()
        );
        assert!(
            check
                .step_outputs(&StageResult::Next {
                    token: 1,
                    top: Vec::new()
                })
                .is_none()
        );
        // The digest list binds the order.
        let mut swapped = digests.clone();
        swapped.swap(0, 1);
        assert_ne!(digest_list(&digests), digest_list(&swapped));
    }

    #[test]
    fn a_kept_grant_names_its_verifier_and_steps() {
        let coordinator = SecretKey::from_bytes(&[1; 32]);
        let verifier = SecretKey::from_bytes(&[2; 32]).public().peer_id();
        let other = SecretKey::from_bytes(&[3; 32]).public().peer_id();
        let grant = coordinator.sign(&kept_grant(7, 10, 0, 8, &verifier));
        let public = coordinator.public();
        assert!(
            public
                .verify(&kept_grant(7, 10, 0, 8, &verifier), &grant)
                .is_ok()
        );
        assert!(
            public
                .verify(&kept_grant(7, 10, 0, 8, &other), &grant)
                .is_err()
        );
        assert!(
            public
                .verify(&kept_grant(7, 10, 0, 9, &verifier), &grant)
                .is_err()
        );
        assert!(
            public
                .verify(&kept_grant(8, 10, 0, 8, &verifier), &grant)
                .is_err()
        );
    }

    #[test]
    fn input_digest_binds_job_unit_model_and_task() {
        let model = ModelId::of_bytes(b"m");
        let task = Task::Embed {
            texts: vec!["a".into()],
        };
        let d = input_digest(1, 2, &model, &task);
        assert_ne!(d, input_digest(1, 3, &model, &task));
        assert_ne!(d, input_digest(2, 2, &model, &task));
        assert_ne!(d, input_digest(1, 2, &ModelId::of_bytes(b"n"), &task));
        let other = Task::Embed {
            texts: vec!["b".into()],
        };
        assert_ne!(d, input_digest(1, 2, &model, &other));
    }

    #[test]
    fn canonical_output_is_the_documented_bytes() {
        let out = UnitOutput::Completions(vec![Completion {
            token_ids: vec![7, 258],
            text: "hi".into(),
        }]);
        let want = [
            vec![1u8],
            1u32.to_le_bytes().to_vec(),
            2u32.to_le_bytes().to_vec(),
            7u32.to_le_bytes().to_vec(),
            258u32.to_le_bytes().to_vec(),
            2u32.to_le_bytes().to_vec(),
            b"hi".to_vec(),
        ]
        .concat();
        assert_eq!(out.canonical(), want);
        let emb = UnitOutput::Embeddings(vec![vec![1.0, -0.0]]);
        let want = [
            vec![0u8],
            1u32.to_le_bytes().to_vec(),
            2u32.to_le_bytes().to_vec(),
            1.0f32.to_bits().to_le_bytes().to_vec(),
            (-0.0f32).to_bits().to_le_bytes().to_vec(),
        ]
        .concat();
        assert_eq!(emb.canonical(), want);
        // -0.0 and 0.0 compare equal as floats but are different results.
        assert_ne!(
            emb.digest(),
            UnitOutput::Embeddings(vec![vec![1.0, 0.0]]).digest()
        );
    }

    #[test]
    fn canonical_bytes_parse_back_and_nothing_else_does() {
        let outputs = [
            UnitOutput::Embeddings(vec![vec![0.25, -1.5, f32::MIN_POSITIVE], vec![]]),
            UnitOutput::Completions(vec![
                Completion {
                    token_ids: vec![1, 2, 49_151],
                    text: "héllo".into(),
                },
                Completion {
                    token_ids: vec![],
                    text: String::new(),
                },
            ]),
        ];
        for output in outputs {
            let bytes = output.canonical();
            assert_eq!(UnitOutput::from_canonical(&bytes).expect("parses"), output);
            for cut in 0..bytes.len() {
                assert!(UnitOutput::from_canonical(&bytes[..cut]).is_err(), "{cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(UnitOutput::from_canonical(&longer).is_err());
        }
        let mut huge = vec![0u8];
        huge.extend(u32::MAX.to_le_bytes());
        assert!(matches!(
            UnitOutput::from_canonical(&huge),
            Err(Error::Limit(_))
        ));
    }

    #[test]
    fn a_stages_output_digest_is_its_successors_input_digest() {
        let data = StageData::hidden(2, &[0.5, -1.0, 2.0, 0.0]);
        assert_eq!(data.digest(), StageResult::Hidden(data.clone()).digest());
        let forward = Forward {
            session: 3,
            step: 1,
            model: ModelId::of_bytes(b"m"),
            layers: (10, 20),
            pos: 4,
            input: data.clone(),
            all_positions: false,
            sampling: None,
        };
        assert_eq!(
            forward.digest(),
            forward.digest_with(StageResult::Hidden(data).digest())
        );
        // Every field is bound.
        let other_input = Forward {
            input: StageData::hidden(2, &[0.5, -1.0, 2.0, -0.0]),
            ..forward.clone()
        };
        let other_pos = Forward {
            pos: 5,
            ..forward.clone()
        };
        let other_layers = Forward {
            layers: (10, 21),
            ..forward.clone()
        };
        for other in [other_input, other_pos, other_layers] {
            assert_ne!(forward.digest(), other.digest());
        }
    }

    #[test]
    fn sampling_out_of_range_is_refused_at_decoding() {
        // Found by the `work` fuzz target: a NaN top_p decoded, and NaN is not equal to itself.
        let forward = |temperature: f32, top_p: f32| {
            WorkRequest::Forward(Forward {
                session: 1,
                step: 0,
                model: ModelId(Digest([0; 32])),
                layers: (0, 1),
                pos: 0,
                input: StageData::Tokens(vec![1]),
                all_positions: false,
                sampling: Some(Sampling {
                    temperature,
                    top_p,
                    seed: 7,
                }),
            })
        };
        let frame =
            |r: &WorkRequest| crate::codec::encode_max(r, WORK_FRAME_BYTES_MAX).expect("encodes");
        assert!(decode_request(&frame(&forward(0.7, 0.9))).is_ok());
        for (t, p) in [
            (0.7, f32::NAN),
            (f32::NAN, 1.0),
            (-1.0, 1.0),
            (f32::INFINITY, 1.0),
            (0.7, 0.0),
            (0.7, 1.5),
        ] {
            assert!(decode_request(&frame(&forward(t, p))).is_err(), "{t} {p}");
        }
    }

    #[test]
    fn requests_round_trip_and_limits_hold() {
        let key = SecretKey::from_bytes(&[3; 32]);
        let output = UnitOutput::Embeddings(vec![vec![0.5; 384]; 4]);
        let receipt = Receipt::sign(
            &key,
            ReceiptBody {
                subject: Subject::Unit { job: 1, unit: 0 },
                model: ModelId::of_bytes(b"m"),
                input: Digest::of("x", b"y"),
                output: output.digest(),
                numeric_class: "k0/embed/cpu/x".into(),
            },
        );
        let request = WorkRequest::Deliver {
            job: 1,
            unit: 0,
            receipt,
            output: output.canonical(),
        };
        let frame = encode_max(&request, WORK_FRAME_BYTES_MAX).expect("encodes");
        assert_eq!(decode_request(&frame).expect("decodes"), request);
        assert!(decode_request(&frame[..frame.len() - 1]).is_err());

        let bad = WorkResponse::Assign(vec![Assignment {
            job: 1,
            unit: 0,
            model: ModelId::of_bytes(b"m"),
            task: Task::Embed { texts: vec![] },
            deadline_ms: 1,
        }]);
        let frame = encode_max(&bad, WORK_FRAME_BYTES_MAX).expect("encodes");
        assert!(matches!(decode_response(&frame), Err(Error::Limit(_))));
    }
}
