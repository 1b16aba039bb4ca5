//! The NEON version of [`super::dot_scalar`], bit for bit.

use std::arch::aarch64::*;

use crate::kquant::{Q8KRow, QK_K, scales_and_mins};
use crate::quant::{ActRow, BLOCK, Q4_1_BYTES, Q8_0_BYTES, QKind, half_at};

/// Sums of four consecutive products of 16 signed bytes: `[e0..4, e4..8, e8..12, e12..16]`.
#[inline(always)]
unsafe fn sum4(x: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: register arithmetic; NEON is enabled in every caller.
    unsafe {
        let lo = vmull_s8(vget_low_s8(x), vget_low_s8(y));
        let hi = vmull_high_s8(x, y);
        vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

/// One row · one activation row.
///
/// # Safety
/// The CPU must have NEON; `w` must hold `a.d.len()` blocks of `kind`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_neon(kind: QKind, w: &[u8], a: ActRow<'_>) -> f32 {
    let blocks = a.d.len();
    debug_assert!(w.len() >= blocks * kind.block_bytes() && a.qs.len() >= blocks * BLOCK);
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut offset = 0f32;
    // SAFETY: every pointer below stays within `w` and `a.qs` as asserted above.
    unsafe {
        for b in 0..blocks {
            let aq = a.qs.as_ptr().add(b * BLOCK);
            let (a0, a1) = (vld1q_s8(aq), vld1q_s8(aq.add(16)));
            let (p0, p1, d) = match kind {
                QKind::Q4_1 => {
                    let blk = &w[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
                    let qs = vld1q_u8(blk.as_ptr().add(4));
                    let lo = vreinterpretq_s8_u8(vandq_u8(qs, vdupq_n_u8(15)));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(qs));
                    offset += half_at(blk, 2) * a.s[b];
                    (sum4(lo, a0), sum4(hi, a1), half_at(blk, 0))
                }
                QKind::Q4_0 | QKind::Q5_0 => {
                    let size = kind.block_bytes();
                    let blk = &w[b * size..(b + 1) * size];
                    let (qs_at, bias) = if kind == QKind::Q4_0 { (2, 8) } else { (6, 16) };
                    let qs = vld1q_u8(blk.as_ptr().add(qs_at));
                    let mut lo = vandq_u8(qs, vdupq_n_u8(15));
                    let mut hi = vshrq_n_u8::<4>(qs);
                    if kind == QKind::Q5_0 {
                        // Bit k of the block's u32 as 16 in byte k.
                        let bits = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                        let high: [u8; 32] = std::array::from_fn(|k| ((bits >> k & 1) as u8) << 4);
                        lo = vorrq_u8(lo, vld1q_u8(high.as_ptr()));
                        hi = vorrq_u8(hi, vld1q_u8(high.as_ptr().add(16)));
                    }
                    let bias = vdupq_n_s8(bias);
                    let lo = vsubq_s8(vreinterpretq_s8_u8(lo), bias);
                    let hi = vsubq_s8(vreinterpretq_s8_u8(hi), bias);
                    (sum4(lo, a0), sum4(hi, a1), half_at(blk, 0))
                }
                QKind::Q4K | QKind::Q5K | QKind::Q6K | QKind::F32 | QKind::F16 | QKind::BF16 => {
                    unreachable!("K-quants take Q8_K activations: dot_k_neon")
                }
                QKind::Q8_0 => {
                    let blk = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                    let w0 = vld1q_s8(blk.as_ptr().add(2) as *const i8);
                    let w1 = vld1q_s8(blk.as_ptr().add(18) as *const i8);
                    (sum4(w0, a0), sum4(w1, a1), half_at(blk, 0))
                }
            };
            let dd = vdupq_n_f32(d * a.d[b]);
            acc0 = vaddq_f32(acc0, vmulq_f32(dd, vcvtq_f32_s32(p0)));
            acc1 = vaddq_f32(acc1, vmulq_f32(dd, vcvtq_f32_s32(p1)));
        }
        let s4 = vaddq_f32(acc0, acc1);
        let s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
        vget_lane_f32::<0>(s2) + vget_lane_f32::<1>(s2) + offset
    }
}

/// One K-quant row · one `Q8_K` activation row ([`crate::kquant::dot_k_scalar`], bit for bit): each
/// 32-value group's products summed four by four (`sum4` of each 16), times the group's integer
/// scales, added up exactly over the super-block.
///
/// # Safety
/// The CPU must have NEON; `w` must hold `a.d.len()` super-blocks of `kind`, a K-quant.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_k_neon(kind: QKind, w: &[u8], a: Q8KRow<'_>) -> f32 {
    let blocks = a.d.len();
    let size = kind.block_bytes();
    assert!(w.len() >= blocks * size && a.qs.len() >= blocks * QK_K && kind.is_k());
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut offset = 0f32;
    // SAFETY: every pointer below stays within `w` and `a.qs` as asserted above.
    unsafe {
        for b in 0..blocks {
            let blk = &w[b * size..(b + 1) * size];
            let aq = a.qs.as_ptr().add(b * QK_K);
            let mut p0 = vdupq_n_s32(0);
            let mut p1 = vdupq_n_s32(0);
            // Add group `g`'s values `q` (two halves of 16, signed) times scales `s0`, `s1`.
            let mut add = |g: usize, q: (int8x16_t, int8x16_t), s0: i32, s1: i32| {
                let a0 = vld1q_s8(aq.add(32 * g));
                let a1 = vld1q_s8(aq.add(32 * g + 16));
                p0 = vmlaq_n_s32(p0, sum4(q.0, a0), s0);
                p1 = vmlaq_n_s32(p1, sum4(q.1, a1), s1);
            };
            let (d, mins) = match kind {
                QKind::Q6K => {
                    let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
                    for n in 0..2 {
                        for t in 0..4 {
                            let half = |o: usize| {
                                let low = vld1q_u8(ql.as_ptr().add(64 * n + 32 * (t % 2) + o));
                                let low = if t < 2 {
                                    vandq_u8(low, vdupq_n_u8(15))
                                } else {
                                    vshrq_n_u8::<4>(low)
                                };
                                let high = vld1q_u8(qh.as_ptr().add(32 * n + o));
                                let shift = vdupq_n_s8(-(2 * t as i8));
                                let high = vandq_u8(vshlq_u8(high, shift), vdupq_n_u8(3));
                                let q = vorrq_u8(low, vshlq_n_u8::<4>(high));
                                vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32))
                            };
                            let g = 8 * n + 2 * t;
                            add(
                                4 * n + t,
                                (half(0), half(16)),
                                i32::from(sc[g] as i8),
                                i32::from(sc[g + 1] as i8),
                            );
                        }
                    }
                    (half_at(blk, 208), 0)
                }
                _ => {
                    let (scales, mins) = scales_and_mins(&blk[4..16], &a.bsums[b]);
                    let (qs, qh) = if kind == QKind::Q5K {
                        (&blk[48..176], Some(&blk[16..48]))
                    } else {
                        (&blk[16..144], None)
                    };
                    for c in 0..4 {
                        for h in 0..2 {
                            let s = 2 * c + h;
                            let half = |o: usize| {
                                let bytes = vld1q_u8(qs.as_ptr().add(32 * c + o));
                                let mut q = if h == 0 {
                                    vandq_u8(bytes, vdupq_n_u8(15))
                                } else {
                                    vshrq_n_u8::<4>(bytes)
                                };
                                if let Some(qh) = qh {
                                    let bits = vld1q_u8(qh.as_ptr().add(o));
                                    let bit = vandq_u8(
                                        vshlq_u8(bits, vdupq_n_s8(-(s as i8))),
                                        vdupq_n_u8(1),
                                    );
                                    q = vorrq_u8(q, vshlq_n_u8::<4>(bit));
                                }
                                vreinterpretq_s8_u8(q)
                            };
                            add(s, (half(0), half(16)), scales[s], scales[s]);
                        }
                    }
                    (half_at(blk, 0), mins)
                }
            };
            let dd = vdupq_n_f32(d * a.d[b]);
            acc0 = vaddq_f32(acc0, vmulq_f32(dd, vcvtq_f32_s32(p0)));
            acc1 = vaddq_f32(acc1, vmulq_f32(dd, vcvtq_f32_s32(p1)));
            if kind != QKind::Q6K {
                let dm = half_at(blk, 2) * a.d[b];
                offset -= dm * mins as f32;
            }
        }
        let s4 = vaddq_f32(acc0, acc1);
        let s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
        vget_lane_f32::<0>(s2) + vget_lane_f32::<1>(s2) + offset
    }
}

/// A float row (F32, F16 or BF16) · activations rounded for it ([`crate::float::round_acts`]):
/// eight weights at a time in two registers (lanes 0..4 and 4..8), the products added lane by lane
/// (multiply then add), the rest and the reduction as [`crate::float::dot_float_scalar`] does them;
/// so its bits.
///
/// # Safety
/// The CPU must have NEON; `w` must hold `a.len()` values of `kind`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_float_neon(kind: QKind, w: &[u8], a: &[f32]) -> f32 {
    let cols = a.len();
    debug_assert!(w.len() >= cols * kind.block_bytes());
    let full = cols / 8 * 8;
    let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let p = w.as_ptr();
    let mut k = 0;
    // SAFETY: each load reads values `k..k + 8` with `k + 8 <= full <= cols`, within `w` and `a` as
    // asserted above; NEON is enabled.
    unsafe {
        while k < full {
            let (w0, w1) = match kind {
                QKind::F32 => (
                    vld1q_f32(p.add(4 * k) as *const f32),
                    vld1q_f32(p.add(4 * k + 16) as *const f32),
                ),
                QKind::BF16 => {
                    let h = vld1q_u16(p.add(2 * k) as *const u16);
                    (
                        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                        vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
                    )
                }
                // Rust has no stable f16 vector type: the eight halves through `half` (exact).
                _ => {
                    let v: [f32; 8] = std::array::from_fn(|j| crate::float::weight(kind, w, k + j));
                    (vld1q_f32(v.as_ptr()), vld1q_f32(v.as_ptr().add(4)))
                }
            };
            let x = a.as_ptr().add(k);
            acc0 = vaddq_f32(acc0, vmulq_f32(w0, vld1q_f32(x)));
            acc1 = vaddq_f32(acc1, vmulq_f32(w1, vld1q_f32(x.add(4))));
            k += 8;
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: stores four f32 twice into an eight-f32 array; NEON is enabled.
    unsafe {
        vst1q_f32(lanes.as_mut_ptr(), acc0);
        vst1q_f32(lanes.as_mut_ptr().add(4), acc1);
    }
    crate::float::finish(kind, w, a, full, lanes)
}
