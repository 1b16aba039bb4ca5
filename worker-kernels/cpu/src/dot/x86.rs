//! AVX2 and AVX-512 versions of [`super::dot_scalar`], bit for bit.

use std::arch::x86_64::*;

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

/// One row · one activation row.
///
/// # Safety
/// The CPU must have AVX2 and F16C; `w` must hold `a.d.len()` blocks of `kind`.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn dot_avx2(kind: QKind, w: &[u8], a: ActRow<'_>) -> f32 {
    let blocks = a.d.len();
    debug_assert!(w.len() >= blocks * kind.block_bytes() && a.qs.len() >= blocks * BLOCK);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    // SAFETY: every pointer below stays within `w` and `a.qs` as asserted above.
    unsafe {
        match kind {
            QKind::Q4_1 => {
                let mask = _mm_set1_epi8(0x0F);
                for b in 0..blocks {
                    let blk = w.as_ptr().add(b * Q4_1_BYTES);
                    let qs = _mm_loadu_si128(blk.add(4) as *const __m128i);
                    let lo = _mm_and_si128(qs, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
                    let wv = _mm256_set_m128i(hi, lo);
                    let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * BLOCK) as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
                    let (d, m) = halves(blk);
                    let dd = _mm256_set1_ps(d * *a.d.get_unchecked(b));
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(dd, _mm256_cvtepi32_ps(p)));
                    offset += m * *a.s.get_unchecked(b);
                }
            }
            QKind::Q8_0 => {
                for b in 0..blocks {
                    let blk = w.as_ptr().add(b * Q8_0_BYTES);
                    let wv = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * BLOCK) as *const __m256i);
                    let p = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv)),
                        ones,
                    );
                    let (d, _) = halves(blk);
                    let dd = _mm256_set1_ps(d * *a.d.get_unchecked(b));
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(dd, _mm256_cvtepi32_ps(p)));
                }
            }
        }
        hsum8(acc) + offset
    }
}

/// Two rows · one activation row, side by side in 512-bit registers.
///
/// # Safety
/// The CPU must have AVX-512 F and BW, AVX2 and F16C; `w0` and `w1` must each hold `a.d.len()`
/// blocks of `kind`.
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
pub(super) unsafe fn dot2_avx512(kind: QKind, w0: &[u8], w1: &[u8], a: ActRow<'_>) -> (f32, f32) {
    let blocks = a.d.len();
    debug_assert!(w0.len().min(w1.len()) >= blocks * kind.block_bytes());
    let ones = _mm512_set1_epi16(1);
    let mut acc = _mm512_setzero_ps();
    // SAFETY: every pointer below stays within `w0`, `w1` and `a.qs` as asserted above.
    unsafe {
        match kind {
            QKind::Q4_1 => {
                // 128-bit lanes: row 0 elements 0..16, row 1 0..16, row 0 16..32, row 1 16..32; so
                // the 32-bit sums are row 0 j 0..4, row 1 j 0..4, row 0 j 4..8, row 1 j 4..8.
                let mask = _mm256_set1_epi8(0x0F);
                let (mut off0, mut off1) = (0f32, 0f32);
                for b in 0..blocks {
                    let p0 = w0.as_ptr().add(b * Q4_1_BYTES);
                    let p1 = w1.as_ptr().add(b * Q4_1_BYTES);
                    let q = _mm256_loadu2_m128i(
                        p1.add(4) as *const __m128i,
                        p0.add(4) as *const __m128i,
                    );
                    let lo = _mm256_and_si256(q, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
                    let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    let a256 = _mm512_castsi256_si512(_mm256_loadu_si256(
                        a.qs.as_ptr().add(b * BLOCK) as *const __m256i,
                    ));
                    let av = _mm512_shuffle_i64x2::<0x50>(a256, a256);
                    let p = _mm512_madd_epi16(_mm512_maddubs_epi16(wv, av), ones);
                    let ad = *a.d.get_unchecked(b);
                    let ((d0, m0), (d1, m1)) = (halves(p0), halves(p1));
                    let dd = _mm256_set_m128(_mm_set1_ps(d1 * ad), _mm_set1_ps(d0 * ad));
                    let dd = _mm512_castps256_ps512(dd);
                    let dd = _mm512_shuffle_f32x4::<0x44>(dd, dd);
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(p)));
                    let s = *a.s.get_unchecked(b);
                    off0 += m0 * s;
                    off1 += m1 * s;
                }
                let l0 = _mm512_extractf32x4_ps::<0>(acc);
                let l1 = _mm512_extractf32x4_ps::<1>(acc);
                let l2 = _mm512_extractf32x4_ps::<2>(acc);
                let l3 = _mm512_extractf32x4_ps::<3>(acc);
                (
                    hsum4(_mm_add_ps(l0, l2)) + off0,
                    hsum4(_mm_add_ps(l1, l3)) + off1,
                )
            }
            QKind::Q8_0 => {
                // 256-bit halves: row 0, row 1.
                let zero = _mm512_setzero_si512();
                for b in 0..blocks {
                    let p0 = w0.as_ptr().add(b * Q8_0_BYTES);
                    let p1 = w1.as_ptr().add(b * Q8_0_BYTES);
                    let wv = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2) as *const __m256i)),
                        _mm256_loadu_si256(p1.add(2) as *const __m256i),
                    );
                    let av = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        a.qs.as_ptr().add(b * BLOCK) as *const __m256i,
                    ));
                    // |w| · (a with w's sign), as AVX2's `sign` does.
                    let negative = _mm512_movepi8_mask(wv);
                    let signed = _mm512_mask_sub_epi8(av, negative, zero, av);
                    let p =
                        _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(wv), signed), ones);
                    let ad = *a.d.get_unchecked(b);
                    let (d0, d1) = (halves(p0).0 * ad, halves(p1).0 * ad);
                    let dd = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                        _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(d0))),
                        _mm256_castps_pd(_mm256_set1_ps(d1)),
                    ));
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(p)));
                }
                (
                    hsum8(_mm512_castps512_ps256(acc)),
                    hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(acc),
                    ))),
                )
            }
        }
    }
}
