//! Quantized weights as GGUF stores them, and activations quantized the way llama.cpp does.
//!
//! - `Q4_1` weights: blocks of 32 values, 20 bytes: `d` (f16), `m` (f16), 16 bytes of nibbles; value
//!   `k` is `d · q_k + m`, with `q_k` the low nibble of byte `k` for `k < 16`, the high nibble of byte
//!   `k − 16` otherwise.
//! - `Q8_0` weights: blocks of 32, 34 bytes: `d` (f16) and 32 signed bytes; value `k` is `d · q_k`.
//! - Activations ([`Q8Acts`]): per block of 32, `d = max|x| / 127` (kept as f16, as llama.cpp's
//!   `block_q8_1` does), `q = round(x / d)`, and `s = d · Σq` (f16) for the `Q4_1` offset term.

use half::f16;

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Bytes of one `Q4_1` block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one `Q8_0` block.
pub const Q8_0_BYTES: usize = 34;

/// How a matrix's rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKind {
    /// GGML type 3.
    Q4_1,
    /// GGML type 8.
    Q8_0,
}

impl QKind {
    /// Bytes per block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
        }
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
    /// `rows × cols / 32` blocks.
    pub data: Vec<u8>,
}

impl QMatrix {
    /// Wrap `data`, checking its length.
    pub fn new(kind: QKind, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, String> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns are not a multiple of {BLOCK}"));
        }
        let want = rows * cols / BLOCK * kind.block_bytes();
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
        self.cols / BLOCK * self.kind.block_bytes()
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 values (a token embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            match self.kind {
                QKind::Q4_1 => {
                    let blk = &row[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
                    let (d, m) = (half_at(blk, 0), half_at(blk, 2));
                    for k in 0..BLOCK {
                        let q = if k < 16 {
                            blk[4 + k] & 15
                        } else {
                            blk[4 + k - 16] >> 4
                        };
                        out[k] = d * f32::from(q) + m;
                    }
                }
                QKind::Q8_0 => {
                    let blk = &row[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                    let d = half_at(blk, 0);
                    for k in 0..BLOCK {
                        out[k] = d * f32::from(blk[2 + k] as i8);
                    }
                }
            }
        }
    }
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
