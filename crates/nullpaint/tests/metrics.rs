//! The metrics of `nullpaint::metrics` against the references of
//! tests/fixtures/generate_metrics.py: pytorch-fid's `calculate_frechet_distance` (scipy's
//! `sqrtm`) and scikit-image's PSNR / SSIM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use nullpaint::metrics::frechet::{Statistics, frechet_distance};
use nullpaint::metrics::quality::{psnr_in_hole, ssim_in_hole};
use nullpaint::pipeline::{MaskImage, RgbImage};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("metrics.json")).unwrap())
        .unwrap()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator's `uniform`: element k of `seed` in [-0.5, 0.5).
fn uniform(seed: u64, count: usize) -> Vec<f64> {
    (0..count as u64)
        .map(|k| (splitmix64(k + (seed << 32)) >> 11) as f64 * 2f64.powi(-53) - 0.5)
        .collect()
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
