//! 2-D convolution as matrix products on CubeCL devices, for f16 / bf16 activations: the
//! patches of a band of output rows are gathered with strided slices (im2col) and multiplied by
//! the weight seen as `[out, in * kh * kw]` with Burn's matmul, which keeps f16 storage but sums
//! in f32 (cubek-matmul 0.3 `MatmulElems::from_globals`: an f16 output gets an f32 accumulator).
//! That is what PyTorch fp16 does on CUDA (cuDNN accumulates in f32).
//!
//! Why not Burn's `conv2d` there: without tensor cores (every WGSL device, the browser, lavapipe)
//! Burn 0.22.1 runs cubek-convolution's direct kernel, which accumulates in the activations' type.
//! A 3x3 convolution over 512 f16 channels (4 608 products a sum) is then off by 1 % rms and by
//! 0.12 at most on outputs of unit scale, against 0.002 for f16's own rounding of the output
//! (`tests/f16.rs::f16_convolution_sums_in_f32`); through the VAE decoder at 512x512 that grew
//! to 0.14 on pixel values of ~2. f32 activations keep Burn's kernel (it sums in f32 already).
//!
//! Memory: the gathered patches of one band are at most [`BAND_BYTES`] (the band's padded input
//! rows beside them, 1 / (kh * kw) of that); the output is written band by band into one tensor.

use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Tensor};

/// The most bytes the gathered patches of one band of output rows take. What a band adds to a
/// convolution's memory (~1.2x this, with its padded input rows and its output) counts at the
/// pipeline's peak, a 512x512 decode's last up block (0.31 GiB of activations beside 1.99 GiB of
/// f16 weights, against a 2.5 GB goal). At 16 MiB a 3x3 over 256 channels at 512x512 takes 74
/// bands of 7 rows, the UNet's 3x3s at a 64x64 latent (batch 2) 1 to 3 bands.
pub const BAND_BYTES: u64 = 16 << 20;

/// Where [`conv2d`] applies: a CubeCL device and half-precision activations.
pub fn applies(x: &Tensor<4>) -> bool {
    crate::kernel::is_cube(&x.device()) && matches!(x.dtype(), DType::F16 | DType::BF16)
}

/// `conv2d(x, weight, bias)` with `groups = 1`, `dilation = 1`, the given `stride` and
/// `padding = [top, bottom, left, right]` (zeros), summed in f32 (see the module header). The
/// patches are gathered in bands of output rows of at most `band_bytes` (at least one row):
/// [`BAND_BYTES`] in the models.
///
/// # Panics
/// When `weight`'s input channels are not `x`'s, or the padded input is smaller than the kernel
/// (the callers check both: [`crate::models::ops`]).
///
/// # Shapes
/// - `x`: `[b, c, h, w]`, `weight`: `[o, c, kh, kw]`, `bias`: `[o]`
/// - output: `[b, o, oh, ow]`, `oh = (h + top + bottom - kh) / stride[0] + 1` (likewise `ow`)
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 4],
    band_bytes: u64,
) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let [o, wc, kh, kw] = weight.dims();
    assert_eq!(c, wc, "conv2d: {c} input channels, weight for {wc}");
    let [top, bottom, left, right] = padding;
    let [sh, sw] = stride.map(|s| s.max(1));
    assert!(
        h + top + bottom >= kh && w + left + right >= kw,
        "conv2d: padded input smaller than the kernel"
    );
    let oh = (h + top + bottom - kh) / sh + 1;
    let ow = (w + left + right - kw) / sw + 1;
    let k = c * kh * kw;
    let weight = weight.cast(x.dtype()).reshape([1, o, k]); // [1, o, c*kh*kw]

    let y = if kh == 1 && kw == 1 && stride == [1, 1] && padding == [0; 4] {
        // A 1x1 convolution is one matrix product over the pixels.
        weight
            .matmul(x.reshape([b, c, h * w]))
            .reshape([b, o, h, w]) // [b, o, h, w]
    } else {
        let elem = x.dtype().size() as u64;
        let row_bytes = (b * k * ow) as u64 * elem;
        let band = (band_bytes / row_bytes.max(1)).clamp(1, oh as u64) as usize;
        // The output rows [r0, r1) from the input rows they read.
        let band_out = |r0: usize, r1: usize| {
            let rows = r1 - r0;
            // The band's input rows in padded coordinates: [r0 * sh, (r1 - 1) * sh + kh).
            let (p0, p1) = (r0 * sh, (r1 - 1) * sh + kh);
            let (a, z) = (p0.saturating_sub(top).min(h), p1.saturating_sub(top).min(h));
            let pad_top = top.saturating_sub(p0).min(p1 - p0);
            let pad_bottom = (p1 - p0) - pad_top - (z - a);
            let xb = x.clone().narrow(2, a, z - a); // [b, c, z - a, w]
            let xb = if pad_top + pad_bottom + left + right > 0 {
                xb.pad(
                    [(pad_top, pad_bottom), (left, right)],
                    PadMode::Constant(0.0),
                )
            } else {
                xb
            }; // [b, c, p1 - p0, w + left + right]
            let patches = (0..kh)
                .flat_map(|ky| (0..kw).map(move |kx| (ky, kx)))
                .map(|(ky, kx)| {
                    xb.clone().slice(burn::tensor::s![
                        ..,
                        ..,
                        ky..ky + (rows - 1) * sh + 1;sh,
                        kx..kx + (ow - 1) * sw + 1;sw
                    ]) // [b, c, rows, ow]
                })
                .collect();
            let cols = Tensor::stack::<5>(patches, 2).reshape([b, k, rows * ow]); // [b, c*kh*kw, rows*ow]
            weight.clone().matmul(cols).reshape([b, o, rows, ow]) // [b, o, rows, ow]
        };
        if band >= oh {
            band_out(0, oh)
        } else {
            // Bands written into one output as they come.
            let mut y = Tensor::<4>::empty([b, o, oh, ow], (&x.device(), x.dtype()));
            for r0 in (0..oh).step_by(band) {
                let r1 = (r0 + band).min(oh);
                y = y.slice_assign([0..b, 0..o, r0..r1, 0..ow], band_out(r0, r1));
            }
            y
        }
    };
    match bias {
        Some(bias) => {
            let dtype = y.dtype();
            y + bias.cast(dtype).reshape([1, o, 1, 1])
        }
        None => y,
    }
}
