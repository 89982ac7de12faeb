//! Scores of inpainting results for `nullpaint eval` (the paper's Table 1 protocol): the
//! Fréchet distance of feature sets ([`frechet`]: FID with InceptionV3 features) and PSNR / SSIM
//! over the hole ([`quality`]). Everything in f64, checked against pytorch-fid, scipy and
//! scikit-image (tests/metrics.rs).

pub mod frechet;
pub mod inception;
pub mod quality;
