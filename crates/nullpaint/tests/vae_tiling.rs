//! Tiled VAE encode / decode (`models::vae_tiling`): parity with diffusers' `enable_tiling()` on
//! the tiny SD 1.x VAE (fixture `tests/fixtures/reference/vae_tiling/`, `generate.py --only
//! vae_tiling`) on every test device; a tile larger than the input is exactly the untiled path;
//! the policy's activation estimate and tile choice on the real SD 1.5 / SD 2.1 configs.
//!
//! Tiled and untiled outputs differ by design (per-tile GroupNorm statistics): on the fixture,
//! diffusers measures max |tiled - untiled| 0.60 (posterior mean, 8-latent-px tiles) and 3.1
//! (decoded image, 4-latent-px tiles); the test checks that this port shows the same differences.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::Tensor;
use nullpaint::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use nullpaint::models::vae_tiling::{VaeTiling, WEBGPU_DEFAULT_MAX_STORAGE_BINDING};
use nullpaint::weights::{KeyMap, SafetensorsFile, load_module};

const TOLERANCE: f32 = 1e-4;
const MIB: u64 = 1 << 20;

fn config(path: &std::path::Path) -> AutoencoderKLConfig {
    let file = path.join("config.json");
    AutoencoderKLConfig::from_json(&file.display().to_string(), &std::fs::read(&file).unwrap())
        .unwrap()
}

fn full_size(model: &str) -> AutoencoderKLConfig {
    config(&common::fixtures().join("configs").join(model).join("vae"))
}

fn tiny_vae(device: &burn::tensor::Device) -> AutoencoderKL {
    let folder = common::fixtures().join("tiny-sd1/vae");
    let weights =
        SafetensorsFile::open(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    load_module(
        config(&folder).init(device).unwrap(),
        &weights,
        &KeyMap::default(),
        device,
    )
    .unwrap()
}

fn cases() -> serde_json::Value {
    let path = common::fixtures().join("reference/vae_tiling/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    common::max_abs_diff(a, &common::values(b))
}

#[test]
fn tiled_encode_and_decode_match_diffusers() {
    let cases = cases();
    let enc_tile = cases["encode"]["tile_latent"].as_u64().unwrap() as usize;
    let dec_tile = cases["decode"]["tile_latent"].as_u64().unwrap() as usize;
    let want_untiled =
        |path: &[&str]| path.iter().fold(&cases, |v, k| &v[*k]).as_f64().unwrap() as f32;
    let reference = common::Reference::open("vae_tiling/tiles.safetensors");
    for (device_name, device) in common::devices() {
        let vae = tiny_vae(&device);
        let image = reference.tensor::<4>("image", &device);
        let latent = reference.tensor::<4>("latent", &device);

        // 1. parity with diffusers' tiled outputs
        let tiled = vae.tiled_encode(image.clone(), enc_tile);
        let d_mean = common::max_abs_diff(tiled.mean.clone(), &reference.f32("mean"));
        let d_logvar = common::max_abs_diff(tiled.logvar, &reference.f32("logvar"));
        let decoded = vae.tiled_decode(latent.clone(), dec_tile);
        let d_dec = common::max_abs_diff(decoded.clone(), &reference.f32("decoded"));
        eprintln!(
            "tiled vae on {device_name}: max |diff| vs diffusers mean {d_mean:.3e}, logvar {d_logvar:.3e}, decode {d_dec:.3e}"
        );
        for (what, d) in [("mean", d_mean), ("logvar", d_logvar), ("decode", d_dec)] {
            assert!(
                d <= TOLERANCE,
                "tiled {what} on {device_name}: {d} > {TOLERANCE}"
            );
        }

        // 2. the policy's forced mode runs the same tiles
        let forced = vae.encode_with(image.clone(), VaeTiling::Always(enc_tile));
        assert_eq!(max_diff(forced.mean, tiled.mean.clone()), 0.0);
        let forced = vae.decode_with(latent.clone(), VaeTiling::Always(dec_tile));
        assert_eq!(max_diff(forced, decoded.clone()), 0.0);

        // 3. tiled differs from untiled as much as it does in diffusers
        let untiled_mean = vae.encode(image).mean;
        let untiled_dec = vae.decode(latent);
        let got_mean = max_diff(tiled.mean, untiled_mean);
        let got_dec = max_diff(decoded, untiled_dec);
        let want_mean = want_untiled(&["encode", "max_abs_diff_vs_untiled", "mean"]);
        let want_dec = want_untiled(&["decode", "max_abs_diff_vs_untiled"]);
        eprintln!(
            "tiled vs untiled on {device_name}: mean {got_mean:.4} (diffusers {want_mean:.4}), decode {got_dec:.4} (diffusers {want_dec:.4})"
        );
        assert!(
            (got_mean - want_mean).abs() <= 1e-3,
            "{got_mean} vs {want_mean}"
        );
        assert!(
            (got_dec - want_dec).abs() <= 1e-3,
            "{got_dec} vs {want_dec}"
        );
    }
}

#[test]
fn tile_larger_than_input_is_exactly_untiled() {
    let reference = common::Reference::open("vae_tiling/tiles.safetensors");
    for (device_name, device) in common::devices() {
        let vae = tiny_vae(&device);
        let image = reference.tensor::<4>("image", &device); // 56 x 104 px
        let latent = reference.tensor::<4>("latent", &device); // 8 x 7
        let mean = vae.encode(image.clone()).mean;
        let decoded = vae.decode(latent.clone());
        for tile in [16, 64] {
            let d = max_diff(vae.tiled_encode(image.clone(), tile).mean, mean.clone());
            assert_eq!(d, 0.0, "encode, tile {tile}, {device_name}");
        }
        for tiling in [
            VaeTiling::Always(8),
            VaeTiling::Always(100),
            VaeTiling::Auto(u64::MAX),
            VaeTiling::Off,
        ] {
            let d = max_diff(vae.decode_with(latent.clone(), tiling), decoded.clone());
            assert_eq!(d, 0.0, "decode, {tiling:?}, {device_name}");
        }
        let d = max_diff(
            vae.encode_with(image.clone(), VaeTiling::Always(17)).mean,
            mean.clone(),
        );
        assert_eq!(
            d, 0.0,
            "encode, Always(17) -> 16-latent-px tiles (128 px), {device_name}"
        );
    }
}

#[test]
fn activation_estimate_of_sd15() {
    let sd15 = full_size("sd15");
    // Decode: the last up block's 256-channel input at full resolution.
    assert_eq!(sd15.largest_decode_activation(1, 64, 64, 4), 256 * MIB);
    assert_eq!(sd15.largest_decode_activation(2, 64, 64, 4), 512 * MIB);
    assert_eq!(sd15.largest_decode_activation(1, 32, 32, 4), 64 * MIB);
    // Half the bytes in f16: GroupNorm's f32 statistics are taken in slices that fit
    // (`ops::group_norm`), so only the mid block attention's q / k / v count widened.
    assert_eq!(sd15.largest_decode_activation(1, 64, 64, 2), 128 * MIB);
    assert_eq!(sd15.largest_decode_activation(1, 16, 16, 2), 8 * MIB);
    // Encode: 128 channels at full resolution.
    assert_eq!(sd15.largest_encode_activation(1, 512, 512, 4), 128 * MIB);
    assert_eq!(sd15.largest_encode_activation(1, 1024, 512, 4), 256 * MIB);
    assert_eq!(sd15.default_tile_latent(), 64);
    assert_eq!(full_size("sd21").default_tile_latent(), 96);
}

#[test]
fn policy_tiles_only_what_exceeds_the_budget() {
    let sd15 = full_size("sd15");
    let lavapipe = VaeTiling::Auto(128 * MIB);
    assert_eq!(
        lavapipe,
        VaeTiling::Auto(WEBGPU_DEFAULT_MAX_STORAGE_BINDING)
    );
    // 512x512 in f32 (256 MiB) tiles, with the largest multiple of 8 that fits: 40 latent px
    // (256 ch x 320 x 320 x 4 B = 100 MiB; 48 would be 144 MiB).
    assert_eq!(sd15.decode_tile(lavapipe, 1, 64, 64, 4), Some(40));
    assert!(sd15.largest_decode_activation(1, 40, 40, 4) <= 128 * MIB);
    assert!(sd15.largest_decode_activation(1, 48, 48, 4) > 128 * MIB);
    // 256x256 (64 MiB) does not tile; neither does a 512x512 encode (exactly 128 MiB).
    assert_eq!(sd15.decode_tile(lavapipe, 1, 32, 32, 4), None);
    assert_eq!(sd15.encode_tile(lavapipe, 1, 512, 512, 4), None);
    // A 1024x512 encode (256 MiB) tiles at the largest fitting tile: 64 latent px = 512 px,
    // capped by the VAE's sample_size.
    assert_eq!(sd15.encode_tile(lavapipe, 1, 512, 1024, 4), Some(64));
    // A larger budget (SwiftShader's 1 GiB) decodes 512x512 whole; a tiny one falls back to the
    // smallest tile.
    assert_eq!(
        sd15.decode_tile(VaeTiling::Auto(1 << 30), 1, 64, 64, 4),
        None
    );
    assert_eq!(sd15.decode_tile(VaeTiling::Auto(1), 1, 64, 64, 4), Some(8));
    // No budget, or tiling off: never.
    for tiling in [VaeTiling::Off, VaeTiling::Auto(u64::MAX)] {
        assert_eq!(sd15.decode_tile(tiling, 1, 512, 512, 4), None);
        assert_eq!(sd15.encode_tile(tiling, 1, 4096, 4096, 4), None);
    }
    // Forced: diffusers' rule, only inputs larger than one tile; sides rounded down to 4.
    assert_eq!(sd15.decode_tile(VaeTiling::Always(64), 1, 64, 64, 4), None);
    assert_eq!(
        sd15.decode_tile(VaeTiling::Always(64), 1, 64, 72, 4),
        Some(64)
    );
    assert_eq!(
        sd15.decode_tile(VaeTiling::Always(30), 1, 64, 64, 4),
        Some(28)
    );
    assert_eq!(
        sd15.encode_tile(VaeTiling::Always(1), 1, 64, 64, 4),
        Some(4)
    );

    // The settings for devices.
    assert_eq!(VaeTiling::for_adapter(None), VaeTiling::Off);
    assert_eq!(
        VaeTiling::default_for(&nullpaint::device::cpu()),
        VaeTiling::Off
    );
}

/// On an adapter whose storage binding limit is below the largest activation (lavapipe: 128
/// MiB), the untiled decode fails on the device and [`VaeTiling::for_adapter`] makes the decode
/// and the encode run. A VAE with 4 channels, no mid attention and random weights keeps the work
/// small; its 2944x2944 decode and encode each make a 132.25 MiB activation.
#[test]
#[ignore = "about 7 minutes on lavapipe (2 cores); needs a wgpu adapter binding less than 132.25 MiB per buffer"]
fn tiling_keeps_activations_within_the_binding_limit() {
    let (device, info) = nullpaint::device::wgpu().unwrap();
    let limit = info.max_storage_buffer_binding_size;
    let json = r#"{"block_out_channels": [4, 4], "norm_num_groups": 4,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "mid_block_add_attention": false, "sample_size": 4096}"#;
    let config = AutoencoderKLConfig::from_json("test vae", json.as_bytes()).unwrap();
    let (side, latent_side) = (2944, 1472);
    assert_eq!(
        config.largest_decode_activation(1, latent_side, latent_side, 4),
        4 * 2944 * 2944 * 4
    );
    assert_eq!(
        config.largest_encode_activation(1, side, side, 4),
        4 * 2944 * 2944 * 4
    );
    assert!(
        limit < 4 * 2944 * 2944 * 4,
        "{info} binds {limit} bytes: this test needs a smaller limit"
    );
    let tiling = VaeTiling::for_adapter(Some(&info));
    let tile = config.decode_tile(tiling, 1, latent_side, latent_side, 4);
    eprintln!("{info}: binding limit {limit} bytes, decode tile {tile:?}");
    assert!(tile.is_some());
    let vae = config.init(&device).unwrap();
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);

    // Tiled first (an error may leave the device unusable for what follows).
    let latent = Tensor::<4>::random([1, 4, latent_side, latent_side], normal, &device);
    let decoded = vae.decode_with(latent.clone(), tiling);
    let (values, shape) = common::values(decoded);
    assert_eq!(shape, [1, 3, side, side]);
    assert!(values.iter().all(|v| v.is_finite()));
    let image = Tensor::<4>::random([1, 3, side, side], normal, &device);
    let (values, shape) = common::values(vae.encode_with(image.clone(), tiling).mean);
    assert_eq!(shape, [1, 4, latent_side, latent_side]);
    assert!(values.iter().all(|v| v.is_finite()));

    // Untiled: the device refuses the 132.25 MiB binding.
    assert!(vae.decode(latent).try_into_data().is_err());
}
