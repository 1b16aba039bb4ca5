//! Matrices stored as plain floats (GGML's F32, F16 and BF16), as some GGUF files keep small or
//! sensitive tensors. Products follow llama.cpp's choice of activation type (`vec_dot_type`): the
//! activations are rounded to the weights' type (f16 for F16, bfloat16 for BF16, as they are for
//! F32), so each product of two f16 or two bfloat16 values is exact in f32; the products are summed
//! into eight lanes (value `k` into lane `k mod 8`) and the lanes by [`crate::dot::tree8`]: one fixed
//! order, no fused multiply-add, so every path gives these bits (every path runs this definition
//! for now).

use half::{bf16, f16};

use crate::quant::QKind;

/// Row `w` (`cols` values of `kind`, a float type) · activations `a` (`cols` f32 values).
pub fn dot_float(kind: QKind, w: &[u8], a: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    match kind {
        QKind::F32 => {
            for (k, (wb, x)) in w.chunks_exact(4).zip(a).enumerate() {
                let v = f32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]);
                lanes[k % 8] += v * x;
            }
        }
        QKind::F16 => {
            for (k, (wb, x)) in w.chunks_exact(2).zip(a).enumerate() {
                let v = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
                lanes[k % 8] += v * f16::from_f32(*x).to_f32();
            }
        }
        QKind::BF16 => {
            for (k, (wb, x)) in w.chunks_exact(2).zip(a).enumerate() {
                let v = bf16::from_le_bytes([wb[0], wb[1]]).to_f32();
                lanes[k % 8] += v * bf16::from_f32(*x).to_f32();
            }
        }
        other => unreachable!("{other:?} is not a float type"),
    }
    crate::dot::tree8(lanes)
}

/// Values of `kind` (a float type) as f32 (exact).
pub fn to_f32(kind: QKind, bytes: &[u8], out: &mut [f32]) {
    match kind {
        QKind::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QKind::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        QKind::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        other => unreachable!("{other:?} is not a float type"),
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
