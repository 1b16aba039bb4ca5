//! A stage: a contiguous range of a model's layers, with a KV cache per session.
//!
//! The first stage embeds token ids; the last applies the final norm and the LM head (the token
//! embedding itself when the model ties them, as SmolLM2 does). A stage in between takes and returns
//! hidden states. Chained stages compute exactly what one stage over all layers computes: the same
//! operations in the same order.
//!
//! One layer, in llama.cpp's order:
//! ```text
//! h = x + Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
//! y = h + Wdown · (silu(Wgate · norm(h)) ⊙ Wup · norm(h))
//! ```
//! with RoPE on interleaved pairs, and key/value heads shared by groups of query heads.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use hearth_cpu::{Input, KernelPath, Kernels, KvCache, LlamaRange};

use crate::llm::{GgufModel, LlmConfig};
use crate::{Error, Result};

/// The process's CPU kernels: the path `HEARTH_KERNEL_PATH` forces (an error if this CPU lacks it),
/// else the best one; as many threads as `RAYON_NUM_THREADS` says (the node's `--max-threads` sets
/// it), else every core. Made once, on first use.
pub fn cpu_kernels() -> Result<Arc<Kernels>> {
    static KERNELS: OnceLock<std::result::Result<Arc<Kernels>, String>> = OnceLock::new();
    KERNELS
        .get_or_init(|| {
            let threads = std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|&t| t > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Ok(Arc::new(Kernels::new(KernelPath::from_env()?, threads)?))
        })
        .clone()
        .map_err(Error::Request)
}

/// Sessions one stage keeps a KV cache for; the least recently used is dropped beyond it.
pub const SESSIONS_MAX: usize = 64;

/// Names a generation, so a stage serving several keeps their caches apart.
pub type SessionId = u64;

/// What a stage is given.
#[derive(Debug)]
pub enum StageInput {
    /// Token ids (first stage only).
    Tokens(Vec<u32>),
    /// Hidden states from the previous stage, `[seq, hidden]`.
    Hidden(Tensor),
}

impl StageInput {
    /// `rows` hidden states of zeros `hidden` wide: what a benchmark feeds a stage that does not
    /// start at layer 0 (the cost does not depend on the values).
    pub fn zeros(rows: usize, hidden: usize) -> Result<Self> {
        Ok(Self::Hidden(Tensor::zeros(
            (rows, hidden),
            DType::F32,
            &Device::Cpu,
        )?))
    }
}

/// What a stage returns.
#[derive(Debug)]
pub enum StageOutput {
    /// Hidden states for the next stage, `[seq, hidden]`.
    Hidden(Tensor),
    /// Logits over the vocabulary, `[rows, vocab]` (every position, or the last only).
    Logits(Tensor),
}

struct Block {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

struct Session {
    /// Per layer of this stage: keys and values `[1, kv_heads, positions, head_dim]` (candle).
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Keys and values of Hearth's CPU kernels.
    cpu_kv: KvCache,
    /// The position the next input starts at.
    next_pos: usize,
    /// For least-recently-used eviction.
    last_used: u64,
}

/// A loaded range of layers.
pub struct Stage {
    config: LlmConfig,
    /// On the CPU: Hearth's own kernels, which give the same bits on every CPU. Otherwise (a GPU,
    /// or a model in a format they do not run) candle, below.
    cpu: Option<(LlamaRange, Arc<Kernels>)>,
    layers: Range<usize>,
    device: Device,
    embedding: Option<Tensor>,
    blocks: Vec<Block>,
    head: Option<(Tensor, QMatMul)>,
    cos: Tensor,
    sin: Tensor,
    sessions: HashMap<SessionId, Session>,
    uses: u64,
}

impl Stage {
    /// Load `layers` of `model` onto `device`: only those blocks, plus the token embedding on the first
    /// stage and the final norm and LM head on the last.
    pub fn load(model: &GgufModel, layers: Range<usize>, device: &Device) -> Result<Self> {
        let foreign = model.foreign_tensor();
        match backend(device.is_cpu(), &model.config.arch, foreign.is_none()) {
            Backend::HearthCpu => Self::load_cpu(model, layers, cpu_kernels()?),
            Backend::Candle => {
                if let Some((tensor, kind)) = foreign {
                    tracing::warn!(
                        %tensor, kind,
                        "Hearth's CPU kernels do not run this model's {kind} tensors; every stage of it runs on candle's"
                    );
                }
                Self::load_candle(model, layers, device)
            }
        }
    }

    /// Load `layers` onto Hearth's CPU kernels `kernels` (any path, any threads: the bits are the
    /// same).
    pub fn load_cpu(
        model: &GgufModel,
        layers: Range<usize>,
        kernels: Arc<Kernels>,
    ) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: model.path().into(),
            reason,
        };
        let gguf = hearth_cpu::Gguf::open(model.path()).map_err(bad)?;
        let range = LlamaRange::load(&gguf, layers.clone()).map_err(|e| {
            if e.contains("not a range") {
                Error::Request(e)
            } else {
                bad(e)
            }
        })?;
        let empty = Tensor::zeros(0, DType::F32, &Device::Cpu)?;
        Ok(Self {
            config: model.config.clone(),
            cpu: Some((range, kernels)),
            layers,
            device: Device::Cpu,
            embedding: None,
            blocks: Vec::new(),
            head: None,
            cos: empty.clone(),
            sin: empty,
            sessions: HashMap::new(),
            uses: 0,
        })
    }

    /// The kernel path computing this stage: `scalar`, `avx2`, `avx512` or `neon` on Hearth's CPU
    /// kernels, `candle` otherwise.
    pub fn kernel_path(&self) -> &'static str {
        self.cpu
            .as_ref()
            .map_or("candle", |(_, k)| k.path().as_str())
    }

    /// Threads computing on Hearth's CPU kernels (candle's own count otherwise).
    pub fn threads(&self) -> usize {
        self.cpu
            .as_ref()
            .map_or_else(candle_core::utils::get_num_threads, |(_, k)| k.threads())
    }

    /// Load `layers` onto candle's kernels on `device`: what a GPU runs, and what the CPU runs for
    /// a llama-architecture model in a type Hearth's kernels do not (`Q2_K`, `Q3_K`, `Q5_1`, …).
    /// Their bits are candle's, not the same on every machine.
    pub fn load_candle(model: &GgufModel, layers: Range<usize>, device: &Device) -> Result<Self> {
        let config = model.config.clone();
        if config.arch != "llama" {
            return Err(Error::Model {
                path: model.path().into(),
                reason: format!(
                    "architecture {} runs on Hearth's CPU kernels only, not on candle's (a GPU)",
                    config.arch
                ),
            });
        }
        if layers.start >= layers.end || layers.end > config.layers {
            return Err(Error::Request(format!(
                "layers {layers:?} are not a range within 0..{}",
                config.layers
            )));
        }
        let dense =
            |name: &str| -> Result<Tensor> { Ok(model.tensor(name, device)?.dequantize(device)?) };
        let matmul = |name: &str| -> Result<QMatMul> {
            Ok(QMatMul::from_qtensor(model.tensor(name, device)?)?)
        };
        let embedding = if layers.start == 0 {
            Some(dense("token_embd.weight")?)
        } else {
            None
        };
        let blocks = layers
            .clone()
            .map(|i| {
                let t = |part: &str| format!("blk.{i}.{part}.weight");
                Ok(Block {
                    attn_norm: dense(&t("attn_norm"))?,
                    wq: matmul(&t("attn_q"))?,
                    wk: matmul(&t("attn_k"))?,
                    wv: matmul(&t("attn_v"))?,
                    wo: matmul(&t("attn_output"))?,
                    ffn_norm: dense(&t("ffn_norm"))?,
                    gate: matmul(&t("ffn_gate"))?,
                    up: matmul(&t("ffn_up"))?,
                    down: matmul(&t("ffn_down"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = if layers.end == config.layers {
            // Tied embeddings: without an output matrix the LM head is the token embedding.
            let name = if model.has_tensor("output.weight") {
                "output.weight"
            } else {
                "token_embd.weight"
            };
            Some((dense("output_norm.weight")?, matmul(name)?))
        } else {
            None
        };
        // Llama 3's RoPE frequency scaling: each frequency divided by its factor, as Hearth's
        // kernels and llama.cpp do (without it every position past the first is rotated wrong).
        let factors = if model.has_tensor("rope_freqs.weight") {
            let factors = dense("rope_freqs.weight")?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if factors.len() != config.head_dim / 2 {
                return Err(Error::Model {
                    path: model.path().into(),
                    reason: format!(
                        "rope_freqs.weight has {} factors, expected {} (half the head width)",
                        factors.len(),
                        config.head_dim / 2
                    ),
                });
            }
            Some(factors)
        } else {
            None
        };
        let (cos, sin) = rope_tables(&config, factors.as_deref(), device)?;
        Ok(Self {
            config,
            cpu: None,
            layers,
            device: device.clone(),
            embedding,
            blocks,
            head,
            cos,
            sin,
            sessions: HashMap::new(),
            uses: 0,
        })
    }

    /// The layers this stage runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Whether this stage runs on Hearth's own CPU kernels, whose result for a row depends on that
    /// row and its position only: a window replayed as one prefill gives the same bits as the
    /// stage computing it token by token. Candle (a GPU, or a model the kernels do not run) does
    /// not promise that.
    pub fn batch_invariant(&self) -> bool {
        self.cpu.is_some()
    }

    /// Run `input` (positions `pos..pos + len`) through the stage for `session`. Position 0 starts the
    /// session afresh; any other position must continue where the session's last input ended. The
    /// last stage returns logits for every position when `all_logits`, else for the last one.
    pub fn forward(
        &mut self,
        session: SessionId,
        input: StageInput,
        pos: usize,
        all_logits: bool,
    ) -> Result<StageOutput> {
        if self.cpu.is_some() {
            return self.forward_cpu(session, input, pos, all_logits);
        }
        let mut x = match input {
            StageInput::Tokens(ids) => {
                let embedding = self.embedding.as_ref().ok_or_else(|| {
                    Error::Request(format!(
                        "stage {:?} takes hidden states, not tokens",
                        self.layers
                    ))
                })?;
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab) {
                    return Err(Error::Request(format!(
                        "token id {bad} is outside the vocabulary"
                    )));
                }
                let ids = Tensor::new(ids.as_slice(), &self.device)?;
                embedding.index_select(&ids, 0)?
            }
            StageInput::Hidden(hidden) => {
                if self.embedding.is_some() {
                    return Err(Error::Request(
                        "the first stage takes tokens, not hidden states".into(),
                    ));
                }
                hidden.to_dtype(DType::F32)?
            }
        };
        let (seq, width) = x.dims2()?;
        if seq == 0 || width != self.config.hidden {
            return Err(Error::Request(format!(
                "input is {seq}×{width}, expected n×{}",
                self.config.hidden
            )));
        }
        if pos + seq > self.config.context {
            return Err(Error::Request(format!(
                "positions up to {} exceed the context of {}",
                pos + seq,
                self.config.context
            )));
        }
        self.uses += 1;
        let state = self.session(session, pos)?;
        let mut kv = std::mem::take(&mut state.kv);

        let mask = causal_mask(seq, pos, &self.device)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        x = x.unsqueeze(0)?;
        for (block, cache) in self.blocks.iter().zip(kv.iter_mut()) {
            x = self.block(block, &x, cache, mask.as_ref(), &cos, &sin)?;
        }
        let state = self.sessions.get_mut(&session).expect("session made above");
        state.kv = kv;
        state.next_pos = pos + seq;

        let x = x.squeeze(0)?;
        match &self.head {
            None => Ok(StageOutput::Hidden(x)),
            Some((norm, head)) => {
                let x = if all_logits {
                    x
                } else {
                    x.narrow(0, seq - 1, 1)?
                };
                let x =
                    candle_nn::ops::rms_norm(&x.contiguous()?, norm, self.config.rms_eps as f32)?;
                Ok(StageOutput::Logits(head.forward(&x)?))
            }
        }
    }

    fn forward_cpu(
        &mut self,
        session: SessionId,
        input: StageInput,
        pos: usize,
        all_logits: bool,
    ) -> Result<StageOutput> {
        let mut out = self.forward_batch_cpu(vec![(session, input, pos, all_logits)]);
        out.pop().expect("one answer per item")
    }

    /// [`Self::forward`] for several sessions at once (each `(session, input, pos, all_logits)`),
    /// one answer per item in order. On Hearth's CPU kernels their rows go through the weights in
    /// one pass, each row's bits what it gets alone (the kernels are batch-invariant); elsewhere, or
    /// when a session comes twice, the items run one after another.
    pub fn forward_batch(
        &mut self,
        items: Vec<(SessionId, StageInput, usize, bool)>,
    ) -> Vec<Result<StageOutput>> {
        let sessions: std::collections::HashSet<SessionId> = items.iter().map(|i| i.0).collect();
        if self.cpu.is_none() || sessions.len() < items.len() {
            return items
                .into_iter()
                .map(|(session, input, pos, all)| self.forward(session, input, pos, all))
                .collect();
        }
        self.forward_batch_cpu(items)
    }

    fn forward_batch_cpu(
        &mut self,
        items: Vec<(SessionId, StageInput, usize, bool)>,
    ) -> Vec<Result<StageOutput>> {
        self.uses += 1;
        let hidden = self.config.hidden;
        // Each item's input as the kernels take it, and its session's cache taken out for the pass.
        enum Owned {
            Tokens(Vec<u32>),
            Floats(Vec<f32>),
        }
        let mut answers: Vec<Option<Result<StageOutput>>> = Vec::with_capacity(items.len());
        let mut taken: Vec<(usize, SessionId, KvCache, Owned, bool)> = Vec::new();
        for (i, (session, input, pos, all)) in items.into_iter().enumerate() {
            let owned = match input {
                StageInput::Tokens(ids) => Ok(Owned::Tokens(ids)),
                StageInput::Hidden(t) => t.dims2().map_err(Error::from).and_then(|(seq, width)| {
                    if seq == 0 || width != hidden {
                        return Err(Error::Request(format!(
                            "input is {seq}×{width}, expected n×{hidden}"
                        )));
                    }
                    Ok(Owned::Floats(
                        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    ))
                }),
            };
            let cache = owned.and_then(|owned| {
                let state = self.session(session, pos)?;
                Ok((std::mem::take(&mut state.cpu_kv), owned))
            });
            answers.push(match cache {
                Ok((cache, owned)) => {
                    taken.push((i, session, cache, owned, all));
                    None
                }
                Err(e) => Some(Err(e)),
            });
        }
        let (range, kernels) = self.cpu.as_ref().expect("checked by the caller");
        let mut batch: Vec<(&mut KvCache, Input<'_>, bool)> = taken
            .iter_mut()
            .map(|(_, _, cache, owned, all)| {
                let input = match owned {
                    Owned::Tokens(ids) => Input::Tokens(&ids[..]),
                    Owned::Floats(floats) => Input::Hidden(&floats[..]),
                };
                (cache, input, *all)
            })
            .collect();
        let outs = range.forward_batch(kernels, &mut batch);
        drop(batch);
        let width = if range.gives_logits() {
            self.config.vocab
        } else {
            hidden
        };
        let logits = range.gives_logits();
        for ((i, session, cache, _, _), out) in taken.into_iter().zip(outs) {
            let state = self.sessions.get_mut(&session).expect("session made above");
            state.next_pos = cache.len();
            state.cpu_kv = cache;
            answers[i] = Some(out.map_err(Error::Request).and_then(|out| {
                let rows = out.len() / width;
                let t = Tensor::from_vec(out, (rows, width), &Device::Cpu)?;
                Ok(if logits {
                    StageOutput::Logits(t)
                } else {
                    StageOutput::Hidden(t)
                })
            }));
        }
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    /// Free a session's cache.
    pub fn end_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }

    /// Bytes held by each session's KV cache.
    pub fn cache_bytes(&self) -> Vec<(SessionId, usize)> {
        self.sessions
            .iter()
            .map(|(id, s)| {
                let bytes = s.cpu_kv.bytes()
                    + s.kv
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
                        .sum::<usize>();
                (*id, bytes)
            })
            .collect()
    }

    /// The session's state, made fresh at position 0, checked for continuity otherwise.
    fn session(&mut self, session: SessionId, pos: usize) -> Result<&mut Session> {
        if pos == 0 {
            if !self.sessions.contains_key(&session) && self.sessions.len() >= SESSIONS_MAX {
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(id, _)| *id);
                if let Some(oldest) = oldest {
                    self.sessions.remove(&oldest);
                }
            }
            self.sessions.insert(
                session,
                Session {
                    kv: vec![None; self.blocks.len()],
                    cpu_kv: KvCache::default(),
                    next_pos: 0,
                    last_used: self.uses,
                },
            );
        }
        let state = self.sessions.get_mut(&session).ok_or_else(|| {
            Error::Request(format!(
                "session {session} is unknown here; start it at position 0"
            ))
        })?;
        if state.next_pos != pos {
            return Err(Error::Request(format!(
                "session {session} is at position {}, not {pos}",
                state.next_pos
            )));
        }
        state.last_used = self.uses;
        Ok(state)
    }

    fn block(
        &self,
        b: &Block,
        x: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        mask: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_eps as f32;
        let (_, seq, hidden) = x.dims3()?;

        let h = candle_nn::ops::rms_norm(x, &b.attn_norm, eps)?;
        let q =
            b.wq.forward(&h)?
                .reshape((1, seq, c.heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
        let k =
            b.wk.forward(&h)?
                .reshape((1, seq, c.kv_heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
        let v =
            b.wv.forward(&h)?
                .reshape((1, seq, c.kv_heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
        let q = candle_nn::rotary_emb::rope_i(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cos, sin)?;
        let (k, v) = match cache.take() {
            None => (k, v),
            Some((k_past, v_past)) => (
                Tensor::cat(&[&k_past, &k], 2)?,
                Tensor::cat(&[&v_past, &v], 2)?,
            ),
        };
        *cache = Some((k.clone(), v.clone()));

        let group = c.heads / c.kv_heads;
        let k = repeat_kv(&k, group)?;
        let v = repeat_kv(&v, group)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (c.head_dim as f64).sqrt())?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v.contiguous()?)?;
        let attn = attn.transpose(1, 2)?.reshape((1, seq, hidden))?;
        let x = (x + b.wo.forward(&attn)?)?;

        let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
        let ffn = (candle_nn::ops::silu(&b.gate.forward(&h)?)? * b.up.forward(&h)?)?;
        Ok((x + b.down.forward(&ffn)?)?)
    }
}

/// `cos` and `sin` of every position's rotation angles, `[context, head_dim / 2]`.
fn rope_tables(
    c: &LlmConfig,
    factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let freq = 1.0 / c.rope_base.powf(2.0 * i as f32 / c.head_dim as f32);
            factors.map_or(freq, |f| freq / f[i])
        })
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = Tensor::arange(0u32, c.context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((c.context, 1))?;
    let angles = positions.matmul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Which kernels run a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// Hearth's own CPU kernels.
    HearthCpu,
    /// Candle's, on the node's device.
    Candle,
}

/// The kernels for a stage of a model of `arch` on a node whose device is the CPU (`cpu`) or not,
/// when Hearth's kernels run every tensor type in the model (`hearth_runs_all`). Decided for the
/// whole model, not the stage's range: a llama model with one tensor Hearth's kernels do not run
/// runs every range on candle, so that a route's stages compute the bits one machine computes (a
/// route that mixed the two parted from `hearth local generate` where two tokens nearly tied).
/// Candle's stage runs the llama architecture only: on a GPU node the others run on the CPU.
fn backend(cpu: bool, arch: &str, hearth_runs_all: bool) -> Backend {
    if hearth_runs_all && (cpu || arch != "llama") {
        Backend::HearthCpu
    } else {
        Backend::Candle
    }
}

/// Additive mask hiding later positions: `[seq, pos + seq]`, 0 where visible, -inf where not. One
/// token attends to everything before it and needs none.
fn causal_mask(seq: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = pos + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (seq, total), device)?))
}

/// `[1, kv_heads, n, d]` → `[1, kv_heads * group, n, d]`, each key/value head repeated for its group
/// of query heads.
fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, heads, n, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, heads, group, n, d))?
        .reshape((b, heads * group, n, d))?)
}

#[cfg(test)]
mod tests {
    use super::{Backend, backend};

    #[test]
    fn the_kernels_are_chosen_for_the_whole_model() {
        // Every type Hearth runs: its kernels on a CPU node; on a GPU node, candle for llama
        // (which candle runs) and the CPU kernels for the rest (which it does not).
        assert_eq!(backend(true, "llama", true), Backend::HearthCpu);
        assert_eq!(backend(true, "gemma3", true), Backend::HearthCpu);
        assert_eq!(backend(false, "llama", true), Backend::Candle);
        assert_eq!(backend(false, "qwen2", true), Backend::HearthCpu);
        // A llama model with one tensor Hearth does not run (a Q3_K_M file's Q3_K, a
        // requantized one's Q5_1): candle for every range, whether that range holds the tensor
        // or not.
        assert_eq!(backend(true, "llama", false), Backend::Candle);
        assert_eq!(backend(false, "llama", false), Backend::Candle);
    }
}
