//! UNet2DConditionModel parity with diffusers on tiny fixtures (batch 2, t = 1, 500, 999), on
//! every test device, plus full-size SD 1.5 / 2.1 / BK-SDM structure checks against diffusers' key
//! lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nullpaint::models::unet_2d::UNet2DConditionConfig;
use nullpaint::weights::{KeyMap, SafetensorsFile, load_module, torch_keys};

const TOLERANCE: f32 = 1e-4;

fn config(path: &std::path::Path) -> UNet2DConditionConfig {
    let file = path.join("config.json");
    UNet2DConditionConfig::from_json(&file.display().to_string(), &std::fs::read(&file).unwrap())
        .unwrap()
}

fn parity(name: &str, folder: &str) {
    parity_in("unet.safetensors", name, folder);
}

fn parity_in(reference: &str, name: &str, folder: &str) {
    let folder = common::fixtures().join(folder);
    let config = config(&folder);
    let weights =
        SafetensorsFile::open(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    let reference = common::Reference::open(reference);
    for (device_name, device) in common::devices() {
        let unet = load_module(
            config.init(&device).unwrap(),
            &weights,
            &KeyMap::default(),
            &device,
        )
        .unwrap();
        let sample = reference.tensor::<4>(&format!("{name}.sample"), &device);
        let context = reference.tensor::<3>(&format!("{name}.encoder_hidden_states"), &device);
        for t in [1, 500, 999] {
            let want = reference.f32(&format!("{name}.t{t}"));
            let got = unet.forward(sample.clone(), &[t as f32], context.clone());
            let diff = common::max_abs_diff(got, &want);
            eprintln!("unet {name} t={t} on {device_name}: max |diff| = {diff:.3e}");
            assert!(
                diff <= TOLERANCE,
                "unet {name} t={t} on {device_name}: {diff} > {TOLERANCE}"
            );
        }
    }
}

#[test]
fn unet_sd1_style_matches_diffusers() {
    parity("sd1", "tiny-sd1/unet");
}

#[test]
fn unet_sd2_style_matches_diffusers() {
    parity("sd2", "tiny-sd2/unet");
}

#[test]
fn unet_inpainting_9_channels_without_mid_block_matches_diffusers() {
    parity("inpaint9", "tiny-unet-inpaint9");
}

/// BK-SDM small's shape: three stages, one layer per block, no mid block.
#[test]
fn unet_bk_sdm_small_shape_matches_diffusers() {
    parity_in(
        "unet_small.safetensors",
        "tiny-bk-sdm-small",
        "tiny-bk-sdm-small/unet",
    );
}

/// BK-SDM tiny's shape: cross-attention stages only, no mid block.
#[test]
fn unet_bk_sdm_tiny_shape_matches_diffusers() {
    parity_in(
        "unet_small.safetensors",
        "tiny-bk-sdm-tiny",
        "tiny-bk-sdm-tiny/unet",
    );
}

fn full_size(model: &str, params: Option<u64>) {
    let device = nullpaint::device::cpu();
    let unet = config(&common::fixtures().join("configs").join(model).join("unet"))
        .init(&device)
        .unwrap();
    let (want, want_params) = common::full_size_keys(model, "unet");
    let n = common::assert_same_keys(torch_keys(&unet), &want, model);
    assert_eq!(n, want_params);
    if let Some(p) = params {
        assert_eq!(n, p);
    }
}

#[test]
fn unet_full_size_sd15_structure_matches_diffusers() {
    full_size("sd15", Some(859_520_964));
}

#[test]
fn unet_full_size_sd21_structure_matches_diffusers() {
    full_size("sd21", None);
}

/// The distilled UNets of BK-SDM at full size (the paper's 0.58 B / 0.49 B / 0.33 B).
#[test]
fn unet_full_size_bk_sdm_structures_match_diffusers() {
    full_size("bk-sdm-base", Some(579_384_964));
    full_size("bk-sdm-small", Some(482_346_884));
    full_size("bk-sdm-tiny", Some(323_384_964));
}

#[test]
fn unet_config_errors_name_key_and_value() {
    let cases: [(&str, &str); 6] = [
        (
            r#"{"down_block_types": ["CrossAttnDownBlock2D", "SimpleDownBlock2D", "DownBlock2D", "DownBlock2D"]}"#,
            "down_block_types",
        ),
        (
            r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#,
            "UNetMidBlock2DSimpleCrossAttn",
        ),
        (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
        (r#"{"attention_head_dim": [8, 8]}"#, "attention_head_dim"),
        (r#"{"norm_num_groups": 48}"#, "norm_num_groups"),
        (
            r#"{"addition_embed_type": "text_time"}"#,
            "addition_embed_type",
        ),
    ];
    for (json, key) in cases {
        let err = UNet2DConditionConfig::from_json("unet/config.json", json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("unet/config.json"),
            "{json}: {err}"
        );
    }
    // Real-world keys with their SD values are accepted.
    let ok = r#"{"_class_name": "UNet2DConditionModel", "class_embed_type": null, "dual_cross_attention": false,
        "resnet_time_scale_shift": "default", "time_embedding_type": "positional", "conv_in_kernel": 3}"#;
    UNet2DConditionConfig::from_json("unet/config.json", ok.as_bytes()).unwrap();
}
