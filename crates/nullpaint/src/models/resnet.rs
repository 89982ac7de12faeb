//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.
//!
//! Ports of diffusers (0.42) `models/resnet.py` (`ResnetBlock2D`, `time_embedding_norm="default"`)
//! and `models/downsampling.py` / `models/upsampling.py` (`use_conv=True`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::conv_gemm::{self, RowPieces};
use super::ops;

/// A 3x3 (or `k`x`k`) convolution with symmetric padding, the way diffusers builds them.
pub(crate) fn conv2d(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// `ResnetBlock2D`: two norm-silu-conv stages, the time embedding added in between, and a 1x1
/// `conv_shortcut` when the channel count changes.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    /// Absent in the VAE (no time embedding).
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// Construction arguments of [`ResnetBlock2D`].
#[derive(Debug, Clone)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    pub fn init(&self, device: &Device) -> ResnetBlock2D {
        let (i, o) = (self.in_channels, self.out_channels);
        ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, i)
                .with_epsilon(self.eps)
                .init(device),
            conv1: conv2d(i, o, 3, 1, 1, device),
            time_emb_proj: self
                .temb_channels
                .map(|t| LinearConfig::new(t, o).init(device)),
            norm2: GroupNormConfig::new(self.groups, o)
                .with_epsilon(self.eps)
                .init(device),
            conv2: conv2d(o, o, 3, 1, 1, device),
            conv_shortcut: (i != o).then(|| conv2d(i, o, 1, 1, 0, device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

impl ResnetBlock2D {
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`, `temb`: `[batch, temb_channels]` (None in the VAE)
    /// - output: `[batch, out, h, w]`
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        // conv1(silu(norm1(x))) + time_emb_proj(silu(temb))[:, :, None, None]
        let temb = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(silu(temb))), // [b, out]
            _ => None,
        };
        let h = ops::norm_conv2d(&self.norm1, true, &self.conv1, x.clone(), temb, None);
        // shortcut(x) + conv2(silu(norm2(h)))
        let x = match &self.conv_shortcut {
            Some(conv) => ops::conv2d(conv, x),
            None => x,
        };
        let out = ops::norm_conv2d(&self.norm2, true, &self.conv2, h, None, Some(x));
        self.rescaled(out)
    }
}

impl ResnetBlock2D {
    /// [`Self::forward`] without a time embedding (the VAE), for an input held in pieces (what
    /// [`Upsample2D::forward_pieces`] makes): the pieces are given back one at a time as the
    /// 1x1 `conv_shortcut` passes over them. With the input whole, its shortcut's output and
    /// `conv1`'s output would all be alive at once: at a 512x512 decode's last up block 128 +
    /// 64 + 64 MiB in f16, the pipeline's memory peak; in pieces at most one piece of the
    /// shortcut's output is added to the input and `conv1`'s output.
    ///
    /// # Shapes
    /// - `x`: `[batch, in, h, w]` in pieces of rows -> `[batch, out, h, w]`
    pub fn forward_pieces(&self, x: RowPieces) -> Tensor<4> {
        if x.len() == 1 || !conv_gemm::applies(&x) {
            return self.forward(x.join(), None);
        }
        let normed = ops::Normalized::pieces(&self.norm1, true, x);
        let h = ops::conv2d_from(&self.conv1, &normed);
        let x = normed.into_inner();
        let residual = match &self.conv_shortcut {
            // Each piece dropped once its rows are through the 1x1 convolution.
            Some(conv) => conv_gemm::cat_rows(
                x.into_pieces()
                    .into_iter()
                    .map(|piece| ops::conv2d(conv, piece))
                    .collect(),
            ),
            None => x.join(),
        };
        let out = ops::norm_conv2d(&self.norm2, true, &self.conv2, h, None, Some(residual));
        self.rescaled(out)
    }

    /// `out / output_scale_factor` (diffusers' last step of the block).
    fn rescaled(&self, out: Tensor<4>) -> Tensor<4> {
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// `Downsample2D` with a strided 3x3 conv (`downsamplers.0.conv`). `padding = 0` (the VAE) pads
/// right and bottom by one first, as diffusers does.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, device: &Device) -> Self {
        let conv = if padding == 0 {
            Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                .init(device)
        } else {
            conv2d(channels, channels, 3, 2, padding, device)
        };
        Self { conv }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> `[batch, c, ceil(h / 2), ceil(w / 2)]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        ops::conv2d(&self.conv, x)
    }
}

/// `Upsample2D`: nearest-neighbour x2 (or to an explicit size), then a 3x3 conv
/// (`upsamplers.0.conv`).
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            conv: conv2d(channels, channels, 3, 1, 1, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> `[batch, c, 2h, 2w]`, or `[batch, c, size.0, size.1]`
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let x = match size {
            // Exact 2x: repeat each pixel (what nearest interpolation does at scale 2), fused
            // with the conv.
            None => return ops::upsample2x_conv2d(&self.conv, x),
            Some(size) => interpolate(
                x,
                InterpolateOptions {
                    mode: InterpolateMode::Nearest,
                    align_corners: false,
                    output_size: Some(size),
                    scale_factor: None,
                },
            ),
        };
        ops::conv2d(&self.conv, x)
    }

    /// [`Self::forward`] at exactly 2x, the output kept in pieces of rows on GPUs in half
    /// precision (`ops::upsample2x_conv2d_in_pieces`; one piece elsewhere).
    ///
    /// # Shapes
    /// - `x`: `[batch, c, h, w]` -> `[batch, c, 2h, 2w]` in pieces of rows
    pub fn forward_pieces(&self, x: Tensor<4>) -> RowPieces {
        ops::upsample2x_conv2d_in_pieces(&self.conv, x)
    }
}
