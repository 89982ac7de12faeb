//! `conv_gemm::set_route` (`nullpaint bench --conv`): on a GPU device it switches every model
//! convolution between the matrix-product route (`conv_gemm`) and Burn's kernel, in f32 and f16,
//! and each route computes the same convolution. Its own test binary because the route is
//! process-wide (another test running beside it would see it change).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../../tests/support/formula_weights.rs"]
mod formula_weights;

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use nullpaint::models::conv_gemm::{self, ConvRoute};
use nullpaint::models::ops;

fn noise(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    formula_weights::uniform(seed, n)
        .into_iter()
        .map(|u| (u * 3.4 * scale) as f32)
        .collect()
}

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A 3x3 "same" convolution `c -> o` with seeded weights, in `dtype`.
fn conv3x3(c: usize, o: usize, dtype: FloatDType, device: &Device) -> Conv2d {
    let mut conv: Conv2d = Conv2dConfig::new([c, o], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device);
    let scale = 1.0 / ((c * 9) as f64).sqrt();
    conv.weight =
        Param::from_tensor(tensor(noise(o * c * 9, 1, scale), [o, c, 3, 3], device).cast(dtype));
    conv.bias = Some(Param::from_tensor(
        tensor(noise(o, 2, 0.5), [o], device).cast(dtype),
    ));
    conv
}

/// A GroupNorm over `c` channels in 8 groups with seeded affine parameters, in `dtype`.
fn group_norm(c: usize, dtype: FloatDType, device: &Device) -> GroupNorm {
    let mut norm = GroupNormConfig::new(8, c).init(device);
    norm.gamma = Some(Param::from_tensor(
        (tensor(noise(c, 3, 0.2), [c], device) + 1.0).cast(dtype),
    ));
    norm.beta = Some(Param::from_tensor(
        tensor(noise(c, 4, 0.2), [c], device).cast(dtype),
    ));
    norm
}

fn values(t: Tensor<4>) -> Vec<f32> {
    common::values(t).0
}

/// max |a - b| / max |b|.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    diff / scale
}

/// What each route computes on `x` (a 3x3 conv `c -> 16` and a GroupNorm in `x`'s type):
/// `(Burn's kernel called directly, auto, gemm, burn)`, each route's `(conv, norm + conv)`.
#[allow(clippy::type_complexity)]
fn routes(
    x: &Tensor<4>,
    dtype: FloatDType,
) -> (
    Vec<f32>,
    (Vec<f32>, Vec<f32>),
    (Vec<f32>, Vec<f32>),
    (Vec<f32>, Vec<f32>),
) {
    let device = x.device();
    let conv = conv3x3(x.dims()[1], 16, dtype, &device);
    let norm = group_norm(x.dims()[1], dtype, &device);
    let burn_kernel = values(conv.forward(x.clone()));
    let auto = run(ConvRoute::Auto, &conv, &norm, x);
    let gemm = run(ConvRoute::Gemm, &conv, &norm, x);
    let burn = run(ConvRoute::Burn, &conv, &norm, x);
    (burn_kernel, auto, gemm, burn)
}

/// `ops::conv2d` and `ops::norm_conv2d` (GroupNorm + SiLU + conv) under `route`.
fn run(route: ConvRoute, conv: &Conv2d, norm: &GroupNorm, x: &Tensor<4>) -> (Vec<f32>, Vec<f32>) {
    conv_gemm::set_route(route);
    assert_eq!(conv_gemm::route(), route);
    let plain = values(ops::conv2d(conv, x.clone()));
    let normed = values(ops::norm_conv2d(norm, true, conv, x.clone(), None, None));
    conv_gemm::set_route(ConvRoute::Auto);
    (plain, normed)
}

#[test]
fn conv_route_switches_the_gpu_convolution_and_each_route_computes_the_same() {
    assert_eq!(conv_gemm::route(), ConvRoute::Auto, "the default route");
    let Some((device, info)) = common::wgpu_or_skip(nullpaint::device::wgpu()) else {
        return;
    };
    eprintln!("wgpu adapter: {info}");
    let (b, c, h, w) = (2, 64, 12, 10);
    let x32 = tensor(noise(b * c * h * w, 5, 1.0), [b, c, h, w], &device);

    // f32: auto = Burn's kernel; gemm = the matrix products, equal within f32 rounding.
    let (burn_kernel, auto, gemm, burn) = routes(&x32, FloatDType::F32);
    assert_eq!(auto.0, burn_kernel, "f32 auto runs Burn's kernel");
    assert_eq!(auto, burn, "f32: auto and burn are one route");
    let d = (relative(&gemm.0, &auto.0), relative(&gemm.1, &auto.1));
    eprintln!(
        "f32 gemm vs Burn: conv {:.1e}, norm + conv {:.1e}",
        d.0, d.1
    );
    assert!(d.0 < 1e-5 && d.1 < 1e-5, "f32 gemm vs Burn: {d:?}");
    assert_ne!(
        gemm.0, auto.0,
        "f32 gemm must be another kernel (another summation order)"
    );

    // f16: auto = the matrix products (f32 sums); burn = Burn's kernel (f16 sums).
    if !info.shader_f16 {
        eprintln!("WARNING: the f16 half skipped: {info} has no shader-f16");
        return;
    }
    let x16 = x32.cast(FloatDType::F16);
    assert_eq!(x16.dtype(), DType::F16);
    let (burn_kernel, auto, gemm, burn) = routes(&x16, FloatDType::F16);
    assert_eq!(auto, gemm, "f16: auto and gemm are one route");
    assert_eq!(burn.0, burn_kernel, "f16 burn runs Burn's kernel");
    assert_ne!(burn.0, gemm.0, "f16 burn must be another kernel");
    // The same convolution, Burn's summed in f16: 7.2e-3 / 7.6e-3 apart on lavapipe at 576
    // products a sum (f16 rounding 4.9e-4; the gap grows with the channels: tests/f16.rs).
    let d = (relative(&burn.0, &gemm.0), relative(&burn.1, &gemm.1));
    eprintln!(
        "f16 Burn vs gemm: conv {:.1e}, norm + conv {:.1e}",
        d.0, d.1
    );
    assert!(d.0 < 3e-2 && d.1 < 3e-2, "f16 Burn vs gemm: {d:?}");
}
