//! Matrices stored as plain floats (GGML's F32, F16 and BF16), as some GGUF files keep small or
//! sensitive tensors. Products follow llama.cpp's choice of activation type (`vec_dot_type`): the
//! activations are rounded to the weights' type (f16 for F16, bfloat16 for BF16, as they are for
//! F32), once per product ([`round_acts`]), so each product of two f16 or two bfloat16 values is
//! exact in f32; the products are summed into eight lanes (value `k` into lane `k mod 8`) and the
//! lanes by [`crate::dot::tree8`]: one fixed order, no fused multiply-add, so every path gives these
//! bits. [`dot_float_scalar`] is the definition; the AVX2 and NEON products
//! ([`crate::dot::dot_float_tile`]) load eight values into one register (two on NEON) and add their
//! products lane by lane, which is this order.

use half::{bf16, f16};

use crate::quant::QKind;

/// `x` rounded to the activation type of a `kind` matrix (exact as f32), into `out`.
pub fn round_acts(kind: QKind, x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    match kind {
        QKind::F32 => out.extend_from_slice(x),
        QKind::F16 => out.extend(x.iter().map(|v| f16::from_f32(*v).to_f32())),
        QKind::BF16 => out.extend(x.iter().map(|v| bf16::from_f32(*v).to_f32())),
        other => unreachable!("{other:?} is not a float type"),
    }
}

/// Weight `k` of row `w` (values of `kind`, a float type) as f32 (exact).
#[inline(always)]
pub(crate) fn weight(kind: QKind, w: &[u8], k: usize) -> f32 {
    match kind {
        QKind::F32 => f32::from_le_bytes([w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]]),
        QKind::F16 => f16::from_le_bytes([w[2 * k], w[2 * k + 1]]).to_f32(),
        QKind::BF16 => bf16::from_le_bytes([w[2 * k], w[2 * k + 1]]).to_f32(),
        other => unreachable!("{other:?} is not a float type"),
    }
}

/// Adds the products of values `from..` of row `w` and activations `a` into `lanes` (value `k` into
/// lane `k mod 8`; `from` a multiple of 8), then reduces the lanes: the end of every path's product.
#[inline(always)]
pub(crate) fn finish(kind: QKind, w: &[u8], a: &[f32], from: usize, mut lanes: [f32; 8]) -> f32 {
    for (k, x) in a.iter().enumerate().skip(from) {
        lanes[k % 8] += weight(kind, w, k) * x;
    }
    crate::dot::tree8(lanes)
}

/// Row `w` (`a.len()` values of `kind`, a float type) · activations `a` already rounded by
/// [`round_acts`], on the portable path: the definition every path matches.
pub fn dot_float_scalar(kind: QKind, w: &[u8], a: &[f32]) -> f32 {
    finish(kind, w, a, 0, [0.0; 8])
}

/// Row `w` · activations `a` as they are (rounded here): the product a float matrix gives.
pub fn dot_float(kind: QKind, w: &[u8], a: &[f32]) -> f32 {
    let mut rounded = Vec::with_capacity(a.len());
    round_acts(kind, a, &mut rounded);
    dot_float_scalar(kind, w, &rounded)
}

/// Values of `kind` (a float type) as f32 (exact).
pub fn to_f32(kind: QKind, bytes: &[u8], out: &mut [f32]) {
    for (k, o) in out.iter_mut().enumerate() {
        *o = weight(kind, bytes, k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_rows_multiply_as_defined_and_close_to_exact() {
        let cols = 40;
        let w: Vec<f32> = (0..cols)
            .map(|k| ((k * 37 % 23) as f32 - 11.0) * 0.07)
            .collect();
        let a: Vec<f32> = (0..cols)
            .map(|k| ((k * 13 % 17) as f32 - 8.0) * 0.11)
            .collect();
        let exact: f64 = w
            .iter()
            .zip(&a)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let f32_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = w
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16_bytes: Vec<u8> = w
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        for (kind, bytes, slack) in [
            (QKind::F32, &f32_bytes, 1e-5),
            (QKind::F16, &f16_bytes, 2e-2),
            (QKind::BF16, &bf16_bytes, 1e-1),
        ] {
            let got = dot_float(kind, bytes, &a);
            assert!(
                (f64::from(got) - exact).abs() < slack,
                "{kind:?}: {got} vs {exact}"
            );
            let mut values = vec![0f32; cols];
            to_f32(kind, bytes, &mut values);
            // Read back: each value is the weight rounded to the type once.
            for (v, x) in values.iter().zip(&w) {
                let rounded = match kind {
                    QKind::F16 => f16::from_f32(*x).to_f32(),
                    QKind::BF16 => bf16::from_f32(*x).to_f32(),
                    _ => *x,
                };
                assert_eq!(v.to_bits(), rounded.to_bits(), "{kind:?}");
            }
        }
    }
}
