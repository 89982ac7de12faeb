//! Single-file checkpoints in the original (CompVis / A1111) layout: one `.safetensors` holding
//! the UNet under `model.diffusion_model.`, the VAE under `first_stage_model.` and the text
//! encoder under `cond_stage_model.` (CLIP ViT-L for SD 1.x, OpenCLIP ViT-H for SD 2.x), read as
//! a diffusers folder: a [`ModelSource`] whose configs and tokenizer are bundled per family (or
//! taken from a diffusers folder given as `config`, like diffusers' `from_single_file(config=)`)
//! and whose weights are the checkpoint's tensors under their diffusers names.
//!
//! After diffusers' `loaders/single_file_utils.py` (0.42): `infer_diffusers_model_type`,
//! `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
//! `convert_open_clip_checkpoint` (the fused `in_proj` split into q / k / v, the last resblock
//! dropped: SD 2 conditions on the penultimate layer). No tensor is copied: renames, a view of
//! a third of the rows, or a shape without the 1x1 of a convolution.

use std::collections::BTreeMap;

use crate::checkpoint::CheckpointKind;
use crate::models::unet_2d::UNet2DConditionConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::pipeline::{ModelSource, PipelineError};
use crate::schedulers::PredictionType;
use crate::weights::{KeyTable, Mapped, MappedSource, TensorSource, Transform};

/// The family of a single-file checkpoint, which picks the bundled configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: CLIP ViT-L text encoder, 512 px, epsilon.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H text encoder; 768 px v-prediction unless told epsilon (2.x base).
    Sd2,
}

/// How to read a single file (`--config`, `--prediction-type`).
#[derive(Default)]
pub struct SingleFileOptions<'a> {
    /// A diffusers folder whose configs and tokenizer replace the bundled ones.
    pub config: Option<&'a dyn ModelSource>,
    /// Overrides the prediction type the family implies.
    pub prediction_type: Option<PredictionType>,
}

impl std::fmt::Debug for SingleFileOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFileOptions")
            .field("config", &self.config.map(|c| c.describe()))
            .field("prediction_type", &self.prediction_type)
            .finish()
    }
}

/// The files of a diffusers folder a pipeline reads besides the weights.
const FILES: [&str; 7] = [
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/vocab.json",
];
const TOKENIZER_EXTRA: [&str; 2] = ["tokenizer/merges.txt", "tokenizer/tokenizer.json"];

/// The bundled files of each family: the configs the real repositories ship
/// (stable-diffusion-v1-5, stable-diffusion-2-1; tests hold them equal to the fixtures'
/// full-size configs) and CLIP's BPE merges (the vocabulary is derived from them).
fn bundled(family: Family, path: &str) -> Option<&'static [u8]> {
    macro_rules! asset {
        ($p:literal) => {
            include_bytes!(concat!("../assets/single_file/", $p)) as &'static [u8]
        };
    }
    Some(match (family, path) {
        (Family::Sd1, "unet/config.json") => asset!("sd15/unet/config.json"),
        (Family::Sd1, "vae/config.json") => asset!("sd15/vae/config.json"),
        (Family::Sd1, "text_encoder/config.json") => asset!("sd15/text_encoder/config.json"),
        (Family::Sd1, "scheduler/scheduler_config.json") => {
            asset!("sd15/scheduler/scheduler_config.json")
        }
        (Family::Sd1, "tokenizer/tokenizer_config.json") => {
            asset!("sd15/tokenizer/tokenizer_config.json")
        }
        (Family::Sd1, "tokenizer/special_tokens_map.json") => {
            asset!("sd15/tokenizer/special_tokens_map.json")
        }
        (Family::Sd2, "unet/config.json") => asset!("sd21/unet/config.json"),
        (Family::Sd2, "vae/config.json") => asset!("sd21/vae/config.json"),
        (Family::Sd2, "text_encoder/config.json") => asset!("sd21/text_encoder/config.json"),
        (Family::Sd2, "scheduler/scheduler_config.json") => {
            asset!("sd21/scheduler/scheduler_config.json")
        }
        (Family::Sd2, "tokenizer/tokenizer_config.json") => {
            asset!("sd21/tokenizer/tokenizer_config.json")
        }
        (Family::Sd2, "tokenizer/special_tokens_map.json") => {
            asset!("sd21/tokenizer/special_tokens_map.json")
        }
        (_, "tokenizer/merges.txt") => asset!("clip/merges.txt"),
        _ => return None,
    })
}

/// GPT-2's reversible byte -> character map, in CLIP's order (printable bytes first).
fn bytes_to_unicode() -> Vec<char> {
    let mut bytes: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    chars.into_iter().filter_map(char::from_u32).collect()
}

/// CLIP's `vocab.json` from its `merges.txt`, as OpenAI's `SimpleTokenizer` builds it: the 256
/// byte characters, the same with `</w>`, one token per merge, then the two special tokens.
pub fn clip_vocab_json(merges_txt: &str) -> String {
    let mut vocab: Vec<String> = bytes_to_unicode().iter().map(|c| c.to_string()).collect();
    let with_end: Vec<String> = vocab.iter().map(|v| format!("{v}</w>")).collect();
    vocab.extend(with_end);
    for line in merges_txt.lines().skip(1) {
        if let Some((a, b)) = line.split_once(' ') {
            vocab.push(format!("{a}{b}"));
        }
    }
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// A single-file checkpoint read as a diffusers folder.
pub struct SingleFileSource<'a> {
    name: String,
    checkpoint: Box<dyn TensorSource + 'a>,
    family: Family,
    files: BTreeMap<String, Vec<u8>>,
    tables: BTreeMap<&'static str, KeyTable>,
}

impl std::fmt::Debug for SingleFileSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFileSource")
            .field("name", &self.name)
            .field("family", &self.family)
            .finish()
    }
}

fn source_error(name: &str, message: impl std::fmt::Display) -> PipelineError {
    PipelineError::Source(format!("{name}: {message}"))
}

impl<'a> SingleFileSource<'a> {
    /// Reads the names (and two shapes) of `checkpoint`'s tensors, tells its family as diffusers'
    /// `from_single_file` does, and prepares the configs and key tables. Nothing large is read.
    pub fn new(
        checkpoint: Box<dyn TensorSource + 'a>,
        options: SingleFileOptions,
    ) -> Result<Self, PipelineError> {
        let name = checkpoint.name().to_string();
        let keys = checkpoint.keys();
        // 1. family, from the names and the two shapes diffusers looks at
        let mut shapes: BTreeMap<String, Vec<usize>> =
            keys.iter().map(|k| (k.clone(), vec![])).collect();
        for probe in [
            "model.diffusion_model.input_blocks.0.0.weight",
            "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        ] {
            if let Some(t) = checkpoint.tensor(probe)? {
                shapes.insert(probe.into(), t.shape);
            }
        }
        let kind = crate::checkpoint::identify(&shapes);
        let (family, inpainting) = match kind {
            CheckpointKind::Sd1Single { inpainting } => (Family::Sd1, inpainting),
            CheckpointKind::Sd2Single { inpainting } => (Family::Sd2, inpainting),
            other => {
                return Err(source_error(
                    &name,
                    format!(
                        "this file is {}; {}",
                        other.describe(),
                        crate::checkpoint::SUPPORTED
                    ),
                ));
            }
        };

        // 2. configs and tokenizer: the given folder's, else the family's bundled ones
        let mut files = BTreeMap::new();
        if let Some(folder) = options.config {
            for path in FILES.iter().chain(&TOKENIZER_EXTRA) {
                if let Some(bytes) = folder.read(path)? {
                    files.insert(path.to_string(), bytes);
                }
            }
        } else {
            for path in FILES.iter().chain(&TOKENIZER_EXTRA) {
                if let Some(bytes) = bundled(family, path) {
                    files.insert(path.to_string(), bytes.to_vec());
                }
            }
            let merges = String::from_utf8_lossy(
                bundled(family, "tokenizer/merges.txt").unwrap_or_default(),
            );
            files.insert(
                "tokenizer/vocab.json".into(),
                clip_vocab_json(&merges).into_bytes(),
            );
            // The family's variants, as diffusers' default pipelines for the model type have them.
            let v_prediction = family == Family::Sd2
                && !inpainting
                && options.prediction_type != Some(PredictionType::Epsilon);
            edit_json(&mut files, "unet/config.json", |c| {
                if inpainting {
                    c["in_channels"] = 9.into();
                }
                if family == Family::Sd2 {
                    // 768 px for the v-prediction models, 512 for 2.x base and inpainting.
                    c["sample_size"] = if v_prediction { 96 } else { 64 }.into();
                }
            })?;
            edit_json(&mut files, "vae/config.json", |c| {
                if family == Family::Sd2 {
                    c["sample_size"] = if v_prediction { 768 } else { 512 }.into();
                }
            })?;
            edit_json(&mut files, "scheduler/scheduler_config.json", |c| {
                c["prediction_type"] = if v_prediction {
                    "v_prediction"
                } else {
                    "epsilon"
                }
                .into();
            })?;
        }
        if let Some(p) = options.prediction_type {
            edit_json(&mut files, "scheduler/scheduler_config.json", |c| {
                c["prediction_type"] = match p {
                    PredictionType::Epsilon => "epsilon",
                    PredictionType::VPrediction => "v_prediction",
                }
                .into();
            })?;
        }

        // 3. key tables, from the configs' structure
        let config = |path: &str| {
            files
                .get(path)
                .map(Vec::as_slice)
                .ok_or_else(|| source_error(&name, format!("the config folder has no {path}")))
        };
        let unet =
            UNet2DConditionConfig::from_json("unet/config.json", config("unet/config.json")?)?;
        let vae = AutoencoderKLConfig::from_json("vae/config.json", config("vae/config.json")?)?;
        let te: serde_json::Value = crate::models::parse_config(
            "text_encoder/config.json",
            config("text_encoder/config.json")?,
        )?;
        let layers = te["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        let mut tables = BTreeMap::new();
        tables.insert(
            "unet",
            unet_table(&keys, &unet).map_err(|e| source_error(&name, e))?,
        );
        tables.insert("vae", vae_table(&keys, vae.up_block_types.len()));
        tables.insert(
            "text_encoder",
            match family {
                Family::Sd1 => clip_table(&keys),
                Family::Sd2 => open_clip_table(&keys, layers),
            },
        );
        for (component, table) in &tables {
            if table.is_empty() {
                return Err(source_error(
                    &name,
                    format!(
                        "no {component} weights in this checkpoint (a partial or component-only file?)"
                    ),
                ));
            }
        }
        let ema = keys.iter().filter(|k| k.starts_with("model_ema.")).count();
        if ema > 0 {
            tracing::info!(
                "{name}: {ema} EMA tensors ignored: the UNet is read from model.diffusion_model., as diffusers' from_single_file does by default"
            );
        }
        Ok(Self {
            name,
            checkpoint,
            family,
            files,
            tables,
        })
    }

    /// The family the checkpoint was read as.
    pub fn family(&self) -> Family {
        self.family
    }
}

fn edit_json(
    files: &mut BTreeMap<String, Vec<u8>>,
    path: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<(), PipelineError> {
    let Some(bytes) = files.get_mut(path) else {
        return Ok(());
    };
    let mut value: serde_json::Value = crate::models::parse_config(path, bytes)?;
    edit(&mut value);
    *bytes = value.to_string().into_bytes();
    Ok(())
}

impl ModelSource for SingleFileSource<'_> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PipelineError> {
        Ok(self.files.get(path).cloned())
    }

    fn weights(&self, component: &str) -> Result<Box<dyn TensorSource + '_>, PipelineError> {
        let table = self.tables.get(component).ok_or_else(|| {
            source_error(
                &self.name,
                format!("no component {component} in a single-file checkpoint"),
            )
        })?;
        Ok(Box::new(MappedSource::only(
            format!("{} ({component})", self.name),
            Box::new(&*self.checkpoint),
            table,
        )))
    }
}

fn same(stored: &str) -> Mapped {
    Mapped {
        stored: stored.to_string(),
        transform: Transform::Same,
    }
}

/// The resnet names of the original UNet (`ResBlock`) and diffusers' (`ResnetBlock2D`).
fn unet_resnet(rest: &str) -> Option<String> {
    const NAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    NAMES
        .iter()
        .find_map(|(old, new)| rest.strip_prefix(old).map(|r| format!("{new}{r}")))
}

/// `input_blocks.{i}.{j}.*` / `middle_block.{j}.*` / `output_blocks.{i}.{j}.*` of the original
/// UNet under diffusers' names (`convert_ldm_unet_checkpoint`).
fn unet_key(ldm: &str, lpb: usize) -> Option<String> {
    const FIXED: [(&str, &str); 5] = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(k) = FIXED
        .iter()
        .find_map(|(old, new)| ldm.strip_prefix(old).map(|r| format!("{new}{r}")))
    {
        return Some(k);
    }
    let mut parts = ldm.splitn(4, '.');
    let (group, i, j) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next()?;
    let i: usize = i.parse().ok()?;
    match group {
        "input_blocks" if i >= 1 => {
            let j: usize = j.parse().ok()?;
            let (b, l) = ((i - 1) / (lpb + 1), (i - 1) % (lpb + 1));
            match (j, rest.strip_prefix("op.")) {
                (0, Some(r)) => Some(format!("down_blocks.{b}.downsamplers.0.conv.{r}")),
                (0, None) => Some(format!(
                    "down_blocks.{b}.resnets.{l}.{}",
                    unet_resnet(rest)?
                )),
                (1, _) => Some(format!("down_blocks.{b}.attentions.{l}.{rest}")),
                _ => None,
            }
        }
        "middle_block" => {
            // `middle_block.{i}`: the index is the second part here.
            let rest = format!("{j}.{rest}");
            match i {
                0 | 2 => Some(format!(
                    "mid_block.resnets.{}.{}",
                    i / 2,
                    unet_resnet(&rest)?
                )),
                1 => Some(format!("mid_block.attentions.0.{rest}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let j: usize = j.parse().ok()?;
            let (b, l) = (i / (lpb + 1), i % (lpb + 1));
            match (j, rest.strip_prefix("conv.")) {
                (0, _) => Some(format!("up_blocks.{b}.resnets.{l}.{}", unet_resnet(rest)?)),
                (1 | 2, Some(r)) => Some(format!("up_blocks.{b}.upsamplers.0.conv.{r}")),
                (1, None) => Some(format!("up_blocks.{b}.attentions.{l}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

fn unet_table(keys: &[String], config: &UNet2DConditionConfig) -> Result<KeyTable, String> {
    let per_block = config.layers_per_block.values();
    let lpb = per_block.first().copied().unwrap_or(0);
    if per_block.iter().any(|&l| l != lpb) {
        return Err(format!(
            "layers_per_block {per_block:?} differs between blocks; the original layout numbers its blocks with one value"
        ));
    }
    const PREFIX: &str = "model.diffusion_model.";
    Ok(keys
        .iter()
        .filter_map(|k| {
            let ldm = k.strip_prefix(PREFIX)?;
            Some((unet_key(ldm, lpb)?, same(k)))
        })
        .collect())
}

/// The original VAE (`first_stage_model.` or `vae.`) under diffusers' names
/// (`convert_ldm_vae_checkpoint`): decoder stages numbered from the innermost, `nin_shortcut`,
/// `norm_out`, the mid-block attention's 1x1 convolutions read as linear layers.
fn vae_table(keys: &[String], up_blocks: usize) -> KeyTable {
    let prefix = ["first_stage_model.", "vae."]
        .into_iter()
        .find(|p| keys.iter().any(|k| k.starts_with(p)))
        .unwrap_or("first_stage_model.");
    let mut table = KeyTable::new();
    for k in keys {
        let Some(ldm) = k.strip_prefix(prefix) else {
            continue;
        };
        if let Some(new) = vae_key(ldm, up_blocks) {
            let squeeze =
                ldm.contains(".mid.attn_1.") && ldm.ends_with(".weight") && !ldm.contains(".norm.");
            table.insert(
                new,
                Mapped {
                    stored: k.clone(),
                    transform: if squeeze {
                        Transform::Squeeze
                    } else {
                        Transform::Same
                    },
                },
            );
        }
    }
    table
}

fn vae_key(ldm: &str, up_blocks: usize) -> Option<String> {
    if ldm.starts_with("quant_conv.") || ldm.starts_with("post_quant_conv.") {
        return Some(ldm.to_string());
    }
    let (side, rest) = ldm.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let shortcut = |r: &str| r.replace("nin_shortcut", "conv_shortcut");
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return Some(ldm.to_string());
    }
    if let Some(r) = rest.strip_prefix("norm_out.") {
        return Some(format!("{side}.conv_norm_out.{r}"));
    }
    if let Some(r) = rest.strip_prefix("mid.") {
        if let Some(r) = r.strip_prefix("attn_1.") {
            const NAMES: [(&str, &str); 5] = [
                ("norm.", "group_norm."),
                ("q.", "to_q."),
                ("k.", "to_k."),
                ("v.", "to_v."),
                ("proj_out.", "to_out.0."),
            ];
            let renamed = NAMES
                .iter()
                .find_map(|(old, new)| r.strip_prefix(old).map(|t| format!("{new}{t}")))?;
            return Some(format!("{side}.mid_block.attentions.0.{renamed}"));
        }
        let (block, r) = r.split_once('.')?;
        let n: usize = block.strip_prefix("block_")?.parse().ok()?;
        return Some(format!(
            "{side}.mid_block.resnets.{}.{}",
            n.checked_sub(1)?,
            shortcut(r)
        ));
    }
    let (stage_kind, r) = rest.split_once('.')?;
    let (index, r) = r.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (blocks, stage) = match stage_kind {
        "down" => ("down_blocks", index),
        "up" => ("up_blocks", up_blocks.checked_sub(1 + index)?),
        _ => return None,
    };
    if let Some(r) = r.strip_prefix("block.") {
        let (j, t) = r.split_once('.')?;
        return Some(format!(
            "{side}.{blocks}.{stage}.resnets.{j}.{}",
            shortcut(t)
        ));
    }
    for sampler in ["downsample.", "upsample."] {
        if let Some(t) = r.strip_prefix(sampler) {
            let name = if sampler == "downsample." {
                "downsamplers"
            } else {
                "upsamplers"
            };
            return Some(format!("{side}.{blocks}.{stage}.{name}.0.{t}"));
        }
    }
    None
}

/// SD 1.x: transformers' CLIP text model under `cond_stage_model.transformer.`.
fn clip_table(keys: &[String]) -> KeyTable {
    keys.iter()
        .filter_map(|k| {
            let rest = k.strip_prefix("cond_stage_model.transformer.")?;
            Some((rest.to_string(), same(k)))
        })
        .collect()
}

/// SD 2.x: OpenCLIP's text transformer under `cond_stage_model.model.`, its first `layers`
/// resblocks (the text encoder config has one fewer than the file: the penultimate layer's
/// output is SD 2's context); the text projection and logit scale are not used.
fn open_clip_table(keys: &[String], layers: usize) -> KeyTable {
    const P: &str = "cond_stage_model.model.";
    let mut table = KeyTable::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(P) else {
            continue;
        };
        let fixed = match rest {
            "token_embedding.weight" => Some("embeddings.token_embedding.weight"),
            "positional_embedding" => Some("embeddings.position_embedding.weight"),
            "ln_final.weight" => Some("final_layer_norm.weight"),
            "ln_final.bias" => Some("final_layer_norm.bias"),
            _ => None,
        };
        if let Some(new) = fixed {
            table.insert(new.to_string(), same(k));
            continue;
        }
        let Some(r) = rest.strip_prefix("transformer.resblocks.") else {
            continue;
        };
        let Some((i, r)) = r.split_once('.') else {
            continue;
        };
        let Ok(i) = i.parse::<usize>() else {
            continue;
        };
        if i >= layers {
            continue;
        }
        let layer = format!("encoder.layers.{i}.");
        if let Some(t) = r.strip_prefix("attn.in_proj_") {
            for (part, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                table.insert(
                    format!("{layer}self_attn.{name}.{t}"),
                    Mapped {
                        stored: k.clone(),
                        transform: Transform::Rows { part, of: 3 },
                    },
                );
            }
            continue;
        }
        const NAMES: [(&str, &str); 5] = [
            ("attn.out_proj.", "self_attn.out_proj."),
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
        ];
        if let Some(new) = NAMES
            .iter()
            .find_map(|(old, new)| r.strip_prefix(old).map(|t| format!("{layer}{new}{t}")))
        {
            table.insert(new, same(k));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_keys_follow_diffusers_numbering() {
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.bias",
                "down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "middle_block.0.emb_layers.1.weight",
                "mid_block.resnets.0.time_emb_proj.weight",
            ),
            (
                "middle_block.1.norm.weight",
                "mid_block.attentions.0.norm.weight",
            ),
            (
                "middle_block.2.out_layers.3.bias",
                "mid_block.resnets.1.conv2.bias",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
                "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, want) in cases {
            assert_eq!(unet_key(ldm, 2).as_deref(), Some(want), "{ldm}");
        }
        assert_eq!(unet_key("label_emb.0.0.weight", 2), None);
    }

    #[test]
    fn vae_keys_follow_diffusers_numbering() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.block_2.norm2.bias",
                "decoder.mid_block.resnets.1.norm2.bias",
            ),
            (
                "encoder.mid.attn_1.proj_out.weight",
                "encoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "encoder.mid.attn_1.norm.bias",
                "encoder.mid_block.attentions.0.group_norm.bias",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("post_quant_conv.bias", "post_quant_conv.bias"),
        ];
        for (ldm, want) in cases {
            assert_eq!(vae_key(ldm, 4).as_deref(), Some(want), "{ldm}");
        }
    }

    #[test]
    fn vocab_from_merges_is_clips() {
        let vocab: serde_json::Value =
            serde_json::from_str(&clip_vocab_json("#version: 0.2\ni n\nt h\nin g</w>\n")).unwrap();
        let map = vocab.as_object().unwrap();
        assert_eq!(map.len(), 512 + 3 + 2);
        assert_eq!(map["!"], 0);
        assert_eq!(map["!</w>"], 256);
        assert_eq!(map["in"], 512);
        assert_eq!(map["ing</w>"], 514);
        assert_eq!(map["<|endoftext|>"], 516);
        // byte 0 maps to U+0100, after the 188 printable bytes
        assert_eq!(map["\u{100}"], 188);
    }
}
