//! The CubeCL kernels (compiled to WGSL by the wgpu runtime, or to any other CubeCL target).
//!
//! Written after burn's `examples/custom-cubecl-kernel` pattern: `kernel.rs` holds the
//! `#[cube(launch)]` functions, `forward.rs` launches them, `reference.rs` is the twin made of
//! plain tensor ops, and the tests assert the two agree.

use cubecl::prelude::*;

/// (a) Latent mask from the pixel mask: `M0[i, j] = M_p[f i, f j]` (nearest downsample by the
/// VAE factor `f`), the hole `1 - M0` dilated by `radius` in a square window clipped at the
/// borders, `M_l = 1 - dilated hole`. One thread per latent pixel.
///
/// `pixel_mask`: `[H, W]`, 1 = known, 0 = hole. `output`: `[h, w]`, same convention.
// `saturating_sub` is not a CubeCL intrinsic; the explicit branch compiles to WGSL.
#[allow(clippy::implicit_saturating_sub)]
#[cube(launch)]
pub fn latent_mask_kernel<F: Float>(
    pixel_mask: &Tensor<F>,
    output: &mut Tensor<F>,
    factor: u32,
    radius: u32,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let h = output.shape(0);
    let w = output.shape(1);
    let i = pos / w;
    let j = pos % w;
    let r = radius as usize;
    let f = factor as usize;
    let i0 = if i >= r { i - r } else { 0usize };
    let j0 = if j >= r { j - r } else { 0usize };
    let i1 = min(i + r + 1, h);
    let j1 = min(j + r + 1, w);
    let mut hole = false;
    for ii in i0..i1 {
        for jj in j0..j1 {
            let p = pixel_mask[(ii * f) * pixel_mask.stride(0) + (jj * f) * pixel_mask.stride(1)];
            if p < F::new(0.5) {
                hole = true;
            }
        }
    }
    output[pos] = select(hole, F::new(0.0), F::new(1.0));
}

/// (b) One DDNM step on the latent, fused: classifier-free guidance, `z0` from the prediction,
/// the null-space projection `z0_hat = M_l z_y + (1 - M_l) z0`, and the DDIM (eta = 0) update
/// `z_prev = sqrt(a_p) z0_hat + sqrt(1 - a_p) eps`. One thread per latent element.
///
/// `z_t`, `z_y`, `z_prev`, `z0_hat`: `[c, h, w]` (batch 1, contiguous); `model_out`: `[b, c, h, w]`
/// with b = 2 (`[uncond, cond]`) when `guided`, else b = 1; `mask`: `[h, w]`.
#[cube(launch)]
pub fn ddnm_step_kernel<F: Float>(
    z_t: &Tensor<F>,
    model_out: &Tensor<F>,
    z_y: &Tensor<F>,
    mask: &Tensor<F>,
    z_prev: &mut Tensor<F>,
    z0_hat: &mut Tensor<F>,
    guidance: f32,
    sqrt_a_t: f32,
    sqrt_1m_a_t: f32,
    sqrt_a_p: f32,
    sqrt_1m_a_p: f32,
    clip_range: f32,
    #[comptime] guided: bool,
    #[comptime] v_prediction: bool,
    #[comptime] clip: bool,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    let n = z_prev.len();
    if pos >= n {
        terminate!();
    }
    let guidance = F::cast_from(guidance);
    let sqrt_a_t = F::cast_from(sqrt_a_t);
    let sqrt_1m_a_t = F::cast_from(sqrt_1m_a_t);
    let sqrt_a_p = F::cast_from(sqrt_a_p);
    let sqrt_1m_a_p = F::cast_from(sqrt_1m_a_p);
    let clip_range = F::cast_from(clip_range);

    // 1. guidance: out = u + g (c - u)
    let mut out = model_out[pos];
    if comptime!(guided) {
        let cond = model_out[pos + n];
        out = out + guidance * (cond - out);
    }
    // 2. z0 and eps from the prediction
    let z = z_t[pos];
    let mut x0 = (z - sqrt_1m_a_t * out) / sqrt_a_t;
    let mut eps = out;
    if comptime!(v_prediction) {
        x0 = sqrt_a_t * z - sqrt_1m_a_t * out;
        eps = sqrt_a_t * out + sqrt_1m_a_t * z;
    }
    if comptime!(clip) {
        x0 = max(min(x0, clip_range), -clip_range);
    }
    // 3. projection onto the observation in the known region
    let m = mask[pos % mask.len()];
    let projected = m * z_y[pos] + (F::new(1.0) - m) * x0;
    // 4. DDIM update
    z_prev[pos] = sqrt_a_p * projected + sqrt_1m_a_p * eps;
    z0_hat[pos] = projected;
}
