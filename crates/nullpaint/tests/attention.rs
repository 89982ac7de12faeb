//! Attention against an independent f64 loop written from the definition,
//! `softmax(q k^T / sqrt(d)) v`, on every device: the CPU fast path and Burn's chunked attention
//! on the CPU backend; on wgpu the flash kernels of `kernel::attention` (checked to have really
//! run, not fallen back), including the head-dim padding the tensor-core kernel needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::{Tensor, TensorData};
use nullpaint::kernel::attention::{
    FlashKind, fallback_count, flash_attention_aligned, flash_kind,
};
use nullpaint::models::attention::scaled_dot_product_attention;

/// Deterministic values in about [-2, 2] (no RNG: the reference must not share code with us).
fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i * 7919 + salt * 104_729) % 10_007;
            (x as f32 / 10_007.0 - 0.5) * 4.0
        })
        .collect()
}

/// `[b, h, s, d]` row-major attention in f64.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    sq: usize,
    skv: usize,
    d: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * sq * d];
    let scale = 1.0 / (d as f64).sqrt();
    for bh in 0..b * h {
        for i in 0..sq {
            let qi = &q[(bh * sq + i) * d..][..d];
            let scores: Vec<f64> = (0..skv)
                .map(|j| {
                    let kj = &k[(bh * skv + j) * d..][..d];
                    qi.iter()
                        .zip(kj)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..d {
                let acc: f64 = (0..skv)
                    .map(|j| e[j] * v[(bh * skv + j) * d + c] as f64)
                    .sum();
                out[(bh * sq + i) * d + c] = (acc / sum) as f32;
            }
        }
    }
    out
}

/// (batch, heads, q_len, kv_len, head_dim): SD 1.5's head dim 40 self- and cross-attention
/// (77 tokens), SD 2's 64, the VAE's single 512-wide head, and lengths that fill no tile.
const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (2, 8, 256, 256, 40),
    (2, 8, 100, 77, 40),
    (2, 5, 64, 77, 64),
    (1, 1, 64, 64, 512),
    (1, 3, 33, 17, 8),
];

#[test]
fn attention_matches_the_definition_on_every_device() {
    for (name, device) in common::devices() {
        for (case, &(b, h, sq, skv, d)) in SHAPES.iter().enumerate() {
            let (qv, kv, vv) = (
                values(b * h * sq * d, 3 * case),
                values(b * h * skv * d, 3 * case + 1),
                values(b * h * skv * d, 3 * case + 2),
            );
            let want = reference(&qv, &kv, &vv, b, h, sq, skv, d);
            let t = |v: &[f32], s: usize| {
                Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, h, s, d]), &device)
            };
            let before = fallback_count();
            let runs: Vec<(&str, Tensor<4>)> =
                match flash_kind(&device, burn::tensor::DType::F32, d) {
                    Some(kind) => vec![
                        (
                            "flash",
                            scaled_dot_product_attention(t(&qv, sq), t(&kv, skv), t(&vv, skv)),
                        ),
                        // The padding of the tensor-core path, on whatever flash kernel this device runs.
                        (
                            "flash, head dim padded to 16",
                            flash_attention_aligned(t(&qv, sq), t(&kv, skv), t(&vv, skv), kind, 16),
                        ),
                    ],
                    None => vec![(
                        "score matrix",
                        scaled_dot_product_attention(t(&qv, sq), t(&kv, skv), t(&vv, skv)),
                    )],
                };
            for (path, got) in runs {
                let got = got
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                eprintln!(
                    "{name} {path} [b,h,sq,skv,d]={:?}: max |diff| {worst:.2e}",
                    (b, h, sq, skv, d)
                );
                assert!(
                    worst < 5e-5,
                    "{name} {path} {:?}: max |diff| {worst}",
                    (b, h, sq, skv, d)
                );
            }
            if name == "wgpu" {
                assert_eq!(
                    fallback_count(),
                    before,
                    "wgpu {:?}: a flash kernel refused the shape and the chunked path ran",
                    (b, h, sq, skv, d)
                );
            }
        }
    }
}

/// wgpu devices run a flash kernel natively (the test above would otherwise compare the chunked
/// path twice and prove nothing about the kernels).
#[test]
fn wgpu_uses_a_flash_kernel() {
    for (name, device) in common::devices() {
        if name == "wgpu" {
            let kind = flash_kind(&device, burn::tensor::DType::F32, 40);
            eprintln!("wgpu flash kernel for f32: {kind:?}");
            assert_eq!(kind, Some(FlashKind::Unit));
        }
    }
}
