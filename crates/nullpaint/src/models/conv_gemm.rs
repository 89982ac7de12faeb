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
//! rows beside them, 1 / (kh * kw) of that); the output is written band by band into one tensor
//! ([`conv2d`]) or into pieces of rows, each its own allocation ([`Conv::in_pieces`],
//! [`RowPieces`]). A band reads its input rows through a [`RowSource`]: a stored tensor, or a
//! function of one made for those rows only (the GroupNorm + SiLU before a resnet's
//! convolutions, the upsampler's 2x nearest repeat: `models::ops`), so that the transformed
//! input never exists whole.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Device, Tensor};

/// The most bytes the gathered patches of one band of output rows take. What a band adds to a
/// convolution's memory (~1.2x this, with its padded (normalised, upsampled) input rows and its
/// output) counts at the pipeline's peak: a 512x512 f16 inpaint holds 0.22 GiB of activations at
/// most beside 1.99 GiB of f16 weights, against a 2.5 GB goal. At 16 MiB a 3x3 over 256 channels
/// at 512x512 takes 74 bands of 7 rows, the UNet's 3x3s at a 64x64 latent (batch 2) 1 to 3 bands.
pub const BAND_BYTES: u64 = 16 << 20;

/// The most bytes of one piece of an activation [`Conv::in_pieces`] keeps in pieces: the VAE
/// decoder's last upsampler output (256 channels at 512x512, 128 MiB in f16) as 4 pieces, so
/// that the next resnet gives it back a piece at a time (`ResnetBlock2D::forward_pieces`) and
/// no allocation of the decode is larger than its 64 MiB activations (CubeCL sizes its pages
/// to the largest allocation).
pub const PIECE_BYTES: u64 = 32 << 20;

/// Which convolution CubeCL devices run: a process-wide switch for benchmarks
/// (`nullpaint bench --conv`), to time this route against Burn's kernel side by side on one
/// GPU. The CPU backend never takes this route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvRoute {
    /// [`conv2d`] for f16 / bf16 activations (Burn's kernel would sum in f16), Burn's kernel for
    /// f32 (it sums in f32): what the engine runs.
    #[default]
    Auto,
    /// [`conv2d`] for every float type, f32 included.
    Gemm,
    /// Burn's `conv2d` for every type (its autotuned candidates; on WGSL devices the direct
    /// kernel, which sums f16 activations in f16: less accurate, for comparison only).
    Burn,
}

impl ConvRoute {
    const ALL: [Self; 3] = [Self::Auto, Self::Gemm, Self::Burn];

    /// `auto`, `gemm` or `burn`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gemm => "gemm",
            Self::Burn => "burn",
        }
    }
}

/// The route in force, as its discriminant.
static ROUTE: AtomicU8 = AtomicU8::new(ConvRoute::Auto as u8);

/// Sets the [`ConvRoute`] of every convolution run after this call, in the whole process.
pub fn set_route(route: ConvRoute) {
    ROUTE.store(route as u8, Ordering::Relaxed);
}

/// The [`ConvRoute`] in force.
pub fn route() -> ConvRoute {
    let stored = ROUTE.load(Ordering::Relaxed);
    ConvRoute::ALL
        .into_iter()
        .find(|route| *route as u8 == stored)
        .unwrap_or_default()
}

/// Where [`conv2d`] applies: a CubeCL device and half-precision activations (under
/// [`ConvRoute::Auto`]; any float type under `Gemm`, none under `Burn`).
pub fn applies(x: &impl RowSource) -> bool {
    if !crate::kernel::is_cube(&x.device()) {
        return false;
    }
    match route() {
        ConvRoute::Auto => matches!(x.dtype(), DType::F16 | DType::BF16),
        ConvRoute::Gemm => matches!(x.dtype(), DType::F16 | DType::BF16 | DType::F32),
        ConvRoute::Burn => false,
    }
}

/// What a convolution reads, produced a band of rows at a time: a tensor, or a function of one
/// (a GroupNorm + SiLU, a 2x nearest upsample) that [`conv2d`] then computes band by band, so
/// that the whole transformed input never exists at once (`models::ops::norm_conv2d`,
/// `models::ops::upsample2x_conv2d`).
pub trait RowSource {
    /// `[b, c, h, w]` of the input the convolution sees.
    fn dims(&self) -> [usize; 4];
    /// Its element type.
    fn dtype(&self) -> DType;
    /// Its device.
    fn device(&self) -> Device;
    /// The rows `rows` of that input: `[b, c, rows.len(), w]`.
    fn rows(&self, rows: Range<usize>) -> Tensor<4>;
    /// Whether the input is stored as it is (its rows are views, no work and no memory): then a
    /// 1x1 convolution is one matrix product over the whole input.
    fn stored(&self) -> bool {
        false
    }
}

impl RowSource for Tensor<4> {
    fn dims(&self) -> [usize; 4] {
        Tensor::dims(self)
    }
    fn dtype(&self) -> DType {
        Tensor::dtype(self)
    }
    fn device(&self) -> Device {
        Tensor::device(self)
    }
    fn rows(&self, rows: Range<usize>) -> Tensor<4> {
        if rows.start == 0 && rows.end == self.dims()[2] {
            self.clone()
        } else {
            self.clone().narrow(2, rows.start, rows.len())
        }
    }
    fn stored(&self) -> bool {
        true
    }
}

/// An activation held as pieces of whole rows, each its own allocation: what
/// [`Conv::in_pieces`] makes, so that a large activation can be given back piece by piece as
/// its consumer passes over it (`ResnetBlock2D::forward_pieces`).
///
/// # Shapes
/// - each piece `[b, c, rows_i, w]`, together `[b, c, sum rows_i, w]`
pub struct RowPieces {
    pieces: Vec<Tensor<4>>,
}

impl RowPieces {
    /// Pieces of one activation, top to bottom.
    ///
    /// # Panics
    /// When there is none, or they differ in anything but their rows (batch, channels, width,
    /// dtype).
    pub fn new(pieces: Vec<Tensor<4>>) -> Self {
        assert!(!pieces.is_empty(), "RowPieces::new: no piece");
        let ([b, c, _, w], dtype) = (pieces[0].dims(), pieces[0].dtype());
        for piece in &pieces {
            let [pb, pc, _, pw] = piece.dims();
            assert!(
                [pb, pc, pw] == [b, c, w] && piece.dtype() == dtype,
                "RowPieces::new: pieces of different shapes"
            );
        }
        Self { pieces }
    }

    /// One piece: `x` itself.
    pub fn whole(x: Tensor<4>) -> Self {
        Self { pieces: vec![x] }
    }

    /// How many pieces.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Never: there is at least one piece.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The pieces, top to bottom.
    pub fn pieces(&self) -> &[Tensor<4>] {
        &self.pieces
    }

    /// The pieces, top to bottom, given away.
    pub fn into_pieces(self) -> Vec<Tensor<4>> {
        self.pieces
    }

    /// The whole activation (a copy when there are several pieces).
    pub fn join(self) -> Tensor<4> {
        cat_rows(self.pieces)
    }
}

impl RowSource for RowPieces {
    fn dims(&self) -> [usize; 4] {
        let [b, c, _, w] = self.pieces[0].dims();
        [b, c, self.pieces.iter().map(|p| p.dims()[2]).sum(), w]
    }
    fn dtype(&self) -> DType {
        self.pieces[0].dtype()
    }
    fn device(&self) -> Device {
        self.pieces[0].device()
    }
    fn rows(&self, rows: Range<usize>) -> Tensor<4> {
        let mut parts = Vec::new();
        let mut start = 0;
        for piece in &self.pieces {
            let end = start + piece.dims()[2];
            let (a, z) = (rows.start.max(start), rows.end.min(end));
            if a < z {
                parts.push(RowSource::rows(piece, a - start..z - start));
            }
            start = end;
        }
        cat_rows(parts)
    }
    fn stored(&self) -> bool {
        self.pieces.len() == 1
    }
}

/// `parts` (at least one) joined along the rows; one part is returned as it is.
pub fn cat_rows(mut parts: Vec<Tensor<4>>) -> Tensor<4> {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(parts, 2)
    }
}

/// `conv2d(x, weight, bias)` with `groups = 1`, `dilation = 1`, the given `stride` and
/// `padding = [top, bottom, left, right]` (zeros, added after `x`'s own transformation), summed
/// in f32 (see the module header). The patches are gathered in bands of output rows of at most
/// `band_bytes` (at least one row): [`BAND_BYTES`] in the models; each band reads only its own
/// input rows from `x`.
///
/// # Panics
/// When `weight`'s input channels are not `x`'s, or the padded input is smaller than the kernel
/// (the callers check both: [`crate::models::ops`]).
///
/// # Shapes
/// - `x`: `[b, c, h, w]`, `weight`: `[o, c, kh, kw]`, `bias`: `[o]`
/// - output: `[b, o, oh, ow]`, `oh = (h + top + bottom - kh) / stride[0] + 1` (likewise `ow`)
pub fn conv2d(
    x: &impl RowSource,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 4],
    band_bytes: u64,
) -> Tensor<4> {
    Conv::new(x, weight, bias, stride, padding, band_bytes).output()
}

/// One convolution of one input: its shapes and weights, as [`conv2d`] and [`Conv::in_pieces`]
/// run it.
pub struct Conv<'a, S> {
    x: &'a S,
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    k: usize,
    stride: [usize; 2],
    padding: [usize; 4],
    oh: usize,
    ow: usize,
    /// Output rows a band.
    band: usize,
    pointwise: bool,
    dtype: DType,
    /// `[1, o, c*kh*kw]`
    weight: Tensor<3>,
    bias: Option<Tensor<1>>,
}

impl<'a, S: RowSource> Conv<'a, S> {
    /// The convolution [`conv2d`] runs with these arguments.
    pub fn new(
        x: &'a S,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        stride: [usize; 2],
        padding: [usize; 4],
        band_bytes: u64,
    ) -> Self {
        let [b, c, h, w] = x.dims();
        let [o, wc, kh, kw] = weight.dims();
        assert_eq!(c, wc, "conv2d: {c} input channels, weight for {wc}");
        let [top, bottom, left, right] = padding;
        let stride = stride.map(|s| s.max(1));
        let [sh, sw] = stride;
        assert!(
            h + top + bottom >= kh && w + left + right >= kw,
            "conv2d: padded input smaller than the kernel"
        );
        let oh = (h + top + bottom - kh) / sh + 1;
        let ow = (w + left + right - kw) / sw + 1;
        let k = c * kh * kw;
        let dtype = x.dtype();
        let pointwise = kh == 1 && kw == 1 && stride == [1, 1] && padding == [0; 4];
        let row_bytes = (b * k * ow) as u64 * dtype.size() as u64;
        let band = if pointwise && x.stored() {
            oh
        } else {
            (band_bytes / row_bytes.max(1)).clamp(1, oh as u64) as usize
        };
        Self {
            x,
            b,
            c,
            h,
            w,
            o,
            kh,
            kw,
            k,
            stride,
            padding,
            oh,
            ow,
            band,
            pointwise,
            dtype,
            weight: weight.cast(dtype).reshape([1, o, k]),
            bias: bias.map(|bias| bias.cast(dtype)),
        }
    }

    /// The whole output, bias added.
    ///
    /// # Shapes
    /// - as [`conv2d`]
    pub fn output(&self) -> Tensor<4> {
        self.rows(0..self.oh)
    }

    /// The output made and kept as [`RowPieces`] of at most `piece_bytes` each (whole bands, at
    /// least one row).
    ///
    /// # Shapes
    /// - as [`conv2d`]
    pub fn in_pieces(&self, piece_bytes: u64) -> RowPieces {
        let row_bytes = (self.b * self.o * self.ow) as u64 * self.dtype.size() as u64;
        let rows = (piece_bytes / row_bytes.max(1)).clamp(1, self.oh as u64) as usize;
        // Whole bands a piece (no band split at a piece's end), when a band fits in one.
        let rows = if rows >= self.band {
            rows / self.band * self.band
        } else {
            rows
        };
        RowPieces {
            pieces: (0..self.oh)
                .step_by(rows)
                .map(|r0| self.rows(r0..(r0 + rows).min(self.oh)))
                .collect(),
        }
    }

    /// The output rows `out`, bias added: `[b, o, out.len(), ow]`.
    fn rows(&self, out: Range<usize>) -> Tensor<4> {
        let (b, o, ow) = (self.b, self.o, self.ow);
        let y = if out.len() <= self.band {
            self.band_out(out.start, out.end)
        } else {
            // Bands written into one output as they come.
            let mut y = Tensor::<4>::empty([b, o, out.len(), ow], (&self.x.device(), self.dtype));
            for r0 in out.clone().step_by(self.band) {
                let r1 = (r0 + self.band).min(out.end);
                y = y.slice_assign(
                    [0..b, 0..o, r0 - out.start..r1 - out.start, 0..ow],
                    self.band_out(r0, r1),
                );
            }
            y
        };
        match &self.bias {
            Some(bias) => y + bias.clone().reshape([1, o, 1, 1]),
            None => y,
        }
    }

    /// The output rows [r0, r1) from the input rows they read, no bias: `[b, o, r1 - r0, ow]`.
    fn band_out(&self, r0: usize, r1: usize) -> Tensor<4> {
        let (b, c, h, w, o, k, ow) = (self.b, self.c, self.h, self.w, self.o, self.k, self.ow);
        let (kh, kw) = (self.kh, self.kw);
        let [sh, sw] = self.stride;
        let [top, _, left, right] = self.padding;
        let rows = r1 - r0;
        if self.pointwise {
            // A 1x1 convolution is one matrix product over the pixels.
            let xb = self.x.rows(r0..r1); // [b, c, rows, w]
            return self
                .weight
                .clone()
                .matmul(xb.reshape([b, c, rows * w]))
                .reshape([b, o, rows, w]); // [b, o, rows, w]
        }
        // The band's input rows in padded coordinates: [r0 * sh, (r1 - 1) * sh + kh).
        let (p0, p1) = (r0 * sh, (r1 - 1) * sh + kh);
        let (a, z) = (p0.saturating_sub(top).min(h), p1.saturating_sub(top).min(h));
        let pad_top = top.saturating_sub(p0).min(p1 - p0);
        let pad_bottom = (p1 - p0) - pad_top - (z - a);
        let xb = self.x.rows(a..z); // [b, c, z - a, w]
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
        self.weight.clone().matmul(cols).reshape([b, o, rows, ow]) // [b, o, rows, ow]
    }
}
