//! 2-D convolution on the CPU as one matrix product per block of output rows, reading the
//! weights in their stored `[out, in, kh, kw]` layout (no per-call re-layout) and writing NCHW
//! output in place (no scatter).
//!
//! Port of the usual im2col + GEMM lowering (as in PyTorch's `slow_conv2d` and Caffe): for a
//! block of output rows, `col[(ci, ky, kx), p] = x[ci, y(p) * sh + ky - pad_t, x(p) * sw + kx -
//! pad_l]` (0 outside the image), then `out[:, block] = bias + W[out, in * kh * kw] @ col`.
//! Blocks are sized so that `col` stays under [`COL_BUDGET`] bytes whatever the image size
//! (a 512x512 VAE layer would need 1.2 GB at once). 1x1 convolutions with stride 1 and no
//! padding skip `col`: `out = W @ x`. 3x3 stride-1 convolutions over enough pixels take
//! [`super::winograd`] instead.

use rayon::prelude::*;

use super::gemm::{Threads, View, sgemm};

/// Largest `col` buffer, bytes.
const COL_BUDGET: usize = 32 << 20;

/// Convolution geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, bottom, left, right]`
    pub padding: [usize; 4],
    /// The input is read nearest-upsampled by this factor (1: as is): `height` / `width` are the
    /// upsampled size and `x` holds `height / upsample x width / upsample` pixels per channel.
    /// `Upsample2D`'s 2x repeat followed by its 3x3 conv never materialises the 4x tensor.
    pub upsample: usize,
}

impl Conv {
    /// Output `[height, width]`, `None` when the kernel does not fit the padded input.
    pub fn output_size(&self) -> Option<[usize; 2]> {
        let [pt, pb, pl, pr] = self.padding;
        let (ph, pw) = (self.height + pt + pb, self.width + pl + pr);
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let up = self.upsample;
        if ph < kh
            || pw < kw
            || sh == 0
            || sw == 0
            || up == 0
            || !self.height.is_multiple_of(up)
            || !self.width.is_multiple_of(up)
        {
            return None;
        }
        Some([(ph - kh) / sh + 1, (pw - kw) / sw + 1])
    }
}

/// # Shapes
/// - `x`: `[batch, in, height, width]`, `weight`: `[out, in, kh, kw]`, `bias`: `[out]`
/// - output: `[batch, out, oh, ow]` ([`Conv::output_size`])
///
/// # Panics
/// When the slices do not have the sizes `g` gives or the kernel does not fit (callers check).
pub fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: Conv) -> Vec<f32> {
    conv2d_with(x, weight, bias, Epilogue::default(), g)
}

/// What the matrix products accumulate onto besides the bias: the output buffer starts as
/// `residual + bias + batch_bias` and the products add to it, so a ResNet block's time-embedding
/// add and its skip connection cost no extra pass over the activations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[batch, out]`: added to every pixel of each (batch, channel) plane.
    pub batch_bias: Option<&'a [f32]>,
    /// `[batch, out, oh, ow]`: added element-wise.
    pub residual: Option<&'a [f32]>,
}

/// [`conv2d`] plus an [`Epilogue`].
///
/// # Panics
/// As [`conv2d`], and when the epilogue's slices do not have the sizes above.
pub fn conv2d_with(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    epilogue: Epilogue<'_>,
    g: Conv,
) -> Vec<f32> {
    let Some([oh, ow]) = g.output_size() else {
        panic!("conv2d: kernel larger than the padded input");
    };
    let (c, h, w, o) = (g.in_channels, g.height, g.width, g.out_channels);
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [pt, _, pl, _] = g.padding;
    let kdim = c * kh * kw;
    let up = g.upsample;
    let (sh_src, sw_src) = (h / up, w / up); // stored input size
    assert_eq!(x.len(), g.batch * c * sh_src * sw_src, "conv2d: input size");
    assert_eq!(weight.len(), o * kdim, "conv2d: weight size");
    let plane = oh * ow;
    let mut out = vec![0.0f32; g.batch * o * plane];
    if let Some(bias) = bias {
        assert_eq!(bias.len(), o, "conv2d: bias size");
    }
    if let Some(bb) = epilogue.batch_bias {
        assert_eq!(bb.len(), g.batch * o, "conv2d: batch bias size");
    }
    if let Some(r) = epilogue.residual {
        assert_eq!(r.len(), out.len(), "conv2d: residual size");
    }
    let accumulate = bias.is_some() || epilogue.batch_bias.is_some() || epilogue.residual.is_some();
    if accumulate && plane > 0 {
        // One pass: plane i is (batch i / o, channel i % o).
        out.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
            let add = bias.map_or(0.0, |b| b[i % o]) + epilogue.batch_bias.map_or(0.0, |b| b[i]);
            match epilogue.residual {
                Some(r) => {
                    for (d, &s) in p.iter_mut().zip(&r[i * plane..(i + 1) * plane]) {
                        *d = s + add;
                    }
                }
                None => p.fill(add),
            }
        });
    }
    if out.is_empty() || kdim == 0 {
        return out;
    }
    if winograd_enabled() && super::winograd::applies(&g) {
        super::winograd::accumulate(x, weight, &mut out, g);
        return out;
    }
    let w_view = View {
        data: weight,
        rs: kdim,
        cs: 1,
    };
    let pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && g.padding == [0; 4] && up == 1;
    // Output rows per block: `col` is `kdim x (rows * ow)`.
    let rows = (COL_BUDGET / 4 / (kdim * ow).max(1)).clamp(1, oh);
    let mut col = if pointwise {
        Vec::new()
    } else {
        vec![0.0f32; kdim * rows * ow]
    };
    let in_plane = sh_src * sw_src;
    for b in 0..g.batch {
        let x_b = &x[b * c * in_plane..(b + 1) * c * in_plane];
        let out_b = &mut out[b * o * plane..(b + 1) * o * plane];
        if pointwise {
            sgemm(
                o,
                plane,
                c,
                out_b,
                plane,
                1,
                accumulate,
                w_view,
                View {
                    data: x_b,
                    rs: h * w,
                    cs: 1,
                },
                1.0,
                Threads::Parallel,
            );
            continue;
        }
        for y0 in (0..oh).step_by(rows) {
            let n_rows = rows.min(oh - y0);
            let n = n_rows * ow;
            let col = &mut col[..kdim * n];
            // One `col` row per (ci, ky, kx).
            col.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
                let ci = r / (kh * kw);
                let ky = (r / kw) % kh;
                let kx = r % kw;
                let src = &x_b[ci * in_plane..(ci + 1) * in_plane];
                for (yy, line) in dst.chunks_exact_mut(ow).enumerate() {
                    let iy = ((y0 + yy) * sh + ky) as isize - pt as isize;
                    if iy < 0 || iy >= h as isize {
                        line.fill(0.0);
                        continue;
                    }
                    let sy = iy as usize / up;
                    let src_row = &src[sy * sw_src..(sy + 1) * sw_src];
                    if up == 1 {
                        fill_line(line, src_row, sw, kx as isize - pl as isize);
                    } else {
                        fill_line_upsampled(line, src_row, sw, kx as isize - pl as isize, up);
                    }
                }
            });
            sgemm(
                o,
                n,
                kdim,
                &mut out_b[y0 * ow..],
                plane,
                1,
                accumulate,
                w_view,
                View {
                    data: col,
                    rs: n,
                    cs: 1,
                },
                1.0,
                Threads::Parallel,
            );
        }
    }
    out
}

/// Whether 3x3 stride-1 convolutions may take [`super::winograd`] (`NULLPAINT_WINOGRAD=0`: never,
/// for comparisons).
fn winograd_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("NULLPAINT_WINOGRAD").map_or(true, |v| v != "0"))
}

/// `line[ox] = up(src)[ox * stride + offset]` with `up(src)[i] = src[i / up]`, 0 outside.
#[inline]
fn fill_line_upsampled(line: &mut [f32], src: &[f32], stride: usize, offset: isize, up: usize) {
    let w = (src.len() * up) as isize;
    for (ox, v) in line.iter_mut().enumerate() {
        let ix = (ox * stride) as isize + offset;
        *v = if ix >= 0 && ix < w {
            src[ix as usize / up]
        } else {
            0.0
        };
    }
}

/// `line[ox] = src[ox * stride + offset]`, 0 where that index falls outside `src`.
#[inline]
fn fill_line(line: &mut [f32], src: &[f32], stride: usize, offset: isize) {
    let w = src.len() as isize;
    if stride == 1 {
        // Zeros left, a contiguous copy, zeros right.
        let len = line.len() as isize;
        let first = (-offset).clamp(0, len); // first ox with ix >= 0
        let last = (w - offset).clamp(first, len); // one past the last ox with ix < w
        line[..first as usize].fill(0.0);
        line[first as usize..last as usize]
            .copy_from_slice(&src[(first + offset) as usize..(last + offset) as usize]);
        line[last as usize..].fill(0.0);
        return;
    }
    for (ox, v) in line.iter_mut().enumerate() {
        let ix = (ox * stride) as isize + offset;
        *v = if ix >= 0 && ix < w {
            src[ix as usize]
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn naive(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: Conv) -> Vec<f32> {
        let [oh, ow] = g.output_size().unwrap();
        let [kh, kw] = g.kernel;
        let mut out = vec![0.0; g.batch * g.out_channels * oh * ow];
        for b in 0..g.batch {
            for oc in 0..g.out_channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |bs| bs[oc] as f64);
                        for ic in 0..g.in_channels {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        (oy * g.stride[0] + ky) as isize - g.padding[0] as isize;
                                    let ix =
                                        (ox * g.stride[1] + kx) as isize - g.padding[2] as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.height as isize
                                        || ix >= g.width as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * g.in_channels + ic) * g.height + iy as usize)
                                        * g.width
                                        + ix as usize];
                                    let wv = wt[((oc * g.in_channels + ic) * kh + ky) * kw + kx];
                                    acc += (xv * wv) as f64;
                                }
                            }
                        }
                        out[((b * g.out_channels + oc) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition() {
        let cases = [
            // 3x3 same padding, 3x3 stride 2 symmetric, the VAE's right/bottom-only padding,
            // 1x1 pointwise, 1x1 with stride, a tall thin image.
            ([3, 3], [1, 1], [1, 1, 1, 1], 9, 11),
            ([3, 3], [2, 2], [1, 1, 1, 1], 9, 11),
            ([3, 3], [2, 2], [0, 1, 0, 1], 8, 10),
            ([1, 1], [1, 1], [0, 0, 0, 0], 5, 7),
            ([1, 1], [2, 2], [0, 0, 0, 0], 5, 7),
            ([3, 3], [1, 1], [1, 1, 1, 1], 40, 2),
        ];
        for (kernel, stride, padding, height, width) in cases {
            let g = Conv {
                batch: 2,
                in_channels: 3,
                height,
                width,
                out_channels: 4,
                kernel,
                stride,
                padding,
                upsample: 1,
            };
            let x: Vec<f32> = (0..2 * 3 * height * width)
                .map(|i| (i as f32 * 0.31).sin())
                .collect();
            let wt: Vec<f32> = (0..4 * 3 * kernel[0] * kernel[1])
                .map(|i| (i as f32 * 0.17).cos())
                .collect();
            let bias = [0.5f32, -1.0, 0.25, 2.0];
            for b in [None, Some(&bias[..])] {
                let got = conv2d(&x, &wt, b, g);
                let want = naive(&x, &wt, b, g);
                let worst = max_abs_diff(&got, &want);
                assert!(worst < 1e-5, "{g:?}: {worst}");
            }
        }
    }

    /// The epilogue equals adding the per-(batch, channel) bias and the residual afterwards.
    #[test]
    fn epilogue_adds_batch_bias_and_residual() {
        for (kernel, stride, padding) in [
            ([3, 3], [1, 1], [1, 1, 1, 1]),
            ([1, 1], [1, 1], [0, 0, 0, 0]),
            ([3, 3], [2, 2], [0, 1, 0, 1]),
        ] {
            let g = Conv {
                batch: 2,
                in_channels: 3,
                height: 9,
                width: 7,
                out_channels: 4,
                kernel,
                stride,
                padding,
                upsample: 1,
            };
            let [oh, ow] = g.output_size().unwrap();
            let x: Vec<f32> = (0..2 * 3 * 9 * 7)
                .map(|i| (i as f32 * 0.31).sin())
                .collect();
            let wt: Vec<f32> = (0..4 * 3 * kernel[0] * kernel[1])
                .map(|i| (i as f32 * 0.17).cos())
                .collect();
            let bias = [0.5f32, -1.0, 0.25, 2.0];
            let batch_bias: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
            let residual: Vec<f32> = (0..2 * 4 * oh * ow)
                .map(|i| (i as f32 * 0.7).cos())
                .collect();
            for (bb, res) in [
                (Some(&batch_bias[..]), None),
                (None, Some(&residual[..])),
                (Some(&batch_bias[..]), Some(&residual[..])),
            ] {
                let got = conv2d_with(
                    &x,
                    &wt,
                    Some(&bias),
                    Epilogue {
                        batch_bias: bb,
                        residual: res,
                    },
                    g,
                );
                let mut want = naive(&x, &wt, Some(&bias), g);
                for (i, v) in want.iter_mut().enumerate() {
                    let plane = i / (oh * ow);
                    *v += bb.map_or(0.0, |b| b[plane]) + res.map_or(0.0, |r| r[i]);
                }
                let worst = max_abs_diff(&got, &want);
                assert!(worst < 1e-5, "{g:?}: {worst}");
            }
        }
    }

    /// Reading the input 2x nearest-upsampled equals convolving the materialised repeat.
    #[test]
    fn upsampled_input_matches_the_repeated_tensor() {
        let (c, h, w) = (3, 5, 4);
        let x: Vec<f32> = (0..2 * c * h * w)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mut repeated = Vec::with_capacity(x.len() * 4);
        for plane in x.chunks_exact(h * w) {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    repeated.push(plane[(y / 2) * w + xx / 2]);
                }
            }
        }
        for (kernel, stride, padding) in [([3, 3], [1, 1], [1, 1, 1, 1]), ([1, 1], [1, 1], [0; 4])]
        {
            let g = Conv {
                batch: 2,
                in_channels: c,
                height: 2 * h,
                width: 2 * w,
                out_channels: 4,
                kernel,
                stride,
                padding,
                upsample: 2,
            };
            let wt: Vec<f32> = (0..4 * c * kernel[0] * kernel[1])
                .map(|i| (i as f32 * 0.17).cos())
                .collect();
            let bias = [0.5f32, -1.0, 0.25, 2.0];
            let got = conv2d(&x, &wt, Some(&bias), g);
            let want = naive(&repeated, &wt, Some(&bias), Conv { upsample: 1, ..g });
            let worst = max_abs_diff(&got, &want);
            assert!(worst < 1e-5, "{g:?}: {worst}");
        }
    }

    #[test]
    fn blocks_of_rows_give_the_same_result() {
        // kdim * ow large enough that COL_BUDGET forces several row blocks.
        let g = Conv {
            batch: 1,
            in_channels: 64,
            height: 40,
            width: 4096,
            out_channels: 2,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1, 1, 1],
            upsample: 1,
        };
        let rows = (COL_BUDGET / 4 / (64 * 9 * 4096)).clamp(1, 40);
        assert!(rows < 40, "the case must span several blocks");
        let x: Vec<f32> = (0..64 * 40 * 4096)
            .map(|i| ((i % 1013) as f32 * 0.01).sin())
            .collect();
        let wt: Vec<f32> = (0..2 * 64 * 9).map(|i| (i as f32 * 0.05).cos()).collect();
        let got = conv2d(&x, &wt, None, g);
        // Spot-check rows at block edges against the definition.
        let [oh, ow] = g.output_size().unwrap();
        for oy in [0, rows - 1, rows, oh - 1] {
            for ox in [0, 1, ow / 2, ow - 1] {
                for oc in 0..2 {
                    let mut acc = 0.0f64;
                    for ic in 0..64 {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) =
                                    (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                                if iy < 0 || ix < 0 || iy >= 40 || ix >= 4096 {
                                    continue;
                                }
                                acc += (x[(ic * 40 + iy as usize) * 4096 + ix as usize]
                                    * wt[(oc * 64 + ic) * 9 + ky * 3 + kx])
                                    as f64;
                            }
                        }
                    }
                    let v = got[(oc * oh + oy) * ow + ox];
                    assert!(
                        (v as f64 - acc).abs() < 1e-3,
                        "({oc}, {oy}, {ox}): {v} vs {acc}"
                    );
                }
            }
        }
    }
}
