//! Full-size UNet forward: time per call and peak memory, next to PyTorch in the same run.
//!
//! `cargo bench --bench unet` (release profile). Settings by environment:
//! - `NULLPAINT_BENCH_BACKEND` = `cpu` (default) | `wgpu`
//! - `NULLPAINT_BENCH_MODEL` = `sd15` (default) | `sd21` (config under tests/fixtures/configs)
//! - `NULLPAINT_BENCH_BATCH` (2: guidance), `NULLPAINT_BENCH_LATENT` (64: 512x512), `NULLPAINT_BENCH_ITERS` (2)
//! - `NULLPAINT_TORCH_PYTHON`: a Python with torch + diffusers (default `.venv-ref/bin/python`
//!   when present); the PyTorch side runs after ours, never at the same time.
//!
//! Random weights: speed and memory do not depend on the values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use nullpaint::models::unet_2d::UNet2DConditionConfig;

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// Peak resident set size of this process (Linux), bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let backend = env("NULLPAINT_BENCH_BACKEND", "cpu");
    let model = env("NULLPAINT_BENCH_MODEL", "sd15");
    let batch: usize = env("NULLPAINT_BENCH_BATCH", "2").parse().unwrap();
    let latent: usize = env("NULLPAINT_BENCH_LATENT", "64").parse().unwrap();
    let iters: usize = env("NULLPAINT_BENCH_ITERS", "2").parse().unwrap();
    let config_path = root.join(format!("tests/fixtures/configs/{model}/unet/config.json"));
    let config =
        UNet2DConditionConfig::from_json("config.json", &std::fs::read(&config_path).unwrap())
            .unwrap();

    let (device, label): (Device, String) = match backend.as_str() {
        "wgpu" => {
            let (d, info) = nullpaint::device::wgpu().unwrap();
            (d, format!("wgpu {info}"))
        }
        _ => (nullpaint::device::cpu(), "cpu (flex)".into()),
    };
    println!(
        "nullpaint UNet {model}, batch {batch}, latent {latent}x{latent}, {label}, {iters} timed forward(s)"
    );
    let t0 = Instant::now();
    let unet = config.init(&device).unwrap();
    let cross = config.cross_attention_dim.values()[0];
    let x = Tensor::<4>::random(
        [batch, config.in_channels, latent, latent],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let ctx = Tensor::<3>::random([batch, 77, cross], Distribution::Normal(0.0, 1.0), &device);
    // Warm-up: materialises the lazy random weights and compiles kernels.
    let _ = unet.forward(x.clone(), &[999.0], ctx.clone()).into_data();
    println!("  build + warm-up: {:.1} s", t0.elapsed().as_secs_f64());
    let mut times = vec![];
    for _ in 0..iters {
        let t = Instant::now();
        let out = unet.forward(x.clone(), &[999.0], ctx.clone());
        let _ = out.into_data(); // readback: the time includes the wait for the device
        times.push(t.elapsed().as_secs_f64());
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let peak = peak_rss().unwrap_or(0);
    println!(
        "  nullpaint: {:.2} s per forward (best of {iters}: {times:.2?}), peak RSS {:.2} GiB",
        best,
        gib(peak)
    );

    let python = std::env::var("NULLPAINT_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv-ref/bin/python"));
    if !python.exists() {
        println!(
            "  PyTorch: skipped (no {}; set NULLPAINT_TORCH_PYTHON to a Python with torch + diffusers)",
            python.display()
        );
        return;
    }
    drop(unet);
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/bench/unet_torch.py"))
        .args([
            config_path.display().to_string(),
            batch.to_string(),
            latent.to_string(),
            iters.to_string(),
            "2".into(),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        println!(
            "  PyTorch: failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or("{}")).unwrap();
    let secs: Vec<f64> = v["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    let tbest = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "  PyTorch {} CPU fp32, 2 threads: {:.2} s per forward (best of {iters}: {secs:.2?}), peak RSS {:.2} GiB",
        v["torch"].as_str().unwrap_or("?"),
        tbest,
        gib(v["peak_rss_bytes"].as_u64().unwrap_or(0))
    );
    println!("  ratio nullpaint / PyTorch: {:.2}", best / tbest);
}
