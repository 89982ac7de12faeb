//! What a model file or folder is, from its first bytes, its safetensors header or its
//! `model_index.json` alone (never the weights): so that a file the engine cannot run is named,
//! with what is supported instead, before anything large is read.
//!
//! The key patterns are those diffusers' `loaders/single_file_utils.py` (0.42) uses to infer a
//! single-file checkpoint's family (`CHECKPOINT_KEY_NAMES`, `infer_diffusers_model_type`), plus
//! the usual LoRA key shapes (kohya `lora_unet_*` / `lora_te_*`, PEFT `lora_A` / `lora_B`,
//! diffusers `lora_down` / `lora_up`).

use std::collections::BTreeMap;

/// The container format, from the file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// 8-byte little-endian header length, then a JSON header.
    Safetensors,
    /// A zip archive: PyTorch's `torch.save` format (`.ckpt`, `.pt`, `.pth`, `.bin`) holding a
    /// pickle.
    TorchZip,
    /// A bare pickle (old `torch.save` files, protocol 2 to 5).
    Pickle,
    /// llama.cpp / stable-diffusion.cpp quantised weights.
    Gguf,
    Unknown,
}

impl FileFormat {
    /// Sniffs the first bytes (at least 16 for a safe answer).
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(b"PK\x03\x04") {
            return Self::TorchZip;
        }
        if head.starts_with(b"GGUF") {
            return Self::Gguf;
        }
        if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
            return Self::Pickle;
        }
        if head.len() >= 9 {
            let mut n = [0u8; 8];
            n.copy_from_slice(&head[..8]);
            let n = u64::from_le_bytes(n);
            if (2..=MAX_HEADER).contains(&n) && head[8] == b'{' {
                return Self::Safetensors;
            }
        }
        Self::Unknown
    }
}

/// The largest safetensors header read (the format's own limit is 100 MB).
pub const MAX_HEADER: u64 = 100_000_000;

/// What the tensors of a checkpoint make, by their names and a few shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Stable Diffusion 1.x in the original (CompVis / A1111) layout: UNet, VAE and CLIP ViT-L
    /// in one file. `inpainting`: a 9-channel UNet input.
    Sd1Single { inpainting: bool },
    /// Stable Diffusion 2.x in the original layout (OpenCLIP ViT-H text encoder).
    Sd2Single { inpainting: bool },
    /// SDXL base or refiner (original layout).
    Sdxl,
    /// Stable Diffusion 3 / 3.5 (MMDiT).
    Sd3,
    /// Flux (double / single stream blocks).
    Flux,
    /// A LoRA or other adapter: deltas for a model, not a model.
    Lora,
    /// One diffusers component (a `UNet2DConditionModel`, `AutoencoderKL` or CLIP text model
    /// file), not a whole pipeline.
    DiffusersComponent(&'static str),
    /// None of the above.
    Unknown,
}

impl CheckpointKind {
    /// What it is, in words.
    pub fn describe(&self) -> String {
        match self {
            Self::Sd1Single { inpainting } => format!(
                "a single-file Stable Diffusion 1.x {}checkpoint (original CompVis / A1111 layout)",
                if *inpainting { "inpainting " } else { "" }
            ),
            Self::Sd2Single { inpainting } => format!(
                "a single-file Stable Diffusion 2.x {}checkpoint (original layout)",
                if *inpainting { "inpainting " } else { "" }
            ),
            Self::Sdxl => "an SDXL checkpoint".into(),
            Self::Sd3 => "a Stable Diffusion 3 checkpoint (MMDiT)".into(),
            Self::Flux => "a Flux checkpoint".into(),
            Self::Lora => "a LoRA / adapter file (weight deltas for a model, not a model)".into(),
            Self::DiffusersComponent(what) => {
                format!("one diffusers component ({what}), not a whole pipeline")
            }
            Self::Unknown => "not a Stable Diffusion checkpoint nullpaint recognises".into(),
        }
    }
}

/// Classifies a checkpoint from its tensor names and shapes (a safetensors header).
pub fn identify(tensors: &BTreeMap<String, Vec<usize>>) -> CheckpointKind {
    let has = |k: &str| tensors.contains_key(k);
    let any_prefix = |p: &str| {
        tensors
            .range(p.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(p))
    };
    let any = |f: &dyn Fn(&str) -> bool| tensors.keys().any(|k| f(k));

    if any(&|k| {
        k.starts_with("lora_unet_")
            || k.starts_with("lora_te")
            || k.contains(".lora_down.")
            || k.contains(".lora_up.")
            || k.contains(".lora_A.")
            || k.contains(".lora_B.")
            || k.ends_with(".alpha") && k.starts_with("lora_")
    }) {
        return CheckpointKind::Lora;
    }
    let bare_or_model = |k: &str| has(k) || has(&format!("model.diffusion_model.{k}"));
    if bare_or_model("joint_blocks.0.context_block.adaLN_modulation.1.bias") {
        return CheckpointKind::Sd3;
    }
    if bare_or_model("double_blocks.0.img_attn.norm.key_norm.scale") {
        return CheckpointKind::Flux;
    }
    if any_prefix("conditioner.embedders.") {
        return CheckpointKind::Sdxl;
    }
    if any_prefix("model.diffusion_model.") {
        let inpainting = tensors
            .get("model.diffusion_model.input_blocks.0.0.weight")
            .is_some_and(|s| s.get(1) == Some(&9));
        // diffusers: v2 when the first cross-attention's key projection reads 1024-wide context.
        let v2 = tensors
            .get("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight")
            .is_some_and(|s| s.last() == Some(&1024))
            || any_prefix("cond_stage_model.model.");
        return if v2 {
            CheckpointKind::Sd2Single { inpainting }
        } else {
            CheckpointKind::Sd1Single { inpainting }
        };
    }
    if any_prefix("down_blocks.") && (any_prefix("mid_block.") || any_prefix("up_blocks.")) {
        return CheckpointKind::DiffusersComponent("UNet2DConditionModel");
    }
    if any_prefix("encoder.down_blocks.") || any_prefix("decoder.up_blocks.") {
        return CheckpointKind::DiffusersComponent("AutoencoderKL");
    }
    if any_prefix("text_model.") || any_prefix("encoder.layers.") && any_prefix("embeddings.") {
        return CheckpointKind::DiffusersComponent("CLIPTextModel");
    }
    CheckpointKind::Unknown
}

/// What a model file on disk is: its format and, for safetensors, its kind. Reads the first
/// bytes and the header only.
#[cfg(not(target_arch = "wasm32"))]
pub fn identify_file(path: &std::path::Path) -> std::io::Result<(FileFormat, CheckpointKind)> {
    use crate::weights::{ByteRange, FileRange, SafetensorsReader};
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let file = FileRange::open(path)?;
    let head = file
        .read(0, file.size().min(16) as usize)
        .map_err(invalid)?;
    let format = FileFormat::sniff(&head);
    if format != FileFormat::Safetensors {
        return Ok((format, CheckpointKind::Unknown));
    }
    // The header alone, checked as the loader checks it (every tensor inside the file).
    let reader = SafetensorsReader::new(path.display().to_string(), file)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((format, identify(&reader.shapes())))
}

/// What a diffusers pipeline folder holds, from its `model_index.json` `_class_name`, when it is
/// a family nullpaint does not run (SDXL, SD 3, Flux, ...); `None` for SD 1.x / 2.x pipelines
/// and for anything it cannot tell.
pub fn unsupported_pipeline(model_index_json: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(model_index_json).ok()?;
    let class = value.get("_class_name")?.as_str()?;
    let family = if class.contains("XL") {
        "SDXL"
    } else if class.starts_with("StableDiffusion3") {
        "Stable Diffusion 3"
    } else if class.starts_with("Flux") {
        "Flux"
    } else if class.starts_with("Kandinsky")
        || class.starts_with("PixArt")
        || class.starts_with("Sana")
        || class.starts_with("Wuerstchen")
        || class.starts_with("StableCascade")
        || class.starts_with("IF")
        || class.starts_with("Lumina")
        || class.starts_with("HunyuanDiT")
        || class.starts_with("AuraFlow")
    {
        "another model family"
    } else {
        return None;
    };
    Some(format!("a {family} pipeline ({class})"))
}

/// A short name `--model` accepts for a common Hugging Face repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelAlias {
    pub alias: &'static str,
    pub repo: &'static str,
    /// What it is and how to run it.
    pub about: &'static str,
}

const fn alias(alias: &'static str, repo: &'static str, about: &'static str) -> ModelAlias {
    ModelAlias { alias, repo, about }
}

/// The short names of `--model` (README, "Model families", says what was verified for each).
pub const MODEL_ALIASES: &[ModelAlias] = &[
    alias(
        "sd15",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "SD 1.5, 512 px (the default)",
    ),
    alias("sd14", "CompVis/stable-diffusion-v1-4", "SD 1.4, 512 px"),
    alias(
        "sd15-inpainting",
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "SD 1.5 inpainting UNet, 512 px (--mode inpaint-unet or both)",
    ),
    alias(
        "sd2-base",
        "stabilityai/stable-diffusion-2-base",
        "SD 2.0 base, 512 px",
    ),
    alias(
        "sd2",
        "stabilityai/stable-diffusion-2",
        "SD 2.0, 768 px, v-prediction",
    ),
    alias(
        "sd21-base",
        "stabilityai/stable-diffusion-2-1-base",
        "SD 2.1 base, 512 px",
    ),
    alias(
        "sd21",
        "stabilityai/stable-diffusion-2-1",
        "SD 2.1, 768 px, v-prediction",
    ),
    alias(
        "sd2-inpainting",
        "stabilityai/stable-diffusion-2-inpainting",
        "SD 2 inpainting UNet, 512 px (--mode inpaint-unet or both)",
    ),
    alias(
        "sd-turbo",
        "stabilityai/sd-turbo",
        "SD-Turbo (SD 2.1 distilled), 512 px: --steps 1 to 4 --guidance-scale 0",
    ),
    alias(
        "bk-sdm-base",
        "nota-ai/bk-sdm-base",
        "BK-SDM base (SD 1.4 distilled UNet, 0.58 B)",
    ),
    alias(
        "bk-sdm-small",
        "nota-ai/bk-sdm-small",
        "BK-SDM small (no mid block, 0.48 B)",
    ),
    alias(
        "bk-sdm-tiny",
        "nota-ai/bk-sdm-tiny",
        "BK-SDM tiny (no mid block, three stages, 0.32 B)",
    ),
    alias(
        "small-sd",
        "segmind/small-sd",
        "segmind small-sd (distilled SD 1.5)",
    ),
    alias(
        "tiny-sd",
        "segmind/tiny-sd",
        "segmind tiny-sd (distilled SD 1.5)",
    ),
];

/// The repository a short `--model` name stands for.
pub fn model_alias(name: &str) -> Option<&'static ModelAlias> {
    MODEL_ALIASES
        .iter()
        .find(|a| a.alias.eq_ignore_ascii_case(name))
}

/// The sentence every refusal ends with.
pub const SUPPORTED: &str = "nullpaint runs Stable Diffusion 1.x and 2.x (base, v-prediction and 9-channel inpainting UNets) from a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, safetensors weights), a Hugging Face repo id of one, or a single-file SD 1.x / 2.x .safetensors checkpoint in the original layout";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_unique_short_names_of_repo_ids() {
        let mut seen = std::collections::BTreeSet::new();
        for a in MODEL_ALIASES {
            assert!(seen.insert(a.alias), "{} twice", a.alias);
            assert!(
                !a.alias.contains('/') && a.repo.split('/').count() == 2,
                "{a:?}"
            );
        }
        assert_eq!(
            model_alias("SD15").map(|a| a.repo),
            Some(MODEL_ALIASES[0].repo)
        );
        assert_eq!(model_alias("sd16"), None);
    }

    fn keys(list: &[(&str, &[usize])]) -> BTreeMap<String, Vec<usize>> {
        list.iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn sniffs_formats() {
        let mut st = 100u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"a\":1}");
        assert_eq!(FileFormat::sniff(&st), FileFormat::Safetensors);
        assert_eq!(
            FileFormat::sniff(b"PK\x03\x04rest of zip"),
            FileFormat::TorchZip
        );
        assert_eq!(FileFormat::sniff(&[0x80, 0x02, b'}']), FileFormat::Pickle);
        assert_eq!(FileFormat::sniff(b"GGUF\x03\0\0\0"), FileFormat::Gguf);
        assert_eq!(FileFormat::sniff(b"<html>not a model"), FileFormat::Unknown);
        assert_eq!(FileFormat::sniff(b""), FileFormat::Unknown);
        // A header length past the format's limit is not taken for safetensors.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.push(b'{');
        assert_eq!(FileFormat::sniff(&huge), FileFormat::Unknown);
    }

    #[test]
    fn identifies_families_like_diffusers() {
        let unet_in = "model.diffusion_model.input_blocks.0.0.weight";
        let attn2 = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight";
        let sd1 = keys(&[
            (unet_in, &[320, 4, 3, 3]),
            (attn2, &[320, 768]),
            (
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                &[49408, 768],
            ),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        assert_eq!(
            identify(&sd1),
            CheckpointKind::Sd1Single { inpainting: false }
        );
        let sd1_inpaint = keys(&[(unet_in, &[320, 9, 3, 3]), (attn2, &[320, 768])]);
        assert_eq!(
            identify(&sd1_inpaint),
            CheckpointKind::Sd1Single { inpainting: true }
        );
        let sd2 = keys(&[
            (unet_in, &[320, 4, 3, 3]),
            (attn2, &[320, 1024]),
            (
                "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
                &[3072, 1024],
            ),
        ]);
        assert_eq!(
            identify(&sd2),
            CheckpointKind::Sd2Single { inpainting: false }
        );
        let xl = keys(&[
            (unet_in, &[320, 4, 3, 3]),
            (
                "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
                &[1280],
            ),
        ]);
        assert_eq!(identify(&xl), CheckpointKind::Sdxl);
        let sd3 = keys(&[(
            "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias",
            &[9216],
        )]);
        assert_eq!(identify(&sd3), CheckpointKind::Sd3);
        let flux = keys(&[("double_blocks.0.img_attn.norm.key_norm.scale", &[128])]);
        assert_eq!(identify(&flux), CheckpointKind::Flux);
        for lora in [
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            "unet.down_blocks.0.attentions.0.to_q.lora_A.weight",
            "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
        ] {
            assert_eq!(
                identify(&keys(&[(lora, &[4, 320])])),
                CheckpointKind::Lora,
                "{lora}"
            );
        }
        let unet = keys(&[
            ("down_blocks.0.resnets.0.conv1.weight", &[32, 32, 3, 3]),
            ("up_blocks.0.resnets.0.conv1.weight", &[32, 64, 3, 3]),
        ]);
        assert_eq!(
            identify(&unet),
            CheckpointKind::DiffusersComponent("UNet2DConditionModel")
        );
        let vae = keys(&[(
            "encoder.down_blocks.0.resnets.0.conv1.weight",
            &[32, 32, 3, 3],
        )]);
        assert_eq!(
            identify(&vae),
            CheckpointKind::DiffusersComponent("AutoencoderKL")
        );
        let clip = keys(&[(
            "text_model.embeddings.token_embedding.weight",
            &[49408, 768],
        )]);
        assert_eq!(
            identify(&clip),
            CheckpointKind::DiffusersComponent("CLIPTextModel")
        );
        assert_eq!(
            identify(&keys(&[("weight", &[3])])),
            CheckpointKind::Unknown
        );
        assert_eq!(identify(&BTreeMap::new()), CheckpointKind::Unknown);
    }

    #[test]
    fn names_unsupported_pipelines() {
        let xl = br#"{"_class_name": "StableDiffusionXLPipeline"}"#;
        assert!(unsupported_pipeline(xl).unwrap().contains("SDXL"));
        let sd3 = br#"{"_class_name": "StableDiffusion3Pipeline"}"#;
        assert!(
            unsupported_pipeline(sd3)
                .unwrap()
                .contains("Stable Diffusion 3")
        );
        let flux = br#"{"_class_name": "FluxPipeline"}"#;
        assert!(unsupported_pipeline(flux).unwrap().contains("Flux"));
        assert_eq!(
            unsupported_pipeline(br#"{"_class_name": "StableDiffusionPipeline"}"#),
            None
        );
        assert_eq!(unsupported_pipeline(b"not json"), None);
    }

    #[test]
    fn reads_only_the_header_of_a_file() {
        let dir = std::env::temp_dir().join(format!("nullpaint-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header = br#"{"lora_unet_x.lora_down.weight":{"dtype":"F16","shape":[4,8],"data_offsets":[0,64]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 64]);
        let path = dir.join("lora.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            identify_file(&path).unwrap(),
            (FileFormat::Safetensors, CheckpointKind::Lora)
        );
        // Cut inside the header, or inside the data: a clear error, no panic.
        for cut in [20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let error = identify_file(&path).unwrap_err().to_string();
            assert!(
                error.contains("not a valid safetensors file") && error.contains("download"),
                "{error}"
            );
        }
        let ckpt = dir.join("model.ckpt");
        std::fs::write(&ckpt, b"PK\x03\x04....").unwrap();
        assert_eq!(
            identify_file(&ckpt).unwrap(),
            (FileFormat::TorchZip, CheckpointKind::Unknown)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
