//! Legacy diffusers folders (tests/fixtures/legacy-sd1, judged by diffusers'
//! `StableDiffusionPipeline` in tests/fixtures/reference/legacy.json): the VAE's pre-0.14
//! attention names, a sharded UNet, an outdated scheduler config. The whole pass on this folder
//! is checked against diffusers in the e2e parity test (`legacy_sd1_guided_64x64` in
//! tests/pipeline.rs); here, that each legacy path is taken and gives tiny-sd1's weights.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::module::Module;
use burn::tensor::Tensor;
use nullpaint::models::vae::AutoencoderKL;
use nullpaint::pipeline::{FolderSource, ModelSource, StableDiffusion};

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("reference/legacy.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn legacy_folder_is_read_as_diffusers_reads_it() {
    let want = reference();
    let legacy = FolderSource::new(common::fixtures().join("legacy-sd1")).unwrap();
    let base = FolderSource::new(common::fixtures().join("tiny-sd1")).unwrap();

    // The VAE: the old names are renamed, exactly as many as diffusers converted.
    let vae = legacy.weights("vae").unwrap();
    let renames = AutoencoderKL::legacy_key_renames(&vae.keys());
    assert_eq!(
        renames.len() as u64,
        want["vae_keys_renamed"].as_u64().unwrap()
    );
    assert!(renames.iter().any(|(old, new)| old
        == "decoder.mid_block.attentions.0.proj_attn.weight"
        && new == "decoder.mid_block.attentions.0.to_out.0.weight"));
    // Today's names need no renames.
    assert!(AutoencoderKL::legacy_key_renames(&base.weights("vae").unwrap().keys()).is_empty());

    // The UNet: the shards together hold tiny-sd1's tensors, byte for byte.
    let sharded = legacy.weights("unet").unwrap();
    let whole = base.weights("unet").unwrap();
    assert_eq!(sharded.keys(), whole.keys());
    for key in whole.keys() {
        let (a, b) = (
            sharded.tensor(&key).unwrap().unwrap(),
            whole.tensor(&key).unwrap().unwrap(),
        );
        assert_eq!(a.shape, b.shape, "{key}");
        assert_eq!(a.data, b.data, "{key}");
    }

    // The scheduler: corrected as diffusers' pipeline corrects it.
    for (name, device) in common::devices() {
        let sd = StableDiffusion::load(&legacy, &device).unwrap();
        let config = sd.scheduler.config();
        let used = &want["scheduler_as_diffusers_pipeline_uses"];
        assert_eq!(
            config.steps_offset as u64,
            used["steps_offset"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(config.clip_sample, used["clip_sample"].as_bool().unwrap());

        // And the models hold tiny-sd1's weights.
        let base_sd = StableDiffusion::load(&base, &device).unwrap();
        let params = |m: &AutoencoderKL| -> Vec<Vec<f32>> {
            let mut out = vec![];
            struct Collect<'a>(&'a mut Vec<Vec<f32>>);
            impl burn::module::ModuleVisitor for Collect<'_> {
                fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                    self.0.push(param.val().into_data().iter::<f32>().collect());
                }
            }
            m.visit(&mut Collect(&mut out));
            out
        };
        assert_eq!(params(&sd.vae), params(&base_sd.vae), "{name}: VAE weights");
    }
}

#[test]
fn legacy_scheduler_fixes_warn_once_each() {
    let mut config: nullpaint::schedulers::ddim::DdimSchedulerConfig =
        serde_json::from_str(r#"{"beta_schedule": "scaled_linear"}"#).unwrap();
    let warnings = nullpaint::pipeline::legacy_scheduler_fixes(&mut config);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("steps_offset"));
    assert!(warnings[1].contains("clip_sample"));
    assert_eq!((config.steps_offset, config.clip_sample), (1, false));
    // An up-to-date config is left alone.
    assert!(nullpaint::pipeline::legacy_scheduler_fixes(&mut config).is_empty());
}

#[test]
fn broken_shard_indexes_are_named() {
    let dir = std::env::temp_dir().join(format!("nullpaint-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = common::fixtures().join("legacy-sd1");
    for part in ["text_encoder", "tokenizer", "scheduler", "vae"] {
        std::fs::create_dir_all(dir.join(part)).unwrap();
        for f in std::fs::read_dir(src.join(part)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join(part).join(f.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    let index = dir.join("unet/diffusion_pytorch_model.safetensors.index.json");
    let source = FolderSource::new(&dir).unwrap();
    let err = |text: &str| {
        std::fs::write(&index, text).unwrap();
        source.weights("unet").err().unwrap().to_string()
    };
    let missing = err(r#"{"weight_map": {"a": "part-1.safetensors"}}"#);
    assert!(
        missing.contains("part-1.safetensors") && missing.contains("download"),
        "{missing}"
    );
    let outside = err(r#"{"weight_map": {"a": "../../etc/passwd.safetensors"}}"#);
    assert!(outside.contains("next to the index"), "{outside}");
    let no_map = err(r#"{"metadata": {}}"#);
    assert!(no_map.contains("weight_map"), "{no_map}");
    let not_json = err("{");
    assert!(not_json.contains("not a JSON shard index"), "{not_json}");
    // The same key in two shards: shards of different checkpoints.
    let shard = src.join("unet/diffusion_pytorch_model-00001-of-00002.safetensors");
    std::fs::copy(&shard, dir.join("unet/a.safetensors")).unwrap();
    std::fs::copy(&shard, dir.join("unet/b.safetensors")).unwrap();
    let twice = err(r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#);
    assert!(twice.contains("two shards"), "{twice}");
    let _ = std::fs::remove_dir_all(&dir);
}
