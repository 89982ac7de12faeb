//! Element-wise kernels written so that the compiler vectorises them: `exp` (no libm call,
//! no branch), softmax rows, SiLU, `erf` and the exact (erf) GELU.
//!
//! `exp` is Cephes' `expf` (range reduction by `ln 2`, a degree-6 polynomial on
//! `[-ln2/2, ln2/2]`, the power of two built in the exponent bits), relative error below
//! 2e-7 on the clamped range `[-87.3, 88]`; inputs below it give ~1e-38 instead of a denormal
//! or zero, inputs above it `exp(88)`. Loops keep 8 independent partial sums so that
//! reductions vectorise too (float addition is not reassociated by the compiler).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;
const LANES: usize = 8;

/// `e^x` (see the module header for range and accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.33, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) << 23) as u32);
    y * scale
}

/// Maximum of a row (`-inf` for an empty one).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &x in tail {
        m = m.max(x);
    }
    m
}

/// `row = softmax(scale * row)` in place (the max is subtracted first, as PyTorch does).
#[inline(always)]
pub fn softmax_scaled(row: &mut [f32], scale: f32) {
    let max = row_max(row) * scale;
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp(c[l] * scale - max);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        let e = exp(*x * scale - max);
        *x = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `x * sigmoid(x)` in place.
#[inline(always)]
pub fn silu_in_place(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x /= 1.0 + exp(-*x);
    }
}

/// `erf(x)`: Abramowitz & Stegun 7.1.26 (`1 - (a1 t + ... + a5 t^5) e^(-x^2)`, `t = 1 / (1 +
/// p |x|)`), absolute error below 1.5e-7 in exact arithmetic, 5e-7 as evaluated here in f32 (the
/// final `1 - poly * exp` cancels), sign restored without a branch. Vectorises: one division,
/// one [`exp`].
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let y = 1.0 - poly * exp(-ax * ax);
    y.copysign(x)
}

/// The exact GELU, `x / 2 * (1 + erf(x / sqrt(2)))` (PyTorch's default `gelu`).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `out = a * gelu(gate)` element-wise (diffusers' GEGLU after its projection).
#[inline(always)]
pub fn geglu_row(a: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, &a), &g) in out.iter_mut().zip(a).zip(gate) {
        *o = a * gelu(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (|x| <= 4: terms stay below 1e6, so ~1e-10 accurate).
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, x2) = (x, x, x * x);
        for n in 1..200 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_and_gelu_match_the_definition() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((erf(x) as f64 - erf_reference(x as f64)).abs());
            let want = 0.5 * x as f64 * (1.0 + erf_reference(x as f64 / 2f64.sqrt()));
            let got = gelu(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * x.abs().max(1.0) as f64,
                "gelu({x})"
            );
        }
        assert!(worst < 5e-7, "worst absolute erf error {worst}");
        assert!(erf(0.0).abs() < 2e-7);
        assert_eq!(erf(20.0), 1.0);
        assert_eq!(erf(-20.0), -1.0);
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_the_definition() {
        for len in [1usize, 7, 8, 9, 77, 4096] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let mut got = row.clone();
            softmax_scaled(&mut got, 0.5);
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * 0.5;
            let e: Vec<f64> = row
                .iter()
                .map(|&x| ((x * 0.5 - max) as f64).exp())
                .collect();
            let s: f64 = e.iter().sum();
            for (g, w) in got.iter().zip(&e) {
                assert!((*g as f64 - w / s).abs() < 1e-6, "len {len}");
            }
        }
    }

    #[test]
    fn silu_matches_the_definition() {
        let mut xs: Vec<f32> = (-200..200).map(|i| i as f32 * 0.1).collect();
        let want: Vec<f32> = xs.iter().map(|&x| x / (1.0 + (-x).exp())).collect();
        silu_in_place(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0));
        }
    }
}
