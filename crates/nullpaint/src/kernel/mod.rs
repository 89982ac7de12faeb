//! The DDNM projection as a GPU kernel: the latent mask (nearest downsample + dilation of the
//! hole) and the fused per-step latent update (guidance, `z0`, projection, DDIM step).
//!
//! On CubeCL devices (wgpu: Vulkan / Metal / DX12 / WebGPU) the `#[cube]` kernels of
//! [`kernel`] run, launched by [`forward`]; on other backends (the `flex` CPU backend) the
//! [`reference`] twin made of tensor ops runs. Both follow `SPEC.md` exactly.

pub mod attention;
pub mod forward;
#[allow(clippy::module_inception)]
pub mod kernel;
pub mod reference;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::{Device, Tensor};

use crate::schedulers::{PredictionType, StepCoefficients};
pub use forward::DdnmBackend;

/// Scalars of one fused step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepParams {
    /// Classifier-free guidance scale; used when `guided`.
    pub guidance: f32,
    /// `model_out` holds `[uncond, cond]`.
    pub guided: bool,
    pub v_prediction: bool,
    pub sqrt_alpha_t: f32,
    pub sqrt_one_minus_alpha_t: f32,
    pub sqrt_alpha_prev: f32,
    pub sqrt_one_minus_alpha_prev: f32,
    /// diffusers' `clip_sample` range, when on.
    pub clip_sample: Option<f32>,
}

impl StepParams {
    pub fn new(
        c: StepCoefficients,
        prediction: PredictionType,
        guidance: Option<f32>,
        clip_sample: Option<f32>,
    ) -> Self {
        Self {
            guidance: guidance.unwrap_or(1.0),
            guided: guidance.is_some(),
            v_prediction: prediction == PredictionType::VPrediction,
            sqrt_alpha_t: c.alpha_prod_t.sqrt(),
            sqrt_one_minus_alpha_t: (1.0 - c.alpha_prod_t).sqrt(),
            sqrt_alpha_prev: c.alpha_prod_t_prev.sqrt(),
            sqrt_one_minus_alpha_prev: (1.0 - c.alpha_prod_t_prev).sqrt(),
            clip_sample,
        }
    }
}

/// Whether `device` runs CubeCL kernels.
pub fn is_cube(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// The largest buffer one CubeCL allocation may take on `device` (on wgpu the smaller of
/// `maxStorageBufferBindingSize` and `maxBufferSize`: 128 MiB on lavapipe and by default in
/// browsers); `None` off CubeCL devices.
pub fn max_buffer_bytes(device: &Device) -> Option<u64> {
    match device.as_dispatch() {
        DispatchDevice::Cube(cube) => Some(cube.client().properties().memory.max_page_size),
        _ => None,
    }
}

/// Latent mask `M_l` (1 known, 0 hole) from the pixel mask `M_p` (1 known, 0 hole).
///
/// # Shapes
/// - `pixel_mask`: `[H, W]` -> `[H / factor, W / factor]`
pub fn latent_mask(pixel_mask: Tensor<2>, factor: usize, radius: usize) -> Tensor<2> {
    if is_cube(&pixel_mask.device()) {
        Tensor::from_dispatch(<Dispatch as DdnmBackend>::latent_mask(
            pixel_mask.into_dispatch(),
            factor,
            radius,
        ))
    } else {
        reference::latent_mask(pixel_mask, factor, radius)
    }
}

/// One DDNM step: `(z_prev, z0_hat)`.
///
/// # Shapes
/// - `z_t`, `z_y`: `[1, c, h, w]`; `model_out`: `[1 or 2, c, h, w]`; `mask`: `[h, w]`
pub fn ddnm_step(
    z_t: Tensor<4>,
    model_out: Tensor<4>,
    z_y: Tensor<4>,
    mask: Tensor<2>,
    params: &StepParams,
) -> (Tensor<4>, Tensor<4>) {
    if is_cube(&z_t.device()) {
        let (a, b) = <Dispatch as DdnmBackend>::ddnm_step(
            z_t.into_dispatch(),
            model_out.into_dispatch(),
            z_y.into_dispatch(),
            mask.into_dispatch(),
            *params,
        );
        (Tensor::from_dispatch(a), Tensor::from_dispatch(b))
    } else {
        reference::ddnm_step(z_t, model_out, z_y, mask, params)
    }
}
