//! UNet2DConditionModel parity with diffusers on tiny fixtures (batch 2, t = 1, 500, 999), on
//! every test device, plus full-size SD 1.5 / 2.1 structure checks against diffusers' key list.
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
    let folder = common::fixtures().join(folder);
    let config = config(&folder);
    let weights =
        SafetensorsFile::open(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    let reference = common::Reference::open("unet.safetensors");
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

fn full_size(model: &str, params: Option<u64>) {
    let device = nullpaint::device::cpu();
    let dir = common::fixtures().join("configs").join(model);
    let unet = config(&dir.join("unet")).init(&device).unwrap();
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys.json")).unwrap()).unwrap();
    let mut want: Vec<(String, Vec<usize>)> = keys["unet"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    let mut got = torch_keys(&unet);
    got.sort();
    want.sort();
    let missing: Vec<_> = want.iter().filter(|k| !got.contains(k)).collect();
    let extra: Vec<_> = got.iter().filter(|k| !want.contains(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{model}: missing {missing:?}\nextra {extra:?}"
    );
    let n: u64 = got
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(n, keys["unet"]["parameters"].as_u64().unwrap());
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
