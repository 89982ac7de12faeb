//! Attention blocks of the UNet and the VAE.
//!
//! Ports of diffusers (0.42) `models/attention_processor.py` (`Attention` with `AttnProcessor2_0`),
//! `models/attention.py` (`BasicTransformerBlock`, `FeedForward`, `GEGLU`) and
//! `models/transformers/transformer_2d.py` (`Transformer2DModel`, continuous input).
//!
//! Memory: a 64x64 latent gives 4096 tokens, so one score matrix per head is 4096 x 4096. Native
//! GPUs run flash kernels that never form it ([`crate::kernel::attention`]); elsewhere queries
//! are processed in chunks so that no score tensor exceeds [`SCORE_BUDGET_BYTES`] (WebGPU binds
//! 128 MiB per storage buffer by default; browsers often no more).

use burn::backend::Dispatch;
use burn::backend::ops::attention::attention_fallback;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, FloatDType, Tensor};

use super::ops;

/// Largest score tensor (`batch * heads * q_chunk * kv_len` f32 values) one attention call makes.
pub const SCORE_BUDGET_BYTES: usize = 64 << 20;

/// `softmax(q k^T / sqrt(d)) v`: the flash kernels of [`crate::kernel::attention`] on GPUs,
/// elsewhere chunked over queries to bound memory.
///
/// The chunks run Burn's attention op on the CPU backend, and on CubeCL devices (heads wider
/// than [`crate::kernel::attention::MAX_FLASH_HEAD_DIM`], or flash attention turned off) its
/// score-matrix form (`attention_fallback`: matmul, softmax, matmul, the form Burn runs without
/// autotune). Under autotune the op itself would try cubek's unit flash kernel, which unrolls
/// over the head dim: for the VAE's single 512-wide head that is a 73 000-line WGSL shader, and
/// lavapipe's LLVM had not finished compiling it after an hour (a 512x512 decode, f16, 64x64
/// latent).
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`, `k` / `v`: `[batch, heads, kv_len, head_dim]`
/// - output: `[batch, heads, q_len, head_dim]`
///
/// f16 activations are widened to f32 for the scores, the softmax and the weighted sum, then
/// narrowed back (diffusers' `upcast_attention` / `upcast_softmax`, always on): f16 scores of
/// long sequences lose the softmax's precision and can overflow.
pub fn scaled_dot_product_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    // GPUs: flash kernels (f32 accumulation, no score matrix, no chunking).
    if let Some(kind) = crate::kernel::attention::flash_kind(&q.device(), q.dtype(), q.dims()[3]) {
        return crate::kernel::attention::flash_attention(q, k, v, kind);
    }
    if q.dtype() == DType::F16 {
        let wide = FloatDType::F32;
        let out = scaled_dot_product_attention(q.cast(wide), k.cast(wide), v.cast(wide));
        return out.cast(FloatDType::F16);
    }
    let [b, h, q_len, _] = q.dims();
    let kv_len = k.dims()[2];
    let per_query = b * h * kv_len * 4;
    let chunk = (SCORE_BUDGET_BYTES / per_query.max(1)).clamp(1, q_len.max(1));
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    let score_matrix = crate::kernel::is_cube(&q.device());
    let one = |q: Tensor<4>, k: Tensor<4>, v: Tensor<4>| {
        if score_matrix {
            Tensor::from_dispatch(attention_fallback::<Dispatch>(
                q.into_dispatch(),
                k.into_dispatch(),
                v.into_dispatch(),
                None,
                None,
                options,
            ))
        } else {
            attention(q, k, v, None, None, options)
        }
    };
    if chunk >= q_len {
        return one(q, k, v);
    }
    let parts: Vec<Tensor<4>> = (0..q_len)
        .step_by(chunk)
        .map(|start| {
            let end = (start + chunk).min(q_len);
            let qc = q.clone().slice([0..b, 0..h, start..end]);
            one(qc, k.clone(), v.clone())
        })
        .collect();
    Tensor::cat(parts, 2)
}

/// diffusers `Attention` as the UNet's transformer blocks use it (no norm, no residual) and as
/// the VAE mid block uses it (`group_norm`, residual connection, biased projections).
#[derive(Module, Debug)]
pub struct Attention {
    /// Only in the VAE mid block (`norm_num_groups` set).
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` (Linear); `to_out.1` is dropout.
    pub to_out: Vec<Linear>,
    heads: usize,
    /// diffusers computes these scores in f32 even for f16 models; this port keeps f32 activations.
    upcast_attention: bool,
    residual_connection: bool,
    rescale_output_factor: f64,
}

/// Construction arguments of [`Attention`] (a subset of diffusers' `Attention.__init__`).
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    pub query_dim: usize,
    pub cross_attention_dim: Option<usize>,
    pub heads: usize,
    pub dim_head: usize,
    pub bias: bool,
    pub upcast_attention: bool,
    /// `(num_groups, eps)` of the VAE's group norm.
    pub norm: Option<(usize, f64)>,
    pub residual_connection: bool,
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    pub fn init(&self, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        Attention {
            group_norm: self.norm.map(|(groups, eps)| {
                GroupNormConfig::new(groups, self.query_dim)
                    .with_epsilon(eps)
                    .init(device)
            }),
            to_q: lin(self.query_dim, inner, self.bias),
            to_k: lin(kv_dim, inner, self.bias),
            to_v: lin(kv_dim, inner, self.bias),
            to_out: vec![lin(inner, self.query_dim, true)],
            heads: self.heads,
            upcast_attention: self.upcast_attention,
            residual_connection: self.residual_connection,
            rescale_output_factor: self.rescale_output_factor,
        }
    }
}

impl Attention {
    /// Attention over token sequences.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, query_dim]`, `context`: `[batch, ctx_len, kv_dim]` (self-attention when None)
    /// - output: `[batch, seq, query_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let context = context.unwrap_or_else(|| x.clone());
        let ctx_len = context.dims()[1];
        let q = self.to_q.forward(x); // [b, s, inner]
        let k = self.to_k.forward(context.clone()); // [b, ctx, inner]
        let v = self.to_v.forward(context);
        if let Some(out) = ops::fused_attention(&q, &k, &v, self.heads) {
            return self.to_out[0].forward(out);
        }
        let inner = q.dims()[2];
        let dh = inner / self.heads;
        let heads = |t: Tensor<3>, len| t.reshape([b, len, self.heads, dh]).swap_dims(1, 2); // [b, h, len, dh]
        let out = scaled_dot_product_attention(heads(q, s), heads(k, ctx_len), heads(v, ctx_len));
        let out = out.swap_dims(1, 2).reshape([b, s, inner]);
        self.to_out[0].forward(out)
    }

    /// The VAE mid-block form: group norm, single-head attention over pixels, residual.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]` -> same
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = match &self.group_norm {
            Some(norm) => ops::group_norm(norm, x, false),
            None => x,
        };
        let tokens = x.reshape([b, c, h * w]).swap_dims(1, 2); // [b, hw, c]
        let out = self.forward(tokens, None); // [b, hw, c]
        let mut out = out.swap_dims(1, 2).reshape([b, c, h, w]);
        if self.residual_connection {
            out = out + residual;
        }
        if self.rescale_output_factor != 1.0 {
            out = out / self.rescale_output_factor;
        }
        out
    }

    pub fn upcast_attention(&self) -> bool {
        self.upcast_attention
    }
}

/// `GEGLU`: `proj` to twice the width, `hidden * gelu(gate)`.
#[derive(Module, Debug)]
pub struct Geglu {
    pub proj: Linear,
}

/// diffusers `FeedForward` with `activation_fn="geglu"`: `net.0` (GEGLU), `net.1` (dropout),
/// `net.2` (Linear). The field names `net_0` / `net_2` map to `net.0` / `net.2` in the weight
/// remap table.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub net_0: Geglu,
    pub net_2: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, device: &Device) -> Self {
        let inner = dim * 4;
        Self {
            net_0: Geglu {
                proj: LinearConfig::new(dim, inner * 2).init(device),
            },
            net_2: LinearConfig::new(inner, dim).init(device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, dim]` -> same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.net_0.proj.forward(x); // [b, s, 2 * inner]
        self.net_2.forward(ops::geglu(h)) // [b, s, inner] -> [b, s, dim]
    }
}

/// `BasicTransformerBlock` (layer_norm type): self-attention, cross-attention, GEGLU feed-forward.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: usize,
        upcast: bool,
        device: &Device,
    ) -> Self {
        let attn = |cross| {
            AttentionConfig {
                query_dim: dim,
                cross_attention_dim: cross,
                heads,
                dim_head,
                bias: false,
                upcast_attention: upcast,
                norm: None,
                residual_connection: false,
                rescale_output_factor: 1.0,
            }
            .init(device)
        };
        let norm = || LayerNormConfig::new(dim).with_epsilon(1e-5).init(device);
        Self {
            norm1: norm(),
            attn1: attn(None),
            norm2: norm(),
            attn2: attn(Some(cross_attention_dim)),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, dim]`, `context`: `[batch, ctx_len, cross_attention_dim]` -> `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `proj_in` / `proj_out`: 1x1 convolutions (SD 1.x) or Linear (`use_linear_projection`, SD 2.x).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel` on continuous (latent image) input.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

/// Construction arguments of [`Transformer2DModel`].
#[derive(Debug, Clone)]
pub struct Transformer2DConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
}

impl Transformer2DConfig {
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let inner = self.num_attention_heads * self.attention_head_dim;
        let proj = |i, o| {
            if self.use_linear_projection {
                Projection::Linear(LinearConfig::new(i, o).init(device))
            } else {
                Projection::Conv(Conv2dConfig::new([i, o], [1, 1]).init(device))
            }
        };
        Transformer2DModel {
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: proj(self.in_channels, inner),
            transformer_blocks: (0..self.num_layers)
                .map(|_| {
                    BasicTransformerBlock::new(
                        inner,
                        self.num_attention_heads,
                        self.attention_head_dim,
                        self.cross_attention_dim,
                        self.upcast_attention,
                        device,
                    )
                })
                .collect(),
            proj_out: proj(inner, self.in_channels),
        }
    }
}

impl Transformer2DModel {
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`, `context`: `[batch, ctx_len, cross_dim]`
    /// - output: `[batch, channels, height, width]`
    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        // 1. input: norm, project, flatten to tokens
        let x = ops::group_norm(&self.norm, x, false);
        let to_tokens = |t: Tensor<4>| {
            let ch = t.dims()[1];
            t.swap_dims(1, 2).swap_dims(2, 3).reshape([b, h * w, ch]) // [b, hw, ch]
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(ops::conv2d(conv, x)),
            Projection::Linear(lin) => lin.forward(to_tokens(x)),
        };
        // 2. blocks
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone());
        }
        // 3. output: project back, un-flatten, residual
        let to_image = |t: Tensor<3>| {
            let ch = t.dims()[2];
            t.reshape([b, h, w, ch]).swap_dims(2, 3).swap_dims(1, 2) // [b, ch, h, w]
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => {
                ops::conv2d_fused(conv, to_image(tokens), None, Some(residual))
            }
            Projection::Linear(lin) => to_image(lin.forward(tokens)) + residual,
        };
        debug_assert_eq!(out.dims(), [b, c, h, w]);
        out
    }
}
