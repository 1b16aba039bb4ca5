//! The other operations on the hot path, each with one implementation and a fixed order of
//! operations, so they give the same bits on every CPU and build: no `libm` (whose `exp`, `sin` and
//! `cos` differ between C libraries and their CPU-specific variants), no fused multiply-add, and sums
//! reduced in a fixed order.

/// `Σ a_i · b_i` in eight interleaved partial sums reduced by [`crate::dot::tree8`]'s rule.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[j] += x * y;
    }
    crate::dot::tree8(acc)
}

/// `Σ x_i²`, in the same order as [`dot_f32`].
#[inline]
fn sum_squares(x: &[f32]) -> f32 {
    dot_f32(x, x)
}

/// [`exp_f32`]'s split of ln 2 and its polynomial's coefficients, highest first.
const EXP_LN2_HI: f32 = 0.693_145_75;
const EXP_LN2_LO: f32 = 1.428_606_8e-6;
const EXP_POLY: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// Above it [`exp_f32`] is +∞; below [`EXP_ZERO_BELOW`], 0.
const EXP_INFINITE_ABOVE: f32 = 88.72;
const EXP_ZERO_BELOW: f32 = -87.33;

/// `e^x` in f32: `x = n·ln2 + r` (Cody–Waite), a degree-7 polynomial for `e^r`, then `2^n` by exponent
/// bits. Relative error below 2e-7; 0 below −87.3, +∞ above 88.7, NaN for NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_INFINITE_ABOVE {
        return f32::INFINITY;
    }
    if x < EXP_ZERO_BELOW {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * EXP_LN2_HI) - n * EXP_LN2_LO;
    // e^r for |r| ≤ 0.35: Taylor coefficients to r⁷/7!, Horner's rule.
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    // n is within −126..=128 here; split 2^n in two steps so n = 128 and subnormal results work.
    let n = n as i32;
    let half = n / 2;
    let scale = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    p * scale(half) * scale(n - half)
}

/// [`exp_f32`] of eight values in an AVX2 register, each lane the same operations in the same
/// order (so the same bits): `round` (half away from zero) as truncation and a step away from zero
/// where the dropped fraction is at least one half, `n / 2` as Rust's division (toward zero).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn exp_f32_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E));
    let whole = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    // Exact: `whole` is `t` with its fraction's bits cleared.
    let fraction = _mm256_andnot_ps(sign, _mm256_sub_ps(t, whole));
    let away = _mm256_cmp_ps(fraction, _mm256_set1_ps(0.5), _CMP_GE_OQ);
    let step = _mm256_and_ps(
        away,
        _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(sign, t)),
    );
    let n = _mm256_add_ps(whole, step);
    let r = _mm256_sub_ps(
        _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_HI))),
        _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_LO)),
    );
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
    }
    let n = _mm256_cvttps_epi32(n);
    let half = _mm256_srai_epi32::<1>(_mm256_add_epi32(n, _mm256_srli_epi32::<31>(n)));
    let scale = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    };
    let e = _mm256_mul_ps(
        _mm256_mul_ps(p, scale(half)),
        scale(_mm256_sub_epi32(n, half)),
    );
    let e = _mm256_blendv_ps(
        e,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps(x, _mm256_set1_ps(EXP_INFINITE_ABOVE), _CMP_GT_OQ),
    );
    let e = _mm256_blendv_ps(
        e,
        _mm256_setzero_ps(),
        _mm256_cmp_ps(x, _mm256_set1_ps(EXP_ZERO_BELOW), _CMP_LT_OQ),
    );
    _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
}

/// `e^x` in f64, the same construction with a degree-13 polynomial (for tables built at load).
fn exp_f64(x: f64) -> f64 {
    // fdlibm's split of ln 2: the high part has trailing zero bits, so n · LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let n = (x * std::f64::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0;
    let mut term = 1.0;
    for k in 1..=13 {
        term = term * r / f64::from(k);
        p += term;
    }
    p * f64::from_bits(((n as i64 + 1023) as u64) << 52)
}

/// `ln x` in f64 for positive normal `x`: `x = m·2^e` with `m` in [√½, √2), then
/// `ln m = 2·atanh((m−1)/(m+1))` as a series.
fn ln_f64(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut sum = 0.0;
    let mut power = t;
    for k in 0..20 {
        sum += power / f64::from(2 * k + 1);
        power *= t2;
    }
    2.0 * sum + e as f64 * std::f64::consts::LN_2
}

/// `(sin a, cos a)` in f64: reduce by π/2 in three parts, then Taylor series on [−π/4, π/4].
fn sin_cos_f64(a: f64) -> (f64, f64) {
    const PIO2_1: f64 = 1.570_796_326_734_125_6;
    const PIO2_2: f64 = 6.077_100_506_303_966e-11;
    const PIO2_3: f64 = 2.022_266_248_795_950_6e-21;
    let k = (a * std::f64::consts::FRAC_2_PI).round();
    let r = ((a - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
    let r2 = r * r;
    let (mut s, mut c) = (0.0, 0.0);
    let (mut ts, mut tc) = (r, 1.0);
    for n in 0..12 {
        s += ts;
        c += tc;
        let n = f64::from(n);
        ts = -ts * r2 / ((2.0 * n + 2.0) * (2.0 * n + 3.0));
        tc = -tc * r2 / ((2.0 * n + 1.0) * (2.0 * n + 2.0));
    }
    match (k as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// RoPE tables: `cos` and `sin` of `pos · base^(−2i/dims)` for every position below `context` and
/// `i` below `dims / 2`, row-major `[context][dims / 2]`, computed in f64 and rounded once.
pub fn rope_tables(base: f32, dims: usize, context: usize) -> (Vec<f32>, Vec<f32>) {
    rope_rows(base, dims, None, 0..context)
}

/// [`rope_tables`]'s rows for `positions` only, in their order: the same bits, computed for the rows
/// a step runs instead of held for the whole context (which, for a model of 32,768 positions and
/// heads of 256, is 32 MiB a base). With `factors` (Llama 3's frequency scaling), frequency `i` is
/// divided by `factors[i]`, as llama.cpp divides it.
pub fn rope_rows(
    base: f32,
    dims: usize,
    factors: Option<&[f32]>,
    positions: impl IntoIterator<Item = usize>,
) -> (Vec<f32>, Vec<f32>) {
    let half = dims / 2;
    let ln_base = ln_f64(f64::from(base));
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let f = exp_f64(-(2.0 * i as f64 / dims as f64) * ln_base);
            factors.map_or(f, |d| f / f64::from(d[i]))
        })
        .collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for pos in positions {
        for f in &inv_freq {
            let (s, c) = sin_cos_f64(pos as f64 * f);
            sin.push(s as f32);
            cos.push(c as f32);
        }
    }
    (cos, sin)
}

/// Rotate interleaved pairs `(x[2i], x[2i+1])` of one head by the angles of one position.
#[inline]
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (pair, (c, s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// Rotate the halves' pairs `(x[i], x[i + d/2])` of one head (GPT-NeoX's layout, which Gemma
/// uses) by the angles of one position.
#[inline]
pub fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for ((a, b), (c, s)) in a.iter_mut().zip(b).zip(cos.iter().zip(sin)) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/// `out = x / √(mean(x²) + eps) · w`, one row.
#[inline]
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mean = sum_squares(x) / x.len() as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * w;
    }
}

/// Softmax in place: `e^(x − max) / Σ`, the sum taken in order.
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = max_of(x);
    for v in x.iter_mut() {
        *v = exp_f32(*v - max);
    }
    scale_to_one(x);
}

/// The largest of `x` (NaNs skipped, as `f32::max` does): what softmax subtracts on every path.
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Divide every value by their sum, taken in order from the first: softmax's last step on every
/// path.
#[inline(always)]
fn scale_to_one(x: &mut [f32]) {
    let sum = x.iter().fold(0f32, |sum, v| sum + v);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax`] of each of the `R` rows of `x` (one after another, `lens` long): the maximum taken
/// eight lanes at a time (the same value: a maximum does not depend on its order, and the sign of
/// a zero maximum changes no difference from it), the exponentials eight at a time
/// ([`exp_f32_avx2`]), and the rows' sums, each in order, side by side; so the same bits.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn softmax_rows_avx2<const R: usize>(x: &mut [f32], lens: [usize; R]) {
    use std::arch::x86_64::*;
    assert_eq!(lens.iter().sum::<usize>(), x.len());
    let mut rest = &mut x[..];
    let mut rows: [&mut [f32]; R] = std::array::from_fn(|r| {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(lens[r]);
        rest = tail;
        row
    });
    for row in rows.iter_mut() {
        let mut chunks = row.chunks_exact(8);
        // SAFETY: eight floats from each chunk; AVX2 per the caller.
        let max = unsafe {
            // `max_ps(v, m)` is `m` where `v` is a NaN: NaNs are skipped, as `f32::max` does.
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            for chunk in &mut chunks {
                m = _mm256_max_ps(_mm256_loadu_ps(chunk.as_ptr()), m);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            max_of(&lanes).max(max_of(chunks.remainder()))
        };
        let mut chunks = row.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: eight floats in and out of `chunk`; AVX2 per the caller.
            unsafe {
                let v = _mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), _mm256_set1_ps(max));
                _mm256_storeu_ps(chunk.as_mut_ptr(), exp_f32_avx2(v));
            }
        }
        for v in chunks.into_remainder() {
            *v = exp_f32(*v - max);
        }
    }
    // Each row's sum in order; the rows' first `common` terms side by side.
    let common = lens.iter().copied().min().unwrap_or(0);
    let mut sums = [0f32; R];
    for i in 0..common {
        for (sum, row) in sums.iter_mut().zip(rows.iter()) {
            *sum += row[i];
        }
    }
    for (sum, row) in sums.iter_mut().zip(rows.iter()) {
        for v in &row[common..] {
            *sum += v;
        }
    }
    for (row, sum) in rows.iter_mut().zip(sums) {
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `silu(g) · u = g / (1 + e^−g) · u`, in place in `g`.
#[inline]
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

/// `g = gelu(g) · u`, GELU by its tanh approximation (as GGML computes it):
/// `0.5 · g · (1 + tanh(√(2/π) · (g + 0.044715 · g³)))`, with `tanh z = 1 − 2 / (e^{2z} + 1)` on
/// [`exp_f32`] (|z| clamped to 10, where tanh is 1 in f32).
#[inline]
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in g.iter_mut().zip(u) {
        let x = *g;
        let z = (SQRT_2_OVER_PI * (x + 0.044_715 * (x * x * x))).clamp(-10.0, 10.0);
        let tanh = 1.0 - 2.0 / (exp_f32(2.0 * z) + 1.0);
        *g = 0.5 * x * (1.0 + tanh) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_is_the_tanh_approximation() {
        for i in -1200..1200 {
            let x = i as f32 * 0.01;
            let z = (2.0 / std::f64::consts::PI).sqrt()
                * (f64::from(x) + 0.044715 * f64::from(x).powi(3));
            let want = 0.5 * f64::from(x) * (1.0 + z.tanh()) * 2.0;
            let mut g = [x];
            gelu_mul(&mut g, &[2.0]);
            assert!(
                (f64::from(g[0]) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}"
            );
        }
    }

    /// Eight at a time on AVX2, the scalar bits: every edge (NaN, ±∞, the clamps, ties of the
    /// rounding, subnormal results) and a sweep; softmax of rows of every length up to 40.
    #[test]
    fn exp_and_softmax_on_avx2_give_the_scalar_bits() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            use std::arch::x86_64::*;
            let mut xs = vec![
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                EXP_INFINITE_ABOVE,
                EXP_INFINITE_ABOVE.next_up(),
                EXP_ZERO_BELOW,
                EXP_ZERO_BELOW.next_down(),
                -87.0,
                -86.5,
                88.5,
                1e30,
                -1e30,
            ];
            // Where x · log2(e) is a half: the rounding's ties, and their neighbours.
            for k in -126..128 {
                let x = (k as f32 + 0.5) / std::f32::consts::LOG2_E;
                xs.extend([x, x.next_up(), x.next_down()]);
            }
            xs.extend((-9000..9000).map(|i| i as f32 * 0.0107));
            while xs.len() % 8 != 0 {
                xs.push(1.0);
            }
            for chunk in xs.chunks_exact(8) {
                let mut out = [0f32; 8];
                // SAFETY: AVX2 was detected above; eight floats in and out.
                unsafe {
                    _mm256_storeu_ps(
                        out.as_mut_ptr(),
                        exp_f32_avx2(_mm256_loadu_ps(chunk.as_ptr())),
                    );
                }
                for (x, got) in chunk.iter().zip(out) {
                    assert_eq!(got.to_bits(), exp_f32(*x).to_bits(), "e^{x}");
                }
            }
            for len in 1..=40usize {
                let row: Vec<f32> = (0..len)
                    .map(|i| ((i * 37) % 23) as f32 * 1.7 - 20.0)
                    .collect();
                let (mut a, mut b) = (row.clone(), row.clone());
                softmax(&mut a);
                // SAFETY: AVX2 was detected above.
                unsafe { softmax_rows_avx2::<1>(&mut b, [len]) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{len}");
                // Four rows at once: this one, it with zeros of both signs and minus infinity
                // among it, its magnitudes negated with zeros of both signs (the maximum a zero),
                // and it negated.
                let mixed = |with: [f32; 3]| -> Vec<f32> {
                    let rows = row.iter().enumerate();
                    rows.map(|(i, v)| if i % 4 == 0 { *v } else { with[i % 4 - 1] })
                        .collect()
                };
                let other = mixed([0.0, -0.0, f32::NEG_INFINITY]);
                let zeros: Vec<f32> = (row.iter().enumerate())
                    .map(|(i, v)| [-v.abs(), -0.0, 0.0, -1.0][i % 4])
                    .collect();
                let negated: Vec<f32> = row.iter().map(|v| -v).collect();
                // Rows of other lengths too: the last three cut short by 0, 1 and 5 values.
                for cut in [0, 1, 5] {
                    let mut four = [row.clone(), other.clone(), zeros.clone(), negated.clone()];
                    for (i, r) in four.iter_mut().enumerate().skip(1) {
                        r.truncate(len.saturating_sub(cut * i / 3).max(1));
                    }
                    let lens = four.clone().map(|r| r.len());
                    let mut rows = four.concat();
                    // SAFETY: AVX2 was detected above.
                    unsafe { softmax_rows_avx2::<4>(&mut rows, lens) };
                    let mut at = 0;
                    for (i, mut want) in four.into_iter().enumerate() {
                        softmax(&mut want);
                        let got = &rows[at..at + want.len()];
                        assert_eq!(bits(&want), bits(got), "{len} cut {cut}, row {i}");
                        at += want.len();
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate() {
        for i in -8700..8870 {
            let x = i as f32 * 0.01;
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            assert!(((got - want) / want).abs() < 3e-7, "{x}: {got} vs {want}");
        }
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(100.0), f32::INFINITY);
    }

    #[test]
    fn tables_are_accurate() {
        for x in [1e-3, 0.5, 1.0, 10.0, 100_000.0] {
            assert!((ln_f64(x) - x.ln()).abs() < 1e-13, "{x}");
        }
        for x in [-30.0, -1.0, 0.0, 0.3, 2.0, 5.0] {
            assert!(((exp_f64(x) - x.exp()) / x.exp()).abs() < 1e-14, "{x}");
        }
        for i in 0..4000 {
            let a = i as f64 * 0.731;
            let (s, c) = sin_cos_f64(a);
            assert!(
                (s - a.sin()).abs() < 1e-12 && (c - a.cos()).abs() < 1e-12,
                "{a}"
            );
        }
        let (cos, sin) = rope_tables(10_000.0, 64, 8);
        assert_eq!((cos[0], sin[0]), (1.0, 0.0));
        assert!((cos[32] - 1f32.cos()).abs() < 1e-7);
        // Rows computed alone are the table's rows, bit for bit.
        let (c5, s5) = rope_rows(10_000.0, 64, None, [5, 2]);
        assert_eq!(c5[..32], cos[5 * 32..6 * 32]);
        assert_eq!(s5[32..], sin[2 * 32..3 * 32]);
    }

    #[test]
    fn norm_and_softmax() {
        let mut out = [0f32; 4];
        rms_norm(
            &[1.0, -1.0, 1.0, -1.0],
            &[1.0, 2.0, 3.0, 4.0],
            0.0,
            &mut out,
        );
        assert_eq!(out, [1.0, -2.0, 3.0, -4.0]);
        let mut x = [0.0, f32::NEG_INFINITY, 0.0];
        softmax(&mut x);
        assert_eq!(x, [0.5, 0.0, 0.5]);
    }
}
