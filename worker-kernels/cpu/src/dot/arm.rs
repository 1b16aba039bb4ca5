//! The NEON version of [`super::dot_scalar`], bit for bit.

use std::arch::aarch64::*;

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
                QKind::Q4_0 | QKind::Q5_0 | QKind::Q4K | QKind::Q5K | QKind::Q6K => {
                    unreachable!("dot_tile sends {kind:?} to the portable path")
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
