//! The Fréchet distance between two sets of features (FID when they are InceptionV3 pool
//! features), as pytorch-fid's `calculate_activation_statistics` + `calculate_frechet_distance`
//! define it:
//!
//! `d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`, with `mu` the mean and `S` the
//! unbiased (n - 1) covariance of each set.
//!
//! pytorch-fid takes `scipy.linalg.sqrtm` of the (non-symmetric) product and keeps the real part
//! of its trace. Only that trace is needed, and it is the sum of the square roots of the
//! eigenvalues of `S1 S2`, which are those of the symmetric `A = S1^½ S2 S1^½` (similar
//! matrices). So this computes, in f64: `S1^½` from the symmetric eigendecomposition of `S1`,
//! then the eigenvalues of `A`, and sums `sqrt(max(λ, 0))`. A tiny negative eigenvalue (rounding,
//! or a rank-deficient covariance: fewer images than feature dimensions, the usual case of a
//! 200-image evaluation with 2048 features) has a square root whose real part is 0 in scipy's
//! principal branch too, so both agree; the symmetric path is also the better conditioned one.
//! The eigendecomposition is Householder tridiagonalisation followed by the implicit QL method
//! with Wilkinson-type shifts (the classic EISPACK `tred2` / `tql2` pair).

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum FrechetError {
    #[error("{what}: {n} feature vectors; at least 2 are needed for a covariance")]
    TooFew { what: &'static str, n: usize },
    #[error("feature sets of different widths: {0} and {1}")]
    Widths(usize, usize),
    #[error("{what}: {len} values are not {n} vectors of {dim}")]
    Shape {
        what: &'static str,
        len: usize,
        n: usize,
        dim: usize,
    },
    #[error("{what}: a feature is not a finite number")]
    NotFinite { what: &'static str },
    #[error("the eigenvalue iteration did not converge (a matrix of non-finite values?)")]
    NoConvergence,
}

/// The mean and the unbiased covariance of a set of feature vectors, in f64. With fewer
/// vectors than dimensions (200 images, 2048 features) the covariance `X^T X / (n - 1)` is kept
/// as its centred rows `X` (`n x dim`), which is smaller and lets [`frechet_distance`] work on
/// `n x n` matrices; otherwise as the `dim x dim` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    pub dim: usize,
    /// Vectors the statistics were computed from.
    pub n: usize,
    pub mu: Vec<f64>,
    /// `tr(S)`.
    pub trace: f64,
    pub covariance: Covariance,
}

/// How [`Statistics`] holds its covariance `S`.
#[derive(Debug, Clone, PartialEq)]
pub enum Covariance {
    /// `S` itself, `dim x dim`, row-major.
    Matrix(Vec<f64>),
    /// The centred vectors `X`, `n x dim`, row-major: `S = X^T X / (n - 1)`.
    Centred(Vec<f64>),
}

impl Statistics {
    /// From `n` feature vectors of `dim` values, one after the other (`features.len() = n dim`).
    /// `what` names the set in errors.
    pub fn from_features(
        features: &[f32],
        n: usize,
        dim: usize,
        what: &'static str,
    ) -> Result<Self, FrechetError> {
        if features.len() != n * dim || dim == 0 {
            return Err(FrechetError::Shape {
                what,
                len: features.len(),
                n,
                dim,
            });
        }
        if n < 2 {
            return Err(FrechetError::TooFew { what, n });
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(FrechetError::NotFinite { what });
        }
        let mut mu = vec![0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &v) in mu.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        for m in &mut mu {
            *m /= n as f64;
        }
        let centred: Vec<f64> = features
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mu).map(|(&v, m)| v as f64 - m))
            .collect();
        let scale = 1.0 / (n as f64 - 1.0);
        let trace = centred.iter().map(|v| v * v).sum::<f64>() * scale;
        if n < dim {
            return Ok(Self {
                dim,
                n,
                mu,
                trace,
                covariance: Covariance::Centred(centred),
            });
        }
        // S = X^T X / (n - 1): the upper triangle, then mirrored.
        let mut sigma = vec![0f64; dim * dim];
        for row in centred.chunks_exact(dim) {
            for i in 0..dim {
                let ri = row[i];
                if ri == 0.0 {
                    continue;
                }
                let out = &mut sigma[i * dim..(i + 1) * dim];
                for j in i..dim {
                    out[j] += ri * row[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = sigma[i * dim + j] * scale;
                sigma[i * dim + j] = v;
                sigma[j * dim + i] = v;
            }
        }
        Ok(Self {
            dim,
            n,
            mu,
            trace,
            covariance: Covariance::Matrix(sigma),
        })
    }

    /// `S` as a `dim x dim` matrix (computed from the centred vectors when that is the form).
    pub fn sigma(&self) -> Vec<f64> {
        match &self.covariance {
            Covariance::Matrix(s) => s.clone(),
            Covariance::Centred(x) => {
                let d = self.dim;
                let xt = transpose(x, self.n, d);
                let mut s = matmul_rect(&xt, x, d, self.n, d);
                let scale = 1.0 / (self.n as f64 - 1.0);
                s.iter_mut().for_each(|v| *v *= scale);
                s
            }
        }
    }
}

/// The Fréchet distance between the Gaussians of two sets of statistics (see the module).
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> Result<f64, FrechetError> {
    if a.dim != b.dim {
        return Err(FrechetError::Widths(a.dim, b.dim));
    }
    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    Ok(mean_term + a.trace + b.trace - 2.0 * trace_sqrt_product(a, b)?)
}

/// `tr(sqrtm(S_a S_b))`: the sum of the square roots of the eigenvalues of `S_a S_b`, taken
/// from the smallest symmetric matrix with the same non-zero eigenvalues:
/// - both as centred vectors (`S = X^T X / c`): `K K^T / (c_a c_b)` with `K = X_a X_b^T`
///   (`n_a x n_a`; the non-zero eigenvalues of `X_a^T (X_a X_b^T X_b)` are those of
///   `(X_a X_b^T X_b) X_a^T`);
/// - one as centred vectors: `X_a S_b X_a^T / c_a` (`n_a x n_a`);
/// - both as matrices: `S_a^½ S_b S_a^½` (`dim x dim`).
fn trace_sqrt_product(a: &Statistics, b: &Statistics) -> Result<f64, FrechetError> {
    let d = a.dim;
    let sum_roots = |m: Vec<f64>, n: usize, scale: f64| -> Result<f64, FrechetError> {
        let m = symmetrise(m, n);
        let (eigen, _) = symmetric_eigen(m, n, false)?;
        Ok(eigen.iter().map(|l| (l.max(0.0) * scale).sqrt()).sum())
    };
    match (&a.covariance, &b.covariance) {
        (Covariance::Centred(xa), Covariance::Centred(xb)) => {
            // the smaller side first
            let (xa, na, xb, nb) = if a.n <= b.n {
                (xa, a.n, xb, b.n)
            } else {
                (xb, b.n, xa, a.n)
            };
            let k = matmul_rect(xa, &transpose(xb, nb, d), na, d, nb); // [na, nb]
            let kkt = matmul_rect(&k, &transpose(&k, na, nb), na, nb, na);
            sum_roots(kkt, na, 1.0 / ((a.n as f64 - 1.0) * (b.n as f64 - 1.0)))
        }
        (Covariance::Centred(x), Covariance::Matrix(s))
        | (Covariance::Matrix(s), Covariance::Centred(x)) => {
            let n = if matches!(a.covariance, Covariance::Centred(_)) {
                a.n
            } else {
                b.n
            };
            let xs = matmul_rect(x, s, n, d, d);
            let m = matmul_rect(&xs, &transpose(x, n, d), n, d, n);
            sum_roots(m, n, 1.0 / (n as f64 - 1.0))
        }
        (Covariance::Matrix(sa), Covariance::Matrix(sb)) => {
            // S_a^½ = V diag(sqrt(max(λ, 0))) V^T
            let (values, vectors) = symmetric_eigen(sa.clone(), d, true)?;
            let mut scaled = vectors.clone(); // V diag(sqrt λ): column j scaled
            for (j, &l) in values.iter().enumerate() {
                let r = l.max(0.0).sqrt();
                for i in 0..d {
                    scaled[i * d + j] *= r;
                }
            }
            let root = matmul_rect(&scaled, &transpose(&vectors, d, d), d, d, d);
            let tmp = matmul_rect(&root, sb, d, d, d);
            sum_roots(matmul_rect(&tmp, &root, d, d, d), d, 1.0)
        }
    }
}

/// `(m + m^T) / 2` of an `n x n` matrix.
fn symmetrise(mut m: Vec<f64>, n: usize) -> Vec<f64> {
    for i in 0..n {
        for j in i + 1..n {
            let v = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = v;
            m[j * n + i] = v;
        }
    }
    m
}

/// The transpose of a `rows x cols` row-major matrix.
fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0f64; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = m[i * cols + j];
        }
    }
    out
}

/// `a b` for `a`: `m x k`, `b`: `k x n`, row-major.
fn matmul_rect(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        let row = &mut out[i * n..(i + 1) * n];
        for p in 0..k {
            let aip = a[i * k + p];
            if aip == 0.0 {
                continue;
            }
            for (o, &bpj) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *o += aip * bpj;
            }
        }
    }
    out
}

/// Eigenvalues (and, when `vectors`, the eigenvectors as the columns of a row-major matrix) of
/// the symmetric `n x n` matrix `a` (row-major; consumed). Householder reduction to tridiagonal
/// form, then the implicit QL iteration.
pub fn symmetric_eigen(
    mut a: Vec<f64>,
    n: usize,
    vectors: bool,
) -> Result<(Vec<f64>, Vec<f64>), FrechetError> {
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    if n == 0 {
        return Ok((d, a));
    }
    let idx = |i: usize, j: usize| i * n + j;
    // Householder: row i (from the last) reduced to the sub-diagonal element e[i].
    for i in (1..n).rev() {
        let l = i - 1;
        let mut h = 0.0;
        if l > 0 {
            let scale: f64 = (0..=l).map(|k| a[idx(i, k)].abs()).sum();
            if scale == 0.0 {
                e[i] = a[idx(i, l)];
            } else {
                for k in 0..=l {
                    a[idx(i, k)] /= scale;
                    h += a[idx(i, k)] * a[idx(i, k)];
                }
                let f = a[idx(i, l)];
                let g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
                e[i] = scale * g;
                h -= f * g;
                a[idx(i, l)] = f - g;
                let mut f = 0.0;
                for j in 0..=l {
                    if vectors {
                        a[idx(j, i)] = a[idx(i, j)] / h;
                    }
                    let mut g = 0.0;
                    for k in 0..=j {
                        g += a[idx(j, k)] * a[idx(i, k)];
                    }
                    for k in j + 1..=l {
                        g += a[idx(k, j)] * a[idx(i, k)];
                    }
                    e[j] = g / h;
                    f += e[j] * a[idx(i, j)];
                }
                let hh = f / (h + h);
                for j in 0..=l {
                    let f = a[idx(i, j)];
                    let g = e[j] - hh * f;
                    e[j] = g;
                    for k in 0..=j {
                        a[idx(j, k)] -= f * e[k] + g * a[idx(i, k)];
                    }
                }
            }
        } else {
            e[i] = a[idx(i, l)];
        }
        d[i] = h;
    }
    if vectors {
        d[0] = 0.0;
    }
    e[0] = 0.0;
    // Accumulate the transformations (vectors) or read the diagonal.
    for i in 0..n {
        if vectors {
            if d[i] != 0.0 {
                for j in 0..i {
                    let mut g = 0.0;
                    for k in 0..i {
                        g += a[idx(i, k)] * a[idx(k, j)];
                    }
                    for k in 0..i {
                        a[idx(k, j)] -= g * a[idx(k, i)];
                    }
                }
            }
            d[i] = a[idx(i, i)];
            a[idx(i, i)] = 1.0;
            for j in 0..i {
                a[idx(j, i)] = 0.0;
                a[idx(i, j)] = 0.0;
            }
        } else {
            d[i] = a[idx(i, i)];
        }
    }
    // Implicit QL on the tridiagonal (d, e).
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut iterations = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > 60 {
                return Err(FrechetError::NoConvergence);
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r.abs() } else { -r.abs() });
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut underflow = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                if vectors {
                    for k in 0..n {
                        let f = a[idx(k, i + 1)];
                        a[idx(k, i + 1)] = s * a[idx(k, i)] + c * f;
                        a[idx(k, i)] = c * a[idx(k, i)] - s * f;
                    }
                }
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    if d.iter().any(|v| !v.is_finite()) {
        return Err(FrechetError::NoConvergence);
    }
    Ok((d, a))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A x = λ x for every pair, and the eigenvalues of a known matrix.
    #[test]
    fn eigen_pairs_satisfy_the_definition() {
        let n = 6;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    1.0 / (1.0 + i as f64 + j as f64) + if i == j { i as f64 } else { 0.0 };
            }
        }
        let (values, vectors) = symmetric_eigen(a.clone(), n, true).unwrap();
        for k in 0..n {
            for i in 0..n {
                let ax: f64 = (0..n).map(|j| a[i * n + j] * vectors[j * n + k]).sum();
                assert!(
                    (ax - values[k] * vectors[i * n + k]).abs() < 1e-12,
                    "pair {k}"
                );
            }
        }
        // tridiagonal 2, -1: eigenvalues 2 - 2 cos(k pi / (n + 1))
        let mut t = vec![0f64; n * n];
        for i in 0..n {
            t[i * n + i] = 2.0;
            if i + 1 < n {
                t[i * n + i + 1] = -1.0;
                t[(i + 1) * n + i] = -1.0;
            }
        }
        let (mut values, _) = symmetric_eigen(t, n, false).unwrap();
        values.sort_by(f64::total_cmp);
        for (k, v) in values.iter().enumerate() {
            let want = 2.0 - 2.0 * ((k + 1) as f64 * std::f64::consts::PI / (n as f64 + 1.0)).cos();
            assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        }
    }

    #[test]
    fn a_set_is_at_distance_zero_from_itself_and_one_dimensional_sets_are_exact() {
        let f: Vec<f32> = (0..40)
            .map(|i| ((i * 37 % 11) as f32) * 0.25 - 1.0)
            .collect();
        let s = Statistics::from_features(&f, 10, 4, "a").unwrap();
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-12);
        // 1-D: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
        let a = Statistics::from_features(&[1.0, 2.0, 3.0, 4.0], 4, 1, "a").unwrap();
        let b = Statistics::from_features(&[0.0, 4.0, 8.0], 3, 1, "b").unwrap();
        let want = (2.5f64 - 4.0).powi(2) + ((5.0f64 / 3.0).sqrt() - 16f64.sqrt()).powi(2);
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-12);
    }

    /// The n x n paths give the dim x dim path's distance (rank-deficient and mixed sets).
    #[test]
    fn every_covariance_form_gives_the_same_distance() {
        let f = |seed: u32, n: usize, d: usize| -> Vec<f32> {
            (0..n * d)
                .map(|k| {
                    let x = (k as u32)
                        .wrapping_mul(2654435761)
                        .wrapping_add(seed.wrapping_mul(97));
                    ((x >> 8) % 1000) as f32 / 1000.0 - 0.5 + (k % d) as f32 * 0.01
                })
                .collect()
        };
        let d = 12;
        let small_a = Statistics::from_features(&f(1, 5, d), 5, d, "a").unwrap();
        let small_b = Statistics::from_features(&f(2, 7, d), 7, d, "b").unwrap();
        let big = Statistics::from_features(&f(3, 30, d), 30, d, "c").unwrap();
        assert!(matches!(small_a.covariance, Covariance::Centred(_)));
        assert!(matches!(big.covariance, Covariance::Matrix(_)));
        let as_matrix = |s: &Statistics| Statistics {
            covariance: Covariance::Matrix(s.sigma()),
            ..s.clone()
        };
        for (a, b) in [
            (&small_a, &small_b),
            (&small_b, &small_a),
            (&small_a, &big),
            (&big, &small_b),
        ] {
            let fast = frechet_distance(a, b).unwrap();
            let full = frechet_distance(&as_matrix(a), &as_matrix(b)).unwrap();
            // (the dim x dim path takes square roots of a rank-deficient S's rounding-level
            // eigenvalues, ~sqrt(f64::EPSILON) of noise; the n x n paths have none)
            assert!(
                (fast - full).abs() < 1e-6 * full.abs().max(1.0),
                "{fast} vs {full}"
            );
        }
    }

    #[test]
    fn bad_feature_sets_are_errors() {
        assert!(matches!(
            Statistics::from_features(&[1.0, 2.0], 1, 2, "x"),
            Err(FrechetError::TooFew { .. })
        ));
        assert!(matches!(
            Statistics::from_features(&[1.0, 2.0, 3.0], 2, 2, "x"),
            Err(FrechetError::Shape { .. })
        ));
        assert!(matches!(
            Statistics::from_features(&[1.0, f32::NAN, 3.0, 4.0], 2, 2, "x"),
            Err(FrechetError::NotFinite { .. })
        ));
        let a = Statistics::from_features(&[1.0, 2.0, 3.0, 4.0], 2, 2, "a").unwrap();
        let b = Statistics::from_features(&[1.0, 2.0, 3.0], 3, 1, "b").unwrap();
        assert_eq!(frechet_distance(&a, &b), Err(FrechetError::Widths(2, 1)));
    }
}
