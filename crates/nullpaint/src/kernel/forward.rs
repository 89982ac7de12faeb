//! Launching the kernels on Burn's CubeCL backend (wgpu natively and in the browser).
//!
//! The operations are a Burn backend extension: `#[backend_extension(Cube, Fusion)]` generates
//! the routing from `Dispatch` tensors to [`CubeBackend`] primitives and, in native builds
//! (Burn's `fusion` feature), a lazy `Fusion<CubeBackend>` twin that registers each call as an
//! opaque operation in the fused stream, so the kernels run in order with the fused ones around
//! them. [`super`] only calls it for tensors on a CubeCL device and uses the reference twin
//! elsewhere.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::StepParams;
use super::kernel::{ddnm_step_kernel, latent_mask_kernel};

/// The DDNM operations a backend can run natively.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait DdnmBackend: Backend {
    /// `pixel_mask [H, W]` -> `[H / factor, W / factor]` (see [`latent_mask_kernel`]).
    #[fusion(dtype = pixel_mask, shape = {
        Shape::new([pixel_mask[0] / factor, pixel_mask[1] / factor])
    })]
    fn latent_mask(
        pixel_mask: FloatTensor<Self>,
        factor: usize,
        radius: usize,
    ) -> FloatTensor<Self>;
    /// One fused step; returns `(z_prev, z0_hat)` (see [`ddnm_step_kernel`]).
    #[fusion(meta = |z_t, _model_out, _z_y, _mask, _params| (z_t.clone(), z_t.clone()))]
    fn ddnm_step(
        z_t: FloatTensor<Self>,
        model_out: FloatTensor<Self>,
        z_y: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        params: StepParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Threads per cube for the element-wise launches.
const CUBE_SIZE: u32 = 256;

fn launch_grid(n: usize) -> (CubeCount, CubeDim) {
    let cubes = (n as u32).div_ceil(CUBE_SIZE).max(1);
    (CubeCount::Static(cubes, 1, 1), CubeDim::new_1d(CUBE_SIZE))
}

impl DdnmBackend for CubeBackend {
    fn latent_mask(
        pixel_mask: FloatTensor<Self>,
        factor: usize,
        radius: usize,
    ) -> FloatTensor<Self> {
        let pixel_mask = into_contiguous(pixel_mask);
        let [ph, pw] = pixel_mask.meta.shape().dims();
        let shape = Shape::new([ph / factor, pw / factor]);
        let n = shape.num_elements();
        let output = empty_device_dtype(
            pixel_mask.client.clone(),
            pixel_mask.device.clone(),
            shape,
            pixel_mask.dtype,
        );
        if n == 0 {
            return output;
        }
        let (count, dim) = launch_grid(n);
        let dtype = pixel_mask.dtype;
        latent_mask_kernel::launch(
            &output.client,
            count,
            dim,
            pixel_mask.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            factor as u32,
            radius as u32,
            dtype_to_storage_type(dtype),
        );
        output
    }

    fn ddnm_step(
        z_t: FloatTensor<Self>,
        model_out: FloatTensor<Self>,
        z_y: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        params: StepParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let z_t = into_contiguous(z_t);
        let model_out = into_contiguous(model_out);
        let z_y = into_contiguous(z_y);
        let mask = into_contiguous(mask);
        let shape = z_t.meta.shape().clone();
        let n = shape.num_elements();
        let (client, device, dtype) = (z_t.client.clone(), z_t.device.clone(), z_t.dtype);
        let z_prev = empty_device_dtype(client.clone(), device.clone(), shape.clone(), dtype);
        let z0_hat = empty_device_dtype(client.clone(), device, shape, dtype);
        let (count, dim) = launch_grid(n);
        ddnm_step_kernel::launch(
            &client,
            count,
            dim,
            z_t.into_tensor_arg(),
            model_out.into_tensor_arg(),
            z_y.into_tensor_arg(),
            mask.into_tensor_arg(),
            z_prev.clone().into_tensor_arg(),
            z0_hat.clone().into_tensor_arg(),
            params.guidance,
            params.sqrt_alpha_t,
            params.sqrt_one_minus_alpha_t,
            params.sqrt_alpha_prev,
            params.sqrt_one_minus_alpha_prev,
            params.clip_sample.unwrap_or(0.0),
            params.guided,
            params.v_prediction,
            params.clip_sample.is_some(),
            dtype_to_storage_type(dtype),
        );
        (z_prev, z0_hat)
    }
}
