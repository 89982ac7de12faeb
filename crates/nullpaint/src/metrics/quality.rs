//! PSNR and SSIM of an inpainted picture against the original, over the hole (mask >= 128):
//! the known pixels are pasted back and would only inflate both scores.
//!
//! - PSNR: `10 log10(255² / MSE)`, the MSE over the hole's pixels and the three channels
//!   (skimage's `peak_signal_noise_ratio(gt[hole], out[hole], data_range=255)`); infinite when
//!   the hole is reproduced exactly.
//! - SSIM: the SSIM map of skimage's `structural_similarity` with its defaults (Wang et al.
//!   2004: a 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, data range 255, each
//!   channel on its own, edges mirrored as scipy's `uniform_filter` mode "reflect"), averaged
//!   over the hole's pixels and the three channels. The window reaches 3 px around each hole
//!   pixel, so the hole's border also sees the known pixels, as it does in the picture.

use thiserror::Error;

use crate::pixels::{MaskImage, RgbImage};

#[derive(Debug, Error, PartialEq)]
pub enum QualityError {
    #[error("the pictures differ in size: {0}x{1} and {2}x{3}")]
    Sizes(usize, usize, usize, usize),
    #[error("the mask is {0}x{1}, the pictures {2}x{3}")]
    MaskSize(usize, usize, usize, usize),
    #[error("the mask has no hole (no pixel >= 128): nothing to score")]
    NoHole,
    #[error("{0}x{1} is smaller than SSIM's 7x7 window")]
    TooSmall(usize, usize),
}

fn check(a: &RgbImage, b: &RgbImage, mask: &MaskImage) -> Result<(), QualityError> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(QualityError::Sizes(a.width, a.height, b.width, b.height));
    }
    if (mask.width, mask.height) != (a.width, a.height) {
        return Err(QualityError::MaskSize(
            mask.width,
            mask.height,
            a.width,
            a.height,
        ));
    }
    if !mask.data.iter().any(|&m| m >= 128) {
        return Err(QualityError::NoHole);
    }
    Ok(())
}

/// PSNR in dB over the hole (see the module); `f64::INFINITY` for an exact hole.
pub fn psnr_in_hole(
    original: &RgbImage,
    result: &RgbImage,
    mask: &MaskImage,
) -> Result<f64, QualityError> {
    check(original, result, mask)?;
    let (mut sum, mut count) = (0f64, 0usize);
    for (p, &m) in mask.data.iter().enumerate() {
        if m >= 128 {
            for c in 0..3 {
                let d = original.data[p * 3 + c] as f64 - result.data[p * 3 + c] as f64;
                sum += d * d;
            }
            count += 3;
        }
    }
    let mse = sum / count as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    })
}

/// scipy's `uniform_filter1d` (size 7, origin 0, mode "reflect": `d c b a | a b c d | d c b a`)
/// along one axis of a `w x h` plane; `horizontal` filters rows.
fn box7(src: &[f64], w: usize, h: usize, horizontal: bool) -> Vec<f64> {
    const R: isize = 3;
    let (len, lines) = if horizontal { (w, h) } else { (h, w) };
    let reflect = |i: isize| -> usize {
        // half-sample symmetric, repeated for windows wider than the line
        let n = len as isize;
        let period = 2 * n;
        let mut k = i.rem_euclid(period);
        if k >= n {
            k = period - 1 - k;
        }
        k as usize
    };
    let mut out = vec![0f64; src.len()];
    for line in 0..lines {
        let at = |i: usize| {
            if horizontal {
                line * w + i
            } else {
                i * w + line
            }
        };
        for i in 0..len {
            let mut s = 0.0;
            for o in -R..=R {
                s += src[at(reflect(i as isize + o))];
            }
            out[at(i)] = s / 7.0;
        }
    }
    out
}

/// SSIM over the hole (see the module).
pub fn ssim_in_hole(
    original: &RgbImage,
    result: &RgbImage,
    mask: &MaskImage,
) -> Result<f64, QualityError> {
    check(original, result, mask)?;
    let (w, h) = (original.width, original.height);
    if w < 7 || h < 7 {
        return Err(QualityError::TooSmall(w, h));
    }
    let filter = |plane: &[f64]| box7(&box7(plane, w, h, true), w, h, false);
    const NP: f64 = 49.0;
    let cov_norm = NP / (NP - 1.0);
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let (mut sum, mut count) = (0f64, 0usize);
    for c in 0..3 {
        let x: Vec<f64> = original
            .data
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let y: Vec<f64> = result
            .data
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let ux = filter(&x);
        let uy = filter(&y);
        let uxx = filter(&x.iter().map(|v| v * v).collect::<Vec<_>>());
        let uyy = filter(&y.iter().map(|v| v * v).collect::<Vec<_>>());
        let uxy = filter(&x.iter().zip(&y).map(|(a, b)| a * b).collect::<Vec<_>>());
        for (p, &m) in mask.data.iter().enumerate() {
            if m < 128 {
                continue;
            }
            let vx = cov_norm * (uxx[p] - ux[p] * ux[p]);
            let vy = cov_norm * (uyy[p] - uy[p] * uy[p]);
            let vxy = cov_norm * (uxy[p] - ux[p] * uy[p]);
            let a1 = 2.0 * ux[p] * uy[p] + c1;
            let a2 = 2.0 * vxy + c2;
            let b1 = ux[p] * ux[p] + uy[p] * uy[p] + c1;
            let b2 = vx + vy + c2;
            sum += (a1 * a2) / (b1 * b2);
            count += 1;
        }
    }
    Ok(sum / count as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn picture(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> RgbImage {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn identical_holes_score_perfectly_and_known_pixels_do_not_count() {
        let a = picture(20, 12, |x, y, c| (x * 5 + y * 3 + c * 40) as u8);
        let mut b = a.clone();
        // change only known pixels (left half); the hole is the right half
        for y in 0..12 {
            for x in 0..5 {
                b.data[(y * 20 + x) * 3] ^= 0x55;
            }
        }
        let mask = MaskImage {
            width: 20,
            height: 12,
            data: (0..240)
                .map(|p| if p % 20 >= 10 { 255 } else { 0 })
                .collect(),
        };
        assert_eq!(psnr_in_hole(&a, &b, &mask).unwrap(), f64::INFINITY);
        assert!((ssim_in_hole(&a, &b, &mask).unwrap() - 1.0).abs() < 1e-12);
        // a uniform error of 5 levels in the hole: PSNR = 10 log10(255² / 25)
        let c = picture(20, 12, |x, y, ch| {
            let v = (x * 5 + y * 3 + ch * 40) as u8;
            if x >= 10 { v.wrapping_add(5) } else { v }
        });
        let want = 10.0 * (255.0f64 * 255.0 / 25.0).log10();
        let got = psnr_in_hole(&a, &c, &mask).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }

    #[test]
    fn mismatches_are_errors() {
        let a = picture(4, 4, |_, _, _| 0);
        let b = picture(4, 3, |_, _, _| 0);
        let m = MaskImage {
            width: 4,
            height: 4,
            data: vec![255; 16],
        };
        assert_eq!(
            psnr_in_hole(&a, &b, &m),
            Err(QualityError::Sizes(4, 4, 4, 3))
        );
        let empty = MaskImage {
            width: 4,
            height: 4,
            data: vec![0; 16],
        };
        assert_eq!(ssim_in_hole(&a, &a, &empty), Err(QualityError::NoHole));
        assert_eq!(ssim_in_hole(&a, &a, &m), Err(QualityError::TooSmall(4, 4)));
    }
}
