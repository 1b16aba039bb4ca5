//! Quantized row · activation products that give the same bits on every path.
//!
//! The integer part of a block product is exact on any instruction set; only the floating-point
//! accumulation could differ, so it is fixed here, and every SIMD path implements exactly this:
//!
//! ```text
//! acc[0..8] = 0; offset = 0
//! for each block b, in order:
//!     dd = d_w[b] · d_a[b]
//!     for j in 0..8:  p_j = Σ_{k = 4j..4j+3} q_w[k] · q_a[k]        (exact, in integers)
//!                     acc[j] = acc[j] + dd · p_j                    (multiply, then add: no FMA)
//!     Q4_1 only:      offset = offset + m_w[b] · s_a[b]
//! result = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)) + offset
//! ```
//!
//! Eight lanes of four products is what one 256-bit register of 32-bit sums holds after
//! `maddubs`/`madd` (or `dpbusd`), and two NEON registers after pairwise widening adds; AVX-512 runs
//! two rows side by side, each in its own lanes. No path uses fused multiply-add, since the scalar
//! path cannot afford it and a fused result differs from a separate one. Each output depends only on
//! its row and its activation row, never on how many rows or tokens are computed with it, which makes
//! the products batch-invariant and independent of the thread count.

use crate::path::KernelPath;
use crate::quant::{
    ActRow, BLOCK, Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES, QKind, half_at, nibble, q5_0,
};

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod x86;

/// The fixed reduction of the eight lanes.
#[inline(always)]
pub(crate) fn tree8(a: [f32; 8]) -> f32 {
    let s4 = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// Row `w` (GGUF blocks of `kind`) · activation row `a`, on the portable path: the definition every
/// other path matches.
pub fn dot_scalar(kind: QKind, w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = [0f32; 8];
    let mut offset = 0f32;
    for b in 0..a.d.len() {
        let aq = &a.qs[b * BLOCK..(b + 1) * BLOCK];
        let mut p = [0i32; 8];
        match kind {
            QKind::Q4_1 => {
                let blk = &w[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
                let dd = half_at(blk, 0) * a.d[b];
                for (k, &byte) in blk[4..20].iter().enumerate() {
                    p[k / 4] += i32::from(byte & 15) * i32::from(aq[k]);
                    p[4 + k / 4] += i32::from(byte >> 4) * i32::from(aq[16 + k]);
                }
                for j in 0..8 {
                    acc[j] += dd * p[j] as f32;
                }
                offset += half_at(blk, 2) * a.s[b];
            }
            QKind::Q8_0 => {
                let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                let dd = half_at(blk, 0) * a.d[b];
                for (k, &byte) in blk[2..34].iter().enumerate() {
                    p[k / 4] += i32::from(byte as i8) * i32::from(aq[k]);
                }
                for j in 0..8 {
                    acc[j] += dd * p[j] as f32;
                }
            }
            QKind::Q4_0 | QKind::Q5_0 => {
                let size = kind.block_bytes();
                let blk = &w[b * size..(b + 1) * size];
                let dd = half_at(blk, 0) * a.d[b];
                for k in 0..BLOCK {
                    let q = match kind {
                        QKind::Q4_0 => nibble(&blk[2..Q4_0_BYTES], k) as i8 - 8,
                        _ => q5_0(blk, k),
                    };
                    p[k / 4] += i32::from(q) * i32::from(aq[k]);
                }
                for j in 0..8 {
                    acc[j] += dd * p[j] as f32;
                }
            }
            QKind::Q4K | QKind::Q5K | QKind::Q6K | QKind::F32 | QKind::F16 | QKind::BF16 => {
                unreachable!("K-quants take Q8_K activations: kquant::dot_k_scalar")
            }
        }
    }
    tree8(acc) + offset
}

/// K-quant row `w` (super-blocks of `kind`) · `Q8_K` activation row `a`, on `path` (which the CPU
/// must support); the same bits as [`crate::kquant::dot_k_scalar`] on every path. AVX-512 runs the
/// AVX2 product (its CPUs have AVX2).
pub fn dot_k(path: KernelPath, kind: QKind, w: &[u8], a: crate::kquant::Q8KRow<'_>) -> f32 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked against the CPU's features when it was chosen, and both
        // x86 paths require AVX2 and F16C.
        KernelPath::Avx2 | KernelPath::Avx512 => unsafe { x86::dot_k_avx2::<1>(kind, w, &[a])[0] },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        KernelPath::Neon => unsafe { arm::dot_k_neon(kind, w, a) },
        _ => crate::kquant::dot_k_scalar(kind, w, a),
    }
}

/// [`dot_k`] of one row with each of `N` activation rows: on x86 the row's super-blocks are unpacked
/// once for all `N` (a prefill's tile of tokens); each result is the bits [`dot_k`] gives alone.
pub fn dot_k_tile<const N: usize>(
    path: KernelPath,
    kind: QKind,
    w: &[u8],
    a: [crate::kquant::Q8KRow<'_>; N],
) -> [f32; N] {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot_k`.
        KernelPath::Avx2 | KernelPath::Avx512 => unsafe { x86::dot_k_avx2::<N>(kind, w, &a) },
        _ => a.map(|row| dot_k(path, kind, w, row)),
    }
}

/// [`dot_k_tile`] of rows `w0` and `w1` (when given) with each of `N` activation rows:
/// `[(w0 · a[t], w1 · a[t])]`, 0 for a missing `w1`; AVX-512 takes the two rows at once.
pub fn dot2_k_tile<const N: usize>(
    path: KernelPath,
    kind: QKind,
    w0: &[u8],
    w1: Option<&[u8]>,
    a: [crate::kquant::Q8KRow<'_>; N],
) -> [(f32, f32); N] {
    match (path, w1) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked against the CPU's features when it was chosen.
        (KernelPath::Avx512, Some(w1)) => unsafe { x86::dot2_k_avx512::<N>(kind, w0, w1, a) },
        _ => {
            let r0 = dot_k_tile(path, kind, w0, a);
            let r1 = w1.map_or([0.0; N], |w1| dot_k_tile(path, kind, w1, a));
            std::array::from_fn(|t| (r0[t], r1[t]))
        }
    }
}

/// A float row `w` (F32, F16 or BF16) · each of `N` activation rows rounded for it
/// ([`crate::float::round_acts`]), on `path` (which the CPU must support); the bits of
/// [`crate::float::dot_float_scalar`] on every path, the row's values loaded once for all `N` on x86.
/// AVX-512 runs the AVX2 product.
pub fn dot_float_tile<const N: usize>(
    path: KernelPath,
    kind: QKind,
    w: &[u8],
    a: [&[f32]; N],
) -> [f32; N] {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked against the CPU's features when it was chosen, and both
        // x86 paths require AVX2 and F16C.
        KernelPath::Avx2 | KernelPath::Avx512 => unsafe { x86::dot_float_avx2::<N>(kind, w, a) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        KernelPath::Neon => a.map(|a| unsafe { arm::dot_float_neon(kind, w, a) }),
        _ => a.map(|a| crate::float::dot_float_scalar(kind, w, a)),
    }
}

/// Whether `kind` has SIMD paths for blocks of 32 (the K-quants have their own, [`dot_k`]).
fn has_simd(kind: QKind) -> bool {
    matches!(kind, QKind::Q4_0 | QKind::Q4_1 | QKind::Q5_0 | QKind::Q8_0)
}

/// Rows `w0` and `w1` (when given) · each of `N` activation rows, on `path` (which the CPU must
/// support): `[(w0 · a[t], w1 · a[t])]`, 0 for a missing `w1`.
#[inline]
pub(crate) fn dot_tile<const N: usize>(
    path: KernelPath,
    kind: QKind,
    w0: &[u8],
    w1: Option<&[u8]>,
    a: [ActRow<'_>; N],
) -> [(f32, f32); N] {
    let path = if has_simd(kind) {
        path
    } else {
        KernelPath::Scalar
    };
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked against the CPU's features when it was chosen, and VNNI is
        // checked here.
        KernelPath::Avx512 => unsafe {
            match w1 {
                Some(w1) if std::arch::is_x86_feature_detected!("avx512vnni") => {
                    x86::dot2_vnni(kind, w0, w1, a)
                }
                Some(w1) => x86::dot2_avx512(kind, w0, w1, a),
                None => x86::dot_avx2::<N>(kind, w0, &a).map(|o| (o, 0.0)),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above. Each row's blocks are unpacked once for the whole tile.
        KernelPath::Avx2 => unsafe {
            let r0 = x86::dot_avx2::<N>(kind, w0, &a);
            let r1 = w1.map_or([0.0; N], |w1| x86::dot_avx2::<N>(kind, w1, &a));
            std::array::from_fn(|t| (r0[t], r1[t]))
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        KernelPath::Neon => unsafe {
            a.map(|a| {
                (
                    arm::dot_neon(kind, w0, a),
                    w1.map_or(0.0, |w1| arm::dot_neon(kind, w1, a)),
                )
            })
        },
        _ => a.map(|a| {
            (
                dot_scalar(kind, w0, a),
                w1.map_or(0.0, |w1| dot_scalar(kind, w1, a)),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Q8Acts, QMatrix};

    /// A deterministic pseudo-random stream (SplitMix64), so the tests need no dependency.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        pub(crate) fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    pub(crate) fn random_matrix(kind: QKind, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
        if kind.is_float() {
            let data: Vec<u8> = (0..rows * cols)
                .flat_map(|_| {
                    let v = rng.f32();
                    match kind {
                        QKind::F32 => v.to_le_bytes().to_vec(),
                        QKind::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                        _ => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                    }
                })
                .collect();
            return QMatrix::new(kind, rows, cols, data).expect("sizes match");
        }
        let blocks = rows * cols / kind.block_values();
        let size = kind.block_bytes();
        // Random bytes (−128 included, which a hostile file could hold), then small finite f16
        // scales where each kind keeps them.
        let mut data: Vec<u8> = (0..blocks * size).map(|_| rng.next() as u8).collect();
        let scales: &[usize] = match kind {
            QKind::Q4_1 | QKind::Q4K | QKind::Q5K => &[0, 2],
            QKind::Q6K => &[208],
            QKind::Q4_0 | QKind::Q5_0 | QKind::Q8_0 => &[0],
            QKind::F32 | QKind::F16 | QKind::BF16 => unreachable!("made above"),
        };
        for b in 0..blocks {
            for &at in scales {
                let v = half::f16::from_f32(rng.f32() * 0.05).to_le_bytes();
                data[b * size + at..b * size + at + 2].copy_from_slice(&v);
            }
        }
        QMatrix::new(kind, rows, cols, data).expect("sizes match")
    }

    /// A product of activations with matrices of every kind at once gives each output the bits of
    /// its own row's product, on every path and thread count, and each token the bits it gets
    /// alone (batch invariance).
    #[test]
    fn matmul_of_every_kind_gives_each_rows_bits_alone() {
        use crate::kquant::Q8KActs;
        use crate::llama::Kernels;
        use crate::quant::Acts;
        let mut rng = Rng(11);
        let cols = 512;
        let kinds = [
            QKind::Q4_0,
            QKind::Q4_1,
            QKind::Q5_0,
            QKind::Q8_0,
            QKind::Q4K,
            QKind::Q5K,
            QKind::Q6K,
            QKind::F32,
            QKind::F16,
            QKind::BF16,
        ];
        let mats: Vec<QMatrix> = kinds
            .iter()
            .map(|&k| random_matrix(k, 37, cols, &mut rng))
            .collect();
        let refs: Vec<&QMatrix> = mats.iter().collect();
        let tokens = 6;
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32() * 3.0).collect();
        // Each output by itself: the portable path's product of one row and one token.
        let mut q8 = Q8Acts::default();
        q8.quantize(&x, cols);
        let mut q8k = Q8KActs::default();
        q8k.quantize(&x, cols);
        let want: Vec<Vec<f32>> = mats
            .iter()
            .map(|m| {
                (0..tokens)
                    .flat_map(|t| (0..m.rows).map(move |r| (t, r)))
                    .map(|(t, r)| {
                        if m.kind.is_float() {
                            crate::float::dot_float(m.kind, m.row(r), &x[t * cols..(t + 1) * cols])
                        } else if m.kind.is_k() {
                            crate::kquant::dot_k_scalar(m.kind, m.row(r), q8k.row(t))
                        } else {
                            dot_scalar(m.kind, m.row(r), q8.row(t))
                        }
                    })
                    .collect()
            })
            .collect();
        for path in KernelPath::available() {
            for threads in [1, 3] {
                let k = Kernels::new(path, threads).expect("available");
                let mut acts = Acts::default();
                acts.quantize(&x, cols, &refs);
                let mut outs: Vec<Vec<f32>> =
                    mats.iter().map(|m| vec![0.0; tokens * m.rows]).collect();
                let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                k.matmul(&acts, &refs, &mut slices);
                for ((m, got), want) in mats.iter().zip(&outs).zip(&want) {
                    let same = got
                        .iter()
                        .zip(want)
                        .all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{path} {threads} threads {:?}", m.kind);
                }
                // The last token alone gets the same bits.
                let last = &x[(tokens - 1) * cols..];
                let mut one = Acts::default();
                one.quantize(last, cols, &refs);
                let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; m.rows]).collect();
                let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                k.matmul(&one, &refs, &mut slices);
                for ((m, got), want) in mats.iter().zip(&outs).zip(&want) {
                    let alone = &want[(tokens - 1) * m.rows..];
                    let same = got
                        .iter()
                        .zip(alone)
                        .all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{path} {threads} threads {:?} alone", m.kind);
                }
            }
        }
    }

    /// Float rows give the definition's bits on every path, for widths with and without a
    /// remainder past the last eight, with f16 subnormals, values that round differently to f16
    /// and bfloat16, and large magnitudes; a tile of four gives each token's bits alone.
    #[test]
    fn float_rows_give_the_scalar_bits_on_every_path() {
        let mut rng = Rng(23);
        for kind in [QKind::F32, QKind::F16, QKind::BF16] {
            for cols in [1, 7, 8, 9, 40, 517] {
                let w = random_matrix(kind, 3, cols, &mut rng);
                let x: Vec<f32> = (0..4 * cols)
                    .map(|k| match k % 5 {
                        0 => rng.f32() * 1e-6,
                        1 => rng.f32() * 3e4,
                        _ => rng.f32() * 4.0,
                    })
                    .collect();
                let mut rounded = Vec::new();
                crate::float::round_acts(kind, &x, &mut rounded);
                let a: [&[f32]; 4] = std::array::from_fn(|t| &rounded[t * cols..(t + 1) * cols]);
                for r in 0..w.rows {
                    let want: Vec<u32> = a
                        .iter()
                        .map(|a| crate::float::dot_float_scalar(kind, w.row(r), a).to_bits())
                        .collect();
                    for (t, want) in want.iter().enumerate() {
                        let raw = &x[t * cols..(t + 1) * cols];
                        let defined = crate::float::dot_float(kind, w.row(r), raw);
                        assert_eq!(
                            defined.to_bits(),
                            *want,
                            "rounding once is rounding each time"
                        );
                    }
                    for path in KernelPath::available() {
                        let tile = dot_float_tile(path, kind, w.row(r), a);
                        let alone: Vec<u32> = a
                            .iter()
                            .map(|a| dot_float_tile(path, kind, w.row(r), [*a])[0].to_bits())
                            .collect();
                        let tile: Vec<u32> = tile.iter().map(|o| o.to_bits()).collect();
                        assert_eq!(tile, want, "{path} {kind:?} {cols}: a tile of four");
                        assert_eq!(alone, want, "{path} {kind:?} {cols}: one token");
                    }
                }
            }
        }
    }

    /// Straightforward f64 reference from dequantized values, for closeness (not bits).
    fn reference(w: &QMatrix, r: usize, a: ActRow<'_>) -> f64 {
        let mut row = vec![0f32; w.cols];
        w.dequantize_row(r, &mut row);
        row.iter()
            .enumerate()
            .map(|(k, &v)| f64::from(v) * f64::from(a.d[k / BLOCK]) * f64::from(a.qs[k]))
            .sum()
    }

    #[test]
    fn every_path_gives_the_scalar_bits() {
        let mut rng = Rng(7);
        for kind in [QKind::Q4_1, QKind::Q8_0, QKind::Q4_0, QKind::Q5_0] {
            for cols in [32, 96, 576, 1536] {
                let w = random_matrix(kind, 5, cols, &mut rng);
                let x: Vec<f32> = (0..3 * cols).map(|_| rng.f32() * 4.0).collect();
                let mut acts = Q8Acts::default();
                acts.quantize(&x, cols);
                for t in 0..acts.rows {
                    let a = acts.row(t);
                    let want: Vec<f32> =
                        (0..w.rows).map(|r| dot_scalar(kind, w.row(r), a)).collect();
                    for (r, want) in want.iter().enumerate() {
                        let close = reference(&w, r, a);
                        // Q4_1's offset term uses `s` rounded to f16: about 2⁻¹¹ of |m·s| per block.
                        let slack = 2e-3 * (cols / BLOCK) as f64;
                        assert!(
                            (f64::from(*want) - close).abs() < slack,
                            "{kind:?} {cols}: {want} vs {close}"
                        );
                    }
                    let tile: [ActRow<'_>; 3] = [acts.row(0), acts.row(1), acts.row(2)];
                    for path in KernelPath::available() {
                        for r in (0..w.rows).step_by(2) {
                            let pair = (r + 1 < w.rows).then(|| w.row(r + 1));
                            let (o0, o1) = dot_tile(path, kind, w.row(r), pair, [a])[0];
                            let in_tile = dot_tile(path, kind, w.row(r), pair, tile)[t];
                            assert_eq!(
                                (o0.to_bits(), o1.to_bits()),
                                (in_tile.0.to_bits(), in_tile.1.to_bits()),
                                "{path}: a tile of three gives each token's bits"
                            );
                            #[cfg(target_arch = "x86_64")]
                            if path == KernelPath::Avx512 && pair.is_some() {
                                // SAFETY: the path is supported, so AVX-512 F/BW, AVX2 and F16C are.
                                let plain = unsafe {
                                    x86::dot2_avx512(kind, w.row(r), w.row(r + 1), [a])[0]
                                };
                                assert_eq!(
                                    (plain.0.to_bits(), plain.1.to_bits()),
                                    (o0.to_bits(), o1.to_bits())
                                );
                            }
                            assert_eq!(
                                o0.to_bits(),
                                want[r].to_bits(),
                                "{path} {kind:?} {cols} row {r}"
                            );
                            if pair.is_some() {
                                assert_eq!(
                                    o1.to_bits(),
                                    want[r + 1].to_bits(),
                                    "{path} {kind:?} {cols} row {}",
                                    r + 1
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
