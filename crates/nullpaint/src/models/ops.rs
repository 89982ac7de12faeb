//! The heavy operations of the models, routed to the CPU fast paths of [`crate::cpu`] when the
//! tensors live on the CPU backend (native builds), to Burn's modules everywhere else.

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// `conv.forward(x)`.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, oh, ow]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
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
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::conv2d_fused(conv, x, batch_bias, residual)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut y = conv.forward(x);
        if let Some(bb) = batch_bias {
            y = y + bb.unsqueeze_dims::<4>(&[2, 3]);
        }
        if let Some(r) = residual {
            y = y + r;
        }
        y
    }
}

/// `conv.forward(x` repeated 2x nearest`)` (`Upsample2D`): the CPU backend reads `x` in
/// place instead of making the 4x tensor.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, 2h, 2w]` (for a 3x3 "same" conv)
pub fn upsample2x_conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::upsample2x_conv2d(conv, x)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let [b, c, h, w] = x.dims();
        let x = x
            .reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2])
            .reshape([b, c, h * 2, w * 2]);
        conv.forward(x)
    }
}

/// `norm.forward(x)`, followed by SiLU when `silu`.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::group_norm(norm, x, silu)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let y = norm.forward(x);
        if silu {
            burn::tensor::activation::silu(y)
        } else {
            y
        }
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
