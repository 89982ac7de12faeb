//! The metrics of `nullpaint::metrics` against the references of
//! tests/fixtures/generate_metrics.py: pytorch-fid's `calculate_frechet_distance` (scipy's
//! `sqrtm`) and scikit-image's PSNR / SSIM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../../tests/support/formula_weights.rs"]
mod formula_weights;

use std::path::PathBuf;

use burn::tensor::Device;
use nullpaint::metrics::frechet::{Statistics, frechet_distance};
use nullpaint::metrics::inception::{FidInceptionV3, preprocess};
use nullpaint::metrics::quality::{psnr_in_hole, ssim_in_hole};
use nullpaint::pipeline::{MaskImage, RgbImage};
use nullpaint::weights::{SafetensorsBuffer, torch_keys};

use formula_weights::{inception_weight, lpips_weight, safetensors_file, uniform};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("metrics.json")).unwrap())
        .unwrap()
}

/// The generator's `features` (same operations in the same order, so the same f32 values).
fn features(seed: u64, n: usize, dim: usize, shift: f64) -> Vec<f32> {
    let x = uniform(seed, n * dim);
    let z = uniform(seed + 1000, n * dim);
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        for j in 0..dim {
            let v = x[i * dim + j]
                + 0.5 * x[i * dim + (j + 1) % dim]
                + 0.25 * z[i * dim + j / 4]
                + shift * j as f64 / dim as f64;
            out.push(v as f32);
        }
    }
    out
}

fn set(v: &serde_json::Value) -> (u64, usize, usize, f64) {
    (
        v["seed"].as_u64().unwrap(),
        v["n"].as_u64().unwrap() as usize,
        v["dim"].as_u64().unwrap() as usize,
        v["shift"].as_f64().unwrap(),
    )
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    let reference = reference();
    let cases = reference["fid"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (sa, na, da, ha) = set(&case["a"]);
        let (sb, nb, db, hb) = set(&case["b"]);
        let fa = features(sa, na, da, ha);
        let fb = features(sb, nb, db, hb);
        // The formula gives the generator's numbers (bit for bit in f32).
        let first: Vec<f32> = case["first_features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            &fa[..4],
            &first[..],
            "{name}: the feature formula differs from the generator's"
        );
        let a = Statistics::from_features(&fa, na, da, "a").unwrap();
        let b = Statistics::from_features(&fb, nb, db, "b").unwrap();
        let got = frechet_distance(&a, &b).unwrap();
        let want = case["fid"].as_f64().unwrap();
        if want.abs() < 1e-9 {
            assert!(got.abs() < 1e-9, "{name}: {got} vs {want}");
        } else {
            let rel = ((got - want) / want).abs();
            eprintln!(
                "{name}: FID {got:.12} vs pytorch-fid {want:.12} (relative difference {rel:.2e})"
            );
            assert!(
                rel <= 1e-6,
                "{name}: {got} vs pytorch-fid's {want} ({rel:.2e} relative)"
            );
        }
    }
}

fn rgb(path: PathBuf) -> RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    RgbImage {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.into_raw(),
    }
}

#[test]
fn psnr_and_ssim_in_the_hole_match_scikit_image() {
    let reference = reference();
    for case in reference["quality"].as_array().unwrap() {
        let name = case["case"].as_str().unwrap();
        let e2e = |suffix: &str| fixtures().join("e2e").join(format!("{name}.{suffix}.png"));
        let photo = rgb(e2e("image"));
        let out = rgb(e2e("out"));
        let m = image::open(e2e("mask")).unwrap().to_luma8();
        let mask = MaskImage {
            width: m.width() as usize,
            height: m.height() as usize,
            data: m.into_raw(),
        };
        assert_eq!(
            mask.data.iter().filter(|&&v| v >= 128).count() as u64,
            case["hole_pixels"].as_u64().unwrap()
        );
        let psnr = psnr_in_hole(&photo, &out, &mask).unwrap();
        let ssim = ssim_in_hole(&photo, &out, &mask).unwrap();
        let (want_psnr, want_ssim) = (
            case["psnr"].as_f64().unwrap(),
            case["ssim"].as_f64().unwrap(),
        );
        eprintln!(
            "{name}: PSNR {psnr:.10} (skimage {want_psnr:.10}), SSIM {ssim:.10} (skimage {want_ssim:.10})"
        );
        assert!(
            (psnr - want_psnr).abs() < 1e-9,
            "{name}: PSNR {psnr} vs {want_psnr}"
        );
        assert!(
            (ssim - want_ssim).abs() < 1e-9,
            "{name}: SSIM {ssim} vs {want_ssim}"
        );
    }
}

/// A model's formula weights (its keys, `weight` per key) as a safetensors buffer, and how
/// many parameters they are.
fn formula_source(
    keys: Vec<(String, Vec<usize>)>,
    weight: fn(&str, &[usize]) -> Vec<f32>,
) -> (SafetensorsBuffer<Vec<u8>>, usize) {
    let parameters = keys.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let bytes = safetensors_file(&keys, weight);
    (
        SafetensorsBuffer::new("formula weights", bytes).unwrap(),
        parameters,
    )
}

/// pytorch-fid's InceptionV3 with the generator's formula weights, on `device`.
fn formula_inception(device: &Device) -> (FidInceptionV3, usize) {
    let (source, parameters) =
        formula_source(torch_keys(&FidInceptionV3::new(device)), inception_weight);
    (FidInceptionV3::load(&source, device).unwrap(), parameters)
}

/// The preprocessing (torch's bilinear resize to 299, align_corners=False) and the 2048-d
/// features against pytorch-fid's model with the same weights, on the CPU and on wgpu.
#[test]
fn inception_features_match_pytorch_fid() {
    let reference = reference();
    let inception = &reference["inception"];
    let devices = common::devices();
    for (name, device) in devices {
        let (model, parameters) = formula_inception(&device);
        assert_eq!(parameters as u64, inception["parameters"].as_u64().unwrap());
        // Both pictures on the CPU; the first on wgpu (lavapipe runs the 5.7 GFLOP network slowly).
        let cases = inception["cases"].as_array().unwrap();
        let cases = if name == "cpu" {
            &cases[..]
        } else {
            &cases[..1]
        };
        for case in cases {
            let file = case["image"].as_str().unwrap();
            let image = rgb(fixtures().join("e2e").join(file));
            let input = preprocess(&image);
            for probe in case["input_probes"].as_array().unwrap() {
                let p: Vec<f64> = probe
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let (c, y, x) = (p[0] as usize, p[1] as usize, p[2] as usize);
                let got = input[(c * 299 + y) * 299 + x] as f64;
                assert!(
                    (got - p[3]).abs() < 1e-6,
                    "{file} input ({c}, {y}, {x}): {got} vs torch's {}",
                    p[3]
                );
            }
            let got: Vec<f32> = model
                .features(&image)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let want: Vec<f64> = case["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), 2048);
            let max = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0.0, f64::max);
            let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
            eprintln!(
                "{name} {file}: max |features - pytorch-fid's| {max:.2e} (largest feature {scale:.3})"
            );
            assert!(
                max <= 1e-4,
                "{name} {file}: features differ from pytorch-fid's by up to {max:.2e}"
            );
        }
    }
}

/// LPIPS (AlexNet, v0.1) against the lpips package with the same weights, CPU and wgpu.
#[test]
fn lpips_matches_the_lpips_package() {
    use nullpaint::metrics::lpips::Lpips;
    let reference = reference();
    let devices = common::devices();
    for (name, device) in devices {
        let (source, _) = formula_source(torch_keys(&Lpips::new(&device)), lpips_weight);
        let model = Lpips::load(&source, &device).unwrap();
        for case in reference["lpips"].as_array().unwrap() {
            let c = case["case"].as_str().unwrap();
            let e2e = |s: &str| rgb(fixtures().join("e2e").join(format!("{c}.{s}.png")));
            let (photo, out) = (e2e("image"), e2e("out"));
            let got = model.distance(&photo, &out).unwrap();
            let want = case["lpips"].as_f64().unwrap();
            eprintln!("{name} {c}: LPIPS {got:.9} vs the lpips package's {want:.9}");
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                "{name} {c}: {got} vs {want}"
            );
            assert_eq!(model.distance(&photo, &photo).unwrap(), 0.0);
        }
    }
}
