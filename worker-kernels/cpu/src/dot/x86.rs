//! AVX2 and AVX-512 versions of [`super::dot_scalar`], bit for bit.
//!
//! AVX2 takes one row and one activation row at a time. AVX-512 takes two rows side by side and a
//! tile of activation rows, unpacking each pair of weight blocks once per tile (prefill), and uses
//! `vpdpbusd` where the CPU has VNNI.

use std::arch::x86_64::*;

use crate::kquant::{Q8KRow, QK_K};
use crate::quant::{ActRow, BLOCK, Q4_1_BYTES, Q8_0_BYTES, QKind};

/// The f16 pair at `p` (`d`, then `m` for Q4_1) as f32, through F16C.
#[inline(always)]
unsafe fn halves(p: *const u8) -> (f32, f32) {
    // SAFETY: callers pass a pointer to at least 4 readable bytes; F16C is enabled in every caller.
    unsafe {
        let bits = (p as *const i32).read_unaligned();
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps::<1>(v, v)))
    }
}

/// `(s0 + s2) + (s1 + s3)`: the last two levels of [`super::tree8`].
#[inline(always)]
unsafe fn hsum4(s4: __m128) -> f32 {
    // SAFETY: register arithmetic on SSE, which x86-64 always has.
    unsafe {
        let t = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
    }
}

/// [`super::tree8`] of a 256-bit accumulator.
#[inline(always)]
unsafe fn hsum8(acc: __m256) -> f32 {
    // SAFETY: plain register arithmetic; AVX is enabled in every caller.
    unsafe {
        hsum4(_mm_add_ps(
            _mm256_castps256_ps128(acc),
            _mm256_extractf128_ps::<1>(acc),
        ))
    }
}

/// `acc + (d_w · d_a) · p`, `p` the eight sums of four products of block `b`'s signed weights `wv`
/// (|w| ≤ 127) with its activations; `d_w` the f16 at `blk`.
#[inline(always)]
unsafe fn signed_block(
    acc: __m256,
    wv: __m256i,
    blk: *const u8,
    a: ActRow<'_>,
    b: usize,
) -> __m256 {
    // SAFETY: the caller's block `b` is within `a`, `blk` points at its weight block; AVX2 and F16C
    // are enabled in every caller.
    unsafe {
        let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * BLOCK) as *const __m256i);
        let p = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv)),
            _mm256_set1_epi16(1),
        );
        let (d, _) = halves(blk);
        let dd = _mm256_set1_ps(d * *a.d.get_unchecked(b));
        _mm256_add_ps(acc, _mm256_mul_ps(dd, _mm256_cvtepi32_ps(p)))
    }
}

/// The 32 signed weights of a `Q4_0` or `Q5_0` block at `blk` (nibbles, with `Q5_0`'s fifth bits,
/// less the type's bias), in order.
#[inline(always)]
unsafe fn signed_4_5(kind: QKind, blk: *const u8) -> __m256i {
    // SAFETY: the caller's `blk` points at a whole block of `kind`; AVX2 is enabled in every caller.
    unsafe {
        let mask = _mm_set1_epi8(0x0F);
        let (qs_at, bias) = if kind == QKind::Q4_0 { (2, 8) } else { (6, 16) };
        let qs = _mm_loadu_si128(blk.add(qs_at) as *const __m128i);
        let lo = _mm_and_si128(qs, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
        let mut q = _mm256_set_m128i(hi, lo);
        if kind == QKind::Q5_0 {
            // Bit k of the block's u32 as 16 in byte k (llama.cpp's bytes_from_bits_32).
            let bits = (blk.add(2) as *const i32).read_unaligned();
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(bits),
                _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                ),
            );
            let set = _mm256_cmpeq_epi8(
                _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
                _mm256_set1_epi64x(-1),
            );
            q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(16)));
        }
        _mm256_sub_epi8(q, _mm256_set1_epi8(bias))
    }
}

/// One row · each of `N` activation rows: each block's weights unpacked once for all `N` (a
/// prefill's tile of tokens), each row's sums and float accumulation those it gets alone (a single
/// product is a tile of one).
///
/// # Safety
/// The CPU must have AVX2 and F16C; `w` must hold `a[t].d.len()` blocks of `kind`.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dot_avx2<const N: usize>(
    kind: QKind,
    w: &[u8],
    a: &[ActRow<'_>; N],
) -> [f32; N] {
    let blocks = a[0].d.len();
    assert!(w.len() >= blocks * kind.block_bytes());
    assert!(
        a.iter()
            .all(|r| r.d.len() == blocks && r.qs.len() >= blocks * BLOCK)
    );
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut offset = [0f32; N];
    // SAFETY: every pointer below stays within `w` and each `a[t].qs` as asserted above.
    unsafe {
        match kind {
            QKind::Q4_1 => {
                let mask = _mm_set1_epi8(0x0F);
                for b in 0..blocks {
                    let blk = w.as_ptr().add(b * Q4_1_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH) as *const i8);
                    let qs = _mm_loadu_si128(blk.add(4) as *const __m128i);
                    let lo = _mm_and_si128(qs, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
                    let wv = _mm256_set_m128i(hi, lo);
                    let (d, m) = halves(blk);
                    for (t, a) in a.iter().enumerate() {
                        let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * BLOCK) as *const __m256i);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
                        let dd = _mm256_set1_ps(d * *a.d.get_unchecked(b));
                        acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(p)));
                        offset[t] += m * *a.s.get_unchecked(b);
                    }
                }
            }
            QKind::Q4_0 | QKind::Q5_0 => {
                let size = kind.block_bytes();
                for b in 0..blocks {
                    let blk = w.as_ptr().add(b * size);
                    _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH) as *const i8);
                    let wv = signed_4_5(kind, blk);
                    for (t, a) in a.iter().enumerate() {
                        acc[t] = signed_block(acc[t], wv, blk, *a, b);
                    }
                }
            }
            QKind::Q4K | QKind::Q5K | QKind::Q6K | QKind::F32 | QKind::F16 | QKind::BF16 => {
                unreachable!("K-quants take Q8_K activations (dot_k_avx2), floats none")
            }
            QKind::Q8_0 => {
                for b in 0..blocks {
                    let blk = w.as_ptr().add(b * Q8_0_BYTES);
                    _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH) as *const i8);
                    let wv = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    for (t, a) in a.iter().enumerate() {
                        acc[t] = signed_block(acc[t], wv, blk, *a, b);
                    }
                }
            }
        }
        std::array::from_fn(|t| hsum8(acc[t]) + offset[t])
    }
}

/// A K-quant super-block unpacked for the products: its eight groups of 32 weights (unsigned for
/// `maddubs`; Q6_K's are `q + 32`), each group's scales as 16-bit pairs (`madd` by them sums a
/// pair and scales it), its eight mins (Q4_K/Q5_K), and its scales `d` and `dmin`.
struct KBlock {
    q: [__m256i; 8],
    sv: [__m256i; 8],
    mins: [i32; 8],
    d: f32,
    dmin: f32,
}

/// Unpack the super-block of `kind` at `blk`.
#[inline(always)]
unsafe fn unpack_k(kind: QKind, blk: *const u8) -> KBlock {
    // SAFETY: the caller's `blk` points at a whole super-block of `kind`; AVX2 and F16C are
    // enabled in every caller.
    unsafe {
        let nibbles = _mm256_set1_epi8(0x0F);
        let mut k = KBlock {
            q: [_mm256_setzero_si256(); 8],
            sv: [_mm256_setzero_si256(); 8],
            mins: [0; 8],
            d: 0.0,
            dmin: 0.0,
        };
        if kind == QKind::Q6K {
            let scales = blk.add(192) as *const i8;
            let twos = _mm256_set1_epi8(3);
            for n in 0..2 {
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i);
                for t in 0..4 {
                    let ql = _mm256_loadu_si256(blk.add(64 * n + 32 * (t % 2)) as *const __m256i);
                    let low = if t < 2 {
                        _mm256_and_si256(ql, nibbles)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), nibbles)
                    };
                    let shift = _mm_cvtsi32_si128(2 * t as i32);
                    let high = _mm256_and_si256(_mm256_srl_epi16(qh, shift), twos);
                    // q + 32, unsigned for `maddubs`; the 32 comes off after.
                    k.q[4 * n + t] = _mm256_or_si256(low, _mm256_slli_epi16::<4>(high));
                    let s0 = i32::from(*scales.add(8 * n + 2 * t)) & 0xffff;
                    let s1 = i32::from(*scales.add(8 * n + 2 * t + 1)) & 0xffff;
                    let (s0, s1) = (s0 | s0 << 16, s1 | s1 << 16);
                    k.sv[4 * n + t] = _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1);
                }
            }
            k.d = halves(blk.add(208)).0;
            return k;
        }
        let (qs, qh) = if kind == QKind::Q5K {
            (48, Some(_mm256_loadu_si256(blk.add(16) as *const __m256i)))
        } else {
            (16, None)
        };
        let one = _mm256_set1_epi8(1);
        for c in 0..4 {
            let bytes = _mm256_loadu_si256(blk.add(qs + 32 * c) as *const __m256i);
            let low_high = [
                _mm256_and_si256(bytes, nibbles),
                _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), nibbles),
            ];
            for (h, mut v) in low_high.into_iter().enumerate() {
                let s = 2 * c + h;
                if let Some(qh) = qh {
                    let bit =
                        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32)), one);
                    v = _mm256_or_si256(v, _mm256_slli_epi16::<4>(bit));
                }
                k.q[s] = v;
            }
        }
        // The groups' 6-bit scales and their mins.
        let packed = std::slice::from_raw_parts(blk.add(4), 12);
        for j in 0..8 {
            let (scale, min) = crate::kquant::scale_min(j, packed);
            k.sv[j] = _mm256_set1_epi16(i16::from(scale));
            k.mins[j] = i32::from(min);
        }
        (k.d, k.dmin) = halves(blk);
        k
    }
}

/// One K-quant row · each of `N` `Q8_K` activation rows ([`crate::kquant::dot_k_scalar`], bit for
/// bit): each 32-value group's products summed four by four into eight 32-bit lanes (`maddubs`, then
/// `madd` by the group's scales), added up exactly over the super-block. A super-block's weights are
/// unpacked once for all `N` rows (a prefill's tile of tokens); each row's sums and float
/// accumulation are those it gets alone.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `w` must hold `a[t].d.len()` super-blocks of `kind`, a K-quant.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dot_k_avx2<const N: usize>(
    kind: QKind,
    w: &[u8],
    a: &[Q8KRow<'_>; N],
) -> [f32; N] {
    let blocks = a[0].d.len();
    let size = kind.block_bytes();
    assert!(kind.is_k() && w.len() >= blocks * size);
    assert!(
        a.iter()
            .all(|r| r.d.len() == blocks && r.qs.len() >= blocks * QK_K)
    );
    let mut acc = [_mm256_setzero_ps(); N];
    let mut offset = [0f32; N];
    // SAFETY: every pointer below stays within `w` and each `a[t].qs` as asserted above.
    unsafe {
        let thirty_two = _mm256_set1_epi8(32);
        for b in 0..blocks {
            let blk = w.as_ptr().add(b * size);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH) as *const i8);
            let k = unpack_k(kind, blk);
            for (t, row) in a.iter().enumerate() {
                let aq = row.qs.as_ptr().add(b * QK_K);
                let mut p = _mm256_setzero_si256();
                for g in 0..8 {
                    let av = _mm256_loadu_si256(aq.add(32 * g) as *const __m256i);
                    // Each lane's scaled sums (no sum of two 16-bit products of a pair reaches
                    // 2³¹); Q6_K's `q + 32` less 32 times the activations.
                    let mut prod = _mm256_madd_epi16(_mm256_maddubs_epi16(k.q[g], av), k.sv[g]);
                    if kind == QKind::Q6K {
                        let bias = _mm256_madd_epi16(_mm256_maddubs_epi16(thirty_two, av), k.sv[g]);
                        prod = _mm256_sub_epi32(prod, bias);
                    }
                    p = _mm256_add_epi32(p, prod);
                }
                let ad = *row.d.get_unchecked(b);
                let dd = _mm256_set1_ps(k.d * ad);
                acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(p)));
                if kind != QKind::Q6K {
                    let mins = crate::kquant::mins_sum(&k.mins, row.bsums.get_unchecked(b));
                    offset[t] -= (k.dmin * ad) * mins as f32;
                }
            }
        }
        std::array::from_fn(|t| hsum8(acc[t]) + offset[t])
    }
}

/// Two K-quant rows · each of `N` `Q8_K` activation rows on AVX-512: each row's super-blocks
/// unpacked as [`dot_k_avx2`] does, row 0 in the low 256 bits and row 1 in the high, so every
/// lane's integers and float operations are [`dot_k_avx2`]'s: its bits, two rows at a time.
///
/// # Safety
/// The CPU must have AVX-512 F and BW, AVX2 and F16C; `w0` and `w1` must each hold `a[t].d.len()`
/// super-blocks of `kind`, a K-quant.
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
pub(super) unsafe fn dot2_k_avx512<const N: usize>(
    kind: QKind,
    w0: &[u8],
    w1: &[u8],
    a: [Q8KRow<'_>; N],
) -> [(f32, f32); N] {
    let blocks = a[0].d.len();
    let size = kind.block_bytes();
    assert!(kind.is_k() && w0.len().min(w1.len()) >= blocks * size);
    assert!(
        a.iter()
            .all(|r| r.d.len() == blocks && r.qs.len() >= blocks * QK_K)
    );
    let mut acc = [_mm512_setzero_ps(); N];
    let mut offset = [(0f32, 0f32); N];
    // SAFETY: every pointer below stays within `w0`, `w1` and each `a[t].qs` as asserted above.
    unsafe {
        let thirty_two = _mm512_set1_epi8(32);
        let both = |x: __m256i, y: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(x), y);
        for b in 0..blocks {
            let (p0, p1) = (w0.as_ptr().add(b * size), w1.as_ptr().add(b * size));
            if N == 1 {
                _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(PREFETCH) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(PREFETCH) as *const i8);
            }
            let (k0, k1) = (unpack_k(kind, p0), unpack_k(kind, p1));
            let q: [__m512i; 8] = std::array::from_fn(|g| both(k0.q[g], k1.q[g]));
            let sv: [__m512i; 8] = std::array::from_fn(|g| both(k0.sv[g], k1.sv[g]));
            for (t, row) in a.iter().enumerate() {
                let aq = row.qs.as_ptr().add(b * QK_K);
                let mut p = _mm512_setzero_si512();
                for g in 0..8 {
                    let av = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        aq.add(32 * g) as *const __m256i
                    ));
                    let mut prod = _mm512_madd_epi16(_mm512_maddubs_epi16(q[g], av), sv[g]);
                    if kind == QKind::Q6K {
                        let bias = _mm512_madd_epi16(_mm512_maddubs_epi16(thirty_two, av), sv[g]);
                        prod = _mm512_sub_epi32(prod, bias);
                    }
                    p = _mm512_add_epi32(p, prod);
                }
                let ad = *row.d.get_unchecked(b);
                let dd = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(k0.d * ad))),
                    _mm256_castps_pd(_mm256_set1_ps(k1.d * ad)),
                ));
                acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(p)));
                if kind != QKind::Q6K {
                    let bsums = row.bsums.get_unchecked(b);
                    let m0 = crate::kquant::mins_sum(&k0.mins, bsums);
                    let m1 = crate::kquant::mins_sum(&k1.mins, bsums);
                    offset[t].0 -= (k0.dmin * ad) * m0 as f32;
                    offset[t].1 -= (k1.dmin * ad) * m1 as f32;
                }
            }
        }
        std::array::from_fn(|t| {
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[t])));
            (
                hsum8(_mm512_castps512_ps256(acc[t])) + offset[t].0,
                hsum8(high) + offset[t].1,
            )
        })
    }
}

/// Bytes ahead of the current block that a decode prefetches: the rows of a matrix lie one after the
/// other, so this is the stream the product reads next. The hardware prefetcher alone left decode
/// waiting on loads; measured on the default model, one thread, AVX-512: none 60 tokens/s, 512 bytes
/// 70, 1 KiB 78, 2 KiB 81, 4 KiB 91, 8 KiB 91, 16 KiB 89.
const PREFETCH: usize = 4096;

/// Two rows · `N` activation rows, each row pair's blocks unpacked once for all `N`, on AVX-512;
/// `$vnni` uses `vpdpbusd` for the integer sums (the same sums: no `maddubs` saturation can occur,
/// products of a nibble or |i8| with an i8 stay far below it).
macro_rules! dot2_avx512 {
    ($name:ident, $features:literal, $vnni:expr) => {
        /// # Safety
        /// The CPU must have the enabled features; `w0` and `w1` must each hold `a[t].d.len()`
        /// blocks of `kind`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const N: usize>(
            kind: QKind,
            w0: &[u8],
            w1: &[u8],
            a: [ActRow<'_>; N],
        ) -> [(f32, f32); N] {
            let blocks = a[0].d.len();
            debug_assert!(w0.len().min(w1.len()) >= blocks * kind.block_bytes());
            let ones = _mm512_set1_epi16(1);
            let zero = _mm512_setzero_si512();
            #[inline(always)]
            unsafe fn sums(w: __m512i, a: __m512i, ones: __m512i, zero: __m512i) -> __m512i {
                // SAFETY: register arithmetic with the caller's features.
                unsafe {
                    if $vnni {
                        _mm512_dpbusd_epi32(zero, w, a)
                    } else {
                        let _ = zero;
                        _mm512_madd_epi16(_mm512_maddubs_epi16(w, a), ones)
                    }
                }
            }
            let mut acc = [_mm512_setzero_ps(); N];
            let mut off = [_mm_setzero_ps(); N];
            let mut out = [(0f32, 0f32); N];
            // SAFETY: every pointer below stays within `w0`, `w1` and each `a[t]` as asserted.
            unsafe {
                match kind {
                    QKind::Q4_1 => {
                        // 128-bit lanes: row 0 elements 0..16, row 1 0..16, row 0 16..32, row 1
                        // 16..32; so the 32-bit sums are row 0 j 0..4, row 1 j 0..4, row 0 j 4..8,
                        // row 1 j 4..8, and each lane takes its row's scale.
                        let mask = _mm256_set1_epi8(0x0F);
                        let spread =
                            _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
                        for b in 0..blocks {
                            let p0 = w0.as_ptr().add(b * Q4_1_BYTES);
                            let p1 = w1.as_ptr().add(b * Q4_1_BYTES);
                            if N == 1 {
                                _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(PREFETCH) as *const i8);
                            }
                            let q = _mm256_loadu2_m128i(
                                p1.add(4) as *const __m128i,
                                p0.add(4) as *const __m128i,
                            );
                            let lo = _mm256_and_si256(q, mask);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
                            let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                            // [d0, m0, d1, m1]
                            let dm = _mm_cvtph_ps(_mm_set_epi32(
                                0,
                                0,
                                (p1 as *const i32).read_unaligned(),
                                (p0 as *const i32).read_unaligned(),
                            ));
                            for t in 0..N {
                                let a256 = _mm512_castsi256_si512(_mm256_loadu_si256(
                                    a[t].qs.as_ptr().add(b * BLOCK) as *const __m256i,
                                ));
                                let av = _mm512_shuffle_i64x2::<0x50>(a256, a256);
                                let p = sums(wv, av, ones, zero);
                                // [d0·da, m0·sa, d1·da, m1·sa]
                                let sc = _mm_mul_ps(
                                    dm,
                                    _mm_loadu_ps(a[t].ds.as_ptr().add(b) as *const f32),
                                );
                                off[t] = _mm_add_ps(off[t], sc);
                                let dd = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
                                acc[t] =
                                    _mm512_add_ps(acc[t], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(p)));
                            }
                        }
                        for t in 0..N {
                            let l0 = _mm512_extractf32x4_ps::<0>(acc[t]);
                            let l1 = _mm512_extractf32x4_ps::<1>(acc[t]);
                            let l2 = _mm512_extractf32x4_ps::<2>(acc[t]);
                            let l3 = _mm512_extractf32x4_ps::<3>(acc[t]);
                            let mut o = [0f32; 4];
                            _mm_storeu_ps(o.as_mut_ptr(), off[t]);
                            out[t] = (
                                hsum4(_mm_add_ps(l0, l2)) + o[1],
                                hsum4(_mm_add_ps(l1, l3)) + o[3],
                            );
                        }
                    }
                    QKind::Q4K
                    | QKind::Q5K
                    | QKind::Q6K
                    | QKind::F32
                    | QKind::F16
                    | QKind::BF16 => {
                        unreachable!("dot_tile sends {kind:?} to the portable path")
                    }
                    QKind::Q8_0 | QKind::Q4_0 | QKind::Q5_0 => {
                        // 256-bit halves: row 0, row 1, each block's 32 signed weights.
                        let spread =
                            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
                        let size = kind.block_bytes();
                        let signed = |p: *const u8| match kind {
                            QKind::Q8_0 => _mm256_loadu_si256(p.add(2) as *const __m256i),
                            _ => signed_4_5(kind, p),
                        };
                        for b in 0..blocks {
                            let p0 = w0.as_ptr().add(b * size);
                            let p1 = w1.as_ptr().add(b * size);
                            if N == 1 {
                                _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(PREFETCH) as *const i8);
                            }
                            let wv = _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(signed(p0)),
                                signed(p1),
                            );
                            let negative = _mm512_movepi8_mask(wv);
                            let wabs = _mm512_abs_epi8(wv);
                            // [d0, _, d1, _]: the lanes after each scale are not used.
                            let dm = _mm_cvtph_ps(_mm_set_epi32(
                                0,
                                0,
                                (p1 as *const i32).read_unaligned(),
                                (p0 as *const i32).read_unaligned(),
                            ));
                            for t in 0..N {
                                let av = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                    a[t].qs.as_ptr().add(b * BLOCK) as *const __m256i,
                                ));
                                // |w| · (a with w's sign), as AVX2's `sign` does.
                                let signed = _mm512_mask_sub_epi8(av, negative, zero, av);
                                let p = sums(wabs, signed, ones, zero);
                                let sc = _mm_mul_ps(
                                    dm,
                                    _mm_loadu_ps(a[t].ds.as_ptr().add(b) as *const f32),
                                );
                                let dd = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
                                acc[t] =
                                    _mm512_add_ps(acc[t], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(p)));
                            }
                        }
                        for t in 0..N {
                            out[t] = (
                                hsum8(_mm512_castps512_ps256(acc[t])),
                                hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                                    _mm512_castps_pd(acc[t]),
                                ))),
                            );
                        }
                    }
                }
            }
            out
        }
    };
}

dot2_avx512!(dot2_avx512, "avx512f,avx512bw,avx2,f16c", false);
dot2_avx512!(dot2_vnni, "avx512f,avx512bw,avx512vnni,avx2,f16c", true);

/// Adds, for each of the `N` tokens, the products of weights `0..full` (eight at a time, as `load`
/// gives them) and the token's activations into its accumulator, lane by lane.
#[inline(always)]
unsafe fn float_lanes<const N: usize>(
    full: usize,
    a: [&[f32]; N],
    acc: &mut [__m256; N],
    load: impl Fn(usize) -> __m256,
) {
    let mut k = 0;
    while k < full {
        // SAFETY: the caller's `full` is a multiple of 8 within every `a[t]` and the row `load`
        // reads; AVX is enabled in the caller.
        unsafe {
            let wv = load(k);
            for t in 0..N {
                let x = _mm256_loadu_ps(a[t].as_ptr().add(k));
                acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(wv, x));
            }
        }
        k += 8;
    }
}

/// A float row (F32, F16 or BF16) · each of `N` activation rows rounded for it
/// ([`crate::float::round_acts`]): eight weights loaded into one register once for all `N`, each
/// token's products added lane by lane (value `k` into lane `k mod 8`, multiply then add), the rest
/// and the reduction as [`crate::float::dot_float_scalar`] does them; so its bits.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `w` must hold `a[t].len()` values of `kind` for every `t`.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dot_float_avx2<const N: usize>(
    kind: QKind,
    w: &[u8],
    a: [&[f32]; N],
) -> [f32; N] {
    let cols = a.first().map_or(0, |a| a.len());
    debug_assert!(a.iter().all(|a| a.len() == cols) && w.len() >= cols * kind.block_bytes());
    let full = cols / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); N];
    let p = w.as_ptr();
    // SAFETY: each load reads values `k..k + 8` with `k + 8 <= full <= cols`, within `w` as asserted
    // above; AVX2 and F16C are enabled.
    unsafe {
        match kind {
            QKind::F32 => float_lanes(full, a, &mut acc, |k| {
                _mm256_loadu_ps(p.add(4 * k) as *const f32)
            }),
            QKind::F16 => float_lanes(full, a, &mut acc, |k| {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k) as *const __m128i))
            }),
            QKind::BF16 => float_lanes(full, a, &mut acc, |k| {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * k) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
            }),
            other => unreachable!("{other:?} is not a float type"),
        }
    }
    std::array::from_fn(|t| {
        let mut lanes = [0f32; 8];
        // SAFETY: stores eight f32 into an eight-f32 array; AVX is enabled.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[t]) };
        crate::float::finish(kind, w, a[t], full, lanes)
    })
}
