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
