//! GroupNorm (+ SiLU) as the models call it (`models::ops::group_norm`) against a plain f64 loop
//! written from the definition, on every test device, at the sizes a 512x512 picture gives the
//! VAE: a million elements per group (128 channels at 512x512, 32 groups), where Burn 0.22's
//! single reduction over a whole group gave wrong sums on lavapipe (the GPU path now sums in
//! rows of at most 4096), and a group size with no power-of-two row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::module::Param;
use burn::nn::GroupNormConfig;
use burn::tensor::{Tensor, TensorData};

/// `x` normalised per (batch, group) with the population variance, then `gamma`, `beta`, SiLU.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Vec<f32> {
    let per_group = channels / groups * spatial;
    let mut out = vec![0f32; x.len()];
    for b in 0..batch {
        for g in 0..groups {
            let start = (b * groups + g) * per_group;
            let xs = &x[start..start + per_group];
            let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / per_group as f64;
            let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per_group as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for (i, &v) in xs.iter().enumerate() {
                let c = g * (channels / groups) + i / spatial;
                let y = (v as f64 - mean) * rstd * gamma[c] as f64 + beta[c] as f64;
                out[start + i] = if silu { y / (1.0 + (-y).exp()) } else { y } as f32;
            }
        }
    }
    out
}

#[test]
fn group_norm_matches_the_definition_on_every_device() {
    // (batch, channels, height, width, groups, silu): the 512x512 decode's last stage; a group
    // of 2 x 100 x 75 = 15000 elements (rows of 3750).
    let cases = [(1, 128, 512, 512, 32, true), (2, 64, 100, 75, 32, false)];
    for (name, device) in common::devices() {
        for &(b, c, h, w, groups, silu) in &cases {
            let n = b * c * h * w;
            // A different offset per channel, so that a group's statistics read from another
            // group's elements show.
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    ((i * 7919) % 1000) as f32 / 250.0 - 2.0 + ((i / (h * w)) % c) as f32 * 0.05
                })
                .collect();
            let gamma: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let beta: Vec<f32> = (0..c).map(|i| (i % 5) as f32 * 0.2 - 0.4).collect();
            let want = reference(&x, &gamma, &beta, b, c, h * w, groups, 1e-6, silu);
            let mut norm = GroupNormConfig::new(groups, c)
                .with_epsilon(1e-6)
                .init(&device);
            let param = |v: &[f32]| {
                Some(Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(v.to_vec(), [c]),
                    &device,
                )))
            };
            norm.gamma = param(&gamma);
            norm.beta = param(&beta);
            let input = Tensor::<4>::from_data(TensorData::new(x, [b, c, h, w]), &device);
            let got = nullpaint::models::ops::group_norm(&norm, input, silu);
            let diff = common::max_abs_diff(got, &(want, vec![b, c, h, w]));
            eprintln!(
                "{name} [{b}, {c}, {h}, {w}] / {groups} groups, silu {silu}: max |diff| {diff:.2e}"
            );
            assert!(diff < 1e-4, "{name} {:?}: {diff}", (b, c, h, w));
        }
    }
}
