//! Tiled VAE encode and decode, and the policy that decides when to tile.
//!
//! Port of diffusers (0.42) `AutoencoderKL._tiled_encode`, `tiled_decode`, `blend_v` and
//! `blend_h` (`models/autoencoders/autoencoder_kl.py`, what `vae.enable_tiling()` runs): the
//! input is cut into square tiles at a stride of `int(tile * (1 - 0.25))`; each tile goes through
//! the encoder (+ `quant_conv`) or (`post_quant_conv` +) decoder alone; in reading order, each
//! output tile's first `int(tile_out * 0.25)` rows are blended linearly with the last rows of the
//! (already blended) tile above, then its first columns with the last columns of the tile to its
//! left; the first `tile_out - blend` rows and columns of every tile are stitched together. Tiles
//! at the right and bottom edges may be partial; a blend never reaches past the narrower tile.
//! As in diffusers, an input no larger than one tile is not tiled at all.
//!
//! **Tiled and untiled outputs differ.** Every GroupNorm computes its statistics over the tile it
//! sees, not over the whole image, and the decoder's receptive field is cut at tile borders; the
//! blends hide the seams, they do not restore the untiled values. Measured on the tiny fixture
//! VAE (`tests/fixtures/reference/vae_tiling/cases.json`, random weights and inputs, tiles far
//! smaller than real ones): max |tiled - untiled| 0.60 on the posterior mean (8-latent-px tiles)
//! and 3.1 on the decoded image (4-latent-px tiles), for both diffusers and this port, which agree
//! with each other to f32 precision. The pipeline therefore tiles only when it must
//! ([`VaeTiling::Auto`]): no tiling at all as long as the largest activation fits the device.
//!
//! Why tile: WebGPU binds at most `maxStorageBufferBindingSize` bytes per storage buffer (128 MiB
//! by default, what many browsers grant, and lavapipe's too; hardware adapters grant more); a 512x512
//! SD 1.5 decode makes a 256-channel 512x512 activation, 256 MiB in f32.

use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use super::vae::{AutoencoderKL, AutoencoderKLConfig, Posterior};
use crate::device::AdapterInfo;

/// diffusers' `tile_overlap_factor`: neighbouring tiles share a quarter of a tile.
pub const TILE_OVERLAP_FACTOR: f64 = 0.25;

/// The `maxStorageBufferBindingSize` every WebGPU device supports (the specification's default
/// limit): 128 MiB.
pub const WEBGPU_DEFAULT_MAX_STORAGE_BINDING: u64 = 128 << 20;

/// The smallest tile, and the step between tile sizes, that [`VaeTiling::Auto`] picks (latent
/// pixels).
pub const AUTO_TILE_STEP: usize = 8;

/// Whether and how VAE encodes and decodes are tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeTiling {
    /// Never tile: diffusers' default, the exact untiled result.
    Off,
    /// Tile when the largest activation of the untiled call (see
    /// [`AutoencoderKLConfig::largest_decode_activation`]) would exceed this many bytes, with the
    /// largest tile (a multiple of [`AUTO_TILE_STEP`] latent pixels, at most the VAE's own
    /// `sample_size`, as diffusers' default tile) whose activations fit. Pass the device's
    /// `max_storage_buffer_binding_size`; `u64::MAX` never tiles.
    Auto(u64),
    /// Tile like `vae.enable_tiling()` with this tile side in latent pixels (rounded down to a
    /// multiple of 4, at least 4, so that the stride and blend keep the output size): only inputs
    /// larger than one tile are tiled.
    Always(usize),
}

impl VaeTiling {
    /// The setting for a device: `Auto(max_storage_buffer_binding_size)` on a wgpu adapter,
    /// `Off` on the CPU backend (`None`: no binding limit).
    pub fn for_adapter(adapter: Option<&AdapterInfo>) -> Self {
        match adapter {
            Some(a) => Self::Auto(a.max_storage_buffer_binding_size),
            None => Self::Off,
        }
    }

    /// The default when the adapter is unknown: `Off` on the CPU backend, else
    /// `Auto(`[`WEBGPU_DEFAULT_MAX_STORAGE_BINDING`]`)`, the binding size any WebGPU device
    /// supports. [`Self::for_adapter`] knows the real limit.
    pub fn default_for(device: &Device) -> Self {
        if *device == crate::device::cpu() {
            Self::Off
        } else {
            Self::Auto(WEBGPU_DEFAULT_MAX_STORAGE_BINDING)
        }
    }
}

/// Largest activation of one call, in bytes.
struct Largest {
    batch: u64,
    element_bytes: u64,
    max: u64,
}

impl Largest {
    fn new(batch: usize, element_bytes: usize) -> Self {
        Self {
            batch: batch as u64,
            element_bytes: element_bytes as u64,
            max: 0,
        }
    }

    /// An activation of `[batch, c, h, w]`. `widened`: a whole f32 copy of it exists, as the
    /// VAE attention's q / k / v (`models::attention` widens f16 / bf16 to f32). GroupNorm's
    /// f32 statistics do not count: `models::ops::group_norm` splits a norm whose widened input
    /// would exceed the device's largest buffer into slices of whole groups.
    fn see(&mut self, c: usize, h: usize, w: usize, widened: bool) {
        let bytes = if widened {
            self.element_bytes.max(4)
        } else {
            self.element_bytes
        };
        let size = self.batch * (c * h * w) as u64 * bytes;
        self.max = self.max.max(size);
    }
}

impl AutoencoderKLConfig {
    /// Bytes of the largest activation an untiled encode of a `[batch, in_channels, height,
    /// width]` image makes, walking the encoder as it runs: `block_out_channels[0]` channels at
    /// full resolution, each down block's resnets at its own resolution, the mid block and the
    /// output convolution at the latent resolution.
    ///
    /// Counted: tensors the model holds (block inputs and outputs, resnet hidden states, norm
    /// temporaries, upsampled maps). Not counted: the attention score matrix, which
    /// `models::attention` chunks to its own bound (`SCORE_BUDGET_BYTES`), and backend scratch
    /// buffers (the CPU backend's im2col and asymmetric-padding copies; on GPUs f32 runs Burn's
    /// convolution, without tensor cores its direct kernel, which has none, and f16
    /// `models::conv_gemm`, whose bands are at most `conv_gemm::BAND_BYTES`).
    pub fn largest_encode_activation(
        &self,
        batch: usize,
        height: usize,
        width: usize,
        element_bytes: usize,
    ) -> u64 {
        let boc = &self.block_out_channels;
        let n = boc.len();
        let mut l = Largest::new(batch, element_bytes);
        let (mut h, mut w) = (height, width);
        l.see(self.in_channels, h, w, false);
        // 1. conv_in, down blocks (resnets, then a stride-2 downsampler but in the last)
        let mut c = boc[0];
        for (i, &out) in boc.iter().enumerate() {
            for _ in 0..self.layers_per_block {
                l.see(c, h, w, false); // resnet input: norm1
                l.see(out, h, w, false); // conv1 output: norm2
                c = out;
            }
            if i + 1 < n {
                (h, w) = (h / 2, w / 2);
            }
        }
        // 2. mid block (resnets, attention: q / k / v widened), conv_norm_out
        l.see(c, h, w, true);
        l.see(2 * self.latent_channels, h, w, false);
        l.max
    }

    /// Bytes of the largest activation an untiled decode of a `[batch, latent_channels,
    /// latent_height, latent_width]` latent makes: each up block's resnets at its resolution,
    /// the first of which takes the previous block's (wider) channels; the upsampled maps; the
    /// output norm at full resolution. For SD 1.5 (`block_out_channels` 128, 256, 512, 512) the
    /// largest is the 256-channel input of the last up block at full resolution: 256 MiB for a
    /// 64x64 latent in f32. The same exclusions as
    /// [`Self::largest_encode_activation`].
    pub fn largest_decode_activation(
        &self,
        batch: usize,
        latent_height: usize,
        latent_width: usize,
        element_bytes: usize,
    ) -> u64 {
        let boc = &self.block_out_channels;
        let n = boc.len();
        let mut l = Largest::new(batch, element_bytes);
        let (mut h, mut w) = (latent_height, latent_width);
        l.see(self.latent_channels, h, w, false);
        // 1. conv_in, mid block (attention: q / k / v widened)
        let mut c = boc[n - 1];
        l.see(c, h, w, true);
        // 2. up blocks, widest first (resnets, then a 2x upsampler but in the last)
        for (i, &out) in boc.iter().rev().enumerate() {
            for _ in 0..self.layers_per_block + 1 {
                l.see(c, h, w, false);
                l.see(out, h, w, false);
                c = out;
            }
            if i + 1 < n {
                (h, w) = (h * 2, w * 2);
                l.see(c, h, w, false); // upsampled, then its conv's output: next norm
            }
        }
        // 3. conv_norm_out, conv_out
        l.see(c, h, w, false);
        l.see(self.out_channels, h, w, false);
        l.max
    }

    /// diffusers' default tile (`tile_latent_min_size`): the config's `sample_size` (its first
    /// entry when a list; diffusers' default 32 when absent) over the downscale factor, in latent
    /// pixels. 64 for SD 1.5 (`sample_size` 512), 96 for SD 2.x-v (768).
    pub fn default_tile_latent(&self) -> usize {
        let sample = match self.other.get("sample_size") {
            Some(serde_json::Value::Array(a)) => a.first().and_then(|v| v.as_u64()),
            Some(v) => v.as_u64(),
            None => None,
        }
        .unwrap_or(32) as usize;
        sample / self.downscale_factor()
    }

    /// The tile side (latent pixels) a decode of `[batch, _, latent_height, latent_width]` runs
    /// with under `tiling`, `None` when it runs untiled. `element_bytes`: 4 for f32, 2 for f16.
    pub fn decode_tile(
        &self,
        tiling: VaeTiling,
        batch: usize,
        latent_height: usize,
        latent_width: usize,
        element_bytes: usize,
    ) -> Option<usize> {
        let tile = self.tile_for(tiling, |t| {
            self.largest_decode_activation(
                batch,
                t.min(latent_height),
                t.min(latent_width),
                element_bytes,
            )
        })?;
        (latent_height > tile || latent_width > tile).then_some(tile)
    }

    /// The tile side (latent pixels) an encode of a `[batch, _, height, width]` image runs with
    /// under `tiling`, `None` when it runs untiled.
    pub fn encode_tile(
        &self,
        tiling: VaeTiling,
        batch: usize,
        height: usize,
        width: usize,
        element_bytes: usize,
    ) -> Option<usize> {
        let f = self.downscale_factor();
        let tile = self.tile_for(tiling, |t| {
            let side = t.saturating_mul(f);
            self.largest_encode_activation(batch, side.min(height), side.min(width), element_bytes)
        })?;
        (height > tile * f || width > tile * f).then_some(tile)
    }

    /// The tile `tiling` asks for; `estimate(t)`: the largest activation with tiles of side `t`
    /// (`usize::MAX`: untiled).
    fn tile_for(&self, tiling: VaeTiling, estimate: impl Fn(usize) -> u64) -> Option<usize> {
        match tiling {
            VaeTiling::Off => None,
            VaeTiling::Always(t) => Some(normalized_tile(t)),
            VaeTiling::Auto(budget) => {
                if estimate(usize::MAX) <= budget {
                    return None;
                }
                let max = (self.default_tile_latent() / AUTO_TILE_STEP * AUTO_TILE_STEP)
                    .max(AUTO_TILE_STEP);
                let tile = (AUTO_TILE_STEP..=max)
                    .rev()
                    .step_by(AUTO_TILE_STEP)
                    .find(|&t| estimate(t) <= budget);
                if tile.is_none() {
                    tracing::warn!(
                        "even {AUTO_TILE_STEP}-latent-pixel VAE tiles exceed the {budget}-byte buffer budget; trying them anyway"
                    );
                }
                Some(tile.unwrap_or(AUTO_TILE_STEP))
            }
        }
    }
}

/// A tile side rounded down to a multiple of 4 latent pixels, at least 4: diffusers' stride
/// (`int(tile * 0.75)`) and blend (`int(tile * 0.25)`) then add up to the tile, so the output
/// keeps the input's size.
fn normalized_tile(tile: usize) -> usize {
    (tile / 4 * 4).max(4)
}

impl AutoencoderKL {
    /// [`Self::encode`] under `tiling` (see [`AutoencoderKLConfig::encode_tile`]).
    pub fn encode_with(&self, x: Tensor<4>, tiling: VaeTiling) -> Posterior {
        let [b, _, h, w] = x.dims();
        match self.config().encode_tile(tiling, b, h, w, x.dtype().size()) {
            Some(tile) => {
                tracing::info!("VAE encode of {w}x{h} pixels in tiles of {tile} latent pixels");
                self.tiled_encode(x, tile)
            }
            None => self.encode(x),
        }
    }

    /// [`Self::decode`] under `tiling` (see [`AutoencoderKLConfig::decode_tile`]).
    pub fn decode_with(&self, z: Tensor<4>, tiling: VaeTiling) -> Tensor<4> {
        let [b, _, h, w] = z.dims();
        match self.config().decode_tile(tiling, b, h, w, z.dtype().size()) {
            Some(tile) => {
                tracing::info!("VAE decode of a {w}x{h} latent in tiles of {tile} latent pixels");
                self.tiled_decode(z, tile)
            }
            None => self.decode(z),
        }
    }

    /// diffusers' `_tiled_encode` with `tile_latent_min_size = tile` (rounded down to a multiple
    /// of 4) and `tile_sample_min_size = tile x factor`: the blended moments, then the posterior
    /// as in [`Self::encode`] (mean = first half; logvar clamped after the blend). Untiled when
    /// the image fits in one tile.
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]` -> mean and logvar `[batch, latent_channels, h / f, w / f]`
    pub fn tiled_encode(&self, x: Tensor<4>, tile: usize) -> Posterior {
        let tile = normalized_tile(tile);
        let tile_sample = tile * self.config().downscale_factor();
        let [_, _, h, w] = x.dims();
        if h <= tile_sample && w <= tile_sample {
            return self.encode(x);
        }
        let moments = tiled(x, tile_sample, tile, |t| self.moments(t));
        Self::posterior(moments)
    }

    /// diffusers' `tiled_decode` with `tile_latent_min_size = tile` (rounded down to a multiple
    /// of 4) and `tile_sample_min_size = tile x factor`. Untiled when the latent fits in one tile.
    ///
    /// # Shapes
    /// - `z`: `[batch, latent_channels, h, w]` -> `[batch, out_channels, h * f, w * f]`
    pub fn tiled_decode(&self, z: Tensor<4>, tile: usize) -> Tensor<4> {
        let tile = normalized_tile(tile);
        let [_, _, h, w] = z.dims();
        if h <= tile && w <= tile {
            return self.decode(z);
        }
        let tile_sample = tile * self.config().downscale_factor();
        tiled(z, tile, tile_sample, |t| self.decode(t))
    }
}

/// The tiling loop of diffusers' `_tiled_encode` / `tiled_decode`: input tiles of side
/// `tile_in` at a stride of `int(tile_in * 0.75)`, each mapped by `run` to an output tile of
/// side (up to) `tile_out`, blended with the finished tiles above and to the left over
/// `int(tile_out * 0.25)` rows / columns, cropped to `tile_out - blend` and stitched.
fn tiled(
    input: Tensor<4>,
    tile_in: usize,
    tile_out: usize,
    run: impl Fn(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let overlap = ((tile_in as f64 * (1.0 - TILE_OVERLAP_FACTOR)) as usize).max(1);
    let blend_extent = (tile_out as f64 * TILE_OVERLAP_FACTOR) as usize;
    let row_limit = tile_out - blend_extent;
    let [b, c, h, w] = input.dims();
    let mut result_rows = Vec::new();
    // The finished (blended) tiles of the previous row: diffusers blends in place, so the tile
    // below sees its neighbour's blended values.
    let mut above: Vec<Tensor<4>> = Vec::new();
    for i in (0..h).step_by(overlap) {
        let mut row: Vec<Tensor<4>> = Vec::new();
        let mut result_row = Vec::new();
        for (j, x0) in (0..w).step_by(overlap).enumerate() {
            let tile = input.clone().slice([
                0..b,
                0..c,
                i..(i + tile_in).min(h),
                x0..(x0 + tile_in).min(w),
            ]);
            let mut tile = run(tile);
            if let Some(a) = above.get(j) {
                tile = blend(a, tile, blend_extent, 2);
            }
            if let Some(a) = row.last() {
                tile = blend(a, tile, blend_extent, 3);
            }
            let [_, _, th, tw] = tile.dims();
            result_row.push(tile.clone().narrow(2, 0, th.min(row_limit)).narrow(
                3,
                0,
                tw.min(row_limit),
            ));
            row.push(tile);
        }
        result_rows.push(Tensor::cat(result_row, 3));
        above = row;
    }
    Tensor::cat(result_rows, 2)
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `e = min(extent, len(a),
/// len(b))` rows (columns) of `b` become `a[-e + y] * (1 - y / e) + b[y] * (y / e)`. The weights
/// are computed in f64 and rounded to f32, as PyTorch does with a Python float factor.
fn blend(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let len_a = a.dims()[dim];
    let len_b = b.dims()[dim];
    let e = extent.min(len_a).min(len_b);
    if e == 0 {
        return b;
    }
    let device = b.device();
    let dtype: FloatDType = b.dtype().into();
    let mut shape = [1; 4];
    shape[dim] = e;
    let weights = |f: &dyn Fn(f64) -> f64| {
        let v: Vec<f32> = (0..e).map(|y| f(y as f64 / e as f64) as f32).collect();
        Tensor::<4>::from_data(TensorData::new(v, shape), &device).cast(dtype)
    };
    let a_end = a.clone().narrow(dim, len_a - e, e);
    let b_start = b.clone().narrow(dim, 0, e);
    let mixed = a_end * weights(&|r| 1.0 - r) + b_start * weights(&|r| r);
    if e == len_b {
        mixed
    } else {
        Tensor::cat(vec![mixed, b.narrow(dim, e, len_b - e)], dim)
    }
}
