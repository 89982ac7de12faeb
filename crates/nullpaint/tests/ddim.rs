//! DDIM scheduler parity with diffusers' `DDIMScheduler` (timesteps, alphas_cumprod, one step),
//! and torch-compatible seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nullpaint::rng::randn;
use nullpaint::schedulers::{DdimScheduler, Scheduler};
use serde_json::Value;

fn meta(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("reference").join(name)).unwrap(),
    )
    .unwrap()
}

#[test]
fn ddim_timesteps_alphas_and_step_match_diffusers() {
    let meta = meta("scheduler.json");
    let reference = common::Reference::open("scheduler.safetensors");
    let cases = meta.as_object().unwrap();
    assert!(cases.len() >= 7);
    for (name, case) in cases {
        let json = serde_json::to_vec(&case["config"]).unwrap();
        let mut sched = DdimScheduler::from_json(name, &json).unwrap();
        let (want_ac, _) = reference.f32(&format!("{name}.alphas_cumprod"));
        let diff = sched
            .alphas_cumprod()
            .iter()
            .zip(&want_ac)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-6, "{name}: alphas_cumprod max |diff| {diff}");
        let final_alpha = case["final_alpha_cumprod"].as_f64().unwrap() as f32;
        assert!(
            (sched.final_alpha_cumprod() - final_alpha).abs() <= 1e-7,
            "{name}: final alpha"
        );
        for (steps, ts) in case["steps"].as_object().unwrap() {
            let want: Vec<usize> = ts
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as usize)
                .collect();
            let result = sched.set_timesteps(steps.parse().unwrap());
            if want.iter().any(|&t| t >= 1000) {
                // diffusers returns a timestep past alphas_cumprod here (and fails in `step`).
                let err = result.unwrap_err().to_string();
                assert!(err.contains(&format!("steps = {steps}")), "{name}: {err}");
                continue;
            }
            result.unwrap();
            assert_eq!(
                sched.timesteps(),
                &want[..],
                "{name}: timesteps for {steps} steps"
            );
        }
        // One step (50 steps, index 10) on both backends.
        sched.set_timesteps(50).unwrap();
        assert_eq!(
            sched.timesteps()[10],
            case["step_timestep"].as_u64().unwrap() as usize
        );
        for (device_name, device) in common::devices() {
            let sample = reference.tensor::<4>("sample", &device);
            let output = reference.tensor::<4>("model_output", &device);
            let (prev, x0) = sched.step(output, 10, sample);
            let d_prev = common::max_abs_diff(
                prev,
                &reference.f32(&format!("{name}.step50_10.prev_sample")),
            );
            let d_x0 = common::max_abs_diff(
                x0,
                &reference.f32(&format!("{name}.step50_10.pred_original_sample")),
            );
            assert!(
                d_prev <= 1e-5 && d_x0 <= 1e-5,
                "{name} on {device_name}: prev {d_prev}, x0 {d_x0}"
            );
        }
    }
}

#[test]
fn ddim_reads_real_scheduler_folders_and_rejects_bad_settings() {
    for (model, prediction) in [("tiny-sd1", "Epsilon"), ("tiny-sd2", "VPrediction")] {
        let path = common::fixtures()
            .join(model)
            .join("scheduler/scheduler_config.json");
        let sched =
            DdimScheduler::from_json("scheduler_config.json", &std::fs::read(path).unwrap())
                .unwrap();
        assert_eq!(format!("{:?}", sched.prediction_type()), prediction);
        assert_eq!(sched.clip_sample(), None);
    }
    let mut sched = DdimScheduler::sd_v1_5();
    let err = sched.set_timesteps(0).unwrap_err().to_string();
    assert!(err.contains("steps = 0"), "{err}");
    assert!(sched.set_timesteps(1001).is_err());
    for (json, key) in [
        (r#"{"prediction_type": "sample"}"#, "prediction_type"),
        (r#"{"timestep_spacing": "karras"}"#, "timestep_spacing"),
        (r#"{"beta_schedule": "sigmoid"}"#, "beta_schedule"),
        (r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas"),
        (r#"{"thresholding": true}"#, "thresholding"),
    ] {
        let err = DdimScheduler::from_json("scheduler_config.json", json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("scheduler_config.json"),
            "{json}: {err}"
        );
    }
}

#[test]
fn seed_randn_matches_torch_generator() {
    let meta = meta("randn.json");
    let reference = common::Reference::open("randn.safetensors");
    for (name, case) in meta.as_object().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let got = randn(seed, &shape);
        let (want, want_shape) = reference.f32(name);
        assert_eq!(want_shape, shape);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("randn {name}: max |diff| = {diff:.3e}");
        assert!(diff <= 1e-6, "{name}: max |diff| {diff}");
    }
}
