//! Scores of inpainting results for `nullpaint eval` (the paper's Table 1 protocol): the
//! Fréchet distance of feature sets ([`frechet`]: FID with the [`inception`] features), PSNR /
//! SSIM over the hole ([`quality`]) and [`lpips`]. Checked against pytorch-fid, scipy,
//! scikit-image and the lpips package (tests/metrics.rs).

pub mod frechet;
pub mod inception;
pub mod lpips;
pub mod quality;
