//! AutoencoderKL parity with diffusers on tiny fixtures (encode: posterior mean and logvar;
//! decode), on every test device, plus the full-size SD 1.5 structure check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nullpaint::models::vae::AutoencoderKLConfig;
use nullpaint::weights::{KeyMap, SafetensorsFile, load_module, torch_keys};

const TOLERANCE: f32 = 1e-4;

fn config(path: &std::path::Path) -> AutoencoderKLConfig {
    let file = path.join("config.json");
    AutoencoderKLConfig::from_json(&file.display().to_string(), &std::fs::read(&file).unwrap())
        .unwrap()
}

fn parity(name: &str) {
    let folder = common::fixtures().join(format!("tiny-{name}/vae"));
    let config = config(&folder);
    assert_eq!(config.downscale_factor(), 8);
    let weights =
        SafetensorsFile::open(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    let reference = common::Reference::open("vae.safetensors");
    for (device_name, device) in common::devices() {
        let vae = load_module(
            config.init(&device).unwrap(),
            &weights,
            &KeyMap::default(),
            &device,
        )
        .unwrap();
        assert_eq!(vae.scaling_factor(), 0.18215);
        let posterior = vae.encode(reference.tensor::<4>(&format!("{name}.image"), &device));
        let d_mean = common::max_abs_diff(posterior.mean, &reference.f32(&format!("{name}.mean")));
        let d_logvar =
            common::max_abs_diff(posterior.logvar, &reference.f32(&format!("{name}.logvar")));
        let decoded = vae.decode(reference.tensor::<4>(&format!("{name}.latent"), &device));
        let d_dec = common::max_abs_diff(decoded, &reference.f32(&format!("{name}.decoded")));
        eprintln!(
            "vae {name} on {device_name}: max |diff| mean {d_mean:.3e}, logvar {d_logvar:.3e}, decode {d_dec:.3e}"
        );
        for (what, d) in [("mean", d_mean), ("logvar", d_logvar), ("decode", d_dec)] {
            assert!(
                d <= TOLERANCE,
                "vae {name} {what} on {device_name}: {d} > {TOLERANCE}"
            );
        }
    }
}

#[test]
fn vae_sd1_style_matches_diffusers() {
    parity("sd1");
}

#[test]
fn vae_sd2_style_matches_diffusers() {
    parity("sd2");
}

#[test]
fn vae_full_size_sd15_structure_matches_diffusers() {
    for model in ["sd15", "sd21"] {
        let device = nullpaint::device::cpu();
        let vae = config(&common::fixtures().join("configs").join(model).join("vae"))
            .init(&device)
            .unwrap();
        let (want, want_params) = common::full_size_keys(model, "vae");
        let n = common::assert_same_keys(torch_keys(&vae), &want, model);
        assert_eq!(n, want_params);
        assert_eq!(n, 83_653_863, "{model}");
    }
}

#[test]
fn vae_config_errors_name_key_and_value() {
    for (json, key) in [
        (
            r#"{"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "block_out_channels": [64, 64]}"#,
            "AttnDownEncoderBlock2D",
        ),
        (r#"{"shift_factor": 0.0609}"#, "shift_factor"),
        (r#"{"scaling_factor": -1}"#, "scaling_factor"),
        (r#"{"block_out_channels": [64, 128]}"#, "down_block_types"),
    ] {
        let err = AutoencoderKLConfig::from_json("vae/config.json", json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("vae/config.json"),
            "{json}: {err}"
        );
    }
}
