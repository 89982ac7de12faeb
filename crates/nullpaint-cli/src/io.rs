//! Image and mask files: decoding with the `image` crate, and outputs written atomically
//! (a temporary file in the output's folder, renamed at the end; inputs are never overwritten).

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::ImageFormat;
use nullpaint::pipeline::{MaskImage, RgbImage};

/// Reads any image the `image` crate decodes, as 8-bit RGB (alpha dropped, not composited).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let img =
        image::open(path).with_context(|| format!("cannot read the image {}", path.display()))?;
    let rgb = img.to_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// Reads a mask: grayscale as is; colour converted with PIL's `convert("L")` weights
/// (ITU-R 601-2), as diffusers does; alpha ignored.
pub fn load_mask(path: &Path) -> Result<MaskImage> {
    let img =
        image::open(path).with_context(|| format!("cannot read the mask {}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = if img.color().has_color() {
        img.to_rgb8()
            .pixels()
            .map(|p| {
                ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16)
                    as u8
            })
            .collect()
    } else {
        img.to_luma8().into_raw()
    };
    Ok(MaskImage {
        width: w,
        height: h,
        data,
    })
}

/// `photo.jpg` -> `photo.inpainted.png` beside it.
pub fn default_output(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    image.with_file_name(format!("{stem}.inpainted.png"))
}

/// A random seed from the OS (std's hasher keys), in the u32 range torch seeds are usually in.
pub fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() & 0xffff_ffff
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The output file, checked and reserved before the model runs: the format is known, it is not
/// one of the inputs, and its folder is writable. Dropped without [`PendingOutput::commit`], it
/// leaves nothing behind.
#[derive(Debug)]
pub struct PendingOutput {
    path: PathBuf,
    tmp: PathBuf,
    format: ImageFormat,
    committed: bool,
}

impl PendingOutput {
    pub fn create(path: &Path, inputs: &[&Path]) -> Result<Self> {
        let format = ImageFormat::from_path(path).ok().filter(|f| {
            matches!(
                f,
                ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Bmp
            )
        });
        let Some(format) = format else {
            bail!(
                "cannot tell the output format of {}: use a .png, .jpg, .webp or .bmp file name",
                path.display()
            );
        };
        for input in inputs {
            if same_file(path, input) {
                bail!(
                    "the output {} is one of the inputs; choose another --output (inputs are never overwritten)",
                    path.display()
                );
            }
        }
        if path.is_dir() {
            bail!(
                "the output {} is a folder; give a file name",
                path.display()
            );
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!("the output folder {} does not exist", dir.display());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write to the output folder {}", dir.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            format,
            committed: false,
        })
    }

    /// Encodes the image into the temporary file, then renames it over the output.
    pub fn commit(mut self, image: &RgbImage) -> Result<()> {
        let buffer =
            image::RgbImage::from_raw(image.width as u32, image.height as u32, image.data.clone())
                .context("internal error: the result has the wrong number of bytes")?;
        buffer
            .save_with_format(&self.tmp, self.format)
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot move the result to {}", self.path.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
