//! llama.cpp's K-quants: super-blocks of 256 values, and the 8-bit activations (`Q8_K`) their
//! products take.
//!
//! - `Q4_K` (144 bytes): `d`, `dmin` (f16), 12 bytes packing eight 6-bit scales and eight 6-bit
//!   mins, 128 bytes of nibbles. Sub-block `s` (32 values) is `d · sc_s · q − dmin · m_s`; the
//!   64 values from `32c` bytes on are the low nibbles of bytes `32c..32c+32` (sub-block `2c`), then
//!   their high nibbles (sub-block `2c + 1`).
//! - `Q5_K` (176 bytes): as `Q4_K` with 32 bytes of fifth bits between the scales and the nibbles:
//!   value `l` of sub-block `s` gets 16 from bit `s` of byte `l`.
//! - `Q6_K` (210 bytes): 128 bytes of low nibbles, 64 bytes of two-bit highs, sixteen signed 8-bit
//!   scales (one per 16 values), `d` (f16) last; a value is `d · sc · (q − 32)`.
//! - `Q8_K` activations ([`Q8KActs`]): per super-block an f32 scale and 256 signed bytes, and the
//!   sums of each 16 (`bsums`, for the mins), quantized exactly as llama.cpp's
//!   `quantize_row_q8_K_ref` does (its scale is `−max / 127` for the value of largest magnitude,
//!   rounding half to even).
//!
//! The products keep the rule of [`crate::dot`]: the integer part of a super-block is exact, the
//! float accumulation fixed:
//!
//! ```text
//! acc[0..8] = 0; offset = 0
//! for each super-block b, in order:
//!     for j in 0..8:  p_j = Σ over the eight 32-value groups g, Σ_{k = 4j..4j+3}
//!                           scale(32g + k) · q_w[32g + k] · q_a[32g + k]      (exact, in integers)
//!     dd = d_w[b] · d_a[b]
//!     for j in 0..8:  acc[j] = acc[j] + dd · p_j                               (no FMA)
//!     Q4_K, Q5_K:     offset = offset − (dmin_w[b] · d_a[b]) · Σ_k m(k) · q_a[k]
//! result = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)) + offset
//! ```
//!
//! Every `p_j` stays below 2²⁴ (at most 8 groups × 4 × 32 × 127 × 128 for `Q6_K`), so it converts
//! to f32 exactly.

use crate::dot::tree8;
use crate::quant::{QKind, half_at};

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of one `Q4_K` super-block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of one `Q5_K` super-block.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of one `Q6_K` super-block.
pub const Q6_K_BYTES: usize = 210;

/// Scale and min `j` (of 8) of a `Q4_K`/`Q5_K` super-block's 12 packed bytes (llama.cpp's
/// `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The eight scales of a `Q4_K`/`Q5_K` super-block (its bytes `4..16`), and
/// `Σ_k m(k) · q_a[k]` from the activations' sums of 16 ([`mins_sum`]). NEON's product reads them
/// per token; AVX2's unpacks the scales once a tile.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub(crate) fn scales_and_mins(packed: &[u8], bsums: &[i16; QK_K / 16]) -> ([i32; 8], i32) {
    let mut scales = [0i32; 8];
    let mut mins = [0i32; 8];
    for j in 0..8 {
        let (sc, m) = scale_min(j, packed);
        scales[j] = i32::from(sc);
        mins[j] = i32::from(m);
    }
    (scales, mins_sum(&mins, bsums))
}

/// `Σ_k m(k) · q_a[k]` of a super-block whose eight mins are `mins`, from the activations' sums
/// of 16, in order.
#[inline(always)]
pub(crate) fn mins_sum(mins: &[i32; 8], bsums: &[i16; QK_K / 16]) -> i32 {
    let mut sum = 0i32;
    for (j, m) in mins.iter().enumerate() {
        sum += m * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1]));
    }
    sum
}

/// A super-block's 256 integer values and, per value, its integer scale (and min, for the
/// kinds that have them): what both the dequantizer and the products read.
struct Unpacked {
    q: [i32; QK_K],
    scale: [i32; QK_K],
    min: [i32; QK_K],
}

fn unpack(kind: QKind, blk: &[u8]) -> Unpacked {
    let mut u = Unpacked {
        q: [0; QK_K],
        scale: [0; QK_K],
        min: [0; QK_K],
    };
    match kind {
        QKind::Q4K | QKind::Q5K => {
            let scales = &blk[4..16];
            let (qh, qs) = match kind {
                QKind::Q5K => (Some(&blk[16..48]), &blk[48..176]),
                _ => (None, &blk[16..144]),
            };
            for v in 0..QK_K {
                let (c, half, l) = (v / 64, v % 64 / 32, v % 32);
                let byte = qs[32 * c + l];
                let s = 2 * c + half;
                let nib = if half == 0 { byte & 15 } else { byte >> 4 };
                let high = qh.map_or(0, |qh| (qh[l] >> s) & 1);
                let (sc, m) = scale_min(s, scales);
                u.q[v] = i32::from(nib | high << 4);
                u.scale[v] = i32::from(sc);
                u.min[v] = i32::from(m);
            }
        }
        QKind::Q6K => {
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            for v in 0..QK_K {
                let (n, t, l) = (v / 128, v % 128 / 32, v % 32);
                let low = ql[64 * n + 32 * (t % 2) + l];
                let low = if t < 2 { low & 15 } else { low >> 4 };
                let high = (qh[32 * n + l] >> (2 * t)) & 3;
                u.q[v] = i32::from(low | high << 4) - 32;
                u.scale[v] = i32::from(sc[v / 16] as i8);
            }
        }
        _ => unreachable!("{kind:?} is not a K-quant"),
    }
    u
}

/// Super-blocks of `kind` as f32 values, in the float operations and order of GGML's
/// dequantizers: `(d · sc) · q − dmin · m`, `(d · sc) · q` for `Q6_K`.
pub fn dequantize(kind: QKind, blocks: &[u8], out: &mut [f32]) {
    for (blk, out) in blocks
        .chunks_exact(kind.block_bytes())
        .zip(out.chunks_exact_mut(QK_K))
    {
        let u = unpack(kind, blk);
        match kind {
            QKind::Q6K => {
                let d = half_at(blk, 208);
                for (v, out) in out.iter_mut().enumerate() {
                    *out = d * u.scale[v] as f32 * u.q[v] as f32;
                }
            }
            _ => {
                let (d, dmin) = (half_at(blk, 0), half_at(blk, 2));
                for (v, out) in out.iter_mut().enumerate() {
                    *out = d * u.scale[v] as f32 * u.q[v] as f32 - dmin * u.min[v] as f32;
                }
            }
        }
    }
}

/// llama.cpp's `nearest_int`: round to nearest, halves to even, for |v| < 2²², by adding 1.5 · 2²³
/// and reading the mantissa.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Rows of activations quantized per super-block of 256 (llama.cpp's `Q8_K`).
#[derive(Clone, Debug, Default)]
pub struct Q8KActs {
    /// Rows (tokens).
    pub rows: usize,
    /// Super-blocks per row.
    pub blocks: usize,
    /// Per super-block: the scale.
    pub d: Vec<f32>,
    /// Per super-block: 256 quantized values.
    pub qs: Vec<i8>,
    /// Per super-block: the sum of each 16 values.
    pub bsums: Vec<[i16; QK_K / 16]>,
}

impl Q8KActs {
    /// Quantize `x`, `rows × cols` row-major (`cols` a multiple of 256), reusing this buffer.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK_K) && x.len().is_multiple_of(cols));
        self.rows = x.len() / cols;
        self.blocks = cols / QK_K;
        let n = self.rows * self.blocks;
        self.d.resize(n, 0.0);
        self.qs.resize(n * QK_K, 0);
        self.bsums.resize(n, [0; QK_K / 16]);
        for (i, block) in x.chunks_exact(QK_K).enumerate() {
            let qs = &mut self.qs[i * QK_K..(i + 1) * QK_K];
            // The value of largest magnitude, the first of equals, with its sign.
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in block {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                self.d[i] = 0.0;
                qs.fill(0);
                self.bsums[i] = [0; QK_K / 16];
                continue;
            }
            let iscale = -127.0 / max;
            for (q, &v) in qs.iter_mut().zip(block) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for (sum, group) in self.bsums[i].iter_mut().zip(qs.chunks_exact(16)) {
                *sum = group.iter().map(|&q| i16::from(q)).sum();
            }
            self.d[i] = 1.0 / iscale;
        }
    }

    /// Row `t`.
    pub fn row(&self, t: usize) -> Q8KRow<'_> {
        let (a, b) = (t * self.blocks, (t + 1) * self.blocks);
        Q8KRow {
            d: &self.d[a..b],
            qs: &self.qs[a * QK_K..b * QK_K],
            bsums: &self.bsums[a..b],
        }
    }
}

/// One row of [`Q8KActs`].
#[derive(Clone, Copy, Debug)]
pub struct Q8KRow<'a> {
    /// Scales per super-block.
    pub d: &'a [f32],
    /// Values, 256 per super-block.
    pub qs: &'a [i8],
    /// Sums of each 16 values.
    pub bsums: &'a [[i16; QK_K / 16]],
}

/// Row `w` (K-quant super-blocks of `kind`) · activation row `a`, on the portable path: the
/// definition every other path matches (see the module's documentation for the order).
pub fn dot_k_scalar(kind: QKind, w: &[u8], a: Q8KRow<'_>) -> f32 {
    let mut acc = [0f32; 8];
    let mut offset = 0f32;
    for (b, blk) in w.chunks_exact(kind.block_bytes()).enumerate() {
        let u = unpack(kind, blk);
        let aq = &a.qs[b * QK_K..(b + 1) * QK_K];
        let mut p = [0i32; 8];
        let mut mins = 0i32;
        for k in 0..QK_K {
            let product = u.q[k] * i32::from(aq[k]);
            p[k % 32 / 4] += u.scale[k] * product;
            mins += u.min[k] * i32::from(aq[k]);
        }
        let d = if kind == QKind::Q6K {
            half_at(blk, 208)
        } else {
            half_at(blk, 0)
        };
        let dd = d * a.d[b];
        for j in 0..8 {
            acc[j] += dd * p[j] as f32;
        }
        if kind != QKind::Q6K {
            let dm = half_at(blk, 2) * a.d[b];
            offset -= dm * mins as f32;
        }
    }
    tree8(acc) + offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize as dequantize_any;

    /// Every block type gives the bits the `gguf` package's dequantizer gives for the same bytes
    /// (`scripts/reference/gguf_dequantize_reference.py`).
    #[test]
    fn blocks_dequantize_to_ggmls_bits() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/gguf_dequantize.json"))
                .expect("reference JSON");
        let formats = reference["formats"].as_object().expect("formats");
        assert_eq!(formats.len(), 6);
        for (name, data) in formats {
            let kind = match name.as_str() {
                "Q4_0" => QKind::Q4_0,
                "Q5_0" => QKind::Q5_0,
                "Q8_0" => QKind::Q8_0,
                "Q4_K" => QKind::Q4K,
                "Q5_K" => QKind::Q5K,
                "Q6_K" => QKind::Q6K,
                other => panic!("unexpected format {other}"),
            };
            let hex = data["blocks"].as_str().expect("blocks");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let want: Vec<u32> = data["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|v| v.as_u64().expect("bits") as u32)
                .collect();
            assert_eq!(
                bytes.len() / kind.block_bytes() * kind.block_values(),
                want.len(),
                "{name}"
            );
            let mut got = vec![0f32; want.len()];
            dequantize_any(kind, &bytes, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    *w,
                    "{name} value {i}: {g} vs {}",
                    f32::from_bits(*w)
                );
            }
        }
    }

    /// A xorshift stream, so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// A value in about ±`scale`.
        fn value(&mut self, scale: f32) -> f32 {
            ((self.next() % 20001) as f32 - 10000.0) * scale / 10000.0
        }
    }

    /// `blocks` super-blocks of `kind`: random bytes (every byte 0xFF when `extreme`) with small
    /// finite f16 scales.
    fn superblocks(kind: QKind, blocks: usize, extreme: bool, rng: &mut Rng) -> Vec<u8> {
        let mut w: Vec<u8> = (0..blocks * kind.block_bytes())
            .map(|_| if extreme { 0xFF } else { rng.next() as u8 })
            .collect();
        for b in 0..blocks {
            let at = b * kind.block_bytes();
            let halves: &[usize] = if kind == QKind::Q6K { &[208] } else { &[0, 2] };
            for &h in halves {
                let v = half::f16::from_f32(rng.value(0.05));
                w[at + h..at + h + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    /// Every kernel path gives the portable path's bits, on random super-blocks and on extreme ones
    /// (every byte 0xFF: the largest values, scales and mins; activations at ±127).
    #[test]
    fn every_path_gives_the_scalar_bits_for_k_quants() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            for extreme in [false, true] {
                let blocks = 3;
                let cols = blocks * QK_K;
                let w = superblocks(kind, blocks, extreme, &mut rng);
                let x: Vec<f32> = (0..cols)
                    .map(|k| {
                        if extreme {
                            if k % 3 == 0 { -1.0 } else { 1.0 }
                        } else {
                            rng.value(4.0)
                        }
                    })
                    .collect();
                let mut acts = Q8KActs::default();
                acts.quantize(&x, cols);
                let a = acts.row(0);
                let want = dot_k_scalar(kind, &w, a);
                assert!(want.is_finite());
                for path in crate::KernelPath::available() {
                    let got = crate::dot::dot_k(path, kind, &w, a);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{path} {kind:?} extreme={extreme}"
                    );
                }
            }
        }
    }

    /// The products equal the dequantized weights · the dequantized activations, in f64, to within
    /// float rounding (the integer part is exact; only the per-super-block float steps round).
    #[test]
    fn k_quant_products_match_the_dequantized_arithmetic() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            for blocks in [1usize, 3] {
                let cols = blocks * QK_K;
                let w = superblocks(kind, blocks, false, &mut rng);
                let x: Vec<f32> = (0..2 * cols).map(|_| rng.value(4.0)).collect();
                let mut acts = Q8KActs::default();
                acts.quantize(&x, cols);
                let mut deq = vec![0f32; cols];
                dequantize(kind, &w, &mut deq);
                for t in 0..2 {
                    let a = acts.row(t);
                    let got = dot_k_scalar(kind, &w, a);
                    let (mut exact, mut scale) = (0f64, 0f64);
                    for (k, &dv) in deq.iter().enumerate() {
                        let av = f64::from(a.d[k / QK_K]) * f64::from(a.qs[k]);
                        exact += f64::from(dv) * av;
                        scale += (f64::from(dv) * av).abs();
                    }
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-5 * scale + 1e-6,
                        "{kind:?} {blocks} blocks row {t}: {got} vs {exact} (scale {scale})"
                    );
                    // And the activations are the input to within half a step.
                    for (k, &v) in x[t * cols..(t + 1) * cols].iter().enumerate() {
                        let d = a.d[k / QK_K];
                        let back = d * f32::from(a.qs[k]);
                        assert!((back - v).abs() <= d.abs() * 0.5001 + 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn q8_k_quantizes_as_llama_cpp() {
        // Round half to even, and the scale's sign from the value of largest magnitude.
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, -1.5, 3.49, -3.51].map(nearest_int),
            [0, 2, 2, 0, -2, 3, -4]
        );
        let mut x = vec![0f32; 2 * QK_K];
        x[3] = -2.0; // the first super-block's largest magnitude is negative
        x[10] = 1.0;
        x[11] = 2.0 / 127.0 * 0.75; // three quarters of a step: 1
        x[QK_K + 7] = 4.0;
        x[QK_K + 8] = -4.0; // equal magnitudes: the first wins, so the scale is negative
        let mut acts = Q8KActs::default();
        acts.quantize(&x, QK_K);
        assert_eq!((acts.rows, acts.blocks), (2, 1));
        let r0 = acts.row(0);
        let r1 = acts.row(1);
        // −127 / −2 = 63.5 scales the first block: −2 → −127, 1 → 63.5 → 64 (half to even).
        assert_eq!(r0.d[0], 1.0 / 63.5);
        assert_eq!((r0.qs[3], r0.qs[10], r0.qs[11]), (-127, 64, 1));
        assert_eq!(r0.bsums[0][0], -127 + 64 + 1);
        assert!(r0.bsums[0][1..].iter().all(|&s| s == 0));
        assert_eq!(r1.d[0], 1.0 / (-127.0 / 4.0));
        assert_eq!((r1.qs[7], r1.qs[8]), (-127, 127));
        // Zeros stay zeros, with a zero scale.
        acts.quantize(&vec![0.0; QK_K], QK_K);
        assert_eq!(acts.row(0).d[0], 0.0);
        assert!(acts.row(0).qs.iter().all(|&q| q == 0));
    }
}
