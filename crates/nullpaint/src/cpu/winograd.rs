//! 3x3 stride-1 convolution by Winograd's minimal filtering algorithm F(2x2, 3x3): each 2x2
//! block of output pixels costs 16 multiplications per (in, out) channel pair instead of 36.
//!
//! Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), eq. 7-8 and
//! the F(2x2, 3x3) matrices of their section 4.1: `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summed over
//! the input channels, the element-wise products become 16 independent matrix products, one
//! per position `e` of the 4x4 transformed tile: `M_e[out, tile] = U_e[out, in] @ V_e[in, tile]`.
//! These run on the same `gemm` as [`super::conv`]; the three transforms are additions only
//! (factors 1 and 1/2), so the result stays within a few f32 rounding steps of the direct sum.
//!
//! The weights are transformed on every call (`16 * out * in` values): worth it only when there
//! are enough tiles to amortise that, which [`applies`] decides. The input is read through the
//! same geometry as the im2col path, including asymmetric padding and a nearest-upsampled
//! input (`Upsample2D`), and the output accumulates onto the bias / epilogue prefill.

use rayon::prelude::*;

use super::conv::Conv;
use super::gemm::{Threads, View, sgemm};

/// Fewest 2x2 output tiles (over the whole batch) for which the weight transform pays off:
/// the products save `20 * out * in` multiply-adds per tile against im2col, the transform
/// costs about `60 * out * in` operations plus writing `16 * out * in` values, once per call.
const MIN_TILES: usize = 128;

/// Largest `V` plus `M` scratch, bytes (the tiles are processed in blocks under it).
const SCRATCH_BUDGET: usize = 64 << 20;

/// Whether `g` is a 3x3 stride-1 convolution with enough output and channels for this path.
pub fn applies(g: &Conv) -> bool {
    let Some([oh, ow]) = g.output_size() else {
        return false;
    };
    g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.in_channels >= 16
        && g.out_channels >= 16
        && g.batch * oh.div_ceil(2) * ow.div_ceil(2) >= MIN_TILES
}

/// `U = G g Gᵀ` for every filter, laid out `[out][e][in]` (`e = 4 * row + column` of the 4x4
/// transformed tile), so that `U_e` is the strided `out x in` view at offset `e * in`.
fn transform_weights(weight: &[f32], out_channels: usize, in_channels: usize) -> Vec<f32> {
    let c = in_channels;
    let mut u = vec![0.0f32; out_channels * 16 * c];
    u.par_chunks_mut(16 * c).enumerate().for_each(|(oc, u_oc)| {
        for ic in 0..c {
            let g = &weight[(oc * c + ic) * 9..(oc * c + ic) * 9 + 9];
            // t = G g (4x3), G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
            let mut t = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            // U = t Gᵀ (4x4)
            for (i, row) in t.iter().enumerate() {
                let (t0, t1, t2) = (row[0], row[1], row[2]);
                let vals = [t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2];
                for (j, v) in vals.into_iter().enumerate() {
                    u_oc[(4 * i + j) * c + ic] = v;
                }
            }
        }
    });
    u
}

/// `out += conv(x, weight)` for a geometry [`applies`] accepted; `out` holds `[batch, out, oh,
/// ow]` already prefilled with the bias and epilogue.
pub(super) fn accumulate(x: &[f32], weight: &[f32], out: &mut [f32], g: Conv) {
    let block = SCRATCH_BUDGET / (4 * 16 * (g.in_channels + g.out_channels)).max(1);
    accumulate_in_blocks(x, weight, out, g, block);
}

/// [`accumulate`] over blocks of `block` tiles.
fn accumulate_in_blocks(x: &[f32], weight: &[f32], out: &mut [f32], g: Conv, block: usize) {
    let Some([oh, ow]) = g.output_size() else {
        panic!("winograd: kernel larger than the padded input");
    };
    let (c, o) = (g.in_channels, g.out_channels);
    let (h, w, up) = (g.height, g.width, g.upsample);
    let (sw_src, in_plane) = (w / up, (h / up) * (w / up));
    let [pt, _, pl, _] = g.padding;
    let (tiles_h, tiles_w) = (oh.div_ceil(2), ow.div_ceil(2));
    let per_image = tiles_h * tiles_w;
    let total = g.batch * per_image;
    let plane = oh * ow;
    assert_eq!(weight.len(), o * c * 9, "winograd: weight size");
    assert_eq!(x.len(), g.batch * c * in_plane, "winograd: input size");
    assert_eq!(out.len(), g.batch * o * plane, "winograd: output size");

    let u = transform_weights(weight, o, c);
    if total == 0 || c == 0 {
        return;
    }
    let block = block.clamp(1, total);
    let mut v = vec![0.0f32; c * 16 * block];
    let mut m = vec![0.0f32; o * 16 * block];

    for t0 in (0..total).step_by(block) {
        let n = block.min(total - t0);
        // V_e[in, tile] = (Bᵀ d B)_e, laid out [in][e][tile], one run of tiles of a tile row
        // at a time.
        v[..c * 16 * n]
            .par_chunks_mut(16 * n)
            .enumerate()
            .for_each_init(Vec::new, |rows, (ic, v_ic)| {
                for run in runs(t0, n, per_image, tiles_w) {
                    let src = &x[(run.b * c + ic) * in_plane..(run.b * c + ic + 1) * in_plane];
                    // The 4 input rows under this run of tiles, zero-padded: column `q` is input
                    // column `2 * tx0 + q - pl`.
                    let width = 2 * run.len + 2;
                    rows.clear();
                    rows.resize(4 * width, 0.0f32);
                    for i in 0..4 {
                        let iy = (2 * run.ty + i) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let src_row = &src[(iy as usize / up) * sw_src..][..sw_src];
                        let first = (2 * run.tx0) as isize - pl as isize;
                        for (q, d) in rows[i * width..(i + 1) * width].iter_mut().enumerate() {
                            let ix = first + q as isize;
                            if ix >= 0 && ix < w as isize {
                                *d = src_row[ix as usize / up];
                            }
                        }
                    }
                    // r = Bᵀ d along the rows, Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
                    // [0, 1, 0, -1]], in place: rows 0..4 become r0..r3.
                    let (d0, rest) = rows.split_at_mut(width);
                    let (d1, rest) = rest.split_at_mut(width);
                    let (d2, d3) = rest.split_at_mut(width);
                    for q in 0..width {
                        let (a0, a1, a2, a3) = (d0[q], d1[q], d2[q], d3[q]);
                        d0[q] = a0 - a2;
                        d1[q] = a1 + a2;
                        d2[q] = a2 - a1;
                        d3[q] = a1 - a3;
                    }
                    // V = r B along the columns of each tile.
                    for (i, r) in [&*d0, &*d1, &*d2, &*d3].into_iter().enumerate() {
                        let base = run.k0;
                        let (v0, rest) = v_ic[4 * i * n..(4 * i + 4) * n].split_at_mut(n);
                        let (v1, rest) = rest.split_at_mut(n);
                        let (v2, v3) = rest.split_at_mut(n);
                        for t in 0..run.len {
                            let (c0, c1, c2, c3) =
                                (r[2 * t], r[2 * t + 1], r[2 * t + 2], r[2 * t + 3]);
                            v0[base + t] = c0 - c2;
                            v1[base + t] = c1 + c2;
                            v2[base + t] = c2 - c1;
                            v3[base + t] = c1 - c3;
                        }
                    }
                }
            });
        // M_e = U_e @ V_e, laid out [out][e][tile].
        for e in 0..16 {
            sgemm(
                o,
                n,
                c,
                &mut m[e * n..],
                16 * n,
                1,
                false,
                View {
                    data: &u[e * c..],
                    rs: 16 * c,
                    cs: 1,
                },
                View {
                    data: &v[e * n..],
                    rs: 16 * n,
                    cs: 1,
                },
                1.0,
                Threads::Parallel,
            );
        }
        // out += Aᵀ M A on each (batch, out) plane, A = [[1, 0], [1, 1], [1, -1], [0, -1]],
        // one run of tiles of a tile row at a time.
        let (b_first, b_last) = (t0 / per_image, (t0 + n - 1) / per_image);
        out[b_first * o * plane..(b_last + 1) * o * plane]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each_init(Vec::new, |s, (i, dst)| {
                let (b, oc) = (b_first + i / o, i % o);
                let m_oc = &m[oc * 16 * n..(oc + 1) * 16 * n];
                for run in runs(t0, n, per_image, tiles_w).filter(|r| r.b == b) {
                    let len = run.len;
                    let at = |e: usize| &m_oc[e * n + run.k0..e * n + run.k0 + len];
                    // s = Aᵀ M: 2 rows x 4 columns of runs, laid out [(row, column)][tile].
                    s.clear();
                    s.resize(8 * len, 0.0f32);
                    for j in 0..4 {
                        let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                        let (s0, s1) = s.split_at_mut(4 * len);
                        let (s0, s1) = (&mut s0[j * len..][..len], &mut s1[j * len..][..len]);
                        for t in 0..len {
                            s0[t] = m0[t] + m1[t] + m2[t];
                            s1[t] = m1[t] - m2[t] - m3[t];
                        }
                    }
                    // Y = s A, added to output rows 2 ty and 2 ty + 1.
                    for row in 0..2 {
                        let y = 2 * run.ty + row;
                        if y >= oh {
                            continue;
                        }
                        let sr = &s[4 * row * len..4 * (row + 1) * len];
                        let (c0, c1, c2, c3) = (
                            &sr[..len],
                            &sr[len..2 * len],
                            &sr[2 * len..3 * len],
                            &sr[3 * len..],
                        );
                        let out_row = &mut dst[y * ow..(y + 1) * ow];
                        let x0 = 2 * run.tx0;
                        // Full tiles: both columns inside the image.
                        let full = len.min((ow - x0) / 2);
                        for (t, pair) in out_row[x0..x0 + 2 * full].chunks_exact_mut(2).enumerate()
                        {
                            pair[0] += c0[t] + c1[t] + c2[t];
                            pair[1] += c1[t] - c2[t] - c3[t];
                        }
                        if full < len {
                            // The last tile of an odd-width row: its left column only.
                            let t = full;
                            out_row[x0 + 2 * t] += c0[t] + c1[t] + c2[t];
                        }
                    }
                }
            });
    }
}

/// A run of consecutive tiles of one tile row of one image: tiles `k0..k0 + len` of the block
/// are `(ty, tx0..tx0 + len)` of image `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    b: usize,
    ty: usize,
    tx0: usize,
    k0: usize,
    len: usize,
}

/// The runs that make up the block of tiles `t0..t0 + n` (tile `t` is image `t / per_image`,
/// row-major within it).
fn runs(t0: usize, n: usize, per_image: usize, tiles_w: usize) -> impl Iterator<Item = Run> {
    let mut k = 0;
    std::iter::from_fn(move || {
        if k >= n {
            return None;
        }
        let t = t0 + k;
        let (b, r) = (t / per_image, t % per_image);
        let (ty, tx0) = (r / tiles_w, r % tiles_w);
        let len = (tiles_w - tx0).min(n - k);
        let run = Run {
            b,
            ty,
            tx0,
            k0: k,
            len,
        };
        k += len;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64, reading the input nearest-upsampled by `g.upsample`.
    fn naive(x: &[f32], wt: &[f32], g: Conv) -> Vec<f64> {
        let [oh, ow] = g.output_size().unwrap();
        let (c, h, w, up) = (g.in_channels, g.height, g.width, g.upsample);
        let (hs, ws) = (h / up, w / up);
        let mut out = vec![0.0; g.batch * g.out_channels * oh * ow];
        for b in 0..g.batch {
            for oc in 0..g.out_channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0f64;
                        for ic in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy + ky) as isize - g.padding[0] as isize;
                                    let ix = (ox + kx) as isize - g.padding[2] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let (sy, sx) = (iy as usize / up, ix as usize / up);
                                    let xv = x[((b * c + ic) * hs + sy) * ws + sx] as f64;
                                    let wv = wt[((oc * c + ic) * 3 + ky) * 3 + kx] as f64;
                                    acc += xv * wv;
                                }
                            }
                        }
                        out[((b * g.out_channels + oc) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition() {
        // (batch, in, out, h, w, padding, upsample): odd sizes (a partial last tile), no and
        // asymmetric padding, an upsampled input, several batches in one tile block.
        let cases = [
            (2, 16, 24, 9, 11, [1, 1, 1, 1], 1),
            (1, 17, 16, 16, 16, [1, 1, 1, 1], 1),
            (1, 16, 16, 13, 12, [0, 0, 0, 0], 1),
            (3, 16, 20, 8, 10, [0, 1, 0, 1], 1),
            (1, 16, 18, 12, 16, [1, 1, 1, 1], 2),
        ];
        for (i, &(batch, c, o, h, w, padding, upsample)) in cases.iter().enumerate() {
            let g = Conv {
                batch,
                in_channels: c,
                height: h,
                width: w,
                out_channels: o,
                kernel: [3, 3],
                stride: [1, 1],
                padding,
                upsample,
            };
            let x = noise(batch * c * (h / upsample) * (w / upsample), i as u64);
            let wt = noise(o * c * 9, 100 + i as u64);
            let [oh, ow] = g.output_size().unwrap();
            let prefill = noise(batch * o * oh * ow, 200 + i as u64);
            let mut got = prefill.clone();
            accumulate(&x, &wt, &mut got, g);
            let want = naive(&x, &wt, g);
            let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .zip(&prefill)
                .map(|((g, w), p)| ((*g as f64 - *p as f64) - w).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= 2e-6 * scale * (c as f64).sqrt(),
                "case {i}: max |diff| {err:e} (scale {scale})"
            );
        }
    }

    #[test]
    fn small_tile_blocks_give_the_same_result() {
        // Tile blocks that split an image and straddle two: the same values as one block.
        let g = Conv {
            batch: 2,
            in_channels: 16,
            height: 10,
            width: 14,
            out_channels: 16,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1, 1, 1],
            upsample: 1,
        };
        let x = noise(2 * 16 * 10 * 14, 7);
        let wt = noise(16 * 16 * 9, 8);
        let want = naive(&x, &wt, g);
        for block in [1, 8, 35, 1000] {
            let mut got = vec![0.0f32; want.len()];
            accumulate_in_blocks(&x, &wt, &mut got, g, block);
            for (a, b) in got.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-5, "block {block}: {a} vs {b}");
            }
        }
        assert!(applies(&Conv { batch: 4, ..g }));
        assert!(!applies(&Conv { batch: 1, ..g }), "35 tiles: im2col");
        assert!(!applies(&Conv {
            stride: [2, 2],
            ..g
        }));
    }
}
