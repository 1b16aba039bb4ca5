//! Quantized weights as GGUF stores them, and activations quantized the way llama.cpp does.
//!
//! - `Q4_1` weights: blocks of 32 values, 20 bytes: `d` (f16), `m` (f16), 16 bytes of nibbles; value
//!   `k` is `d · q_k + m`, with `q_k` the low nibble of byte `k` for `k < 16`, the high nibble of byte
//!   `k − 16` otherwise.
//! - `Q8_0` weights: blocks of 32, 34 bytes: `d` (f16) and 32 signed bytes; value `k` is `d · q_k`.
//! - `Q4_0` and `Q5_0` weights: blocks of 32 (18 and 22 bytes): `d` (f16), for `Q5_0` 32 high bits
//!   (`u32`, bit `k` for value `k`), 16 bytes of nibbles as `Q4_1`'s; value `k` is `d · (q_k − 8)`
//!   (`Q4_0`) or `d · (q_k + 16 · h_k − 16)` (`Q5_0`).
//! - K-quants ([`crate::kquant`]): super-blocks of 256 values with 6- or 8-bit scales per 32 or 16.
//! - Activations ([`Q8Acts`]): per block of 32, `d = max|x| / 127` (kept as f16, as llama.cpp's
//!   `block_q8_1` does), `q = round(x / d)`, and `s = d · Σq` (f16) for the `Q4_1` offset term.

use half::f16;

use crate::bytes::WeightBytes;

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Bytes of one `Q4_1` block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one `Q8_0` block.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one `Q4_0` block.
pub const Q4_0_BYTES: usize = 18;
/// Bytes of one `Q5_0` block.
pub const Q5_0_BYTES: usize = 22;

/// How a matrix's rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKind {
    /// GGML type 2.
    Q4_0,
    /// GGML type 3.
    Q4_1,
    /// GGML type 6.
    Q5_0,
    /// GGML type 8.
    Q8_0,
    /// GGML type 12.
    Q4K,
    /// GGML type 13.
    Q5K,
    /// GGML type 14.
    Q6K,
    /// GGML type 0: plain f32 values ([`crate::float`]).
    F32,
    /// GGML type 1: f16 values.
    F16,
    /// GGML type 30: bfloat16 values.
    BF16,
}

/// The GGML tensor types Hearth's CPU kernels run, as messages name them.
pub const KINDS_RUN: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K and Q6_K";

/// The name llama.cpp gives GGUF's tensor type id `ggml_type` (`Q3_K`, `IQ4_XS`, …), for messages;
/// `None` for an id no GGML release has used.
pub fn ggml_type_name(ggml_type: u32) -> Option<&'static str> {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(ggml_type as usize).copied()
}

impl QKind {
    /// The kind GGUF's type id `ggml_type` names, if Hearth reads it.
    pub fn from_ggml(ggml_type: u32) -> Option<Self> {
        Some(match ggml_type {
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            0 => Self::F32,
            1 => Self::F16,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Values per block: 32, 256 for the K-quants' super-blocks, 1 for the float types.
    pub fn block_values(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => crate::kquant::QK_K,
            Self::F32 | Self::F16 | Self::BF16 => 1,
            _ => BLOCK,
        }
    }

    /// Whether its values are plain floats ([`crate::float`]: activations are not quantized).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => Q4_0_BYTES,
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q5_0 => Q5_0_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
            Self::Q4K => crate::kquant::Q4_K_BYTES,
            Self::Q5K => crate::kquant::Q5_K_BYTES,
            Self::Q6K => crate::kquant::Q6_K_BYTES,
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// Whether its products take activations quantized in super-blocks of 256
    /// ([`crate::kquant::Q8KActs`], llama.cpp's `Q8_K`) rather than blocks of 32 ([`Q8Acts`]).
    pub fn is_k(self) -> bool {
        self.block_values() == crate::kquant::QK_K
    }
}

/// A quantized `rows × cols` matrix, row-major, in GGUF's block layout.
#[derive(Clone, Debug)]
pub struct QMatrix {
    /// Storage type.
    pub kind: QKind,
    /// Output size.
    pub rows: usize,
    /// Input size, a multiple of 32.
    pub cols: usize,
    /// `rows × cols / 32` blocks: owned, or a window on the mapped model file.
    pub data: WeightBytes,
}

impl QMatrix {
    /// Wrap `data`, checking its length.
    pub fn new(
        kind: QKind,
        rows: usize,
        cols: usize,
        data: impl Into<WeightBytes>,
    ) -> Result<Self, String> {
        let data = data.into();
        let block = kind.block_values();
        if !cols.is_multiple_of(block) {
            return Err(format!(
                "{kind:?} rows of {cols} columns: not a multiple of its block of {block}"
            ));
        }
        let want = rows * cols / block * kind.block_bytes();
        if data.len() != want {
            return Err(format!(
                "{kind:?} {rows}×{cols} needs {want} bytes, got {}",
                data.len()
            ));
        }
        Ok(Self {
            kind,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.kind.block_values() * self.kind.block_bytes()
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 values (a token embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.kind, self.row(r), out);
    }
}

/// Blocks of `kind` as f32 values, computed as GGML's own dequantizers compute them (the same
/// float operations in the same order, so the same bits).
pub fn dequantize(kind: QKind, blocks: &[u8], out: &mut [f32]) {
    if kind.is_k() {
        return crate::kquant::dequantize(kind, blocks, out);
    }
    if kind.is_float() {
        return crate::float::to_f32(kind, blocks, out);
    }
    let size = kind.block_bytes();
    for (blk, out) in blocks.chunks_exact(size).zip(out.chunks_exact_mut(BLOCK)) {
        let d = half_at(blk, 0);
        for (k, out) in out.iter_mut().enumerate() {
            *out = match kind {
                QKind::Q4_1 => d * f32::from(nibble(&blk[4..20], k)) + half_at(blk, 2),
                QKind::Q8_0 => d * f32::from(blk[2 + k] as i8),
                QKind::Q4_0 => d * f32::from(nibble(&blk[2..18], k) as i8 - 8),
                QKind::Q5_0 => d * f32::from(q5_0(blk, k)),
                QKind::Q4K | QKind::Q5K | QKind::Q6K | QKind::F32 | QKind::F16 | QKind::BF16 => {
                    unreachable!("handled above")
                }
            };
        }
    }
}

/// Value `k` (of 32) of a block's 16 bytes of nibbles: the low nibble of byte `k` for `k < 16`,
/// the high nibble of byte `k − 16` otherwise.
#[inline(always)]
pub(crate) fn nibble(qs: &[u8], k: usize) -> u8 {
    if k < 16 { qs[k] & 15 } else { qs[k - 16] >> 4 }
}

/// Value `k` of a `Q5_0` block as a signed integer in −16..16.
#[inline(always)]
pub(crate) fn q5_0(blk: &[u8], k: usize) -> i8 {
    let high = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]) >> k & 1;
    (nibble(&blk[6..22], k) | (high as u8) << 4) as i8 - 16
}

/// The f16 at `bytes[at..at + 2]` (little-endian), as f32 (exact).
#[inline(always)]
pub fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Rows of activations quantized per block of 32.
#[derive(Clone, Debug, Default)]
pub struct Q8Acts {
    /// Rows (tokens).
    pub rows: usize,
    /// Blocks per row.
    pub blocks: usize,
    /// Per block: the scale, an f16 value held as f32.
    pub d: Vec<f32>,
    /// Per block: `d · Σq`, an f16 value held as f32.
    pub s: Vec<f32>,
    /// Per block: 32 quantized values.
    pub qs: Vec<i8>,
    /// Per block: `[d, s, d, s]`, laid out for the SIMD paths that scale two rows at once.
    pub ds: Vec<[f32; 4]>,
}

impl Q8Acts {
    /// Quantize `x`, `rows × cols` row-major (`cols` a multiple of 32), reusing this buffer.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        self.rows = x.len() / cols;
        self.blocks = cols / BLOCK;
        let n = self.rows * self.blocks;
        self.d.resize(n, 0.0);
        self.s.resize(n, 0.0);
        self.qs.resize(n * BLOCK, 0);
        self.ds.resize(n, [0.0; 4]);
        for (i, block) in x.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in self.qs[i * BLOCK..(i + 1) * BLOCK].iter_mut().zip(block) {
                let r = round_half_away(v * id);
                sum += i32::from(r);
                *q = r;
            }
            self.d[i] = f16::from_f32(d).to_f32();
            self.s[i] = f16::from_f32(sum as f32 * d).to_f32();
            self.ds[i] = [self.d[i], self.s[i], self.d[i], self.s[i]];
        }
    }

    /// Row `t`'s scales, sums and values.
    #[inline(always)]
    pub fn row(&self, t: usize) -> ActRow<'_> {
        let (a, b) = (t * self.blocks, (t + 1) * self.blocks);
        ActRow {
            d: &self.d[a..b],
            s: &self.s[a..b],
            qs: &self.qs[a * BLOCK..b * BLOCK],
            ds: &self.ds[a..b],
        }
    }
}

/// `v` rounded to the nearest integer, halves away from zero (C's `roundf`, as llama.cpp quantizes),
/// for |v| < 127.5. Without `roundf`: on baseline x86-64 that is a library call per value.
#[inline(always)]
fn round_half_away(v: f32) -> i8 {
    let t = v as i32; // truncates toward zero
    let frac = v - t as f32; // exact
    let r = if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    };
    r as i8
}

/// Activations quantized in the forms the matrices they meet take: blocks of 32 ([`Q8Acts`]) for
/// `Q4_0`, `Q4_1`, `Q5_0` and `Q8_0`, super-blocks of 256 ([`crate::kquant::Q8KActs`]) for the
/// K-quants; each form only when one of the matrices needs it.
#[derive(Clone, Debug, Default)]
pub struct Acts {
    /// Blocks of 32 (when a matrix needs them).
    pub q8: Q8Acts,
    /// Super-blocks of 256 (when a matrix needs them).
    pub q8k: crate::kquant::Q8KActs,
    /// The activations rounded for float matrices ([`crate::float::round_acts`]): for F32, F16
    /// and BF16 matrices, each when one of the matrices is of that type.
    pub floats: [Vec<f32>; 3],
    /// Rows (tokens).
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
}

impl Acts {
    /// Quantize `x` (`rows × cols`, row-major) for a product with each of `mats`.
    pub fn quantize(&mut self, x: &[f32], cols: usize, mats: &[&QMatrix]) {
        self.rows = x.len() / cols.max(1);
        self.cols = cols;
        if mats.iter().any(|m| !m.kind.is_k() && !m.kind.is_float()) {
            self.q8.quantize(x, cols);
        }
        for (i, kind) in FLOAT_KINDS.into_iter().enumerate() {
            if mats.iter().any(|m| m.kind == kind) {
                crate::float::round_acts(kind, x, &mut self.floats[i]);
            }
        }
        if mats.iter().any(|m| m.kind.is_k()) {
            self.q8k.quantize(x, cols);
        }
    }

    /// The activations rounded for a float matrix of `kind` (quantized for one), `cols` a token.
    pub fn floats_for(&self, kind: QKind) -> &[f32] {
        let i = FLOAT_KINDS
            .iter()
            .position(|k| *k == kind)
            .expect("a float type");
        &self.floats[i]
    }
}

/// The float matrix types, in the order of [`Acts::floats`].
const FLOAT_KINDS: [QKind; 3] = [QKind::F32, QKind::F16, QKind::BF16];

/// One quantized activation row.
#[derive(Clone, Copy, Debug)]
pub struct ActRow<'a> {
    /// Scales per block.
    pub d: &'a [f32],
    /// `d · Σq` per block.
    pub s: &'a [f32],
    /// Values, 32 per block.
    pub qs: &'a [i8],
    /// `[d, s, d, s]` per block.
    pub ds: &'a [[f32; 4]],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_activations_reconstruct_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let mut a = Q8Acts::default();
        a.quantize(&x, 64);
        let row = a.row(0);
        for (k, v) in x.iter().enumerate() {
            let d = row.d[k / BLOCK];
            let back = d * f32::from(row.qs[k]);
            assert!((back - v).abs() <= d * 0.51 + 1e-3, "{k}: {back} vs {v}");
        }
        let sum: i32 = row.qs[..32].iter().map(|&q| i32::from(q)).sum();
        assert!((row.s[0] - row.d[0] * sum as f32).abs() < 1e-2);
    }

    #[test]
    fn rounding_is_c_roundf() {
        for i in -1270..=1270 {
            for v in [
                i as f32 * 0.1,
                i as f32 * 0.1 + 0.05,
                0.499_999_97,
                -0.499_999_97,
                2.5,
                -2.5,
            ] {
                assert_eq!(i32::from(round_half_away(v)), v.round() as i32, "{v}");
            }
        }
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let mut a = Q8Acts::default();
        a.quantize(&[0.0; 32], 32);
        assert_eq!((a.d[0], a.s[0]), (0.0, 0.0));
        assert!(a.qs.iter().all(|&q| q == 0));
    }
}
