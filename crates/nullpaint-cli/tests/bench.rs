//! `nullpaint bench` on the tiny fixture model: the JSON line names every stage with a positive
//! time (the values themselves are the benchmark's business, not a test's), and bad options fail
//! with a message before any model work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fixtures, tempdir};
use std::process::{Command, Output};

const STAGES: &[&str] = &[
    "load_s",
    "text_encoder_first_s",
    "text_encoder_s",
    "unet_first_s",
    "unet_median_s",
    "unet_min_s",
    "vae_encode_first_s",
    "vae_encode_s",
    "vae_decode_first_s",
    "vae_decode_s",
    "inpaint_s",
];

/// `bench --json` on tiny-sd1 at 64x64, one step, plus `args`.
fn bench_tiny(args: &[&str], name: &str) -> Output {
    let model = fixtures().join("tiny-sd1");
    let mut all = vec![
        "--model",
        model.to_str().unwrap(),
        "--size",
        "64",
        "--steps",
        "1",
        "--json",
    ];
    all.extend_from_slice(args);
    bench(&all, name)
}

fn bench(args: &[&str], name: &str) -> Output {
    let dir = tempdir(name);
    Command::new(env!("CARGO_BIN_EXE_nullpaint"))
        .arg("bench")
        .args(args)
        .current_dir(&dir)
        .env("HF_HOME", dir.join("hf-home"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

#[test]
fn bench_json_has_every_stage_with_a_positive_time() {
    let out = bench_tiny(&["--iters", "1", "--backend", "cpu"], "json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // --json: stdout is the JSON line alone (the table goes to stderr).
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for stage in STAGES {
        let s = v["seconds"][stage].as_f64();
        assert!(
            s.is_some_and(|s| s > 0.0 && s.is_finite()),
            "seconds.{stage} = {:?} in {v}",
            v["seconds"][stage]
        );
    }
    let unet = v["unet_s"].as_array().unwrap();
    assert_eq!(unet.len(), 1);
    assert_eq!(v["size"], 64);
    assert_eq!(v["steps"], 1);
    assert_eq!(v["precision"], "f32");
    assert_eq!(v["conv_route"], "auto");
    assert!(v["backend"].as_str().unwrap().contains("cpu"));
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    // The CPU backend has no device memory pools to report.
    assert!(v["gpu_memory_bytes"].is_null());
    assert!(v["gpu_in_use_bytes"].is_null());
    assert!(v["torch"].is_null());
    assert!(
        stderr.contains("whole inpaint"),
        "no table on stderr: {stderr}"
    );
    // The whole inpaint says where it is as it goes, in order; no pools on the CPU.
    let mut rest = &stderr[..];
    for said in [
        "prompt starts",
        "image starts",
        "denoising starts",
        "step 1/1 done",
        "decoding starts",
    ] {
        let at = rest
            .find(said)
            .unwrap_or_else(|| panic!("no {said:?} (in order) in {stderr}"));
        rest = &rest[at..];
    }
    assert!(!stderr.contains("GPU pools"), "{stderr}");
}

/// On wgpu the pools are reported while the inpaint runs and the peak is in the JSON.
#[test]
fn bench_reports_gpu_pools_on_wgpu() {
    let out = bench_tiny(
        &["--inpaint-only", "--backend", "wgpu", "--conv", "burn"],
        "json-wgpu",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && std::env::var("NULLPAINT_REQUIRE_WGPU").as_deref() != Ok("1") {
        eprintln!("WARNING: wgpu bench skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["conv_route"], "burn", "{v}");
    assert!(stderr.contains(", conv: burn"), "{stderr}");
    assert!(v["gpu_memory_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    // Tensors in use at the peak, at most what the pools held for them.
    let in_use = v["gpu_in_use_bytes"].as_u64().unwrap_or(0);
    assert!(in_use > 0, "{v}");
    assert!(in_use <= v["gpu_memory_bytes"].as_u64().unwrap(), "{v}");
    assert!(
        stderr.contains("step 1/1 done, GPU pools: ") && stderr.contains(" GiB reserved"),
        "{stderr}"
    );
    // The sampling thread's peak is reported as the run goes.
    assert!(stderr.contains(" GiB reserved (peak so far "), "{stderr}");
}

#[test]
fn bench_rejects_bad_options_before_loading() {
    let model = fixtures().join("tiny-sd1");
    let model = model.to_str().unwrap();
    for (args, message) in [
        (
            vec!["--model", model, "--size", "100"],
            "not a multiple of 16",
        ),
        (vec!["--model", model, "--steps", "0"], "--steps"),
        (vec!["--model", model, "--iters", "0"], "--iters"),
        (vec!["--size", "64"], "--model"),
        (
            vec!["--model", model, "--conv", "fast"],
            "[possible values: auto, gemm, burn]",
        ),
        (
            vec!["--model", model, "--torch", "/no/such/python"],
            "no Python at /no/such/python",
        ),
    ] {
        let out = bench(&args, "bad");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
