//! `nullpaint eval` end to end on three photos with the tiny SD 1.x model and an InceptionV3 of
//! formula weights (the real ones cannot be fetched here; their parity with pytorch-fid is
//! crates/nullpaint/tests/metrics.rs): the table is written, every file where it belongs, and a
//! rerun reuses every result without loading the model and scores the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../../tests/support/formula_weights.rs"]
mod formula_weights;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, tempdir};
use formula_weights::{inception_weight, lpips_weight, safetensors_file};
use nullpaint::metrics::inception::FidInceptionV3;
use nullpaint::metrics::lpips::Lpips;
use nullpaint::weights::torch_keys;

/// InceptionV3 weights from tests/fixtures/generate_metrics.py's formula (He-uniform
/// convolutions, batch norms near the identity), as a safetensors file.
fn write_inception(path: &Path) {
    let keys = torch_keys(&FidInceptionV3::new(&nullpaint::device::cpu()));
    std::fs::write(path, safetensors_file(&keys, inception_weight)).unwrap();
}

/// LPIPS (AlexNet) weights of the same kind (the lin layers non-negative, as trained ones).
fn write_lpips(path: &Path) {
    let keys = torch_keys(&Lpips::new(&nullpaint::device::cpu()));
    std::fs::write(path, safetensors_file(&keys, lpips_weight)).unwrap();
}

fn run(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nullpaint"))
        .args([
            "eval",
            "--images",
            "photos",
            "--out",
            "out",
            "--inception",
            "inception.safetensors",
            "--lpips",
            "lpips.safetensors",
            "--mask-sizes",
            "24,16",
            "--short-side",
            "64",
            "--steps",
            "2",
            "--model",
            fixtures().join("tiny-sd1").to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn eval_writes_the_table_and_resumes() {
    let dir = tempdir("eval");
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    let e2e = fixtures().join("reference/e2e");
    for (file, name) in [
        ("sd1_guided_64x64.image.png", "a.png"),
        ("sd2_vpred_unguided_64x96.image.png", "b.png"),
        ("sd1_padded_40x56.image.png", "c.png"),
    ] {
        std::fs::copy(e2e.join(file), dir.join("photos").join(name)).unwrap();
    }
    write_inception(&dir.join("inception.safetensors"));
    write_lpips(&dir.join("lpips.safetensors"));

    let out = run(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Short side 64: 64x64, 96x64, and 56x40 -> 90x64 (Lanczos); holes centred.
    for (name, size) in [("a", (64, 64)), ("b", (96, 64)), ("c", (90, 64))] {
        let gt = image::open(dir.join(format!("out/ground_truth/{name}.png"))).unwrap();
        assert_eq!((gt.width(), gt.height()), size, "{name}");
        for s in [24u32, 16] {
            let out = image::open(dir.join(format!("out/{s}/inpainted/{name}.png")))
                .unwrap()
                .to_rgb8();
            let mask = image::open(dir.join(format!("out/{s}/masks/{name}.png")))
                .unwrap()
                .to_luma8();
            assert_eq!(out.dimensions(), size);
            let holes = mask.pixels().filter(|p| p.0[0] >= 128).count();
            assert_eq!(holes, (s * s) as usize, "{name} {s}");
            // pasted back: the known pixels are the ground truth's
            let gt = gt.to_rgb8();
            for (p, m) in out
                .pixels()
                .zip(gt.pixels())
                .zip(mask.pixels())
                .filter(|(_, m)| m.0[0] < 128)
                .map(|((o, g), _)| (o, g))
            {
                assert_eq!(p.0, m.0);
            }
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap())
            .unwrap();
    for s in ["24", "16"] {
        let r = &json["sizes"][s];
        assert_eq!(r["n"], 3, "{json}");
        let fid = r["fid"].as_f64().unwrap();
        let ssim = r["ssim"].as_f64().unwrap();
        assert!(fid.is_finite() && fid >= 0.0, "{json}");
        assert!(
            r["psnr"].as_f64().unwrap() > 0.0 && (-1.0..=1.0).contains(&ssim),
            "{json}"
        );
    }
    let md = std::fs::read_to_string(dir.join("out/results.md")).unwrap();
    assert!(
        md.contains("| 24x24 |") && md.contains("| 16x16 |") && md.contains("LPIPS"),
        "{md}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 24x24 |"));

    // Rerun: every result reused, the model not loaded, the same scores.
    let again = run(&dir);
    let err2 = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err2}");
    assert!(
        err2.contains("3 of 3 results reused") && !err2.contains("device:"),
        "{err2}"
    );
    let json2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap())
            .unwrap();
    assert_eq!(json["sizes"], json2["sizes"]);
    eprintln!("{md}");
}

#[test]
fn eval_refuses_bad_arguments() {
    let dir = tempdir("eval-args");
    std::fs::create_dir_all(dir.join("one")).unwrap();
    std::fs::copy(
        fixtures().join("reference/e2e/sd1_guided_64x64.image.png"),
        dir.join("one/a.png"),
    )
    .unwrap();
    for (args, says) in [
        (vec!["--images", "one"], "at least 2"),
        (
            vec!["--images", "one", "--mask-sizes", "600"],
            "does not fit",
        ),
        (vec!["--images", "nowhere.txt"], "cannot read the list"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_nullpaint"))
            .args(["eval", "--out", "o", "--inception", "x.safetensors"])
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}
