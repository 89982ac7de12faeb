//! The down, mid and up blocks of the UNet and the VAE.
//!
//! Ports of diffusers (0.42) `models/unets/unet_2d_blocks.py`. One struct serves the block types
//! that differ only by what they hold: [`DownBlock`] is `CrossAttnDownBlock2D` (with
//! `attentions`), `DownBlock2D` and the VAE's `DownEncoderBlock2D` (resnets without time
//! embedding); [`UpBlock`] likewise `CrossAttnUpBlock2D`, `UpBlock2D` (with skip connections)
//! and `UpDecoderBlock2D` (without). Empty `Vec`s hold no keys, so checkpoints map 1:1.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, AttentionConfig, Transformer2DConfig, Transformer2DModel};
use super::conv_gemm::RowPieces;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};

/// Shared construction arguments of a block's resnets and transformers.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    pub num_layers: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: Option<usize>,
    pub resnet_eps: f64,
    pub resnet_groups: usize,
    pub output_scale_factor: f64,
    /// `Some` for cross-attention blocks.
    pub transformer: Option<TransformerArgs>,
}

/// What a cross-attention block passes to its `Transformer2DModel`s.
#[derive(Debug, Clone)]
pub struct TransformerArgs {
    pub num_attention_heads: usize,
    pub transformer_layers: usize,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
}

impl BlockConfig {
    fn resnet(&self, in_channels: usize, out_channels: usize, device: &Device) -> ResnetBlock2D {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: self.temb_channels,
            groups: self.resnet_groups,
            eps: self.resnet_eps,
            output_scale_factor: self.output_scale_factor,
        }
        .init(device)
    }

    fn transformer(&self, channels: usize, device: &Device) -> Option<Transformer2DModel> {
        self.transformer.as_ref().map(|t| {
            Transformer2DConfig {
                num_attention_heads: t.num_attention_heads,
                attention_head_dim: channels / t.num_attention_heads,
                in_channels: channels,
                num_layers: t.transformer_layers,
                cross_attention_dim: t.cross_attention_dim,
                norm_num_groups: self.resnet_groups,
                use_linear_projection: t.use_linear_projection,
                upcast_attention: t.upcast_attention,
            }
            .init(device)
        })
    }

    /// A down block; `downsample_padding` is `Some` when the block ends with a downsampler.
    pub fn init_down(&self, downsample_padding: Option<usize>, device: &Device) -> DownBlock {
        let o = self.out_channels;
        DownBlock {
            resnets: (0..self.num_layers)
                .map(|j| self.resnet(if j == 0 { self.in_channels } else { o }, o, device))
                .collect(),
            attentions: (0..self.num_layers)
                .filter_map(|_| self.transformer(o, device))
                .collect(),
            downsamplers: downsample_padding
                .map(|p| Downsample2D::new(o, p, device))
                .into_iter()
                .collect(),
        }
    }

    /// An up block. `skip_channels` gives, per resnet, the channels of the skip connection it
    /// concatenates (empty for the VAE decoder); `prev_output_channel` feeds the first resnet.
    pub fn init_up(
        &self,
        prev_output_channel: usize,
        skip_channels: &[usize],
        add_upsample: bool,
        device: &Device,
    ) -> UpBlock {
        let o = self.out_channels;
        UpBlock {
            resnets: (0..self.num_layers)
                .map(|j| {
                    let input = if j == 0 { prev_output_channel } else { o };
                    self.resnet(
                        input + skip_channels.get(j).copied().unwrap_or(0),
                        o,
                        device,
                    )
                })
                .collect(),
            attentions: (0..self.num_layers)
                .filter_map(|_| self.transformer(o, device))
                .collect(),
            upsamplers: add_upsample
                .then(|| Upsample2D::new(o, device))
                .into_iter()
                .collect(),
        }
    }

    /// `UNetMidBlock2DCrossAttn` (one resnet, then `num_layers` x (transformer, resnet)).
    pub fn init_mid_cross_attn(&self, device: &Device) -> UNetMidBlock2DCrossAttn {
        let c = self.in_channels;
        UNetMidBlock2DCrossAttn {
            resnets: (0..=self.num_layers)
                .map(|_| self.resnet(c, c, device))
                .collect(),
            attentions: (0..self.num_layers)
                .filter_map(|_| self.transformer(c, device))
                .collect(),
        }
    }

    /// The VAE's `UNetMidBlock2D`: resnet, (single-head spatial attention, resnet) x `num_layers`.
    pub fn init_mid_vae(&self, add_attention: bool, device: &Device) -> UNetMidBlock2D {
        let c = self.in_channels;
        let attention = AttentionConfig {
            query_dim: c,
            cross_attention_dim: None,
            heads: 1,
            dim_head: c,
            bias: true,
            upcast_attention: true,
            norm: Some((self.resnet_groups, self.resnet_eps)),
            residual_connection: true,
            rescale_output_factor: self.output_scale_factor,
        };
        UNetMidBlock2D {
            resnets: (0..=self.num_layers)
                .map(|_| self.resnet(c, c, device))
                .collect(),
            attentions: if add_attention {
                (0..self.num_layers)
                    .map(|_| attention.init(device))
                    .collect()
            } else {
                vec![]
            },
        }
    }
}

/// `CrossAttnDownBlock2D` / `DownBlock2D` / `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
    /// Returns the output and every intermediate state the up path concatenates back.
    ///
    /// # Shapes
    /// - `x`: `[batch, in, h, w]` -> `[batch, out, h', w']` (h' = ceil(h/2) with a downsampler)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        context: Option<&Tensor<3>>,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb.cloned());
            if let (Some(attn), Some(ctx)) = (self.attentions.get(j), context) {
                x = attn.forward(x, ctx.clone());
            }
            states.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            states.push(x.clone());
        }
        (x, states)
    }
}

/// `CrossAttnUpBlock2D` / `UpBlock2D` / `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock {
    /// `skips` holds the down path's states, consumed from the end (one per resnet; empty for
    /// the VAE decoder).
    ///
    /// # Shapes
    /// - `x`: `[batch, prev, h, w]` -> `[batch, out, 2h, 2w]` with an upsampler (or `upsample_size`)
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        skips: &mut Vec<Tensor<4>>,
        temb: Option<&Tensor<2>>,
        context: Option<&Tensor<3>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        let with_skips = !skips.is_empty();
        for (j, resnet) in self.resnets.iter().enumerate() {
            if with_skips && let Some(skip) = skips.pop() {
                x = Tensor::cat(vec![x, skip], 1);
            }
            x = resnet.forward(x, temb.cloned());
            if let (Some(attn), Some(ctx)) = (self.attentions.get(j), context) {
                x = attn.forward(x, ctx.clone());
            }
        }
        for up in &self.upsamplers {
            x = up.forward(x, upsample_size);
        }
        x
    }
}

impl UpBlock {
    /// [`Self::forward`] for the VAE decoder's `UpDecoderBlock2D` (no skips, time embedding or
    /// attention) with activations handed between blocks in pieces of rows: the upsampler's
    /// output is kept in pieces and the next block's first resnet gives them back one at a time
    /// (`ResnetBlock2D::forward_pieces`, for the decode's memory peak).
    ///
    /// # Shapes
    /// - `x`: `[batch, prev, h, w]` in pieces -> `[batch, out, 2h, 2w]` in pieces with an
    ///   upsampler
    pub fn forward_decoder(&self, x: RowPieces) -> RowPieces {
        if !self.attentions.is_empty() {
            return RowPieces::whole(self.forward(x.join(), &mut Vec::new(), None, None, None));
        }
        let mut resnets = self.resnets.iter();
        let mut x = match resnets.next() {
            Some(first) => first.forward_pieces(x),
            None => x.join(),
        };
        for resnet in resnets {
            x = resnet.forward(x, None);
        }
        match self.upsamplers.split_last() {
            Some((last, others)) => {
                for up in others {
                    x = up.forward(x, None);
                }
                last.forward_pieces(x)
            }
            None => RowPieces::whole(x),
        }
    }
}

/// `UNetMidBlock2DCrossAttn`.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> same
    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb.clone()));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(x, context.clone());
            x = resnet.forward(x, Some(temb.clone()));
        }
        x
    }
}

/// `UNetMidBlock2D` as the VAE uses it (no time embedding, spatial self-attention).
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> same
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        for (j, resnet) in self.resnets[1..].iter().enumerate() {
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward_spatial(x);
            }
            x = resnet.forward(x, None);
        }
        x
    }
}
