//! The CubeCL kernels against their tensor-op twins and a direct loop over SPEC.md, on every
//! test device: latent sizes 1x1, 7x13, 64x64; dilation radius 0..3; holes touching the borders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use nullpaint::kernel::{StepParams, ddnm_step, is_cube, latent_mask, reference};
use nullpaint::rng::TorchGenerator;

const FACTOR: usize = 8;

/// SPEC.md's latent mask, as a loop: M0[i, j] = Mp[8i, 8j]; hole dilated by r; 1 = known.
fn spec_latent_mask(mp: &[f32], ph: usize, pw: usize, r: usize) -> Vec<f32> {
    let (h, w) = (ph / FACTOR, pw / FACTOR);
    let hole = |i: usize, j: usize| mp[(i * FACTOR) * pw + j * FACTOR] < 0.5;
    let mut out = vec![0.0; h * w];
    for i in 0..h {
        for j in 0..w {
            let mut any = false;
            for ii in i.saturating_sub(r)..=(i + r).min(h - 1) {
                for jj in j.saturating_sub(r)..=(j + r).min(w - 1) {
                    any |= hole(ii, jj);
                }
            }
            out[i * w + j] = if any { 0.0 } else { 1.0 };
        }
    }
    out
}

/// Pixel masks (1 known, 0 hole) for a latent size: random blobs, a border-touching L, all
/// hole, no hole, a single hole pixel at each corner.
fn masks(h: usize, w: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let (ph, pw) = (h * FACTOR, w * FACTOR);
    let mut g = TorchGenerator::new(seed);
    let mut out = vec![];
    let random: Vec<f32> = (0..ph * pw)
        .map(|_| {
            if g.next_u32().is_multiple_of(7) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    out.push(("random".into(), random));
    let mut border = vec![1.0; ph * pw];
    for y in 0..ph {
        for x in 0..pw {
            if x < FACTOR || y >= ph - FACTOR {
                border[y * pw + x] = 0.0;
            }
        }
    }
    out.push(("left+bottom border".into(), border));
    out.push(("all hole".into(), vec![0.0; ph * pw]));
    out.push(("no hole".into(), vec![1.0; ph * pw]));
    let mut corners = vec![1.0; ph * pw];
    for (y, x) in [
        (0, 0),
        (0, pw - FACTOR),
        (ph - FACTOR, 0),
        (ph - FACTOR, pw - FACTOR),
    ] {
        corners[y * pw + x] = 0.0;
    }
    out.push(("corners".into(), corners));
    // Off-grid hole pixels are invisible to the nearest downsample.
    let mut off = vec![1.0; ph * pw];
    off[(ph / 2) * pw + pw / 2 + 1] = 0.0;
    out.push(("off-grid pixel".into(), off));
    out
}

fn tensor2(v: &[f32], h: usize, w: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [h, w]), device)
}

#[test]
fn kernel_latent_mask_matches_spec_and_reference() {
    for (name, device) in common::devices() {
        eprintln!(
            "latent mask on {name} (CubeCL kernel: {})",
            is_cube(&device)
        );
        for (h, w) in [(1, 1), (7, 13), (64, 64)] {
            for (mask_name, mp) in masks(h, w, (h * 100 + w) as u64) {
                let (ph, pw) = (h * FACTOR, w * FACTOR);
                for r in 0..=3 {
                    let want = spec_latent_mask(&mp, ph, pw, r);
                    let got =
                        common::values(latent_mask(tensor2(&mp, ph, pw, &device), FACTOR, r)).0;
                    assert_eq!(got, want, "{name}: {h}x{w} {mask_name} r={r}");
                    let twin = common::values(reference::latent_mask(
                        tensor2(&mp, ph, pw, &device),
                        FACTOR,
                        r,
                    ))
                    .0;
                    assert_eq!(twin, want, "{name} reference: {h}x{w} {mask_name} r={r}");
                }
            }
        }
    }
}

/// SPEC.md's step ("Sampling", 1 to 4), as a loop over f64 values, written apart from the
/// kernel and its tensor-op reference: guidance, z0 and eps (epsilon or v_prediction),
/// diffusers' optional clip of z0, the projection, the DDIM update. `(z_prev, z0_hat)`.
fn spec_ddnm_step(
    z_t: &[f32],
    model_out: &[f32],
    z_y: &[f32],
    mask: &[f32],
    p: &StepParams,
) -> (Vec<f64>, Vec<f64>) {
    let n = z_t.len();
    let plane = mask.len();
    let (sa, s1a) = (p.sqrt_alpha_t as f64, p.sqrt_one_minus_alpha_t as f64);
    let (sp, s1p) = (p.sqrt_alpha_prev as f64, p.sqrt_one_minus_alpha_prev as f64);
    let mut z_prev = vec![0.0; n];
    let mut z0_hat = vec![0.0; n];
    for k in 0..n {
        let out = if p.guided {
            let (u, c) = (model_out[k] as f64, model_out[n + k] as f64);
            u + p.guidance as f64 * (c - u)
        } else {
            model_out[k] as f64
        };
        let z = z_t[k] as f64;
        let (mut z0, eps) = if p.v_prediction {
            (sa * z - s1a * out, sa * out + s1a * z)
        } else {
            ((z - s1a * out) / sa, out)
        };
        if let Some(r) = p.clip_sample {
            z0 = z0.clamp(-r as f64, r as f64);
        }
        let m = mask[k % plane] as f64;
        let hat = m * z_y[k] as f64 + (1.0 - m) * z0;
        z0_hat[k] = hat;
        z_prev[k] = sp * hat + s1p * eps;
    }
    (z_prev, z0_hat)
}

fn max_diff(got: Tensor<4>, want: &[f64]) -> f64 {
    let (v, _) = common::values(got);
    assert_eq!(v.len(), want.len());
    v.iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

fn randn4(seed: u64, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let v = nullpaint::rng::randn(seed, &shape);
    Tensor::from_data(TensorData::new(v, shape), device)
}

#[test]
fn kernel_ddnm_step_matches_spec_loop_and_reference() {
    for (name, device) in common::devices() {
        for (h, w) in [(1, 1), (7, 13), (64, 64)] {
            let z_t = randn4(1, [1, 4, h, w], &device);
            let z_y = randn4(2, [1, 4, h, w], &device);
            let mp = &masks(h, w, 5)[0].1;
            let mask = latent_mask(tensor2(mp, h * FACTOR, w * FACTOR, &device), FACTOR, 1);
            for guided in [false, true] {
                let model_out = randn4(3, [if guided { 2 } else { 1 }, 4, h, w], &device);
                for v_prediction in [false, true] {
                    for clip_sample in [None, Some(1.0)] {
                        let p = StepParams {
                            guidance: 7.5,
                            guided,
                            v_prediction,
                            sqrt_alpha_t: 0.3f32.sqrt(),
                            sqrt_one_minus_alpha_t: 0.7f32.sqrt(),
                            sqrt_alpha_prev: 0.6f32.sqrt(),
                            sqrt_one_minus_alpha_prev: 0.4f32.sqrt(),
                            clip_sample,
                        };
                        let (zp, z0) = ddnm_step(
                            z_t.clone(),
                            model_out.clone(),
                            z_y.clone(),
                            mask.clone(),
                            &p,
                        );
                        let (rp, r0) = reference::ddnm_step(
                            z_t.clone(),
                            model_out.clone(),
                            z_y.clone(),
                            mask.clone(),
                            &p,
                        );
                        // Both against the loop written from SPEC.md: the kernel (on a
                        // CubeCL device) and the tensor-op reference (on every device).
                        let (want_prev, want_z0) = spec_ddnm_step(
                            &common::values(z_t.clone()).0,
                            &common::values(model_out.clone()).0,
                            &common::values(z_y.clone()).0,
                            &common::values(mask.clone()).0,
                            &p,
                        );
                        let case = format!(
                            "{name} {h}x{w} guided={guided} v={v_prediction} clip={clip_sample:?}"
                        );
                        for (what, prev, z0_hat) in
                            [("kernel", zp, z0.clone()), ("reference", rp, r0)]
                        {
                            let d_prev = max_diff(prev, &want_prev);
                            let d_z0 = max_diff(z0_hat, &want_z0);
                            assert!(
                                d_prev <= 1e-5 && d_z0 <= 1e-5,
                                "{case} {what}: {d_prev} {d_z0}"
                            );
                        }
                        // The known region of z0_hat is exactly the observation.
                        let (z0v, _) = common::values(z0);
                        let (zyv, _) = common::values(z_y.clone());
                        let (mv, _) = common::values(mask.clone());
                        for (k, (a, b)) in z0v.iter().zip(&zyv).enumerate() {
                            if mv[k % (h * w)] == 1.0 {
                                assert_eq!(a, b, "{case}: known latent {k}");
                            }
                        }
                    }
                }
            }
        }
    }
}
