//! Fast paths for the CPU backend (`flex`): the operations that dominate a UNet / VAE step on a
//! CPU, run on the tensors' raw f32 data instead of through Burn's generic CPU kernels.
//!
//! - [`conv::conv2d`]: im2col in row blocks + one matrix product per block, weights read in
//!   place (Burn's `flex` re-lays out the weights and transposes the input to NHWC, single
//!   threaded, on every call, and scatters its output); 3x3 stride-1 convolutions over enough
//!   pixels by Winograd's F(2x2, 3x3) ([`winograd`]), 2.25x fewer multiplications.
//! - [`attention::attention`]: multi-head attention straight from the `[batch, seq, heads *
//!   head_dim]` projections, blocks of 64 queries, vectorised `exp` ([`math`]; `flex`'s softmax
//!   and flash attention call libm's scalar `expf` per score).
//! - [`group_norm`]: statistics and normalisation in two passes per group, SiLU fused.
//! - [`conv2d_fused`] / [`upsample2x_conv2d`]: a ResNet block's time-embedding add and skip
//!   connection folded into the convolution's products; `Upsample2D`'s repeat read in place.
//! - [`geglu`]: the feed-forward's `a * gelu(gate)` in one pass with a vectorised `erf`.
//!
//! All are f32 (the CPU backend always runs f32, see `device::configure_precision`); anything
//! else (other dtypes, dilated or grouped convolutions) takes Burn's path. Parity with Burn's
//! kernels is tested here and, through the models, with diffusers' fixtures. Setting
//! `NULLPAINT_CPU_KERNELS=0` turns the fast paths off (for comparisons).

pub mod alloc;
pub mod attention;
pub mod conv;
pub mod gemm;
pub mod math;
pub mod winograd;

use std::sync::OnceLock;

use burn::backend::{BackendTensor, DispatchDevice, DispatchTensorKind};
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

/// Whether tensors on `device` take the fast paths.
pub fn enabled(device: &Device) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
        && *ON.get_or_init(|| std::env::var("NULLPAINT_CPU_KERNELS").map_or(true, |v| v != "0"))
}

/// Runs `f` on the f32 values of a tensor of the CPU backend, borrowing its buffer (no copy)
/// when it is contiguous, as weights and most activations are; a strided view is copied first.
///
/// # Panics
/// When `t` is not an f32 tensor of the `flex` backend: callers check [`enabled`] and the
/// dtype first.
fn with_values<const D: usize, R>(t: Tensor<D>, f: impl FnOnce(&[f32]) -> R) -> R {
    let n = t.shape().num_elements();
    match t.into_dispatch().kind {
        DispatchTensorKind::Flex(BackendTensor::Float(flex)) => {
            if flex.is_contiguous() && flex.layout().start_offset() == 0 {
                f(&flex.storage::<f32>()[..n])
            } else {
                let values = flex
                    .into_data()
                    .try_into_vec::<f32>()
                    .unwrap_or_else(|e| panic!("cpu fast path: not an f32 tensor ({e:?})"));
                f(&values)
            }
        }
        _ => panic!("cpu fast path: not a tensor of the CPU backend"),
    }
}

/// Like [`with_values`] for an optional tensor.
fn with_opt<const D: usize, R>(t: Option<Tensor<D>>, f: impl FnOnce(Option<&[f32]>) -> R) -> R {
    match t {
        Some(t) => with_values(t, |v| f(Some(v))),
        None => f(None),
    }
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// diffusers' GEGLU after its projection, `a * gelu(gate)` with `[a, gate] = h.chunk(2, -1)`,
/// in one pass over `h` (Burn copies both halves, calls libm's scalar `erff` per value and
/// allocates twice more). `None` when the fast path does not apply.
///
/// # Shapes
/// - `h`: `[batch, seq, 2 * inner]` -> `[batch, seq, inner]`
pub fn geglu(h: &Tensor<3>) -> Option<Tensor<3>> {
    let [batch, seq, width] = h.dims();
    if !enabled(&h.device()) || h.dtype() != DType::F32 || !width.is_multiple_of(2) {
        return None;
    }
    let inner = width / 2;
    let mut out = vec![0f32; batch * seq * inner];
    with_values(h.clone(), |hv| {
        const ROWS: usize = 16;
        out.par_chunks_mut(ROWS * inner.max(1))
            .zip(hv.par_chunks(ROWS * width.max(1)))
            .for_each(|(o, rows)| {
                for (o, row) in o.chunks_exact_mut(inner).zip(rows.chunks_exact(width)) {
                    let (a, gate) = row.split_at(inner);
                    math::geglu_row(a, gate, o);
                }
            });
    });
    Some(tensor(out, [batch, seq, inner], &h.device()))
}

/// `conv.forward(x)`, through [`conv::conv2d`] on the CPU backend.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, oh, ow]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv2d_fused(conv, x, None, None)
}

/// `conv.forward(x) + batch_bias[:, :, None, None] + residual`, with both additions folded into
/// the matrix products ([`conv::Epilogue`]) on the CPU backend, plain adds elsewhere.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]`, `batch_bias`: `[batch, out]`, `residual`: `[batch, out, oh, ow]`
/// - output: `[batch, out, oh, ow]`
pub fn conv2d_fused(
    conv: &Conv2d,
    x: Tensor<4>,
    batch_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    conv2d_impl(conv, x, batch_bias, residual, 1)
}

/// `conv.forward(x` repeated 2x nearest`)`, reading `x` in place on the CPU backend (the
/// repeated tensor, 4x the input, is never made).
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, oh, ow]` of the conv over `[.., 2h, 2w]`
pub fn upsample2x_conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv2d_impl(conv, x, None, None, 2)
}

fn conv2d_impl(
    conv: &Conv2d,
    x: Tensor<4>,
    batch_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
    upsample: usize,
) -> Tensor<4> {
    use crate::models::ops::{add_biases, explicit_padding, upsample_nearest};
    let plain = |x: Tensor<4>, batch_bias: Option<Tensor<2>>, residual: Option<Tensor<4>>| {
        add_biases(
            conv.forward(upsample_nearest(x, upsample)),
            batch_bias,
            residual,
        )
    };
    let device = x.device();
    let padding = explicit_padding(&conv.padding);
    let [batch, in_channels, height, width] = x.dims();
    let [out_channels, w_in, kh, kw] = conv.weight.dims();
    let (Some(padding), true) = (
        padding,
        enabled(&device)
            && conv.groups == 1
            && conv.dilation == [1, 1]
            && w_in == in_channels
            && x.dtype() == DType::F32,
    ) else {
        return plain(x, batch_bias, residual);
    };
    let g = conv::Conv {
        batch,
        in_channels,
        height: height * upsample,
        width: width * upsample,
        out_channels,
        kernel: [kh, kw],
        stride: conv.stride,
        padding,
        upsample,
    };
    let Some([oh, ow]) = g.output_size() else {
        return plain(x, batch_bias, residual); // Burn reports the error
    };
    if conv.weight.dtype() != DType::F32
        || conv.bias.as_ref().is_some_and(|b| b.dtype() != DType::F32)
    {
        return plain(x, batch_bias, residual);
    }
    let shapes_fit = batch_bias
        .as_ref()
        .is_none_or(|b| b.dims() == [batch, out_channels] && b.dtype() == DType::F32)
        && residual
            .as_ref()
            .is_none_or(|r| r.dims() == [batch, out_channels, oh, ow] && r.dtype() == DType::F32);
    if !shapes_fit {
        return plain(x, batch_bias, residual); // Burn reports a shape error
    }
    let out = with_values(x, |xv| {
        with_values(conv.weight.val(), |wv| {
            with_opt(conv.bias.as_ref().map(|b| b.val()), |bv| {
                with_opt(batch_bias, |bb| {
                    with_opt(residual, |res| {
                        let epilogue = conv::Epilogue {
                            batch_bias: bb,
                            residual: res,
                        };
                        conv::conv2d_with(xv, wv, bv, epilogue, g)
                    })
                })
            })
        })
    });
    tensor(out, [batch, out_channels, oh, ow], &device)
}

/// `silu(norm.forward(x))` when `silu`, else `norm.forward(x)`; one pass for the statistics
/// (f64 sums, as PyTorch accumulates group norm statistics in a wider type) and one for the
/// output per (batch, group) on the CPU backend.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    let device = x.device();
    let dims = x.dims();
    let fallback = |x: Tensor<D>| crate::models::ops::silu_if(norm.forward(x), silu);
    if !enabled(&device) || x.dtype() != DType::F32 || D < 2 || dims[1] != norm.num_channels {
        return fallback(x);
    }
    let channels = dims[1];
    let groups = norm.num_groups;
    if groups == 0 || !channels.is_multiple_of(groups) {
        return fallback(x);
    }
    let affine = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if g.dtype() == DType::F32 && b.dtype() == DType::F32 => {
            Some((g.val(), b.val()))
        }
        (None, None) => None,
        _ => return fallback(x),
    };
    let spatial: usize = dims[2..].iter().product();
    let per_group = channels / groups;
    let eps = norm.epsilon;
    let mut out = vec![0.0f32; x.shape().num_elements()];
    let (gamma, beta) = match affine {
        Some((g, b)) => (Some(g), Some(b)),
        None => (None, None),
    };
    with_values(x, |xv| {
        with_opt(gamma, |gamma| {
            with_opt(beta, |beta| {
                out.par_chunks_mut(per_group * spatial)
                    .zip(xv.par_chunks(per_group * spatial))
                    .enumerate()
                    .for_each(|(i, (dst, src))| {
                        let c0 = (i % groups) * per_group;
                        let (mean, inv_std) = group_stats(src, eps);
                        for (c, (d, s)) in dst
                            .chunks_exact_mut(spatial)
                            .zip(src.chunks_exact(spatial))
                            .enumerate()
                        {
                            let (g, b) = match (gamma, beta) {
                                (Some(g), Some(b)) => (g[c0 + c], b[c0 + c]),
                                _ => (1.0, 0.0),
                            };
                            let a = inv_std * g;
                            let shift = b - mean * a;
                            for (o, &v) in d.iter_mut().zip(s) {
                                *o = v * a + shift;
                            }
                            if silu {
                                math::silu_in_place(d);
                            }
                        }
                    });
            })
        })
    });
    tensor(out, dims, &device)
}

/// Mean and `1 / sqrt(var + eps)` of one group (biased variance, two passes, f64 sums).
fn group_stats(xs: &[f32], eps: f64) -> (f32, f32) {
    let n = xs.len().max(1) as f64;
    let mut acc = [0.0f64; 8];
    let mut parts = xs.chunks_exact(8);
    for p in &mut parts {
        for l in 0..8 {
            acc[l] += p[l] as f64;
        }
    }
    let sum: f64 =
        acc.iter().sum::<f64>() + parts.remainder().iter().map(|&x| x as f64).sum::<f64>();
    let mean = sum / n;
    let mut acc = [0.0f64; 8];
    let mut parts = xs.chunks_exact(8);
    for p in &mut parts {
        for l in 0..8 {
            let d = p[l] as f64 - mean;
            acc[l] += d * d;
        }
    }
    let sq: f64 = acc.iter().sum::<f64>()
        + parts
            .remainder()
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>();
    (mean as f32, (1.0 / (sq / n + eps).sqrt()) as f32)
}

/// Multi-head attention through [`attention::attention`]; `None` when the fast path does not
/// apply (another backend or dtype).
///
/// # Shapes
/// - `q`: `[batch, q_len, inner]`, `k` / `v`: `[batch, kv_len, inner]` -> `[batch, q_len, inner]`
pub fn attention_heads(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
) -> Option<Tensor<3>> {
    let device = q.device();
    let [batch, q_len, inner] = q.dims();
    let [kb, kv_len, k_inner] = k.dims();
    if !enabled(&device)
        || heads == 0
        || !inner.is_multiple_of(heads)
        || kb != batch
        || k_inner != inner
        || v.dims() != k.dims()
    {
        return None;
    }
    if [q.dtype(), k.dtype(), v.dtype()] != [DType::F32; 3] {
        return None;
    }
    let d = attention::Dims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: inner / heads,
    };
    let out = with_values(q.clone(), |qv| {
        with_values(k.clone(), |kv| {
            with_values(v.clone(), |vv| attention::attention(qv, kv, vv, d))
        })
    });
    Some(tensor(out, [batch, q_len, inner], &device))
}
