//! The kernels' twins made of plain Burn tensor ops: what runs on backends that are not CubeCL
//! (the `flex` CPU backend), and what the agreement tests compare the kernels against.

use burn::tensor::Tensor;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;

use super::StepParams;

/// Reference of [`super::kernel::latent_mask_kernel`]: strided pick, then max-pool dilation of
/// the hole.
///
/// # Shapes
/// - `pixel_mask`: `[H, W]` (1 known, 0 hole) -> `[H / factor, W / factor]`
pub fn latent_mask(pixel_mask: Tensor<2>, factor: usize, radius: usize) -> Tensor<2> {
    let [ph, pw] = pixel_mask.dims();
    let (h, w) = (ph / factor, pw / factor);
    if h == 0 || w == 0 {
        return Tensor::zeros([h, w], &pixel_mask.device());
    }
    // 1. nearest downsample: M0[i, j] = M_p[f i, f j]
    let m0 = pixel_mask
        .slice([0..h * factor, 0..w * factor])
        .reshape([h, factor, w, factor])
        .slice([0..h, 0..1, 0..w, 0..1]);
    let hole = m0.reshape([1, 1, h, w]).lower_elem(0.5).float(); // 1 in the hole
    // 2. square dilation: max over a (2r+1)^2 window; zero padding = borders clipped
    let k = 2 * radius + 1;
    let dilated = if radius == 0 {
        hole
    } else {
        let mut options = MaxPoolOptions::new([k, k]);
        options.stride = [1, 1];
        options.padding = [(radius, radius), (radius, radius)];
        max_pool2d(hole, options)
    };
    // 3. back to 1 = known
    dilated.reshape([h, w]).neg() + 1.0
}

/// Reference of [`super::kernel::ddnm_step_kernel`]: `(z_prev, z0_hat)`.
///
/// # Shapes
/// - `z_t`, `z_y`: `[1, c, h, w]`; `model_out`: `[b, c, h, w]`; `mask`: `[h, w]`
pub fn ddnm_step(
    z_t: Tensor<4>,
    model_out: Tensor<4>,
    z_y: Tensor<4>,
    mask: Tensor<2>,
    p: &StepParams,
) -> (Tensor<4>, Tensor<4>) {
    let [b, c, h, w] = model_out.dims();
    // 1. guidance
    let out = if p.guided {
        let u = model_out.clone().slice([0..1, 0..c, 0..h, 0..w]);
        let cond = model_out.slice([1..b, 0..c, 0..h, 0..w]);
        u.clone() + (cond - u) * p.guidance
    } else {
        model_out
    };
    // 2. z0 and eps
    let (x0, eps) = if p.v_prediction {
        (
            z_t.clone() * p.sqrt_alpha_t - out.clone() * p.sqrt_one_minus_alpha_t,
            out * p.sqrt_alpha_t + z_t * p.sqrt_one_minus_alpha_t,
        )
    } else {
        (
            (z_t - out.clone() * p.sqrt_one_minus_alpha_t) / p.sqrt_alpha_t,
            out,
        )
    };
    let x0 = match p.clip_sample {
        Some(r) => x0.clamp(-r, r),
        None => x0,
    };
    // 3. projection
    let m = mask.reshape([1, 1, h, w]);
    let projected = m.clone() * z_y + (m.neg() + 1.0) * x0;
    // 4. DDIM update
    (
        projected.clone() * p.sqrt_alpha_prev + eps * p.sqrt_one_minus_alpha_prev,
        projected,
    )
}
