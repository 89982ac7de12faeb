//! The real `nullpaint` binary on the tiny fixture models: a run that matches the Python
//! reference of SPEC.md, and every bad input of the path giving a message, a non-zero exit and no
//! partial output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fixtures, max_level_diff, tempdir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn e2e(name: &str) -> PathBuf {
    fixtures().join("reference/e2e").join(name)
}

fn nullpaint(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nullpaint"))
        .args(args)
        .current_dir(dir)
        .env("HF_HOME", dir.join("hf-home"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// The "red apple" run of an e2e case (4 steps, seed 42, guided with "blurry") on `model` and
/// `backend`, written to `result.png`; `extra` arguments are appended.
fn apple_run(case: &str, model: &str, backend: &str, extra: &[&str], dir: &Path) -> Output {
    let img = e2e(&format!("{case}.image.png"));
    let mask = e2e(&format!("{case}.mask.png"));
    let mut args = vec![
        "inpaint",
        "--image",
        img.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--prompt",
        "a red apple on a wooden table",
        "--negative-prompt",
        "blurry",
        "--model",
        model,
        "--steps",
        "4",
        "--seed",
        "42",
        "--backend",
        backend,
        "--output",
        "result.png",
    ];
    args.extend_from_slice(extra);
    nullpaint(&args, dir)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in `dir` other than the ones named (no temporary files left behind).
fn leftovers(dir: &Path, expected: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(&n.as_str()))
        .collect()
}

#[test]
fn cli_inpaint_matches_the_python_reference_on_both_backends() {
    let case = "sd1_guided_64x64";
    let want = image::open(e2e(&format!("{case}.out.png")))
        .unwrap()
        .to_rgb8();
    let model = fixtures().join("tiny-sd1");
    for backend in ["cpu", "wgpu"] {
        let dir = tempdir(&format!("ok-{backend}"));
        let out = apple_run(
            case,
            model.to_str().unwrap(),
            backend,
            &["--guidance-scale", "7.5", "--dilate", "2"],
            &dir,
        );
        if backend == "wgpu"
            && !out.status.success()
            && std::env::var("NULLPAINT_REQUIRE_WGPU").as_deref() != Ok("1")
        {
            eprintln!("WARNING: wgpu CLI run skipped: {}", stderr(&out));
            continue;
        }
        assert!(out.status.success(), "{backend}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("wrote") && err.contains("s/step"), "{err}");
        let got = image::open(dir.join("result.png")).unwrap().to_rgb8();
        let max = max_level_diff(&got, &want);
        assert!(
            max <= 1,
            "{backend}: differs from the reference by {max} levels"
        );
        assert_eq!(leftovers(&dir, &["result.png"]), Vec::<String>::new());
    }
}

/// An inpainting model (9-channel UNet): `--mode auto` picks `inpaint-unet` and says so, and the
/// picture is diffusers' StableDiffusionInpaintPipeline's.
#[test]
fn cli_runs_an_inpainting_model_as_diffusers_does() {
    let case = "sd1_inpaint_unet_guided_64x64";
    let want = image::open(e2e(&format!("{case}.out.png")))
        .unwrap()
        .to_rgb8();
    let dir = tempdir("inpaint-unet");
    let model = fixtures().join("tiny-sd1-inpaint");
    let out = apple_run(case, model.to_str().unwrap(), "cpu", &[], &dir);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("mode: inpaint-unet (an inpainting UNet"),
        "{err}"
    );
    let got = image::open(dir.join("result.png")).unwrap().to_rgb8();
    let max = max_level_diff(&got, &want);
    assert!(max <= 1, "differs from diffusers' picture by {max} levels");
}

/// A single-file checkpoint in the original layout: with the tiny folder's configs it gives the
/// folder's picture; with the bundled (full-size) configs it says what to do.
#[test]
fn cli_runs_a_single_file_checkpoint() {
    let case = "sd1_guided_64x64";
    let want = image::open(e2e(&format!("{case}.out.png")))
        .unwrap()
        .to_rgb8();
    let dir = tempdir("single-file");
    let file = fixtures().join("single-file/tiny-sd1.safetensors");
    let config = fixtures().join("tiny-sd1");
    let run = |extra: &[&str]| apple_run(case, file.to_str().unwrap(), "cpu", extra, &dir);
    let out = run(&["--config", config.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("read as a single-file SD 1.x checkpoint"),
        "{err}"
    );
    let got = image::open(dir.join("result.png")).unwrap().to_rgb8();
    let max = max_level_diff(&got, &want);
    assert!(
        max <= 1,
        "differs from the folder's picture by {max} levels"
    );
    std::fs::remove_file(dir.join("result.png")).unwrap();

    let out = run(&[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("bundled SD 1.x configs")
            && err.contains("--config DIR")
            && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(leftovers(&dir, &[]), Vec::<String>::new());
}

/// A repo in the Hugging Face cache, offline: the legacy folder (sharded UNet, old VAE names,
/// outdated scheduler config, no optional tokenizer configs) found by repo id, giving
/// diffusers' picture; the cache is checked with the same file manifest as a download.
#[test]
fn cli_runs_a_sharded_legacy_repo_from_the_hub_cache() {
    let case = "legacy_sd1_guided_64x64";
    let dir = tempdir("hub-cache");
    let repo = dir.join("hf-home/hub/models--someone--legacy-sd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let snapshot = repo.join("snapshots/0123abcd");
    copy_dir(&fixtures().join("legacy-sd1"), &snapshot);
    // The tokenizer's optional configs are absent (an online download skips them when the repo
    // lacks them; offline they were once required): CLIP's defaults are tiny-sd1's settings.
    for optional in nullpaint::manifest::OPTIONAL_CONFIGS {
        std::fs::remove_file(snapshot.join(optional)).unwrap();
    }
    let out = apple_run(case, "someone/legacy-sd", "cpu", &[], &dir);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("steps_offset") && err.contains("clip_sample"),
        "the scheduler corrections are reported: {err}"
    );
    let want = image::open(e2e(&format!("{case}.out.png")))
        .unwrap()
        .to_rgb8();
    let got = image::open(dir.join("result.png")).unwrap().to_rgb8();
    let max = max_level_diff(&got, &want);
    assert!(max <= 1, "differs from diffusers' picture by {max} levels");
}

#[test]
fn cli_outpaints_without_a_mask_and_reports_regions() {
    // A 64x64 photo grown by 100 px on the right: 164x64 is wider than tiny-sd1's 128 px
    // working size, so the extension runs as one region, scaled to 128x50.
    let dir = tempdir("extend");
    let img = e2e("sd1_guided_64x64.image.png");
    let model = fixtures().join("tiny-sd1");
    let out = nullpaint(
        &[
            "inpaint",
            "--image",
            img.to_str().unwrap(),
            "--prompt",
            "a wall",
            "--model",
            model.to_str().unwrap(),
            "--steps",
            "1",
            "--seed",
            "5",
            "--backend",
            "cpu",
            "--extend",
            "0,0,100,0",
            "--output",
            "wide.png",
        ],
        &dir,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("region 1/1: 164x64 at (0, 0), runs at 128x50, seed 5"),
        "{err}"
    );
    let input = image::open(&img).unwrap().to_rgb8();
    let got = image::open(dir.join("wide.png")).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), (164, 64));
    for (x, y, p) in input.enumerate_pixels() {
        assert_eq!(got.get_pixel(x, y), p, "({x}, {y}) changed");
    }
    assert!(
        (64..164).any(|x| got.get_pixel(x, 10) != input.get_pixel(63, 10)),
        "the extension was not painted"
    );
    assert_eq!(leftovers(&dir, &["wide.png"]), Vec::<String>::new());
}

#[test]
fn cli_default_output_name_and_drawn_seed() {
    let dir = tempdir("default-name");
    std::fs::copy(e2e("sd1_padded_40x56.image.png"), dir.join("photo.png")).unwrap();
    std::fs::copy(e2e("sd1_padded_40x56.mask.png"), dir.join("mask.png")).unwrap();
    let model = fixtures().join("tiny-sd1");
    let out = nullpaint(
        &[
            "inpaint",
            "--image",
            "photo.png",
            "--mask",
            "mask.png",
            "--prompt",
            "x",
            "--model",
            model.to_str().unwrap(),
            "--steps",
            "1",
            "--backend",
            "cpu",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --seed"), "{}", stderr(&out));
    let result = image::open(dir.join("photo.inpainted.png")).unwrap();
    assert_eq!((result.width(), result.height()), (56, 40));
}

#[test]
fn cli_help_shows_an_example() {
    let out = nullpaint(&["inpaint", "--help"], &std::env::temp_dir());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Example:") && text.contains("nullpaint inpaint --image"),
        "{text}"
    );
    // Every short model name is listed (clap wraps lines: compare words).
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
        .collect();
    for alias in nullpaint::checkpoint::MODEL_ALIASES {
        assert!(
            words.contains(&alias.alias),
            "{} missing in:\n{text}",
            alias.alias
        );
    }
}

#[test]
fn cli_bad_inputs_fail_cleanly() {
    let dir = tempdir("bad");
    let model = fixtures().join("tiny-sd1");
    let model = model.to_str().unwrap();
    let img = e2e("sd1_guided_64x64.image.png");
    let img = img.to_str().unwrap();
    let mask = e2e("sd1_guided_64x64.mask.png");
    let mask = mask.to_str().unwrap();
    let other_mask = e2e("sd1_padded_40x56.mask.png");
    std::fs::write(dir.join("garbage.png"), b"not a png at all").unwrap();
    std::fs::copy(img, dir.join("input.png")).unwrap();
    // A model folder whose UNet weights are cut in half (a half-written download).
    let broken = dir.join("broken-model");
    copy_dir(&fixtures().join("tiny-sd1"), &broken);
    let w = broken.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let broken = broken.to_str().unwrap().to_string();
    // Files that are not SD 1.x / 2.x diffusers folders: each named before any large read.
    std::fs::write(dir.join("model.ckpt"), b"PK\x03\x04 a torch.save zip").unwrap();
    let header = br#"{"lora_unet_down_blocks_0.lora_down.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#;
    let mut lora = (header.len() as u64).to_le_bytes().to_vec();
    lora.extend_from_slice(header);
    lora.extend_from_slice(&[0; 8]);
    std::fs::write(dir.join("lora.safetensors"), lora).unwrap();
    std::fs::create_dir_all(dir.join("sdxl")).unwrap();
    std::fs::write(
        dir.join("sdxl/model_index.json"),
        br#"{"_class_name": "StableDiffusionXLPipeline"}"#,
    )
    .unwrap();
    let vae_file = fixtures().join("tiny-sd1/vae/diffusion_pytorch_model.safetensors");
    let vae_file = vae_file.to_str().unwrap();
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "inpaint",
            "--prompt",
            "p",
            "--backend",
            "cpu",
            "--steps",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "o.png",
                "--precision",
                "f16",
            ]),
            "shader-f16",
        ),
        (
            base(&[
                "--image",
                "missing.png",
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "o.png",
            ]),
            "missing.png",
        ),
        (
            base(&[
                "--image",
                "garbage.png",
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "o.png",
            ]),
            "garbage.png",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                other_mask.to_str().unwrap(),
                "--model",
                model,
                "-o",
                "o.png",
            ]),
            "same size",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", model, "-o", "o.png", "--steps", "0",
            ]),
            "--steps",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "o.png",
                "--guidance-scale",
                "NaN",
            ]),
            "guidance",
        ),
        (
            base(&[
                "--image",
                "input.png",
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "input.png",
            ]),
            "one of the inputs",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "no/such/dir/o.png",
            ]),
            "does not exist",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", model, "-o", "o.tiff",
            ]),
            "output format",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                "no-such-folder",
                "-o",
                "o.png",
            ]),
            "no such folder",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", "sd-turbo", "-o", "o.png",
            ]),
            "of stabilityai/sd-turbo is not in the cache",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                "model.ckpt",
                "-o",
                "o.png",
            ]),
            "PyTorch pickle",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                "lora.safetensors",
                "-o",
                "o.png",
            ]),
            "LoRA",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", vae_file, "-o", "o.png",
            ]),
            "one diffusers component (AutoencoderKL)",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", "sdxl", "-o", "o.png",
            ]),
            "SDXL pipeline",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                "someone/some-model",
                "-o",
                "o.png",
            ]),
            "HF_HUB_OFFLINE",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", &broken, "-o", "o.png",
            ]),
            "diffusion_pytorch_model.safetensors",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                &fixtures().join("tiny-unet-inpaint9").display().to_string(),
                "-o",
                "o.png",
            ]),
            "not a diffusers",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                model,
                "-o",
                "o.png",
                "--region",
                "crop",
                "--context",
                "10",
                "--feather",
                "50",
            ]),
            "wider than the context",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", model, "-o", "o.png", "--extend", "1,2",
            ]),
            "LEFT,TOP,RIGHT,BOTTOM",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", model, "-o", "o.png", "--region",
                "tiles",
            ]),
            "tiles",
        ),
        (
            base(&["--image", img, "--model", model, "-o", "o.png"]),
            "--extend",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", model, "--mode", "both", "-o", "o.png",
            ]),
            "`both` needs an inpainting UNet",
        ),
        (
            base(&[
                "--image",
                img,
                "--mask",
                mask,
                "--model",
                &fixtures().join("tiny-sd1-inpaint").display().to_string(),
                "--mode",
                "projection",
                "-o",
                "o.png",
            ]),
            "`projection` runs on a base UNet",
        ),
        (
            base(&[
                "--image", img, "--mask", mask, "--model", model, "--mode", "paint", "-o", "o.png",
            ]),
            "inpaint-unet",
        ),
    ];
    let before = std::fs::read(dir.join("input.png")).unwrap();
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = nullpaint(&args, &dir);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("error:") && err.contains(needle),
            "{args:?}: expected {needle:?} in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        assert_eq!(
            leftovers(
                &dir,
                &[
                    "garbage.png",
                    "input.png",
                    "broken-model",
                    "model.ckpt",
                    "lora.safetensors",
                    "sdxl"
                ]
            ),
            Vec::<String>::new(),
            "{args:?} left files"
        );
    }
    assert_eq!(
        std::fs::read(dir.join("input.png")).unwrap(),
        before,
        "an input was modified"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        // `is_dir` follows links (legacy-sd1 links tiny-sd1's text encoder and tokenizer).
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
