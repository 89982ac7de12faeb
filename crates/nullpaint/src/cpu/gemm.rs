//! A bounds-checked front for the `gemm` crate's f32 matrix product (the one Burn's `flex`
//! backend uses), on strided views of slices.
//!
//! `gemm::gemm` takes raw pointers and strides; [`sgemm`] takes slices and checks, before the
//! call, that every element the strides can reach lies inside its slice. The borrow rules make
//! `dst` disjoint from `lhs` and `rhs`. This is the only `unsafe` of the CPU kernels.
#![allow(unsafe_code)]

/// A strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Whether to split one product over the Rayon pool (`Parallel`) or run it on the calling
/// thread (`Serial`, for products issued from inside parallel loops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Serial,
    Parallel,
}

/// Index of the last element of an `m x n` view with strides `rs`, `cs`, plus one.
fn extent(m: usize, n: usize, rs: usize, cs: usize) -> usize {
    if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * rs + (n - 1) * cs + 1
    }
}

/// `dst = (accumulate ? dst : 0) + alpha * lhs @ rhs`, `lhs` `m x k`, `rhs` `k x n`,
/// `dst` `m x n` with strides `dst_rs`, `dst_cs`.
///
/// # Panics
/// When a view reaches past its slice (a bug in the caller, never user input).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    alpha: f32,
    threads: Threads,
) {
    assert!(
        extent(m, n, dst_rs, dst_cs) <= dst.len(),
        "sgemm: dst view out of bounds"
    );
    assert!(
        extent(m, k, lhs.rs, lhs.cs) <= lhs.data.len(),
        "sgemm: lhs view out of bounds"
    );
    assert!(
        extent(k, n, rhs.rs, rhs.cs) <= rhs.data.len(),
        "sgemm: rhs view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::Serial => gemm::Parallelism::None,
        Threads::Parallel => gemm::Parallelism::Rayon(0),
    };
    let s = |x: usize| x as isize;
    // SAFETY: the three asserts above keep every index the strides reach, `(m-1) * rs +
    // (n-1) * cs` at most, inside its slice; all strides are non-negative; `dst` is a unique
    // borrow, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            s(dst_cs),
            s(dst_rs),
            accumulate,
            lhs.data.as_ptr(),
            s(lhs.cs),
            s(lhs.rs),
            rhs.data.as_ptr(),
            s(rhs.cs),
            s(rhs.rs),
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_with_strides_and_accumulation() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, &b);
        // rhs given transposed: bt[j, p] = b[p, j].
        let mut bt = vec![0.0; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        // dst inside a wider buffer (row stride n + 3), accumulated on top of 1.0.
        let mut dst = vec![1.0; m * (n + 3)];
        for threads in [Threads::Serial, Threads::Parallel] {
            dst.iter_mut().for_each(|x| *x = 1.0);
            sgemm(
                m,
                n,
                k,
                &mut dst,
                n + 3,
                1,
                true,
                View {
                    data: &a,
                    rs: k,
                    cs: 1,
                },
                View {
                    data: &bt,
                    rs: 1,
                    cs: k,
                },
                2.0,
                threads,
            );
            for i in 0..m {
                for j in 0..n {
                    let got = dst[i * (n + 3) + j];
                    assert!((got - (1.0 + 2.0 * want[i * n + j])).abs() < 1e-4);
                }
                assert_eq!(dst[i * (n + 3) + n], 1.0, "padding columns untouched");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lhs view out of bounds")]
    fn rejects_views_past_the_slice() {
        let a = vec![0.0; 3]; // a 2x2 view with row stride 2 needs 4
        let b = vec![0.0; 6];
        let mut d = vec![0.0; 6];
        sgemm(
            2,
            3,
            2,
            &mut d,
            3,
            1,
            false,
            View {
                data: &a,
                rs: 2,
                cs: 1,
            },
            View {
                data: &b,
                rs: 3,
                cs: 1,
            },
            1.0,
            Threads::Serial,
        );
    }
}
