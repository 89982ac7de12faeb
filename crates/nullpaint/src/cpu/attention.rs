//! Multi-head attention on the CPU, straight from the projections' `[batch, seq, heads *
//! head_dim]` layout (no head transposes, no copies of K and V).
//!
//! Same math as PyTorch's `scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`):
//! `softmax(q k^T / sqrt(d)) v`, in f32. Work is split over (batch, block of 64 queries); each
//! block runs, head by head, one product for its scores (`64 x kv_len`, a cache-sized
//! buffer), a vectorised softmax ([`super::math`]) and one product into its rows of the output.
//! Memory beyond the output: one score block per thread.

use rayon::prelude::*;

use super::gemm::{Threads, View, sgemm};
use super::math::softmax_scaled;

/// Queries per block.
const BLOCK: usize = 64;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// # Shapes
/// - `q`: `[batch, q_len, heads * head_dim]`, `k` / `v`: `[batch, kv_len, heads * head_dim]`
///   (row-major, contiguous)
/// - output: `[batch, q_len, heads * head_dim]`
pub fn attention(q: &[f32], k: &[f32], v: &[f32], d: Dims) -> Vec<f32> {
    let Dims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    } = d;
    let inner = heads * head_dim;
    assert_eq!(q.len(), batch * q_len * inner, "attention: q shape");
    assert_eq!(k.len(), batch * kv_len * inner, "attention: k shape");
    assert_eq!(v.len(), batch * kv_len * inner, "attention: v shape");
    let mut out = vec![0.0f32; batch * q_len * inner];
    if out.is_empty() {
        return out;
    }
    if kv_len == 0 {
        return out;
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(q_len * inner)
        .enumerate()
        .for_each(|(b, out_b)| {
            let k_b = &k[b * kv_len * inner..(b + 1) * kv_len * inner];
            let v_b = &v[b * kv_len * inner..(b + 1) * kv_len * inner];
            out_b
                .par_chunks_mut(BLOCK * inner)
                .enumerate()
                .for_each_init(Vec::new, |scores: &mut Vec<f32>, (blk, o)| {
                    let rows = o.len() / inner;
                    let r0 = b * q_len + blk * BLOCK;
                    let q_blk = &q[r0 * inner..(r0 + rows) * inner];
                    scores.resize(rows * kv_len, 0.0);
                    for h in 0..heads {
                        let c0 = h * head_dim;
                        // scores[rows, kv] = q_blk[:, head] @ k_b[:, head]^T
                        sgemm(
                            rows,
                            kv_len,
                            head_dim,
                            scores,
                            kv_len,
                            1,
                            false,
                            View {
                                data: &q_blk[c0..],
                                rs: inner,
                                cs: 1,
                            },
                            View {
                                data: &k_b[c0..],
                                rs: 1,
                                cs: inner,
                            },
                            1.0,
                            Threads::Serial,
                        );
                        for row in scores.chunks_exact_mut(kv_len) {
                            softmax_scaled(row, scale);
                        }
                        // o[:, head] = scores @ v_b[:, head]
                        sgemm(
                            rows,
                            head_dim,
                            kv_len,
                            &mut o[c0..],
                            inner,
                            1,
                            false,
                            View {
                                data: scores,
                                rs: kv_len,
                                cs: 1,
                            },
                            View {
                                data: &v_b[c0..],
                                rs: inner,
                                cs: 1,
                            },
                            1.0,
                            Threads::Serial,
                        );
                    }
                });
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(q: &[f32], k: &[f32], v: &[f32], d: Dims) -> Vec<f32> {
        let inner = d.heads * d.head_dim;
        let mut out = vec![0.0; d.batch * d.q_len * inner];
        let scale = 1.0 / (d.head_dim as f64).sqrt();
        for b in 0..d.batch {
            for h in 0..d.heads {
                for i in 0..d.q_len {
                    let qi = &q[(b * d.q_len + i) * inner + h * d.head_dim..][..d.head_dim];
                    let s: Vec<f64> = (0..d.kv_len)
                        .map(|j| {
                            let kj =
                                &k[(b * d.kv_len + j) * inner + h * d.head_dim..][..d.head_dim];
                            qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d.head_dim {
                        let acc: f64 = (0..d.kv_len)
                            .map(|j| {
                                e[j] / z * v[(b * d.kv_len + j) * inner + h * d.head_dim + c] as f64
                            })
                            .sum();
                        out[(b * d.q_len + i) * inner + h * d.head_dim + c] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition() {
        // q_len not a multiple of the block, cross-attention-like kv_len.
        for (q_len, kv_len) in [(130usize, 77usize), (64, 200), (5, 1)] {
            let d = Dims {
                batch: 2,
                q_len,
                kv_len,
                heads: 3,
                head_dim: 8,
            };
            let inner = d.heads * d.head_dim;
            let make = |n: usize, s: f32| -> Vec<f32> {
                (0..n).map(|i| (i as f32 * s).sin() * 2.0).collect()
            };
            let q = make(d.batch * q_len * inner, 0.71);
            let k = make(d.batch * kv_len * inner, 0.37);
            let v = make(d.batch * kv_len * inner, 0.13);
            let got = attention(&q, &k, &v, d);
            let want = naive(&q, &k, &v, d);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "q_len {q_len} kv_len {kv_len}: {worst}");
        }
    }
}
