//! The heavy operations of the models, routed to the CPU fast paths of [`crate::cpu`] when the
//! tensors live on the CPU backend (native builds), to [`super::conv_gemm`] for half-precision
//! convolutions on GPU devices (by default: [`conv_gemm::ConvRoute`]), to Burn's modules
//! everywhere else. On that route the GroupNorm +
//! SiLU before a convolution ([`norm_conv2d`]) and the upsampler's 2x repeat
//! ([`upsample2x_conv2d`]) are made band by band as the convolution reads its input.

use std::ops::Range;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{DType, FloatDType, Tensor};

use super::conv_gemm::{self, RowPieces, RowSource};

/// `conv.forward(x)`.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, oh, ow]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if let Some(padding) = routed_gemm_padding(conv, &x) {
        return conv_gemm_of(conv, &x, padding);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::conv2d(conv, x)
    }
    #[cfg(target_arch = "wasm32")]
    {
        conv.forward(x)
    }
}

/// `conv.forward(x) + batch_bias[:, :, None, None] + residual`: on the CPU backend both
/// additions ride on the convolution's matrix products (no extra pass).
///
/// # Shapes
/// - `x`: `[batch, in, h, w]`, `batch_bias`: `[batch, out]`, `residual`: `[batch, out, oh, ow]`
/// - output: `[batch, out, oh, ow]`
pub fn conv2d_fused(
    conv: &Conv2d,
    x: Tensor<4>,
    batch_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    if let Some(padding) = routed_gemm_padding(conv, &x) {
        return add_biases(conv_gemm_of(conv, &x, padding), batch_bias, residual);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::conv2d_fused(conv, x, batch_bias, residual)
    }
    #[cfg(target_arch = "wasm32")]
    {
        add_biases(conv.forward(x), batch_bias, residual)
    }
}

/// `y + batch_bias[:, :, None, None] + residual`, as separate adds.
///
/// # Shapes
/// - `y`: `[batch, out, h, w]`, `batch_bias`: `[batch, out]`, `residual`: like `y`
pub(crate) fn add_biases(
    mut y: Tensor<4>,
    batch_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    if let Some(bb) = batch_bias {
        y = y + bb.unsqueeze_dims::<4>(&[2, 3]);
    }
    if let Some(r) = residual {
        y = y + r;
    }
    y
}

/// `conv.forward(x` repeated 2x nearest`)` (`Upsample2D`): the CPU backend reads `x` in
/// place instead of making the 4x tensor.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, 2h, 2w]` (for a 3x3 "same" conv)
pub fn upsample2x_conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if conv_gemm::applies(&x) {
        let up = Upsampled2x(x);
        if let Some(padding) = gemm_padding(conv, &up) {
            return conv_gemm_of(conv, &up, padding);
        }
        return conv2d(conv, upsample_nearest(up.0, 2));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::upsample2x_conv2d(conv, x)
    }
    #[cfg(target_arch = "wasm32")]
    {
        conv.forward(upsample_nearest(x, 2))
    }
}

/// `x` repeated `up` times nearest along height and width.
///
/// # Shapes
/// - `x`: `[b, c, h, w]` -> `[b, c, h * up, w * up]`
pub(crate) fn upsample_nearest(x: Tensor<4>, up: usize) -> Tensor<4> {
    if up == 1 {
        return x;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, up, w, up])
        .reshape([b, c, h * up, w * up])
}

/// `x` repeated 2x nearest along height and width, as [`conv_gemm`] reads it: each band of rows
/// is made from the rows of `x` it repeats (the 4x tensor never exists whole).
pub struct Upsampled2x(pub Tensor<4>);

impl RowSource for Upsampled2x {
    fn dims(&self) -> [usize; 4] {
        let [b, c, h, w] = self.0.dims();
        [b, c, 2 * h, 2 * w]
    }
    fn dtype(&self) -> DType {
        self.0.dtype()
    }
    fn device(&self) -> burn::tensor::Device {
        self.0.device()
    }
    fn rows(&self, rows: Range<usize>) -> Tensor<4> {
        // Output row r repeats input row r / 2.
        let (a, z) = (rows.start / 2, rows.end.div_ceil(2));
        let up = upsample_nearest(RowSource::rows(&self.0, a..z), 2); // [b, c, 2 (z - a), 2w]
        if rows.start.is_multiple_of(2) && rows.len() == 2 * (z - a) {
            up
        } else {
            up.narrow(2, rows.start % 2, rows.len())
        }
    }
}

/// `conv2d_fused(conv, silu(norm(x)), batch_bias, residual)` (`silu` as asked): a resnet's
/// norm-SiLU-conv stage. On [`conv_gemm`]'s route the normalised activation is made band by band
/// as the convolution reads it ([`GroupStats`] over the whole of `x` first), so it never exists
/// whole: at a 512x512 decode's last stage that is a 128 MiB f16 activation (and its f32
/// widening) fewer at the pipeline's memory peak. Elsewhere [`group_norm`] then
/// [`conv2d_fused`].
///
/// # Shapes
/// - `x`: `[batch, in, h, w]`, `batch_bias`: `[batch, out]`, `residual`: `[batch, out, oh, ow]`
/// - output: `[batch, out, oh, ow]`
pub fn norm_conv2d(
    norm: &GroupNorm,
    silu: bool,
    conv: &Conv2d,
    x: Tensor<4>,
    batch_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    if conv_gemm::applies(&x) && well_formed(norm, &x) {
        let normed = Normalized::new(norm, silu, x);
        if let Some(padding) = gemm_padding(conv, &normed) {
            return add_biases(conv_gemm_of(conv, &normed, padding), batch_bias, residual);
        }
        let h = normed.norm_of(normed.x.clone());
        return conv2d_fused(conv, h, batch_bias, residual);
    }
    conv2d_fused(conv, group_norm(norm, x, silu), batch_bias, residual)
}

/// `silu(norm(x))` (`silu` as asked) as [`conv_gemm`] reads it: the rows of each band normalised
/// with the statistics of the whole of `x` (a tensor, or [`RowPieces`]).
pub struct Normalized<'a, S = Tensor<4>> {
    norm: &'a GroupNorm,
    stats: GroupStats,
    silu: bool,
    x: S,
}

impl<'a> Normalized<'a> {
    /// Takes `x`'s statistics now (GPU devices; `norm` must fit `x`: its channels, groups and
    /// affine parameters).
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    pub fn new(norm: &'a GroupNorm, silu: bool, x: Tensor<4>) -> Self {
        Self {
            norm,
            stats: GroupStats::of(norm, std::slice::from_ref(&x)),
            silu,
            x,
        }
    }
}

impl<'a> Normalized<'a, RowPieces> {
    /// [`Normalized::new`] over an activation held in pieces.
    pub fn pieces(norm: &'a GroupNorm, silu: bool, x: RowPieces) -> Self {
        let stats = GroupStats::of(norm, x.pieces());
        Self {
            norm,
            stats,
            silu,
            x,
        }
    }
}

impl<S> Normalized<'_, S> {
    fn norm_of(&self, part: Tensor<4>) -> Tensor<4> {
        group_norm_apply(self.norm, part, &self.stats, self.silu)
    }

    /// The input, given back.
    pub fn into_inner(self) -> S {
        self.x
    }
}

impl<S: RowSource> RowSource for Normalized<'_, S> {
    fn dims(&self) -> [usize; 4] {
        self.x.dims()
    }
    fn dtype(&self) -> DType {
        self.x.dtype()
    }
    fn device(&self) -> burn::tensor::Device {
        self.x.device()
    }
    fn rows(&self, rows: Range<usize>) -> Tensor<4> {
        self.norm_of(self.x.rows(rows))
    }
}

/// `conv.forward(x)` for an input [`conv_gemm`] makes band by band (a [`Normalized`] one,
/// [`Upsampled2x`]): on its route when `conv` takes it, else from the whole input made at once.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, oh, ow]`
pub fn conv2d_from(conv: &Conv2d, x: &impl RowSource) -> Tensor<4> {
    match routed_gemm_padding(conv, x) {
        Some(padding) => conv_gemm_of(conv, x, padding),
        None => conv2d(conv, x.rows(0..x.dims()[2])),
    }
}

/// [`upsample2x_conv2d`] with the output kept as [`RowPieces`] of at most
/// [`conv_gemm::PIECE_BYTES`] each on [`conv_gemm`]'s route (one piece elsewhere), for a consumer
/// that gives them back one at a time (`ResnetBlock2D::forward_pieces`).
///
/// # Shapes
/// - `x`: `[batch, in, h, w]` -> `[batch, out, 2h, 2w]` (for a 3x3 "same" conv)
pub fn upsample2x_conv2d_in_pieces(conv: &Conv2d, x: Tensor<4>) -> RowPieces {
    if conv_gemm::applies(&x) {
        let up = Upsampled2x(x);
        if let Some(padding) = gemm_padding(conv, &up) {
            return gemm_of(conv, &up, padding).in_pieces(conv_gemm::PIECE_BYTES);
        }
        return RowPieces::whole(upsample2x_conv2d(conv, up.0));
    }
    RowPieces::whole(upsample2x_conv2d(conv, x))
}

/// Burn's padding as `[top, bottom, left, right]`; `None` for `Same` (left to Burn).
pub(crate) fn explicit_padding(padding: &PaddingConfig2d) -> Option<[usize; 4]> {
    match *padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, bottom, left, right]),
        PaddingConfig2d::Same => None,
    }
}

/// `padding` as `[top, bottom, left, right]` when `conv` on `x` takes [`conv_gemm`]'s route
/// ([`conv_gemm::applies`]: a CubeCL device and half-precision activations under the default
/// [`conv_gemm::ConvRoute`]; one group, no dilation, explicit padding, shapes that fit); `None`
/// leaves it to Burn (which also reports what does not fit).
fn routed_gemm_padding(conv: &Conv2d, x: &impl RowSource) -> Option<[usize; 4]> {
    if !conv_gemm::applies(x) {
        return None;
    }
    gemm_padding(conv, x)
}

/// [`routed_gemm_padding`] without the device / dtype check, for any input [`conv_gemm`] reads.
fn gemm_padding(conv: &Conv2d, x: &impl RowSource) -> Option<[usize; 4]> {
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let padding = explicit_padding(&conv.padding)?;
    let [_, c, h, w] = x.dims();
    let [_, wc, kh, kw] = conv.weight.dims();
    (c == wc && h + padding[0] + padding[1] >= kh && w + padding[2] + padding[3] >= kw)
        .then_some(padding)
}

/// [`conv_gemm::conv2d`] with `conv`'s weights and stride.
fn conv_gemm_of(conv: &Conv2d, x: &impl RowSource, padding: [usize; 4]) -> Tensor<4> {
    gemm_of(conv, x, padding).output()
}

/// `conv` on `x` as [`conv_gemm`] runs it, in bands of [`conv_gemm::BAND_BYTES`].
fn gemm_of<'a, S: RowSource>(
    conv: &Conv2d,
    x: &'a S,
    padding: [usize; 4],
) -> conv_gemm::Conv<'a, S> {
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv_gemm::Conv::new(
        x,
        conv.weight.val(),
        bias,
        conv.stride,
        padding,
        conv_gemm::BAND_BYTES,
    )
}

/// `norm.forward(x)`, followed by SiLU when `silu`.
///
/// On CubeCL devices this is [`group_norm_short_rows`] (see there why not Burn's), split into
/// slices of whole groups where the widened activation would not fit one buffer
/// ([`group_norm_parts`]); on the CPU backend `crate::cpu::group_norm`.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    if crate::kernel::is_cube(&x.device()) && well_formed(norm, &x) {
        let parts = group_norm_parts(norm, &x);
        return group_norm_in_parts(norm, x, silu, parts);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::group_norm(norm, x, silu)
    }
    #[cfg(target_arch = "wasm32")]
    {
        silu_if(norm.forward(x), silu)
    }
}

/// Whether `norm` fits `x` (channels, groups, affine parameters): else Burn's module reports it.
fn well_formed<const D: usize>(norm: &GroupNorm, x: &Tensor<D>) -> bool {
    let dims = x.dims();
    let groups = norm.num_groups;
    D >= 3
        && dims[1] == norm.num_channels
        && groups > 0
        && dims[1].is_multiple_of(groups)
        && norm.gamma.is_some() == norm.affine
        && norm.beta.is_some() == norm.affine
}

/// Into how many channel slices a GPU group norm of `x` must be split (1 when one call fits).
/// The statistics are computed in f32, so an f16 activation is read widened; where the widened
/// tensor exceeds the device's largest buffer a fused candidate that materialises it fails
/// ("can't allocate buffer": a 512x512 f16 decode on a 128 MiB device, where 256 channels at
/// 512x512 are 128 MiB in f16 and 256 MiB widened). Groups are independent, so slices of whole
/// groups give the same result exactly.
fn group_norm_parts<const D: usize>(norm: &GroupNorm, x: &Tensor<D>) -> usize {
    let Some(limit) = crate::kernel::max_buffer_bytes(&x.device()) else {
        return 1;
    };
    let groups = norm.num_groups;
    // The widened copy: at least 4 bytes an element, whatever the activations' width.
    let bytes = x.shape().num_elements() as u64 * 4;
    if bytes <= limit {
        return 1;
    }
    let wanted = bytes.div_ceil(limit.max(1)) as usize;
    // The fewest slices of whole groups each within the limit (one group per slice at most).
    (wanted..=groups)
        .find(|p| groups.is_multiple_of(*p))
        .unwrap_or(groups)
}

/// [`group_norm_short_rows`] over `parts` slices of whole groups along the channels,
/// concatenated.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
fn group_norm_in_parts<const D: usize>(
    norm: &GroupNorm,
    x: Tensor<D>,
    silu: bool,
    parts: usize,
) -> Tensor<D> {
    if parts <= 1 {
        return group_norm_short_rows(norm, x, silu);
    }
    let width = norm.num_channels / parts;
    let slice = |p: &Option<Param<Tensor<1>>>, start: usize| {
        p.as_ref()
            .map(|p| Param::from_tensor(p.val().slice(start..start + width)))
    };
    let outs = (0..parts)
        .map(|i| {
            let start = i * width;
            let part = GroupNorm {
                gamma: slice(&norm.gamma, start),
                beta: slice(&norm.beta, start),
                num_groups: norm.num_groups / parts,
                num_channels: width,
                epsilon: norm.epsilon,
                affine: norm.affine,
            };
            group_norm_short_rows(&part, x.clone().narrow(1, start, width), silu) // [b, width, ...]
        })
        .collect();
    Tensor::cat(outs, 1)
}

/// Longest row one reduction of [`GroupStats::of`] runs over.
const STAT_ROW: usize = 4096;

/// The most bytes of f32 one step of [`GroupStats::of`] widens at a time.
const STAT_CHUNK_BYTES: usize = 16 << 20;

/// Burn's GroupNorm arithmetic (statistics in f32, centred variance, the affine at the
/// activations' precision): [`GroupStats::of`] then [`group_norm_apply`].
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
fn group_norm_short_rows<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Tensor<D> {
    let stats = GroupStats::of(norm, std::slice::from_ref(&x));
    group_norm_apply(norm, x, &stats, silu)
}

/// A GroupNorm's per-group statistics in f32, the mean and `sqrt(var + eps)`, held per channel
/// (`[batch, channels]`).
///
/// Why not Burn's `GroupNorm::forward`: its single `mean_dim` over a whole group (a million
/// elements per group at 512x512 with 128 channels) gives wrong sums on lavapipe with Burn 0.22 /
/// CubeCL 0.11 (fusion + autotune, every tuning level): `ones([32, 65536]).sum_dim(1)` leaves 8
/// of the 32 rows short, `ones([32, 131072])` 24 of them at 0, `ones([262144]).sum()` is 262128,
/// while rows of up to 32768 were right in every shape tried (1024 x 32768 included). A
/// 256x256 VAE stage came out shifted (f32) or scaled by hundreds (f16). Here every reduction
/// runs over rows of at most [`STAT_ROW`] elements (`[b, g, c / g, k, m]` summed over `m`, `k`,
/// then `c / g`), and the input is widened to f32 a chunk of at most [`STAT_CHUNK_BYTES`] at a
/// time, the chunks' sums added: Burn's fusion materialised the whole widened activation
/// otherwise (256 MiB for 256 f16 channels at 512x512, the decode's largest allocation).
struct GroupStats {
    /// `[batch, channels]`: each channel its group's mean.
    mean: Tensor<2>,
    /// `[batch, channels]`: each channel its group's `sqrt(var + eps)`.
    std: Tensor<2>,
}

impl GroupStats {
    /// The statistics of the activation `parts` make together, cut along the spatial dimensions
    /// (one part: the whole activation; [`RowPieces`]: its pieces).
    ///
    /// # Shapes
    /// - each part: `[batch, channels, ...]`, the same but for the spatial sizes
    fn of<const D: usize>(norm: &GroupNorm, parts: &[Tensor<D>]) -> Self {
        let dims = parts[0].dims();
        let (batch, channels, groups) = (dims[0], dims[1], norm.num_groups);
        let per_group = channels / groups.max(1);
        let wide = wide_dtype(parts[0].dtype());
        // Each part as [b, g, c/g, k, m], and how many `k` a chunk takes.
        let parts: Vec<_> = parts
            .iter()
            .map(|x| {
                let spatial: usize = x.dims()[2..].iter().product();
                // The longest row that divides the spatial size (a multiple of a power of two
                // for any SD latent or picture).
                let row = (1..=spatial.min(STAT_ROW))
                    .rev()
                    .find(|m| spatial.is_multiple_of(*m))
                    .unwrap_or(1);
                let rows = spatial / row;
                let chunk = (STAT_CHUNK_BYTES / (batch * channels * row * 4).max(1)).clamp(1, rows);
                let x = x.clone().reshape([batch, groups, per_group, rows, row]);
                (x, rows, chunk, spatial)
            })
            .collect();
        // The sum over each group of `f(x)`, chunk by chunk of `k`, part by part.
        let group_sums = |f: &dyn Fn(Tensor<5>) -> Tensor<5>| {
            parts
                .iter()
                .flat_map(|(x, rows, chunk, _)| {
                    (0..*rows).step_by(*chunk).map(move |k0| {
                        let part = x.clone().narrow(3, k0, (*chunk).min(rows - k0)).cast(wide);
                        f(part).sum_dim(4).sum_dim(3).sum_dim(2) // [b, g, 1, 1, 1]
                    })
                })
                .reduce(|a, b| a + b)
                .unwrap_or_else(|| unreachable!("at least one chunk"))
        };
        let count = (per_group * parts.iter().map(|p| p.3).sum::<usize>()) as f64;
        let mean = group_sums(&|part| part).div_scalar(count); // [b, g, 1, 1, 1]
        let var = group_sums(&|part| (part - mean.clone()).square()).div_scalar(count);
        let std = var.add_scalar(norm.epsilon).sqrt();
        // Per channel, so that applying them needs no view of the input by groups (a band of
        // rows is not contiguous, and a reshape of it would copy it).
        let per_channel = |t: Tensor<5>| {
            t.reshape([batch, groups, 1])
                .expand([batch, groups, per_group])
                .reshape([batch, channels])
        };
        Self {
            mean: per_channel(mean),
            std: per_channel(std),
        }
    }
}

/// f32 for half-precision activations (norm statistics are taken in f32), else their own type.
fn wide_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::F16 | DType::BF16 => FloatDType::F32,
        _ => FloatDType::from(dtype),
    }
}

/// `x` (all of a GroupNorm's input, or some of its rows) normalised with `stats` of the whole
/// input, the affine applied, then SiLU when `silu`.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]` -> same
fn group_norm_apply<const D: usize>(
    norm: &GroupNorm,
    x: Tensor<D>,
    stats: &GroupStats,
    silu: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims[1]);
    let dtype = x.dtype();
    let mut affine = [1; D];
    affine[1] = channels;
    let mut per_channel = affine;
    per_channel[0] = batch;
    let normalized = x
        .cast(wide_dtype(dtype))
        .sub(stats.mean.clone().reshape(per_channel))
        .div(stats.std.clone().reshape(per_channel))
        .cast(FloatDType::from(dtype));
    let y = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) => normalized
            .mul(gamma.val().reshape(affine))
            .add(beta.val().reshape(affine)),
        _ => normalized,
    };
    silu_if(y, silu)
}

/// `silu(y)` when `silu`, else `y`: the SiLU that follows a GroupNorm in diffusers' resnets.
pub(crate) fn silu_if<const D: usize>(y: Tensor<D>, silu: bool) -> Tensor<D> {
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

/// Multi-head `softmax(q k^T / sqrt(d)) v` from projections laid out `[batch, len, heads *
/// head_dim]`, or `None` when no fast path applies (then the caller splits heads and runs
/// [`super::attention::scaled_dot_product_attention`]).
///
/// # Shapes
/// - `q`: `[batch, q_len, inner]`, `k` / `v`: `[batch, kv_len, inner]` -> `[batch, q_len, inner]`
pub fn fused_attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
) -> Option<Tensor<3>> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::cpu::attention_heads(q, k, v, heads)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (q, k, v, heads);
        None
    }
}

/// diffusers' GEGLU activation after its projection: `a * gelu(gate)`, `[a, gate] =
/// h.chunk(2, -1)` (the CPU backend runs it in one pass, see [`crate::cpu::geglu`]).
///
/// # Shapes
/// - `h`: `[batch, seq, 2 * inner]` -> `[batch, seq, inner]`
pub fn geglu(h: Tensor<3>) -> Tensor<3> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(out) = crate::cpu::geglu(&h) {
        return out;
    }
    let [a, gate] = h
        .chunk(2, 2)
        .try_into()
        .unwrap_or_else(|_| unreachable!("chunk(2) gives 2 parts"));
    a * burn::tensor::activation::gelu(gate)
}
