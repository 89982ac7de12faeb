//! The heavy operations of the models, routed to the CPU fast paths of [`crate::cpu`] when the
//! tensors live on the CPU backend (native builds), to [`super::conv_gemm`] for half-precision
//! convolutions on GPU devices, to Burn's modules everywhere else.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{DType, FloatDType, Tensor};

use super::conv_gemm;

/// `conv.forward(x)`.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, oh, ow]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if let Some(padding) = half_gemm_padding(conv, &x) {
        return conv_gemm_of(conv, x, padding);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::conv2d(conv, x)
    }
    #[cfg(target_arch = "wasm32")]
    {
        conv.forward(x)
    }
}

/// `conv.forward(x) + batch_bias[:, :, None, None] + residual`: on the CPU backend both
/// additions ride on the convolution's matrix products (no extra pass).
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
    if let Some(padding) = half_gemm_padding(conv, &x) {
        return add_biases(conv_gemm_of(conv, x, padding), batch_bias, residual);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::conv2d_fused(conv, x, batch_bias, residual)
    }
    #[cfg(target_arch = "wasm32")]
    {
        add_biases(conv.forward(x), batch_bias, residual)
    }
}

/// `y + batch_bias[:, :, None, None] + residual`, as separate adds.
///
/// # Shapes
/// - `y`: `[batch, out, h, w]`, `batch_bias`: `[batch, out]`, `residual`: like `y`
pub(crate) fn add_biases(
    mut y: Tensor<4>,
    batch_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    if let Some(bb) = batch_bias {
        y = y + bb.unsqueeze_dims::<4>(&[2, 3]);
    }
    if let Some(r) = residual {
        y = y + r;
    }
    y
}

/// `conv.forward(x` repeated 2x nearest`)` (`Upsample2D`): the CPU backend reads `x` in
/// place instead of making the 4x tensor.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, 2h, 2w]` (for a 3x3 "same" conv)
pub fn upsample2x_conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if conv_gemm::applies(&x) {
        return conv2d(conv, upsample_nearest(x, 2));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::upsample2x_conv2d(conv, x)
    }
    #[cfg(target_arch = "wasm32")]
    {
        conv.forward(upsample_nearest(x, 2))
    }
}

/// `x` repeated `up` times nearest along height and width.
///
/// # Shapes
/// - `x`: `[b, c, h, w]` -> `[b, c, h * up, w * up]`
pub(crate) fn upsample_nearest(x: Tensor<4>, up: usize) -> Tensor<4> {
    if up == 1 {
        return x;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, up, w, up])
        .reshape([b, c, h * up, w * up])
}

/// Burn's padding as `[top, bottom, left, right]`; `None` for `Same` (left to Burn).
pub(crate) fn explicit_padding(padding: &PaddingConfig2d) -> Option<[usize; 4]> {
    match *padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, bottom, left, right]),
        PaddingConfig2d::Same => None,
    }
}

/// `padding` as `[top, bottom, left, right]` when `conv` on `x` takes [`conv_gemm`]'s route
/// (half-precision activations on a CubeCL device, one group, no dilation, explicit padding,
/// shapes that fit); `None` leaves it to Burn (which also reports what does not fit).
fn half_gemm_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 4]> {
    if !conv_gemm::applies(x) || conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let padding = explicit_padding(&conv.padding)?;
    let [_, c, h, w] = x.dims();
    let [_, wc, kh, kw] = conv.weight.dims();
    (c == wc && h + padding[0] + padding[1] >= kh && w + padding[2] + padding[3] >= kw)
        .then_some(padding)
}

/// [`conv_gemm::conv2d`] with `conv`'s weights and stride.
fn conv_gemm_of(conv: &Conv2d, x: Tensor<4>, padding: [usize; 4]) -> Tensor<4> {
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv_gemm::conv2d(
        x,
        conv.weight.val(),
        bias,
        conv.stride,
        padding,
        conv_gemm::BAND_BYTES,
    )
}

/// `norm.forward(x)`, followed by SiLU when `silu`.
///
/// On CubeCL devices this is [`group_norm_short_rows`] (see there why not Burn's), split into
/// slices of whole groups where the widened activation would not fit one buffer
/// ([`group_norm_parts`]); on the CPU backend `crate::cpu::group_norm`.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    let dims = x.dims();
    let groups = norm.num_groups;
    let well_formed = D >= 3
        && dims[1] == norm.num_channels
        && groups > 0
        && dims[1].is_multiple_of(groups)
        && norm.gamma.is_some() == norm.affine
        && norm.beta.is_some() == norm.affine;
    if crate::kernel::is_cube(&x.device()) && well_formed {
        let parts = group_norm_parts(norm, &x);
        return group_norm_in_parts(norm, x, silu, parts);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::group_norm(norm, x, silu)
    }
    #[cfg(target_arch = "wasm32")]
    {
        silu_if(norm.forward(x), silu)
    }
}

/// Into how many channel slices a GPU group norm of `x` must be split (1 when one call fits).
/// The statistics are computed in f32, so an f16 activation is read widened; where the widened
/// tensor exceeds the device's largest buffer a fused candidate that materialises it fails
/// ("can't allocate buffer": a 512x512 f16 decode on a 128 MiB device, where 256 channels at
/// 512x512 are 128 MiB in f16 and 256 MiB widened). Groups are independent, so slices of whole
/// groups give the same result exactly.
fn group_norm_parts<const D: usize>(norm: &GroupNorm, x: &Tensor<D>) -> usize {
    let Some(limit) = crate::kernel::max_buffer_bytes(&x.device()) else {
        return 1;
    };
    let groups = norm.num_groups;
    // The widened copy: at least 4 bytes an element, whatever the activations' width.
    let bytes = x.shape().num_elements() as u64 * 4;
    if bytes <= limit {
        return 1;
    }
    let wanted = bytes.div_ceil(limit.max(1)) as usize;
    // The fewest slices of whole groups each within the limit (one group per slice at most).
    (wanted..=groups)
        .find(|p| groups.is_multiple_of(*p))
        .unwrap_or(groups)
}

/// [`group_norm_short_rows`] over `parts` slices of whole groups along the channels,
/// concatenated.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
fn group_norm_in_parts<const D: usize>(
    norm: &GroupNorm,
    x: Tensor<D>,
    silu: bool,
    parts: usize,
) -> Tensor<D> {
    if parts <= 1 {
        return group_norm_short_rows(norm, x, silu);
    }
    let width = norm.num_channels / parts;
    let slice = |p: &Option<Param<Tensor<1>>>, start: usize| {
        p.as_ref()
            .map(|p| Param::from_tensor(p.val().slice(start..start + width)))
    };
    let outs = (0..parts)
        .map(|i| {
            let start = i * width;
            let part = GroupNorm {
                gamma: slice(&norm.gamma, start),
                beta: slice(&norm.beta, start),
                num_groups: norm.num_groups / parts,
                num_channels: width,
                epsilon: norm.epsilon,
                affine: norm.affine,
            };
            group_norm_short_rows(&part, x.clone().narrow(1, start, width), silu) // [b, width, ...]
        })
        .collect();
    Tensor::cat(outs, 1)
}

/// Longest row one reduction of [`group_norm_short_rows`] runs over.
const STAT_ROW: usize = 4096;

/// Burn's GroupNorm arithmetic (statistics in f32, centred variance, the affine at the
/// activations' precision), with each group's sums taken in two levels over rows of at most
/// [`STAT_ROW`] elements: `[b, g, k, m]` summed over `m`, then over `k`.
///
/// Why not Burn's `GroupNorm::forward`: its single `mean_dim` over a whole group (a million
/// elements per group at 512x512 with 128 channels) gives wrong sums on lavapipe with Burn 0.22 /
/// CubeCL 0.11 (fusion + autotune, every tuning level): `ones([32, 65536]).sum_dim(1)` leaves 8
/// of the 32 rows short, `ones([32, 131072])` 24 of them at 0, `ones([262144]).sum()` is 262128,
/// while rows of up to 32768 were right in every shape tried (1024 x 32768 included). A
/// 256x256 VAE stage came out shifted (f32) or scaled by hundreds (f16).
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
fn group_norm_short_rows<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    let dims = x.dims();
    let (batch, channels, groups) = (dims[0], dims[1], norm.num_groups);
    let hidden = x.shape().num_elements() / (batch * groups).max(1);
    // The longest row that divides the group (hidden = channels per group x spatial size, a
    // multiple of a power of two for any SD latent or picture).
    let row = (1..=hidden.min(STAT_ROW))
        .rev()
        .find(|m| hidden.is_multiple_of(*m))
        .unwrap_or(1);
    let dtype = x.dtype();
    let wide = match dtype {
        DType::F16 | DType::BF16 => FloatDType::F32,
        _ => FloatDType::from(dtype),
    };
    let x = x.reshape([batch, groups, hidden / row, row]).cast(wide); // [b, g, k, m]
    let mean = x.clone().sum_dim(3).sum_dim(2).div_scalar(hidden as f64); // [b, g, 1, 1]
    let centred = x - mean;
    let var = centred
        .clone()
        .square()
        .sum_dim(3)
        .sum_dim(2)
        .div_scalar(hidden as f64); // [b, g, 1, 1]
    let normalized = centred
        .div(var.add_scalar(norm.epsilon).sqrt())
        .cast(FloatDType::from(dtype))
        .reshape(dims);
    let mut affine = [1; D];
    affine[1] = channels;
    let y = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) => normalized
            .mul(gamma.val().reshape(affine))
            .add(beta.val().reshape(affine)),
        _ => normalized,
    };
    silu_if(y, silu)
}

/// `silu(y)` when `silu`, else `y`: the SiLU that follows a GroupNorm in diffusers' resnets.
pub(crate) fn silu_if<const D: usize>(y: Tensor<D>, silu: bool) -> Tensor<D> {
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

/// Multi-head `softmax(q k^T / sqrt(d)) v` from projections laid out `[batch, len, heads *
/// head_dim]`, or `None` when no fast path applies (then the caller splits heads and runs
/// [`super::attention::scaled_dot_product_attention`]).
///
/// # Shapes
/// - `q`: `[batch, q_len, inner]`, `k` / `v`: `[batch, kv_len, inner]` -> `[batch, q_len, inner]`
pub fn fused_attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
) -> Option<Tensor<3>> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::attention_heads(q, k, v, heads)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (q, k, v, heads);
        None
    }
}

/// diffusers' GEGLU activation after its projection: `a * gelu(gate)`, `[a, gate] =
/// h.chunk(2, -1)` (the CPU backend runs it in one pass, see [`crate::cpu::geglu`]).
///
/// # Shapes
/// - `h`: `[batch, seq, 2 * inner]` -> `[batch, seq, inner]`
pub fn geglu(h: Tensor<3>) -> Tensor<3> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(out) = crate::cpu::geglu(&h) {
        return out;
    }
    let [a, gate] = h
        .chunk(2, 2)
        .try_into()
        .unwrap_or_else(|_| unreachable!("chunk(2) gives 2 parts"));
    a * burn::tensor::activation::gelu(gate)
}
