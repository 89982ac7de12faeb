//! `AutoencoderKL`: the VAE's encoder (to the posterior mean / log-variance) and decoder.
//!
//! Port of diffusers (0.42) `models/autoencoders/autoencoder_kl.py` and `models/autoencoders/vae.py`
//! (`Encoder`, `Decoder`, `DiagonalGaussianDistribution`), built from the VAE's `config.json`.
//! Tiled encode / decode (`enable_tiling()`) and the policy for it: [`super::vae_tiling`].

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::conv_gemm::RowPieces;
use super::ops;
use super::resnet::conv2d;
use super::unet_2d::check_defaults;
use super::unet_2d_blocks::{BlockConfig, DownBlock, UNetMidBlock2D, UpBlock};
use super::{ConfigError, check_at_most};

/// The keys of an `AutoencoderKL` `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(default = "d::three")]
    pub in_channels: usize,
    #[serde(default = "d::three")]
    pub out_channels: usize,
    #[serde(default = "d::down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d::up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d::boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d::one")]
    pub layers_per_block: usize,
    #[serde(default = "d::silu")]
    pub act_fn: String,
    #[serde(default = "d::four")]
    pub latent_channels: usize,
    #[serde(default = "d::groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d::scaling")]
    pub scaling_factor: f64,
    #[serde(default = "d::yes")]
    pub use_quant_conv: bool,
    #[serde(default = "d::yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d::yes")]
    pub mid_block_add_attention: bool,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

mod d {
    pub fn three() -> usize {
        3
    }
    pub fn four() -> usize {
        4
    }
    pub fn one() -> usize {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn down() -> Vec<String> {
        vec!["DownEncoderBlock2D".into()]
    }
    pub fn up() -> Vec<String> {
        vec!["UpDecoderBlock2D".into()]
    }
    pub fn boc() -> Vec<usize> {
        vec![64]
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn groups() -> usize {
        32
    }
    pub fn scaling() -> f64 {
        0.18215
    }
}

const MUST_BE_DEFAULT: &[(&str, Option<&str>)] = &[
    ("shift_factor", None),
    ("latents_mean", None),
    ("latents_std", None),
];

/// The eps diffusers' VAE uses for every group norm.
const VAE_EPS: f64 = 1e-6;

impl AutoencoderKLConfig {
    /// Parses a diffusers `config.json` and checks every value this port supports.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = super::parse_config(file, bytes)?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, value: String, hint: String| ConfigError::Unsupported {
            file: file.into(),
            key: key.into(),
            value,
            hint,
        };
        check_defaults(file, &self.other, MUST_BE_DEFAULT)?;
        let n = super::check_block_out_channels(file, &self.block_out_channels)?;
        check_at_most(
            file,
            "layers_per_block",
            self.layers_per_block,
            super::limits::LAYERS_PER_BLOCK,
        )?;
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(err(
                "down_block_types",
                t.clone(),
                "supported: DownEncoderBlock2D".into(),
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(err(
                "up_block_types",
                t.clone(),
                "supported: UpDecoderBlock2D".into(),
            ));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(err(
                "down_block_types",
                format!("{:?}", self.down_block_types),
                format!("needs {n} entries, one per block_out_channels entry"),
            ));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(err("act_fn", self.act_fn.clone(), "supported: silu".into()));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| self.norm_num_groups == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(err(
                "norm_num_groups",
                self.norm_num_groups.to_string(),
                format!("must divide every block_out_channels entry ({c})"),
            ));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor <= 0.0 {
            return Err(err(
                "scaling_factor",
                self.scaling_factor.to_string(),
                "must be a positive number".into(),
            ));
        }
        Ok(())
    }

    /// Pixel-to-latent size factor: `2^(number of down-samplings)` (8 for SD).
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Builds the module structure (lazy parameters; load weights with
    /// [`crate::weights::load_module`]).
    pub fn init(&self, device: &Device) -> Result<AutoencoderKL, ConfigError> {
        self.validate("vae config")?;
        let boc = &self.block_out_channels;
        let n = boc.len();
        let g = self.norm_num_groups;
        let block = |num_layers, inp, out| BlockConfig {
            num_layers,
            in_channels: inp,
            out_channels: out,
            temb_channels: None,
            resnet_eps: VAE_EPS,
            resnet_groups: g,
            output_scale_factor: 1.0,
            transformer: None,
        };
        let mid =
            || block(1, boc[n - 1], boc[n - 1]).init_mid_vae(self.mid_block_add_attention, device);
        let lat = self.latent_channels;
        let encoder = Encoder {
            conv_in: conv2d(self.in_channels, boc[0], 3, 1, 1, device),
            down_blocks: (0..n)
                .map(|i| {
                    let inp = if i == 0 { boc[0] } else { boc[i - 1] };
                    block(self.layers_per_block, inp, boc[i])
                        .init_down((i + 1 < n).then_some(0), device)
                })
                .collect(),
            mid_block: mid(),
            conv_norm_out: GroupNormConfig::new(g, boc[n - 1])
                .with_epsilon(VAE_EPS)
                .init(device),
            conv_out: conv2d(boc[n - 1], 2 * lat, 3, 1, 1, device),
        };
        let decoder = Decoder {
            conv_in: conv2d(lat, boc[n - 1], 3, 1, 1, device),
            mid_block: mid(),
            up_blocks: (0..n)
                .map(|i| {
                    let rev = n - 1 - i;
                    let prev = boc[(rev + 1).min(n - 1)];
                    block(self.layers_per_block + 1, prev, boc[rev]).init_up(
                        prev,
                        &[],
                        i + 1 < n,
                        device,
                    )
                })
                .collect(),
            conv_norm_out: GroupNormConfig::new(g, boc[0])
                .with_epsilon(VAE_EPS)
                .init(device),
            conv_out: conv2d(boc[0], self.out_channels, 3, 1, 1, device),
        };
        Ok(AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self
                .use_quant_conv
                .then(|| conv2d(2 * lat, 2 * lat, 1, 1, 0, device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| conv2d(lat, lat, 1, 1, 0, device)),
            scaling_factor: self.scaling_factor,
            config: self.clone(),
        })
    }
}

/// diffusers `Encoder` (`double_z=True`).
#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// diffusers `Decoder`.
#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    scaling_factor: f64,
    /// The config the structure was built from (channel counts for the tiling policy).
    #[module(skip)]
    config: AutoencoderKLConfig,
}

/// The posterior `DiagonalGaussianDistribution`: mean and clamped log-variance.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor<4>,
    pub logvar: Tensor<4>,
}

impl AutoencoderKL {
    /// The renames of diffusers' `ModelMixin._convert_deprecated_attention_blocks`: VAE
    /// checkpoints saved before diffusers 0.14 name the mid-block attention's projections
    /// `query`, `key`, `value`, `proj_attn` (today `to_q`, `to_k`, `to_v`, `to_out.0`; the
    /// `group_norm` keeps its name). Returns (stored, expected) pairs for the stored `keys` that
    /// use the old names, none when the expected name is stored too.
    pub fn legacy_key_renames(keys: &[String]) -> Vec<(String, String)> {
        let present: std::collections::BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let mut out = vec![];
        for key in keys {
            let mut parts = key.split('.');
            let (Some(side), Some("mid_block"), Some("attentions"), Some(index)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rest: Vec<&str> = parts.collect();
            let [old, param @ ("weight" | "bias")] = rest[..] else {
                continue;
            };
            let new = match old {
                "query" => "to_q",
                "key" => "to_k",
                "value" => "to_v",
                "proj_attn" => "to_out.0",
                _ => continue,
            };
            if !matches!(side, "encoder" | "decoder") || index.parse::<usize>().is_err() {
                continue;
            }
            let renamed = format!("{side}.mid_block.attentions.{index}.{new}.{param}");
            if !present.contains(renamed.as_str()) {
                out.push((key.clone(), renamed));
            }
        }
        out
    }

    /// `scaling_factor` from the config (0.18215 for SD 1.x / 2.x).
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    /// The config the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Encodes images to the posterior, untiled (diffusers' default; see
    /// [`Self::encode_with`] and `models::vae_tiling` for tiles).
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]` in [-1, 1]
    /// - output: mean and logvar `[batch, latent_channels, h / f, w / f]`
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        Self::posterior(self.moments(x))
    }

    /// The encoder and `quant_conv`: the posterior's moments (mean, logvar) stacked on the
    /// channel axis, as diffusers' `_encode` returns them.
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]` -> `[batch, 2 * latent_channels, h / f, w / f]`
    pub(crate) fn moments(&self, x: Tensor<4>) -> Tensor<4> {
        let e = &self.encoder;
        // 1. encoder
        let mut h = ops::conv2d(&e.conv_in, x);
        for block in &e.down_blocks {
            h = block.forward(h, None, None).0;
        }
        h = e.mid_block.forward(h);
        h = ops::norm_conv2d(&e.conv_norm_out, true, &e.conv_out, h, None, None); // [b, 2 lat, h', w']
        // 2. moments
        if let Some(q) = &self.quant_conv {
            h = ops::conv2d(q, h);
        }
        h
    }

    /// diffusers' `DiagonalGaussianDistribution(moments)`: mean and clamped logvar.
    pub(crate) fn posterior(moments: Tensor<4>) -> Posterior {
        let mut parts = moments.chunk(2, 1);
        let logvar = parts
            .pop()
            .unwrap_or_else(|| unreachable!("chunk(2) gives 2 parts"))
            .clamp(-30.0, 20.0);
        let mean = parts
            .pop()
            .unwrap_or_else(|| unreachable!("chunk(2) gives 2 parts"));
        Posterior { mean, logvar }
    }

    /// Decodes latents (unscaled: divide by `scaling_factor` first), untiled (see
    /// [`Self::decode_with`] for tiles).
    ///
    /// # Shapes
    /// - `z`: `[batch, latent_channels, h, w]` -> `[batch, out_channels, h * f, w * f]`
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let z = match &self.post_quant_conv {
            Some(p) => ops::conv2d(p, z),
            None => z,
        };
        let h = ops::conv2d(&d.conv_in, z);
        // Between up blocks the activation may be held in pieces of rows (`UpBlock::forward_decoder`).
        let mut h = RowPieces::whole(d.mid_block.forward(h));
        for block in &d.up_blocks {
            h = block.forward_decoder(h);
        }
        ops::norm_conv2d(&d.conv_norm_out, true, &d.conv_out, h.join(), None, None)
    }
}
