//! A range of a llama or Gemma 3 model's layers on Hearth's CPU kernels.
//!
//! One layer, in llama.cpp's order:
//! ```text
//! h = x + Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
//! y = h + Wdown · (silu(Wgate · norm(h)) ⊙ Wup · norm(h))
//! ```
//! Gemma 3's differences are data ([`Variant`]): embeddings scaled by √width, each query and key
//! head normed before RoPE (which turns halves, not pairs), the attention's and the feed-forward's
//! outputs normed before their residual adds, a GELU gate, and five of every six layers attending
//! within a sliding window with their own RoPE base.
//! Every token's result is computed by the same operations in the same order whether it comes alone
//! (decode) or among many (prefill), on any thread count and any [`KernelPath`]: the products are
//! per row and token ([`crate::dot`]), attention for token `i` reads exactly the keys `0..=pos + i`,
//! and the element-wise operations are [`crate::math`]'s.

use std::ops::Range;

use crate::dot::dot_tile;
use crate::dot::{dot_float_tile, dot2_k_tile};
use crate::gguf::{Gguf, Value};
use crate::math;
use crate::path::KernelPath;
use crate::pool::Pool;
use crate::quant::{Acts, QKind, QMatrix};

/// The GGUF architectures this implementation runs (`mistral` files run as `llama`).
pub const ARCHITECTURES: [&str; 5] = ["llama", "mistral", "qwen2", "qwen3", "gemma3"];

/// Rows of a product computed as one piece of work by one thread.
const ROWS_PER_CHUNK: usize = 16;
/// Tokens a row pair is multiplied with at once in a prefill.
const TOKEN_TILE: usize = 4;
/// Token-head pairs of attention per piece of work (at least one token's heads that share a
/// key-value head).
const HEADS_PER_CHUNK: usize = 4;

/// A model's hyper-parameters, from GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMS-norm epsilon.
    pub rms_eps: f32,
    /// Context length.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// What sets the architecture apart from llama.
    pub variant: Variant,
}

/// The differences between the architectures this one layer-range implementation runs, as data
/// (llama's are all off).
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    /// The GGUF architecture: `llama`, `qwen2`, `qwen3` or `gemma3`.
    pub arch: String,
    /// Queries, keys and values have biases (`attn_q.bias`, …; Qwen 2).
    pub qkv_bias: bool,
    /// RoPE's frequencies are divided by per-frequency factors (`rope_freqs.weight`; Llama 3's
    /// frequency scaling).
    pub rope_factors: bool,
    /// Embeddings are multiplied by this (Gemma: √width).
    pub embed_scale: Option<f32>,
    /// Each query and key head is RMS-normed (`attn_q_norm`, `attn_k_norm`) before RoPE.
    pub qk_norm: bool,
    /// The attention's and the feed-forward's outputs are RMS-normed before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// The feed-forward gate's activation is GELU (tanh), not SiLU.
    pub gelu: bool,
    /// RoPE turns the halves of a head (GPT-NeoX's layout), not interleaved pairs.
    pub rope_neox: bool,
    /// Sliding-window attention: `(window, period)`: layer `i` attends to its last `window`
    /// positions only, unless `i % period == period − 1` (a global layer).
    pub sliding: Option<(usize, usize)>,
    /// The RoPE base of the sliding layers.
    pub rope_base_sliding: f32,
}

impl Variant {
    fn llama() -> Self {
        Self {
            arch: "llama".into(),
            qkv_bias: false,
            rope_factors: false,
            embed_scale: None,
            qk_norm: false,
            post_norms: false,
            gelu: false,
            rope_neox: false,
            sliding: None,
            rope_base_sliding: 0.0,
        }
    }

    /// Gemma 3, as llama.cpp runs it: a global layer every sixth, a RoPE base of 10,000 on the
    /// others.
    fn gemma3(hidden: usize, window: usize) -> Self {
        Self {
            arch: "gemma3".into(),
            qkv_bias: false,
            rope_factors: false,
            embed_scale: Some((hidden as f32).sqrt()),
            qk_norm: true,
            post_norms: true,
            gelu: true,
            rope_neox: true,
            sliding: Some((window, 6)),
            rope_base_sliding: 10_000.0,
        }
    }

    /// Qwen 2: llama with biased queries, keys and values and NeoX RoPE.
    fn qwen2() -> Self {
        Self {
            arch: "qwen2".into(),
            qkv_bias: true,
            rope_neox: true,
            ..Self::llama()
        }
    }

    /// Qwen 3: llama with per-head query and key norms and NeoX RoPE.
    fn qwen3() -> Self {
        Self {
            arch: "qwen3".into(),
            qk_norm: true,
            rope_neox: true,
            ..Self::llama()
        }
    }

    /// Whether layer `layer` (of the whole model) attends within the sliding window.
    pub fn slides(&self, layer: usize) -> Option<usize> {
        self.sliding
            .filter(|&(_, period)| layer % period != period - 1)
            .map(|(window, _)| window)
    }
}

impl Config {
    /// The width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Read a model's hyper-parameters ([`ARCHITECTURES`]; `mistral` is llama).
    pub fn from_gguf(g: &Gguf) -> Result<Self, String> {
        let arch = match g.metadata.get("general.architecture") {
            Some(Value::Str(a)) if ARCHITECTURES.contains(&a.as_str()) => a.clone(),
            other => {
                return Err(format!(
                    "architecture {other:?} is not one Hearth's CPU kernels run ({})",
                    ARCHITECTURES.join(", ")
                ));
            }
        };
        let int = |k: &str| {
            g.int(&format!("{arch}.{k}"))
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| format!("metadata {arch}.{k} missing"))
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let vocab = match g.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(n)) => *n,
            _ => g
                .tensors
                .get("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .unwrap_or(0),
        };
        let gemma = arch == "gemma3";
        // Heads as wide as the width over the heads, unless the file says (Gemma 3 and Qwen 3
        // may have heads that together are wider or narrower than the model).
        let free_heads = gemma || arch == "qwen3";
        let head_dim = if free_heads {
            int("attention.key_length").unwrap_or(hidden / heads)
        } else {
            int("rope.dimension_count").unwrap_or(hidden / heads)
        };
        let mut variant = match arch.as_str() {
            "gemma3" => Variant::gemma3(hidden, int("attention.sliding_window")?),
            "qwen2" => Variant::qwen2(),
            "qwen3" => Variant::qwen3(),
            _ => Variant::llama(),
        };
        variant.rope_factors = g.tensors.contains_key("rope_freqs.weight");
        let c = Self {
            layers: int("block_count")?,
            hidden,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            ffn: int("feed_forward_length")?,
            rope_base: g
                .float(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10_000.0) as f32,
            rms_eps: g
                .float(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| {
                    format!("metadata {arch}.attention.layer_norm_rms_epsilon missing")
                })? as f32,
            context: int("context_length")?,
            vocab,
            variant,
        };
        if c.kv_heads == 0
            || !c.heads.is_multiple_of(c.kv_heads)
            || (!free_heads && c.head_dim * c.heads != c.hidden)
            || !c.head_dim.is_multiple_of(2)
        {
            return Err(format!("inconsistent attention shape: {c:?}"));
        }
        Ok(c)
    }
}

/// The kernels' settings: the instruction-set path and the threads.
#[derive(Debug)]
pub struct Kernels {
    path: KernelPath,
    pool: Pool,
}

impl Kernels {
    /// Kernels on `path` (which must be [`KernelPath::supported`]) with `threads` threads.
    pub fn new(path: KernelPath, threads: usize) -> Result<Self, String> {
        if !path.supported() {
            return Err(format!("this CPU cannot run the {path} path"));
        }
        Ok(Self {
            path,
            pool: Pool::new(threads.max(1)),
        })
    }

    /// The instruction-set path.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Threads computing.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// `outs[i] = acts · mats[i]ᵀ` (`[tokens][rows_i]`), all products in one parallel job; `acts`
    /// quantized for `mats` ([`Acts::quantize`]).
    pub fn matmul(&self, acts: &Acts, mats: &[&QMatrix], outs: &mut [&mut [f32]]) {
        let mut starts = Vec::with_capacity(mats.len() + 1);
        let mut chunks = 0;
        for m in mats {
            assert_eq!(m.cols, acts.cols, "activations as wide as the matrix");
            starts.push(chunks);
            chunks += m.rows.div_ceil(ROWS_PER_CHUNK);
        }
        starts.push(chunks);
        let ptrs: Vec<Out> = outs
            .iter_mut()
            .zip(mats)
            .map(|(o, m)| {
                assert_eq!(o.len(), acts.rows * m.rows);
                Out(o.as_mut_ptr())
            })
            .collect();
        let path = self.path;
        let q8k = &acts.q8k;
        let (floats, cols) = (acts, acts.cols);
        let acts = &acts.q8;
        self.pool.run(chunks, &|chunk| {
            let i = starts.partition_point(|&s| s <= chunk) - 1;
            let m = mats[i];
            let r0 = (chunk - starts[i]) * ROWS_PER_CHUNK;
            let r1 = (r0 + ROWS_PER_CHUNK).min(m.rows);
            if m.kind.is_float() {
                // A row · tiles of tokens, its values loaded once a tile; the tile never changes a
                // token's bits.
                let x = floats.floats_for(m.kind);
                let token = |t: usize| &x[t * cols..(t + 1) * cols];
                for r in r0..r1 {
                    // SAFETY (both writes): chunks cover disjoint rows, so each (t, r) is written by
                    // one thread only, and the output outlives the job.
                    let mut t = 0;
                    while t + TOKEN_TILE <= floats.rows {
                        let tile = std::array::from_fn(|k| token(t + k));
                        let outs = dot_float_tile::<TOKEN_TILE>(path, m.kind, m.row(r), tile);
                        for (k, o) in outs.into_iter().enumerate() {
                            unsafe { ptrs[i].write((t + k) * m.rows + r, o) };
                        }
                        t += TOKEN_TILE;
                    }
                    for t in t..floats.rows {
                        let [o] = dot_float_tile(path, m.kind, m.row(r), [token(t)]);
                        unsafe { ptrs[i].write(t * m.rows + r, o) };
                    }
                }
                return;
            }
            if m.kind.is_k() {
                // A row pair · tiles of tokens, their super-blocks unpacked once a tile; the
                // tile and the pair never change a token's bits.
                let mut r = r0;
                while r < r1 {
                    let (w0, w1) = (m.row(r), (r + 1 < r1).then(|| m.row(r + 1)));
                    let write = |t: usize, (o0, o1): (f32, f32)| {
                        // SAFETY: chunks cover disjoint rows, so each (t, r) is written by one
                        // thread only, and the output outlives the job.
                        unsafe {
                            ptrs[i].write(t * m.rows + r, o0);
                            if w1.is_some() {
                                ptrs[i].write(t * m.rows + r + 1, o1);
                            }
                        }
                    };
                    let mut t = 0;
                    while t + TOKEN_TILE <= q8k.rows {
                        let tile = std::array::from_fn(|k| q8k.row(t + k));
                        let outs = dot2_k_tile::<TOKEN_TILE>(path, m.kind, w0, w1, tile);
                        for (k, o) in outs.into_iter().enumerate() {
                            write(t + k, o);
                        }
                        t += TOKEN_TILE;
                    }
                    for t in t..q8k.rows {
                        write(t, dot2_k_tile(path, m.kind, w0, w1, [q8k.row(t)])[0]);
                    }
                    r += 2;
                }
                return;
            }
            let mut r = r0;
            while r < r1 {
                let w0 = m.row(r);
                let w1 = (r + 1 < r1).then(|| m.row(r + 1));
                let write = |t: usize, (o0, o1): (f32, f32)| {
                    // SAFETY: chunks cover disjoint rows, so each (t, r) is written by one thread
                    // only, and the output outlives the job.
                    unsafe {
                        ptrs[i].write(t * m.rows + r, o0);
                        if w1.is_some() {
                            ptrs[i].write(t * m.rows + r + 1, o1);
                        }
                    }
                };
                // Tokens in tiles, so a row pair's blocks are unpacked once per tile; the tile
                // never changes a token's bits.
                let mut t = 0;
                while t + TOKEN_TILE <= acts.rows {
                    let tile = std::array::from_fn(|k| acts.row(t + k));
                    for (k, o) in dot_tile::<TOKEN_TILE>(path, m.kind, w0, w1, tile)
                        .into_iter()
                        .enumerate()
                    {
                        write(t + k, o);
                    }
                    t += TOKEN_TILE;
                }
                // The rest (a few sessions' decode steps batched together) in one smaller tile.
                macro_rules! rest {
                    ($n:literal) => {{
                        let tile: [_; $n] = std::array::from_fn(|k| acts.row(t + k));
                        for (k, o) in dot_tile::<$n>(path, m.kind, w0, w1, tile)
                            .into_iter()
                            .enumerate()
                        {
                            write(t + k, o);
                        }
                    }};
                }
                match acts.rows - t {
                    3 => rest!(3),
                    2 => rest!(2),
                    1 => rest!(1),
                    _ => {}
                }
                r += 2;
            }
        });
    }
}

/// Query heads that share one key-value head attending over their session's cached keys and
/// values, each key and value `at..at + hd` of its row of `stride` values. `q` holds the heads'
/// queries one after another, `hd` values each; head `r` attends to positions `spans[r]`
/// (`first..=last`: heads of one token share a span, a later token's reaches one further). Every
/// head's scores, softmax and sums are its own, in the definition's order
/// ([`Self::run_portable`]); the x86 paths take several heads at once, each key and value loaded
/// once for all of them, with the same operations lane by lane in wider registers, so every path
/// gives the same bits.
struct Attend<'a> {
    q: &'a [f32],
    hd: usize,
    keys: &'a [f32],
    values: &'a [f32],
    stride: usize,
    at: usize,
    spans: &'a [(usize, usize)],
    scale: f32,
}

/// Heads the AVX-512 attention takes at once (its 32 registers hold six heads' sums).
const ATTEND_ROWS: usize = 6;
/// Heads the AVX2 attention takes at once (its sixteen registers hold three heads' sums).
const ATTEND_ROWS_AVX2: usize = 3;

/// Heads a path's attention takes at once, for heads `hd` wide.
fn attend_rows(path: KernelPath, hd: usize) -> usize {
    match path {
        KernelPath::Avx512 if hd.is_multiple_of(16) => ATTEND_ROWS,
        KernelPath::Avx2 | KernelPath::Avx512 if hd.is_multiple_of(8) => ATTEND_ROWS_AVX2,
        _ => 1,
    }
}

/// Where each head's scores start in the scratch (their spans' lengths one after another), and the
/// positions every head attends to (`first..end`, empty when the spans do not meet).
fn span_layout<const R: usize>(
    spans: [(usize, usize); R],
) -> ([usize; R], [usize; R], usize, usize) {
    let lens = spans.map(|(first, last)| last + 1 - first);
    let mut base = [0; R];
    for r in 1..R {
        base[r] = base[r - 1] + lens[r - 1];
    }
    let first = spans.iter().map(|s| s.0).max().unwrap_or(0);
    let end = spans.iter().map(|s| s.1 + 1).min().unwrap_or(0).max(first);
    (lens, base, first, end)
}

/// The values' sums of `$r` heads over their spans with `$sums`, `$w` registers a head: each
/// head's positions before the ones they all attend to on its own, those for all heads at once,
/// then each head's positions after them; every sum goes on in position order.
macro_rules! spans_pass {
    ($sums:ident, $r:expr, $w:literal, $spans:expr, $sp:expr, $base:expr, $first:expr, $end:expr,
     $value:expr, $out:expr, $hd:expr) => {{
        let (spans, sp, base, first, end, out, hd) = ($spans, $sp, $base, $first, $end, $out, $hd);
        let value = &$value;
        for (r, &(f, l)) in spans.iter().enumerate() {
            let before = f..first.min(l + 1);
            if !before.is_empty() {
                let s = [sp.add(base[r])];
                $sums::<1, $w>(s, before.len(), |i| value(f + i), out.add(r * hd), hd);
            }
        }
        if first < end {
            let s: [*const f32; $r] = std::array::from_fn(|r| sp.add(base[r] + first - spans[r].0));
            $sums::<$r, $w>(s, end - first, |i| value(first + i), out, hd);
        }
        for (r, &(f, l)) in spans.iter().enumerate() {
            let after = end.max(f)..l + 1;
            if !after.is_empty() {
                let (s, at) = ([sp.add(base[r] + after.start - f)], after.start);
                $sums::<1, $w>(s, after.len(), |i| value(at + i), out.add(r * hd), hd);
            }
        }
    }};
}

impl Attend<'_> {
    /// Every head's scores, softmax, then the scores' sum of the values, into `acc` (`hd` values
    /// a head, as `q`; `scores` is scratch).
    fn run(&self, path: KernelPath, scores: &mut Vec<f32>, acc: &mut [f32]) {
        let (hd, rows) = (self.hd, self.spans.len());
        assert!(self.q.len() == rows * hd && acc.len() == rows * hd);
        #[cfg(target_arch = "x86_64")]
        if path == KernelPath::Avx512 && hd.is_multiple_of(16) {
            let mut row = 0;
            while row < rows {
                let n = (rows - row).min(ATTEND_ROWS);
                // SAFETY: the path was checked against the CPU's features when it was chosen.
                unsafe {
                    match n {
                        1 => self.run_avx512::<1>(row, scores, acc),
                        2 => self.run_avx512::<2>(row, scores, acc),
                        3 => self.run_avx512::<3>(row, scores, acc),
                        4 => self.run_avx512::<4>(row, scores, acc),
                        5 => self.run_avx512::<5>(row, scores, acc),
                        _ => self.run_avx512::<ATTEND_ROWS>(row, scores, acc),
                    }
                }
                row += n;
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(path, KernelPath::Avx2 | KernelPath::Avx512) && hd.is_multiple_of(8) {
            let mut row = 0;
            while row < rows {
                let n = (rows - row).min(ATTEND_ROWS_AVX2);
                // SAFETY: the path was checked against the CPU's features when it was chosen,
                // and both x86 paths require AVX2.
                unsafe {
                    match n {
                        1 => self.run_avx2::<1>(row, scores, acc),
                        2 => self.run_avx2::<2>(row, scores, acc),
                        _ => self.run_avx2::<ATTEND_ROWS_AVX2>(row, scores, acc),
                    }
                }
                row += n;
            }
            return;
        }
        let _ = path;
        for (row, acc) in acc.chunks_exact_mut(hd).enumerate() {
            self.run_portable(row, scores, acc);
        }
    }

    fn key(&self, j: usize) -> &[f32] {
        &self.keys[j * self.stride + self.at..][..self.hd]
    }

    fn value(&self, j: usize) -> &[f32] {
        &self.values[j * self.stride + self.at..][..self.hd]
    }

    /// Head `row`'s query.
    fn query(&self, row: usize) -> &[f32] {
        &self.q[row * self.hd..][..self.hd]
    }

    /// Each head's scores at the positions the blocks of the positions all share did not give:
    /// one at a time, as [`math::dot_f32`] does.
    fn other_scores<const R: usize>(
        &self,
        row0: usize,
        scores: &mut [f32],
        base: [usize; R],
        shared: std::ops::Range<usize>,
    ) {
        for r in 0..R {
            let (first, last) = self.spans[row0 + r];
            for j in (first..=last).filter(|j| !shared.contains(j)) {
                scores[base[r] + j - first] =
                    math::dot_f32(self.query(row0 + r), self.key(j)) * self.scale;
            }
        }
    }

    /// [`Self::run_portable`]'s operations in AVX2 registers for the `R` heads from `row0` (`hd`
    /// a multiple of 8), each key and value loaded once for all of them: at the positions they
    /// all attend to, four positions' scores a head at a time, each in its own register whose lane
    /// `j` sums the dimensions `≡ j mod 8` in order (as [`math::dot_f32`] does), the four reduced
    /// by [`crate::dot::tree8`]'s rule together; then the values' sums 32 dimensions a head at a
    /// time, held in four registers across the positions, each lane one dimension's sum in
    /// position order (a head's positions before and after the shared ones added on their own, in
    /// order). Independent sums side by side instead of one chain of additions; the same
    /// operations on each value, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<const R: usize>(&self, row0: usize, scores: &mut Vec<f32>, acc: &mut [f32]) {
        use std::arch::x86_64::*;
        /// `out_r[..8 W] += Σ_i scores_r[i] · values(i)[..8 W]` for every head `r` (its sums at
        /// `out + r hd`), over `n` positions, the sums held in `R W` registers.
        #[inline(always)]
        unsafe fn sums<const R: usize, const W: usize>(
            scores: [*const f32; R],
            n: usize,
            values: impl Fn(usize) -> *const f32,
            out: *mut f32,
            hd: usize,
        ) {
            // SAFETY (the loads and stores): the caller gives `n` scores a head and pointers to
            // at least 8 W floats a value row and a head's output.
            unsafe {
                let mut a: [[__m256; W]; R] = std::array::from_fn(|r| {
                    std::array::from_fn(|w| _mm256_loadu_ps(out.add(r * hd + 8 * w)))
                });
                for i in 0..n {
                    let v = values(i);
                    for (a, s) in a.iter_mut().zip(scores) {
                        let p = _mm256_set1_ps(*s.add(i));
                        for (w, a) in a.iter_mut().enumerate() {
                            *a = _mm256_add_ps(*a, _mm256_mul_ps(p, _mm256_loadu_ps(v.add(8 * w))));
                        }
                    }
                }
                for (r, a) in a.into_iter().enumerate() {
                    for (w, a) in a.into_iter().enumerate() {
                        _mm256_storeu_ps(out.add(r * hd + 8 * w), a);
                    }
                }
            }
        }
        let hd = self.hd;
        assert!(hd.is_multiple_of(8) && (row0 + R) * hd <= acc.len());
        let spans: [(usize, usize); R] = std::array::from_fn(|r| self.spans[row0 + r]);
        let (lens, base, first, end) = span_layout(spans);
        scores.clear();
        scores.resize(lens.iter().sum(), 0.0);
        let (qp, sp) = (self.q[row0 * hd..].as_ptr(), scores.as_mut_ptr());
        let mut j = first;
        // SAFETY: every load is of 8 floats at `c < hd`, `hd` a multiple of 8, from a slice of
        // `hd` floats (or a head's `hd` of `q`); every store is of 4 scores within a head's.
        unsafe {
            let scale = _mm_set1_ps(self.scale);
            while j + 4 <= end {
                let k: [*const f32; 4] = std::array::from_fn(|i| self.key(j + i).as_ptr());
                let mut s = [[_mm256_setzero_ps(); 4]; R];
                for c in (0..hd).step_by(8) {
                    for (i, k) in k.iter().enumerate() {
                        let k = _mm256_loadu_ps(k.add(c));
                        for (r, s) in s.iter_mut().enumerate() {
                            let x = _mm256_loadu_ps(qp.add(r * hd + c));
                            s[i] = _mm256_add_ps(s[i], _mm256_mul_ps(x, k));
                        }
                    }
                }
                for (r, s) in s.into_iter().enumerate() {
                    // tree8 on all four: a position's lanes 0..4 plus its lanes 4..8 (halves:
                    // positions 0 and 1, 2 and 3) …
                    let s01 = _mm256_add_ps(
                        _mm256_permute2f128_ps::<0x20>(s[0], s[1]),
                        _mm256_permute2f128_ps::<0x31>(s[0], s[1]),
                    );
                    let s23 = _mm256_add_ps(
                        _mm256_permute2f128_ps::<0x20>(s[2], s[3]),
                        _mm256_permute2f128_ps::<0x31>(s[2], s[3]),
                    );
                    // … then lanes 0 + 2 and 1 + 3 of each …
                    let u = _mm256_add_ps(
                        _mm256_shuffle_ps::<0b01_00_01_00>(s01, s23),
                        _mm256_shuffle_ps::<0b11_10_11_10>(s01, s23),
                    );
                    // … and their sum: half `h` lane 0 is position `h`'s, lane 1 `2 + h`'s.
                    let u = _mm256_add_ps(
                        _mm256_shuffle_ps::<0b10_00_10_00>(u, u),
                        _mm256_shuffle_ps::<0b11_01_11_01>(u, u),
                    );
                    let four =
                        _mm_unpacklo_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u));
                    let at = sp.add(base[r] + j - spans[r].0);
                    _mm_storeu_ps(at, _mm_mul_ps(four, scale));
                }
                j += 4;
            }
        }
        self.other_scores(row0, scores, base, first..j);
        // SAFETY: AVX2, as this function's.
        unsafe { math::softmax_rows_avx2::<R>(scores, lens) };
        let acc = &mut acc[row0 * hd..(row0 + R) * hd];
        acc.fill(0.0);
        let sp = scores.as_ptr();
        let mut d0 = 0;
        while d0 < hd {
            let value = |j: usize| self.value(j)[d0..].as_ptr();
            let out = acc[d0..].as_mut_ptr();
            // SAFETY: `R` heads' scores at their spans; at least 32 (or 8) floats from `d0` in
            // every value row and in every head's `acc`.
            unsafe {
                if d0 + 32 <= hd {
                    spans_pass!(sums, R, 4, spans, sp, base, first, end, value, out, hd);
                    d0 += 32;
                } else {
                    spans_pass!(sums, R, 1, spans, sp, base, first, end, value, out, hd);
                    d0 += 8;
                }
            }
        }
    }

    /// [`Self::run_avx2`]'s operations for the `R` heads from `row0` (`hd` a multiple of 16) in
    /// AVX-512 registers, each key and value loaded once for all of them: two positions' keys side
    /// by side in a register (a head's query dimensions in both halves), eight positions' scores a
    /// head at a time, their lanes reduced by [`crate::dot::tree8`]'s rule for all eight at once;
    /// then the values' sums 16 dimensions a register. Each value meets the same operations in the
    /// same order as on the portable path, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn run_avx512<const R: usize>(
        &self,
        row0: usize,
        scores: &mut Vec<f32>,
        acc: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        /// `out_r[..16 W] += Σ_i scores_r[i] · values(i)[..16 W]` for every head `r` (its sums
        /// at `out + r hd`), over `n` positions, the sums held in `R W` registers.
        #[inline(always)]
        unsafe fn sums<const R: usize, const W: usize>(
            scores: [*const f32; R],
            n: usize,
            values: impl Fn(usize) -> *const f32,
            out: *mut f32,
            hd: usize,
        ) {
            // SAFETY (the loads and stores): the caller gives `n` scores a head and pointers to
            // at least 16 W floats a value row and a head's output.
            unsafe {
                let mut a: [[__m512; W]; R] = std::array::from_fn(|r| {
                    std::array::from_fn(|w| _mm512_loadu_ps(out.add(r * hd + 16 * w)))
                });
                for i in 0..n {
                    let v = values(i);
                    let v: [__m512; W] = std::array::from_fn(|w| _mm512_loadu_ps(v.add(16 * w)));
                    for (a, s) in a.iter_mut().zip(scores) {
                        let p = _mm512_set1_ps(*s.add(i));
                        for (a, v) in a.iter_mut().zip(v) {
                            *a = _mm512_add_ps(*a, _mm512_mul_ps(p, v));
                        }
                    }
                }
                for (r, a) in a.into_iter().enumerate() {
                    for (w, a) in a.into_iter().enumerate() {
                        _mm512_storeu_ps(out.add(r * hd + 16 * w), a);
                    }
                }
            }
        }
        let hd = self.hd;
        assert!(hd.is_multiple_of(16) && (row0 + R) * hd <= acc.len());
        let spans: [(usize, usize); R] = std::array::from_fn(|r| self.spans[row0 + r]);
        let (lens, base, first, end) = span_layout(spans);
        scores.clear();
        scores.resize(lens.iter().sum(), 0.0);
        let (qp, sp) = (self.q[row0 * hd..].as_ptr(), scores.as_mut_ptr());
        let mut j = first;
        // SAFETY: every load is of 8 floats at `c < hd`, `hd` a multiple of 8, from a slice of
        // `hd` floats (or a head's `hd` of `q`); every store is of 8 scores within a head's.
        unsafe {
            let scale = _mm256_set1_ps(self.scale);
            // Where each of the eight scores lies after the reduction below.
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
            while j + 8 <= end {
                let k: [*const f32; 8] = std::array::from_fn(|i| self.key(j + i).as_ptr());
                // Head `r`'s register `i` holds positions `2i` (low half) and `2i + 1` (high).
                let mut s = [[_mm512_setzero_ps(); 4]; R];
                for c in (0..hd).step_by(8) {
                    let pairs: [__m512; 4] = std::array::from_fn(|i| {
                        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                            _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(
                                k[2 * i].add(c),
                            ))),
                            _mm256_castps_pd(_mm256_loadu_ps(k[2 * i + 1].add(c))),
                        ))
                    });
                    for (r, s) in s.iter_mut().enumerate() {
                        let x = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(
                            _mm256_loadu_ps(qp.add(r * hd + c)),
                        )));
                        for (s, pair) in s.iter_mut().zip(pairs) {
                            *s = _mm512_add_ps(*s, _mm512_mul_ps(x, pair));
                        }
                    }
                }
                for (r, s) in s.into_iter().enumerate() {
                    // tree8 on all eight: a position's lanes 0..4 plus its lanes 4..8 …
                    let lo = |a, b| _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
                    let hi = |a, b| _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
                    // … (register quarter `p` is position `p`, or `4 + p`) …
                    let s03 = _mm512_add_ps(lo(s[0], s[1]), hi(s[0], s[1]));
                    let s47 = _mm512_add_ps(lo(s[2], s[3]), hi(s[2], s[3]));
                    // … then lanes 0 + 2 and 1 + 3 of each …
                    let u = _mm512_add_ps(
                        _mm512_shuffle_ps::<0b01_00_01_00>(s03, s47),
                        _mm512_shuffle_ps::<0b11_10_11_10>(s03, s47),
                    );
                    // … and their sum: quarter `p` lane 0 is position `p`'s, lane 1 `4 + p`'s.
                    let u = _mm512_add_ps(
                        _mm512_shuffle_ps::<0b10_00_10_00>(u, u),
                        _mm512_shuffle_ps::<0b11_01_11_01>(u, u),
                    );
                    let eight = _mm512_castps512_ps256(_mm512_permutexvar_ps(order, u));
                    let at = sp.add(base[r] + j - spans[r].0);
                    _mm256_storeu_ps(at, _mm256_mul_ps(eight, scale));
                }
                j += 8;
            }
        }
        self.other_scores(row0, scores, base, first..j);
        // SAFETY: AVX2, as this function's.
        unsafe { math::softmax_rows_avx2::<R>(scores, lens) };
        let acc = &mut acc[row0 * hd..(row0 + R) * hd];
        acc.fill(0.0);
        let sp = scores.as_ptr();
        let mut d0 = 0;
        while d0 < hd {
            let value = |j: usize| self.value(j)[d0..].as_ptr();
            let out = acc[d0..].as_mut_ptr();
            // SAFETY: `R` heads' scores at their spans; at least 64 (or 16) floats from `d0` in
            // every value row and in every head's `acc`.
            unsafe {
                if d0 + 64 <= hd {
                    spans_pass!(sums, R, 4, spans, sp, base, first, end, value, out, hd);
                    d0 += 64;
                } else {
                    spans_pass!(sums, R, 1, spans, sp, base, first, end, value, out, hd);
                    d0 += 16;
                }
            }
        }
    }

    /// The definition, for head `row`.
    #[inline(always)]
    fn run_portable(&self, row: usize, scores: &mut Vec<f32>, acc: &mut [f32]) {
        let (first, last) = self.spans[row];
        scores.clear();
        for j in first..=last {
            scores.push(math::dot_f32(self.query(row), self.key(j)) * self.scale);
        }
        math::softmax(scores);
        acc.fill(0.0);
        for (j, p) in (first..).zip(scores.iter()) {
            for (a, v) in acc.iter_mut().zip(self.value(j)) {
                *a += p * v;
            }
        }
    }
}

/// A raw output pointer shared by the threads of one job, each writing its own elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: used only for disjoint writes while the owning slice is borrowed by the job.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}
impl Out {
    /// # Safety
    /// `i` must be in bounds and written by no other thread during the job.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: f32) {
        // SAFETY: per the function's contract.
        unsafe { *self.0.add(i) = v }
    }
}

struct Block {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    /// Biases of queries, keys and values ([`Variant::qkv_bias`]).
    qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head norms of queries and keys ([`Variant::qk_norm`]).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    wo: QMatrix,
    /// Norms of the attention's and the feed-forward's outputs ([`Variant::post_norms`]).
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// What a range takes.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Token ids (first range only).
    Tokens(&'a [u32]),
    /// Hidden states, `[tokens][hidden]` row-major.
    Hidden(&'a [f32]),
}

/// One session's keys and values for the layers of a range.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Per layer: keys and values, `[positions][kv_heads · head_dim]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// Positions held.
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.len() + v.len()) * 4)
            .sum()
    }
}

/// A loaded range of a llama model's layers.
pub struct LlamaRange {
    config: Config,
    layers: Range<usize>,
    embedding: Option<QMatrix>,
    blocks: Vec<Block>,
    head: Option<(Vec<f32>, QMatrix)>,

    /// The sliding layers' RoPE tables, when they have their own base.
    /// Whether any layer of the range slides (and so rotates by the sliding layers' base).
    slides: bool,
    /// RoPE's per-frequency divisors ([`Variant::rope_factors`]).
    rope_factors: Option<Vec<f32>>,
}

impl std::fmt::Debug for LlamaRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaRange")
            .field("layers", &self.layers)
            .finish_non_exhaustive()
    }
}

fn matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<QMatrix, String> {
    let info = g
        .tensors
        .get(name)
        .ok_or_else(|| format!("tensor {name} missing"))?;
    let kind = QKind::from_ggml(info.ggml_type).ok_or_else(|| {
        format!(
            "tensor {name} is {} (GGML type {}); Hearth's CPU kernels run {}",
            crate::quant::ggml_type_name(info.ggml_type).unwrap_or("of an unknown type"),
            info.ggml_type,
            crate::quant::KINDS_RUN
        )
    })?;
    if info.dims != [cols, rows] {
        return Err(format!(
            "tensor {name} is {:?}, expected [{cols}, {rows}]",
            info.dims
        ));
    }
    if !cols.is_multiple_of(kind.block_values()) {
        return Err(format!(
            "tensor {name}: {kind:?} rows of {cols} values are not whole blocks of {}",
            kind.block_values()
        ));
    }
    let bytes = g.tensor_view(name, rows * cols / kind.block_values() * kind.block_bytes())?;
    QMatrix::new(kind, rows, cols, bytes).map_err(|e| format!("tensor {name}: {e}"))
}

fn vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>, String> {
    let info = g
        .tensors
        .get(name)
        .ok_or_else(|| format!("tensor {name} missing"))?;
    if info.dims != [len] {
        return Err(format!(
            "tensor {name} is {:?}, expected [{len}]",
            info.dims
        ));
    }
    match info.ggml_type {
        0 => Ok(g
            .tensor_bytes(name, len * 4)?
            .1
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect()),
        1 => Ok(g
            .tensor_bytes(name, len * 2)?
            .1
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        other => Err(format!(
            "tensor {name} has GGML type {other}, expected F32 or F16"
        )),
    }
}

impl LlamaRange {
    /// Load `layers` of the model in `g`: only those blocks, plus the token embedding on the first
    /// range and the final norm and LM head (the token embedding when the model ties them) on the last.
    pub fn load(g: &Gguf, layers: Range<usize>) -> Result<Self, String> {
        let c = Config::from_gguf(g)?;
        if layers.start >= layers.end || layers.end > c.layers {
            return Err(format!(
                "layers {layers:?} are not a range within 0..{}",
                c.layers
            ));
        }
        let (h, kv, qw, v) = (c.hidden, c.kv_heads * c.head_dim, c.q_width(), &c.variant);
        let embedding = (layers.start == 0)
            .then(|| matrix(g, "token_embd.weight", c.vocab, h))
            .transpose()?;
        let blocks = layers
            .clone()
            .map(|i| {
                let t = |part: &str| format!("blk.{i}.{part}.weight");
                let qk_norm = v
                    .qk_norm
                    .then(|| -> Result<_, String> {
                        Ok((
                            vector(g, &t("attn_q_norm"), c.head_dim)?,
                            vector(g, &t("attn_k_norm"), c.head_dim)?,
                        ))
                    })
                    .transpose()?;
                let post_norms = v
                    .post_norms
                    .then(|| -> Result<_, String> {
                        Ok((
                            vector(g, &t("post_attention_norm"), h)?,
                            vector(g, &t("post_ffw_norm"), h)?,
                        ))
                    })
                    .transpose()?;
                let qkv_bias = v
                    .qkv_bias
                    .then(|| -> Result<_, String> {
                        let b = |part: &str, n| vector(g, &format!("blk.{i}.{part}.bias"), n);
                        Ok([b("attn_q", qw)?, b("attn_k", kv)?, b("attn_v", kv)?])
                    })
                    .transpose()?;
                Ok(Block {
                    qkv_bias,
                    attn_norm: vector(g, &t("attn_norm"), h)?,
                    wq: matrix(g, &t("attn_q"), qw, h)?,
                    wk: matrix(g, &t("attn_k"), kv, h)?,
                    wv: matrix(g, &t("attn_v"), kv, h)?,
                    qk_norm,
                    wo: matrix(g, &t("attn_output"), h, qw)?,
                    post_norms,
                    ffn_norm: vector(g, &t("ffn_norm"), h)?,
                    gate: matrix(g, &t("ffn_gate"), c.ffn, h)?,
                    up: matrix(g, &t("ffn_up"), c.ffn, h)?,
                    down: matrix(g, &t("ffn_down"), h, c.ffn)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let head = if layers.end == c.layers {
            let name = if g.tensors.contains_key("output.weight") {
                "output.weight"
            } else {
                "token_embd.weight"
            };
            Some((
                vector(g, "output_norm.weight", h)?,
                matrix(g, name, c.vocab, h)?,
            ))
        } else {
            None
        };
        let slides = layers.clone().any(|i| c.variant.slides(i).is_some());
        let rope_factors = v
            .rope_factors
            .then(|| vector(g, "rope_freqs.weight", c.head_dim / 2))
            .transpose()?;
        Ok(Self {
            config: c,
            layers,
            embedding,
            blocks,
            head,
            slides,
            rope_factors,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The layers this range runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// Whether this range starts with the token embedding.
    pub fn takes_tokens(&self) -> bool {
        self.embedding.is_some()
    }

    /// Whether this range ends with the LM head.
    pub fn gives_logits(&self) -> bool {
        self.head.is_some()
    }

    /// Run `input` at positions `cache.len()..` and append to `cache`. Returns hidden states
    /// `[tokens][hidden]`, or on the last range logits `[rows][vocab]` for every token when
    /// `all_logits`, else for the last.
    pub fn forward(
        &self,
        k: &Kernels,
        cache: &mut KvCache,
        input: Input<'_>,
        all_logits: bool,
    ) -> Result<Vec<f32>, String> {
        let mut out = self.forward_batch(k, &mut [(cache, input, all_logits)]);
        out.pop().expect("one answer per item")
    }

    /// [`Self::forward`] for several sessions at once, each `(cache, input, all_logits)`: one pass
    /// over the weights for all their rows (each row's bits are what it gets alone: the kernels
    /// are batch-invariant), attention within each session's own cache. One answer per item, in
    /// order; an item whose input is bad fails alone.
    pub fn forward_batch(
        &self,
        k: &Kernels,
        items: &mut [(&mut KvCache, Input<'_>, bool)],
    ) -> Vec<Result<Vec<f32>, String>> {
        let c = &self.config;
        let h = c.hidden;
        let mut answers: Vec<Option<Result<Vec<f32>, String>>> = vec![None; items.len()];
        // The rows of every good item, stacked; each good item's (first row, rows, position).
        let mut x = Vec::new();
        let mut segs: Vec<Seg> = Vec::new();
        let mut good = vec![false; items.len()];
        for (i, (cache, input, _)) in items.iter_mut().enumerate() {
            match self.rows(cache, *input, &mut x) {
                Ok(rows) => {
                    good[i] = true;
                    segs.push(Seg {
                        start: x.len() / h - rows,
                        rows,
                        pos: cache.len,
                    });
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        if segs.is_empty() {
            return answers.into_iter().map(|a| a.expect("answered")).collect();
        }
        let mut s = Scratch::new(c, x.len() / h);
        // The rotary angles of every stacked row's position, once for all layers.
        let mut positions = vec![0; x.len() / h];
        for seg in &segs {
            for i in 0..seg.rows {
                positions[seg.start + i] = seg.pos + i;
            }
        }
        let factors = self.rope_factors.as_deref();
        s.rope = math::rope_rows(c.rope_base, c.head_dim, factors, positions.iter().copied());
        if self.slides {
            s.rope_sliding = math::rope_rows(
                c.variant.rope_base_sliding,
                c.head_dim,
                factors,
                positions.iter().copied(),
            );
        }
        for (layer, b) in self.blocks.iter().enumerate() {
            let mut kvs: Vec<&mut (Vec<f32>, Vec<f32>)> = items
                .iter_mut()
                .zip(&good)
                .filter(|(_, g)| **g)
                .map(|((cache, ..), _)| &mut cache.layers[layer])
                .collect();
            self.block(
                k,
                self.layers.start + layer,
                b,
                &mut x,
                &mut kvs,
                &segs,
                &mut s,
            );
        }
        let goods: Vec<usize> = (0..items.len()).filter(|&i| good[i]).collect();
        for (&i, seg) in goods.iter().zip(&segs) {
            items[i].0.len = seg.pos + seg.rows;
        }
        let Some((norm, head)) = &self.head else {
            for (&i, seg) in goods.iter().zip(&segs) {
                answers[i] = Some(Ok(x[seg.start * h..(seg.start + seg.rows) * h].to_vec()));
            }
            return answers.into_iter().map(|a| a.expect("answered")).collect();
        };
        // The rows each item wants logits of: every row, or its last.
        let wanted: Vec<(usize, usize)> = goods
            .iter()
            .zip(&segs)
            .map(|(&i, seg)| {
                if items[i].2 {
                    (seg.start, seg.rows)
                } else {
                    (seg.start + seg.rows - 1, 1)
                }
            })
            .collect();
        let rows: usize = wanted.iter().map(|(_, n)| n).sum();
        let mut normed = vec![0f32; rows * h];
        let mut o = normed.chunks_exact_mut(h);
        for &(first, n) in &wanted {
            for r in x[first * h..(first + n) * h].chunks_exact(h) {
                math::rms_norm(r, norm, c.rms_eps, o.next().expect("sized above"));
            }
        }
        s.acts.quantize(&normed, h, &[head]);
        let mut logits = vec![0f32; rows * c.vocab];
        k.matmul(&s.acts, &[head], &mut [&mut logits]);
        let mut at = 0;
        for (&i, &(_, n)) in goods.iter().zip(&wanted) {
            answers[i] = Some(Ok(logits[at * c.vocab..(at + n) * c.vocab].to_vec()));
            at += n;
        }
        answers.into_iter().map(|a| a.expect("answered")).collect()
    }

    /// Append `input`'s rows (embedded, for tokens) to `x`, checked against the range and the
    /// context after `cache`; how many.
    fn rows(
        &self,
        cache: &mut KvCache,
        input: Input<'_>,
        x: &mut Vec<f32>,
    ) -> Result<usize, String> {
        let c = &self.config;
        let h = c.hidden;
        let before = x.len();
        match (input, &self.embedding) {
            (Input::Tokens(ids), Some(e)) => {
                if let Some(id) = ids.iter().find(|&&id| id as usize >= c.vocab) {
                    return Err(format!("token id {id} is outside the vocabulary"));
                }
                x.resize(before + ids.len() * h, 0.0);
                for (row, &id) in x[before..].chunks_exact_mut(h).zip(ids) {
                    e.dequantize_row(id as usize, row);
                    if let Some(scale) = c.variant.embed_scale {
                        for v in row.iter_mut() {
                            *v *= scale;
                        }
                    }
                }
            }
            (Input::Hidden(rows), None) if rows.len() % h == 0 => x.extend_from_slice(rows),
            (Input::Hidden(rows), None) => {
                return Err(format!("{} values are not rows of {h}", rows.len()));
            }
            (Input::Tokens(_), None) => {
                return Err(format!(
                    "layers {:?} take hidden states, not tokens",
                    self.layers
                ));
            }
            (Input::Hidden(_), Some(_)) => {
                return Err("the first layers take tokens, not hidden states".into());
            }
        }
        let seq = (x.len() - before) / h;
        let pos = cache.len;
        let fail = |x: &mut Vec<f32>, why: String| {
            x.truncate(before);
            Err(why)
        };
        if seq == 0 {
            return fail(x, "the input is empty".into());
        }
        if pos + seq > c.context {
            return fail(
                x,
                format!(
                    "positions up to {} exceed the context of {}",
                    pos + seq,
                    c.context
                ),
            );
        }
        if cache.layers.len() != self.blocks.len() {
            cache.layers = vec![Default::default(); self.blocks.len()];
        }
        Ok(seq)
    }

    /// One layer for the stacked rows `x` of several sessions: `segs[i]` says where session `i`'s
    /// rows are and at which position they start, `kvs[i]` is its keys and values of this layer.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        k: &Kernels,
        layer: usize,
        b: &Block,
        x: &mut [f32],
        kvs: &mut [&mut (Vec<f32>, Vec<f32>)],
        segs: &[Seg],
        s: &mut Scratch,
    ) {
        let c = &self.config;
        let (h, hd, kvw, qw) = (c.hidden, c.head_dim, c.kv_heads * c.head_dim, c.q_width());
        let half = hd / 2;
        let window = c.variant.slides(layer);
        let (cos_table, sin_table) = match window {
            Some(_) => (&s.rope_sliding.0, &s.rope_sliding.1),
            None => (&s.rope.0, &s.rope.1),
        };
        let rope = if c.variant.rope_neox {
            math::rope_neox
        } else {
            math::rope
        };

        for (o, r) in s.normed.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
            math::rms_norm(r, &b.attn_norm, c.rms_eps, o);
        }
        s.acts.quantize(&s.normed, h, &[&b.wq, &b.wk, &b.wv]);
        k.matmul(
            &s.acts,
            &[&b.wq, &b.wk, &b.wv],
            &mut [&mut s.q, &mut s.k, &mut s.v],
        );
        if let Some([bq, bk, bv]) = &b.qkv_bias {
            for (out, bias) in [(&mut s.q, bq), (&mut s.k, bk), (&mut s.v, bv)] {
                for row in out.chunks_exact_mut(bias.len()) {
                    for (x, b) in row.iter_mut().zip(bias) {
                        *x += b;
                    }
                }
            }
        }
        if let Some((qn, kn)) = &b.qk_norm {
            let mut normed = vec![0f32; hd];
            for (heads, w) in [(&mut s.q, qn), (&mut s.k, kn)] {
                for head in heads.chunks_exact_mut(hd) {
                    math::rms_norm(head, w, c.rms_eps, &mut normed);
                    head.copy_from_slice(&normed);
                }
            }
        }
        for seg in segs {
            for i in 0..seg.rows {
                let t = seg.start + i;
                let (cos, sin) = (
                    &cos_table[t * half..(t + 1) * half],
                    &sin_table[t * half..(t + 1) * half],
                );
                for head in s.q[t * qw..(t + 1) * qw].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
                for head in s.k[t * kvw..(t + 1) * kvw].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
            }
        }
        for (seg, (kc, vc)) in segs.iter().zip(kvs.iter_mut().map(|kv| &mut **kv)) {
            let rows = seg.start * kvw..(seg.start + seg.rows) * kvw;
            kc.extend_from_slice(&s.k[rows.clone()]);
            vc.extend_from_slice(&s.v[rows]);
        }

        // Attention: a few of a session's consecutive tokens and their heads that share a
        // key-value head at a time, in parallel; each token within its own session's keys and
        // values.
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let seq = x.len() / h;
        // Tokens a unit takes: as many as the path's attention takes heads at once.
        let tile = (attend_rows(k.path, hd) / group).max(1);
        // Per row: its session's keys, values, and the position it attends up to.
        let mut rows: Vec<(&[f32], &[f32], usize)> = Vec::with_capacity(seq);
        // Units of work: (first row, rows, key-value head).
        let mut units = Vec::new();
        for (seg, kv) in segs.iter().zip(kvs.iter()) {
            for i in 0..seg.rows {
                rows.push((&kv.0[..], &kv.1[..], seg.pos + i));
            }
            for i in (0..seg.rows).step_by(tile) {
                let n = tile.min(seg.rows - i);
                units.extend((0..c.kv_heads).map(|kvh| (seg.start + i, n, kvh)));
            }
        }
        let per_chunk = (HEADS_PER_CHUNK / (group * tile)).max(1);
        let out = Out(s.attn.as_mut_ptr());
        let (q, rows, units) = (&s.q, &rows, &units);
        let path = k.path;
        let width = group * hd;
        k.pool.run(units.len().div_ceil(per_chunk), &|chunk| {
            let (mut scores, mut queries, mut spans, mut acc) = (vec![], vec![], vec![], vec![]);
            for &(t0, n, kvh) in
                &units[chunk * per_chunk..((chunk + 1) * per_chunk).min(units.len())]
            {
                let (kc, vc, _) = rows[t0];
                // Token `t`'s heads `kvh · group ..` are `width` values at `t · qw + kvh · width`,
                // in `q` and in `attn`.
                queries.clear();
                spans.clear();
                for t in t0..t0 + n {
                    queries.extend_from_slice(&q[t * qw + kvh * width..][..width]);
                    let p = rows[t].2;
                    // A sliding layer attends to its last `window` positions only.
                    let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
                    spans.extend(std::iter::repeat_n((first, p), group));
                }
                acc.resize(n * width, 0.0);
                let heads = Attend {
                    q: &queries,
                    hd,
                    keys: kc,
                    values: vc,
                    stride: kvw,
                    at: kvh * hd,
                    spans: &spans,
                    scale,
                };
                heads.run(path, &mut scores, &mut acc);
                for (t, acc) in (t0..).zip(acc.chunks_exact(width)) {
                    for (d, a) in acc.iter().enumerate() {
                        // SAFETY: each (token, key-value head) is one unit's alone; `attn`
                        // outlives the job.
                        unsafe { out.write(t * qw + kvh * width + d, *a) };
                    }
                }
            }
        });
        s.acts.quantize(&s.attn, qw, &[&b.wo]);
        k.matmul(&s.acts, &[&b.wo], &mut [&mut s.o]);
        self.residual(x, &mut s.o, b.post_norms.as_ref().map(|(a, _)| a));

        for (o, r) in s.normed.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
            math::rms_norm(r, &b.ffn_norm, c.rms_eps, o);
        }
        s.acts.quantize(&s.normed, h, &[&b.gate, &b.up]);
        k.matmul(&s.acts, &[&b.gate, &b.up], &mut [&mut s.gate, &mut s.up]);
        if c.variant.gelu {
            math::gelu_mul(&mut s.gate, &s.up);
        } else {
            math::silu_mul(&mut s.gate, &s.up);
        }
        s.acts.quantize(&s.gate, c.ffn, &[&b.down]);
        k.matmul(&s.acts, &[&b.down], &mut [&mut s.o]);
        self.residual(x, &mut s.o, b.post_norms.as_ref().map(|(_, f)| f));
    }

    /// `x += o`, `o`'s rows RMS-normed by `norm` first when the architecture has it.
    fn residual(&self, x: &mut [f32], o: &mut [f32], norm: Option<&Vec<f32>>) {
        let h = self.config.hidden;
        if let Some(w) = norm {
            let mut normed = vec![0f32; h];
            for row in o.chunks_exact_mut(h) {
                math::rms_norm(row, w, self.config.rms_eps, &mut normed);
                row.copy_from_slice(&normed);
            }
        }
        for (x, o) in x.iter_mut().zip(o.iter()) {
            *x += o;
        }
    }
}

/// Where one session's rows sit in a batch: rows `start..start + rows` of the stacked input, at
/// positions `pos..`.
#[derive(Clone, Copy, Debug)]
struct Seg {
    start: usize,
    rows: usize,
    pos: usize,
}

/// Buffers reused across the layers of one forward pass.
struct Scratch {
    acts: Acts,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Cosines and sines of each stacked row's position, by the model's base and by the sliding
    /// layers' base.
    rope: (Vec<f32>, Vec<f32>),
    rope_sliding: (Vec<f32>, Vec<f32>),
}

impl Scratch {
    fn new(c: &Config, seq: usize) -> Self {
        let kvw = c.kv_heads * c.head_dim;
        Self {
            acts: Acts::default(),
            normed: vec![0.0; seq * c.hidden],
            q: vec![0.0; seq * c.q_width()],
            k: vec![0.0; seq * kvw],
            v: vec![0.0; seq * kvw],
            attn: vec![0.0; seq * c.q_width()],
            o: vec![0.0; seq * c.hidden],
            gate: vec![0.0; seq * c.ffn],
            up: vec![0.0; seq * c.ffn],
            rope: Default::default(),
            rope_sliding: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The x86 attentions give the portable definition's bits: head widths of 8, 16, 64, 72, 80
    /// and 256, one to eight heads sharing a key-value head, their spans the same, a later token's
    /// reaching one further (causal), or both ends a step on (sliding), a position or many, the
    /// first position not 0, and large and tiny values.
    #[test]
    fn attention_on_every_x86_path_gives_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        {
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let unit = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if seed.is_multiple_of(17) {
                    unit * 1e4
                } else if seed.is_multiple_of(13) {
                    unit * 1e-6
                } else {
                    unit
                }
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for hd in [8, 16, 64, 72, 80, 256] {
                for heads in 1..=8 {
                    for positions in [1, 3, 4, 8, 9, 17, 70] {
                        for (group, slide) in [(heads, 0), (1, 0), (2, 0), (3, 0), (2, 1), (1, 1)] {
                            let stride = hd * 2;
                            let q: Vec<f32> = (0..heads * hd).map(|_| next()).collect();
                            let room = positions + heads;
                            let keys: Vec<f32> = (0..room * stride).map(|_| next()).collect();
                            let values: Vec<f32> = (0..room * stride).map(|_| next()).collect();
                            // Head `r` is of token `r / group`, each token a position further on.
                            let spans: Vec<(usize, usize)> = (0..heads)
                                .map(|r| {
                                    let t = r / group;
                                    (positions / 3 + slide * t, positions - 1 + t)
                                })
                                .collect();
                            let attend = Attend {
                                q: &q,
                                hd,
                                keys: &keys,
                                values: &values,
                                stride,
                                at: hd,
                                spans: &spans,
                                scale: 0.125,
                            };
                            let mut scores = Vec::new();
                            let mut want = vec![f32::NAN; heads * hd];
                            for (row, acc) in want.chunks_exact_mut(hd).enumerate() {
                                attend.run_portable(row, &mut scores, acc);
                            }
                            for path in [KernelPath::Avx2, KernelPath::Avx512] {
                                if !path.supported() {
                                    continue;
                                }
                                let mut got = vec![f32::NAN; heads * hd];
                                attend.run(path, &mut scores, &mut got);
                                assert_eq!(
                                    bits(&want),
                                    bits(&got),
                                    "{path:?}, width {hd}, {heads} heads in groups of {group} \
                                     (slide {slide}), {positions} positions"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
