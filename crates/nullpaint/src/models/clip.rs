//! CLIP text encoder (`CLIPTextModel`), returning `last_hidden_state`.
//!
//! Port of `transformers/models/clip/modeling_clip.py` (5.24): `CLIPTextEmbeddings`,
//! `CLIPAttention` (causal), `CLIPMLP`, `CLIPEncoderLayer` (pre-norm), `CLIPTextTransformer`.
//! Built from the transformers `config.json`; field names are the checkpoint keys (without
//! the `text_model.` prefix that transformers 4 wrote, which the loader detects).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use super::ConfigError;
use crate::weights::KeyMap;

/// `CLIPTextConfig` (the keys of a text encoder's `config.json` that shape the network).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_max_positions() -> usize {
    77
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// The activations CLIP text encoders use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact (erf) GELU (OpenCLIP, SD 2.x).
    Gelu,
}

impl ClipTextConfig {
    /// SD 1.x text encoder (`openai/clip-vit-large-patch14`, `text_encoder/config.json` of
    /// `stable-diffusion-v1-5`).
    pub fn sd_v1_5() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }

    /// Parses a transformers `config.json` and checks the values this port supports.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = super::parse_config(file, bytes)?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let unsupported = |key: &str, value: String, hint: &str| ConfigError::Unsupported {
            file: file.into(),
            key: key.into(),
            value,
            hint: hint.into(),
        };
        self.activation()
            .map_err(|v| unsupported("hidden_act", v, "supported: quick_gelu, gelu"))?;
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(unsupported(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                &format!("must divide hidden_size = {}", self.hidden_size),
            ));
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(unsupported(key, "0".into(), "must be positive"));
            }
            let max = if key == "vocab_size" {
                super::limits::VOCAB
            } else {
                super::limits::WIDTH
            };
            super::check_at_most(file, key, v, max)?;
        }
        super::check_at_most(
            file,
            "num_hidden_layers",
            self.num_hidden_layers,
            super::limits::TEXT_LAYERS,
        )?;
        Ok(())
    }

    fn activation(&self) -> Result<ClipActivation, String> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(ClipActivation::QuickGelu),
            "gelu" => Ok(ClipActivation::Gelu),
            other => Err(other.to_string()),
        }
    }

    /// Builds the module structure (parameters are lazily initialised; load weights with
    /// [`crate::weights::load_module`]).
    pub fn init(&self, device: &Device) -> ClipTextModel {
        let d = self.hidden_size;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let act = self.activation().unwrap_or(ClipActivation::QuickGelu);
        ClipTextModel {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, d)
                    .init(device),
            },
            encoder: ClipEncoder {
                layers: (0..self.num_hidden_layers)
                    .map(|_| ClipEncoderLayer {
                        self_attn: ClipAttention {
                            q_proj: linear(d, d),
                            k_proj: linear(d, d),
                            v_proj: linear(d, d),
                            out_proj: linear(d, d),
                            num_heads: self.num_attention_heads,
                        },
                        layer_norm1: norm(),
                        mlp: ClipMlp {
                            fc1: linear(d, self.intermediate_size),
                            fc2: linear(self.intermediate_size, d),
                            quick_gelu: act == ClipActivation::QuickGelu,
                        },
                        layer_norm2: norm(),
                    })
                    .collect(),
            },
            final_layer_norm: norm(),
        }
    }
}

/// `CLIPTextTransformer` (keys `embeddings.*`, `encoder.layers.N.*`, `final_layer_norm.*`).
#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    num_heads: usize,
}

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    quick_gelu: bool,
}

impl ClipTextModel {
    /// How text encoder checkpoints name their keys: transformers 4 (SD 1.x files) put every key
    /// under `text_model.` and store the `embeddings.position_ids` buffer; transformers 5 writes
    /// neither. Both load.
    pub fn key_map() -> KeyMap {
        KeyMap {
            prefixes: vec!["text_model.".into(), String::new()],
            ignored: vec!["embeddings.position_ids".into()],
        }
    }

    /// `last_hidden_state` of `CLIPTextModel`.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` (seq <= max_position_embeddings)
    /// - output: `[batch, seq, hidden_size]`
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        // 1. embeddings: token + position
        let tokens = self.embeddings.token_embedding.forward(input_ids); // [b, s, d]
        let positions = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .slice(0..seq); // [s, d]
        let mut h = tokens + positions.unsqueeze::<3>();
        // 2. pre-norm encoder layers with causal self-attention
        for layer in &self.encoder.layers {
            h = layer.forward(h);
        }
        // 3. final layer norm
        self.final_layer_norm.forward(h)
    }
}

impl ClipEncoderLayer {
    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let attn = self.self_attn.forward(self.layer_norm1.forward(h.clone()));
        let h = h + attn;
        let mlp = self.mlp.forward(self.layer_norm2.forward(h.clone()));
        h + mlp
    }
}

impl ClipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let heads = self.num_heads;
        let split = |t: Tensor<3>| t.reshape([b, s, heads, d / heads]).swap_dims(1, 2); // [b, h, s, dh]
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let out = attention(q, k, v, None, None, options); // [b, h, s, dh]
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, d]))
    }
}

impl ClipMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x = if self.quick_gelu {
            x.clone() * sigmoid(x * 1.702)
        } else {
            gelu(x)
        };
        self.fc2.forward(x)
    }
}
