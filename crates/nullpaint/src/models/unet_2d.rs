//! `UNet2DConditionModel`, built from its diffusers `config.json`.
//!
//! Port of diffusers (0.42) `models/unets/unet_2d_condition.py` for the Stable Diffusion 1.x /
//! 2.x family: positional time embedding, CrossAttn/plain down and up blocks, an optional
//! `UNetMidBlock2DCrossAttn`. Config keys outside that family (class / addition embeddings,
//! other block types...) are rejected with an error naming the key and value.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::embeddings::{TimestepEmbedding, timesteps_tensor};
use super::ops;
use super::resnet::conv2d;
use super::unet_2d_blocks::{
    BlockConfig, DownBlock, TransformerArgs, UNetMidBlock2DCrossAttn, UpBlock,
};
use super::{ConfigError, check_at_most};

/// A config value given once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> PerBlock<T> {
    /// The values as given: one, or one per block.
    pub fn values(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }

    /// One value per block; a list must have exactly `n` entries.
    pub fn expand(&self, n: usize, key: &str, file: &str) -> Result<Vec<T>, ConfigError> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); n]),
            Self::Many(v) if v.len() == n => Ok(v.clone()),
            Self::Many(v) => Err(ConfigError::Unsupported {
                file: file.into(),
                key: key.into(),
                value: format!("{v:?}"),
                hint: format!("a list needs one entry per block ({n} blocks in down_block_types)"),
            }),
        }
    }
}

/// The keys of a UNet `config.json`, named as diffusers names them (including the misnamed
/// `attention_head_dim`, which SD configs use as the number of heads).
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default = "d::sample_size")]
    pub sample_size: Option<PerBlock<usize>>,
    #[serde(default = "d::four")]
    pub in_channels: usize,
    #[serde(default = "d::four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d::yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    #[serde(default = "d::down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d::mid_block")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d::up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d::block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d::two")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d::one")]
    pub downsample_padding: usize,
    #[serde(default = "d::one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d::silu")]
    pub act_fn: String,
    #[serde(default = "d::groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d::eps")]
    pub norm_eps: f64,
    #[serde(default = "d::cross_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d::transformer_layers")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default = "d::heads")]
    pub attention_head_dim: Option<PerBlock<usize>>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    /// Everything else in the file: checked against the values this port implements.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

mod d {
    use super::PerBlock;
    pub fn sample_size() -> Option<PerBlock<usize>> {
        Some(PerBlock::One(64))
    }
    pub fn four() -> usize {
        4
    }
    pub fn one() -> usize {
        1
    }
    pub fn two() -> PerBlock<usize> {
        PerBlock::One(2)
    }
    pub fn one_f() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn down_blocks() -> Vec<String> {
        [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn up_blocks() -> Vec<String> {
        [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn mid_block() -> Option<String> {
        Some("UNetMidBlock2DCrossAttn".into())
    }
    pub fn block_out_channels() -> Vec<usize> {
        vec![320, 640, 1280, 1280]
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn groups() -> Option<usize> {
        Some(32)
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn cross_dim() -> PerBlock<usize> {
        PerBlock::One(1280)
    }
    pub fn transformer_layers() -> PerBlock<usize> {
        PerBlock::One(1)
    }
    pub fn heads() -> Option<PerBlock<usize>> {
        Some(PerBlock::One(8))
    }
}

/// Keys whose value must be the given default (null when `None`) for this port to be exact.
const MUST_BE_DEFAULT: &[(&str, Option<&str>)] = &[
    ("class_embed_type", None),
    ("addition_embed_type", None),
    ("encoder_hid_dim", None),
    ("encoder_hid_dim_type", None),
    ("num_class_embeds", None),
    ("time_cond_proj_dim", None),
    ("time_embedding_dim", None),
    ("timestep_post_act", None),
    ("projection_class_embeddings_input_dim", None),
    ("addition_time_embed_dim", None),
    ("reverse_transformer_layers_per_block", None),
    ("cross_attention_norm", None),
    ("time_embedding_act_fn", None),
    ("time_embedding_type", Some("positional")),
    ("resnet_time_scale_shift", Some("default")),
    ("attention_type", Some("default")),
    ("dual_cross_attention", Some("false")),
    ("only_cross_attention", Some("false")),
    ("mid_block_only_cross_attention", None),
    ("resnet_skip_time_act", Some("false")),
    ("resnet_out_scale_factor", Some("1")),
    ("conv_in_kernel", Some("3")),
    ("conv_out_kernel", Some("3")),
    ("class_embeddings_concat", Some("false")),
];

/// Checks that every key of `MUST_BE_DEFAULT` present in `other` has its default value.
pub(crate) fn check_defaults(
    file: &str,
    other: &serde_json::Map<String, Value>,
    table: &[(&str, Option<&str>)],
) -> Result<(), ConfigError> {
    for (key, default) in table {
        let Some(v) = other.get(*key) else { continue };
        let ok = match (default, v) {
            (None, Value::Null) => true,
            (None, _) => false,
            (Some(d), Value::String(s)) => s == d,
            (Some(d), Value::Bool(b)) => b.to_string() == *d,
            (Some(d), Value::Number(n)) => n.as_f64() == d.parse::<f64>().ok(),
            (Some(_), Value::Null) => true,
            _ => false,
        };
        if !ok {
            return Err(ConfigError::Unsupported {
                file: file.into(),
                key: (*key).into(),
                value: v.to_string(),
                hint: format!(
                    "this engine implements the Stable Diffusion 1.x / 2.x UNet, where it is {}",
                    default.unwrap_or("null")
                ),
            });
        }
    }
    Ok(())
}

impl UNet2DConditionConfig {
    /// `unet/config.json` of `stable-diffusion-v1-5` (the committed copy is
    /// `tests/fixtures/configs/sd15/unet/config.json`).
    pub fn sd_v1_5() -> Self {
        let mut c: Self =
            serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all keys have defaults"));
        c.cross_attention_dim = PerBlock::One(768);
        c
    }

    /// Parses a diffusers `config.json` and checks every value this port supports.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = super::parse_config(file, bytes)?;
        config.resolve(file)?;
        Ok(config)
    }

    /// Number of x2 down-samplings: inputs must have sides divisible by `2^n` latent pixels.
    pub fn num_downsamplings(&self) -> usize {
        self.block_out_channels.len().saturating_sub(1)
    }

    /// Validates the config and expands the per-block values.
    fn resolve(&self, file: &str) -> Result<Resolved, ConfigError> {
        let err = |key: &str, value: String, hint: &str| ConfigError::Unsupported {
            file: file.into(),
            key: key.into(),
            value,
            hint: hint.into(),
        };
        check_defaults(file, &self.other, MUST_BE_DEFAULT)?;
        let n = super::check_block_out_channels(file, &self.block_out_channels)?;
        if self.down_block_types.len() != n {
            return Err(err(
                "down_block_types",
                format!("{:?}", self.down_block_types),
                &format!("needs one entry per block_out_channels entry ({n})"),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(err(
                "up_block_types",
                format!("{:?}", self.up_block_types),
                &format!("needs {n} entries"),
            ));
        }
        let mut down_cross = vec![];
        for t in &self.down_block_types {
            down_cross.push(match t.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => {
                    return Err(err(
                        "down_block_types",
                        other.into(),
                        "supported: CrossAttnDownBlock2D, DownBlock2D",
                    ));
                }
            });
        }
        let mut up_cross = vec![];
        for t in &self.up_block_types {
            up_cross.push(match t.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => {
                    return Err(err(
                        "up_block_types",
                        other.into(),
                        "supported: CrossAttnUpBlock2D, UpBlock2D",
                    ));
                }
            });
        }
        let mid = match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => true,
            None => false,
            Some(other) => {
                return Err(err(
                    "mid_block_type",
                    other.into(),
                    "supported: UNetMidBlock2DCrossAttn or null",
                ));
            }
        };
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(err("act_fn", self.act_fn.clone(), "supported: silu"));
        }
        let groups = self.norm_num_groups.ok_or_else(|| {
            err(
                "norm_num_groups",
                "null".into(),
                "group norm is required (SD uses 32)",
            )
        })?;
        for (i, c) in self.block_out_channels.iter().enumerate() {
            if !c.is_multiple_of(groups) {
                return Err(err(
                    "norm_num_groups",
                    groups.to_string(),
                    &format!("must divide every block_out_channels entry ({c} in block {i})"),
                ));
            }
        }
        // diffusers: `num_attention_heads = num_attention_heads or attention_head_dim`.
        let heads_src = self
            .num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref());
        let heads = match heads_src {
            Some(h) => h.expand(n, "attention_head_dim", file)?,
            None => {
                return Err(err(
                    "attention_head_dim",
                    "null".into(),
                    "needs a head count",
                ));
            }
        };
        for (i, (h, c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if *h == 0 || !c.is_multiple_of(*h) {
                return Err(err(
                    "attention_head_dim",
                    h.to_string(),
                    &format!("the head count must divide the block's channels ({c} in block {i})"),
                ));
            }
        }
        let layers = self.layers_per_block.expand(n, "layers_per_block", file)?;
        let cross_dims = self
            .cross_attention_dim
            .expand(n, "cross_attention_dim", file)?;
        let transformer_layers =
            self.transformer_layers_per_block
                .expand(n, "transformer_layers_per_block", file)?;
        for i in 0..n {
            use super::limits;
            check_at_most(
                file,
                "layers_per_block",
                layers[i],
                limits::LAYERS_PER_BLOCK,
            )?;
            check_at_most(file, "cross_attention_dim", cross_dims[i], limits::WIDTH)?;
            check_at_most(
                file,
                "transformer_layers_per_block",
                transformer_layers[i],
                limits::TRANSFORMER_LAYERS,
            )?;
        }
        Ok(Resolved {
            down_cross,
            up_cross,
            mid,
            groups,
            heads,
            layers,
            cross_dims,
            transformer_layers,
        })
    }

    /// Builds the module structure (lazy parameters; load weights with
    /// [`crate::weights::load_module`]). Errors on the same configs as [`Self::from_json`].
    pub fn init(&self, device: &Device) -> Result<UNet2DConditionModel, ConfigError> {
        let r = self.resolve("unet config")?;
        let boc = &self.block_out_channels;
        let n = boc.len();
        let temb = boc[0] * 4;
        let block =
            |i: usize, cross: bool, num_layers: usize, inp: usize, out: usize| BlockConfig {
                num_layers,
                in_channels: inp,
                out_channels: out,
                temb_channels: Some(temb),
                resnet_eps: self.norm_eps,
                resnet_groups: r.groups,
                output_scale_factor: 1.0,
                transformer: cross.then(|| TransformerArgs {
                    num_attention_heads: r.heads[i],
                    transformer_layers: r.transformer_layers[i],
                    cross_attention_dim: r.cross_dims[i],
                    use_linear_projection: self.use_linear_projection,
                    upcast_attention: self.upcast_attention,
                }),
            };

        // down: block i maps boc[i-1] -> boc[i]; all but the last downsample.
        let down_blocks = (0..n)
            .map(|i| {
                let inp = if i == 0 { boc[0] } else { boc[i - 1] };
                let pad = (i + 1 < n).then_some(self.downsample_padding);
                block(i, r.down_cross[i], r.layers[i], inp, boc[i]).init_down(pad, device)
            })
            .collect();

        let mid_block = r.mid.then(|| {
            let mut cfg = block(n - 1, true, 1, boc[n - 1], boc[n - 1]);
            cfg.output_scale_factor = self.mid_block_scale_factor;
            cfg.init_mid_cross_attn(device)
        });

        // up: reversed channels; block i has layers[rev i] + 1 resnets, each concatenating one
        // skip: the last one from the block's input level, the others from its own level.
        let up_blocks = (0..n)
            .map(|i| {
                let rev = n - 1 - i;
                let out = boc[rev];
                let prev = boc[(rev + 1).min(n - 1)];
                let input = boc[rev.saturating_sub(1)];
                let num_layers = r.layers[rev] + 1;
                let skips: Vec<usize> = (0..num_layers)
                    .map(|j| if j + 1 == num_layers { input } else { out })
                    .collect();
                block(rev, r.up_cross[i], num_layers, prev, out).init_up(
                    prev,
                    &skips,
                    i + 1 < n,
                    device,
                )
            })
            .collect();

        Ok(UNet2DConditionModel {
            conv_in: conv2d(self.in_channels, boc[0], 3, 1, 1, device),
            time_embedding: TimestepEmbedding::new(boc[0], temb, device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(r.groups, boc[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: conv2d(boc[0], self.out_channels, 3, 1, 1, device),
            time_proj_dim: boc[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            center_input_sample: self.center_input_sample,
        })
    }
}

struct Resolved {
    down_cross: Vec<bool>,
    up_cross: Vec<bool>,
    mid: bool,
    groups: usize,
    heads: Vec<usize>,
    layers: Vec<usize>,
    cross_dims: Vec<usize>,
    transformer_layers: Vec<usize>,
}

/// `UNet2DConditionModel` (keys `conv_in`, `time_embedding`, `down_blocks`, `mid_block`,
/// `up_blocks`, `conv_norm_out`, `conv_out`).
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<UNetMidBlock2DCrossAttn>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    time_proj_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    center_input_sample: bool,
}

impl UNet2DConditionModel {
    /// The noise (or v) prediction.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]`
    /// - `timesteps`: one value for the whole batch, or one per sample
    /// - `encoder_hidden_states`: `[batch, seq, cross_attention_dim]`
    /// - output: `[batch, out_channels, h, w]`
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        encoder_hidden_states: Tensor<3>,
    ) -> Tensor<4> {
        let [batch, _, h, w] = sample.dims();
        let device = sample.device();
        // 0. odd sizes: up blocks upsample to the skip's size instead of x2
        let factor = 1usize
            << self
                .up_blocks
                .iter()
                .filter(|b| !b.upsamplers.is_empty())
                .count();
        let forward_upsample_size = h % factor != 0 || w % factor != 0;
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };

        // 1. time
        let t: Vec<f32> = if timesteps.len() == 1 {
            vec![timesteps[0]; batch]
        } else {
            timesteps.to_vec()
        };
        let t_emb = timesteps_tensor(
            &t,
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        ); // [b, c0]
        let emb = self.time_embedding.forward(t_emb); // [b, 4 c0]

        // 2. pre-process
        let mut x = ops::conv2d(&self.conv_in, sample); // [b, c0, h, w]

        // 3. down
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(x, Some(&emb), Some(&encoder_hidden_states));
            x = out;
            skips.extend(states);
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &emb, &encoder_hidden_states);
        }

        // 5. up
        for block in &self.up_blocks {
            let keep = skips.len() - block.resnets.len();
            let mut own = skips.split_off(keep);
            let size = match (forward_upsample_size, skips.last()) {
                (true, Some(next)) if !block.upsamplers.is_empty() => {
                    let d = next.dims();
                    Some([d[2], d[3]])
                }
                _ => None,
            };
            x = block.forward(x, &mut own, Some(&emb), Some(&encoder_hidden_states), size);
        }

        // 6. post-process
        ops::norm_conv2d(&self.conv_norm_out, true, &self.conv_out, x, None, None)
    }
}
