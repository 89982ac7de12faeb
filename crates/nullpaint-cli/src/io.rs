//! Image and mask files: decoding with the `image` crate, and outputs written atomically
//! (a temporary file in the output's folder, renamed at the end; inputs are never overwritten).

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::ImageFormat;
use nullpaint::decode;
use nullpaint::pipeline::{MaskImage, RgbImage};

/// Reads any image the `image` crate decodes, upright, as 8-bit RGB (alpha dropped): see
/// [`nullpaint::decode::to_rgb_image`].
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = read_input(path, "image")?;
    decode::rgb_image(&bytes).with_context(|| format!("cannot read the image {}", path.display()))
}

/// Reads a mask, upright, by luminance with the alpha ignored: see
/// [`nullpaint::decode::to_mask_image`].
pub fn load_mask(path: &Path) -> Result<MaskImage> {
    let bytes = read_input(path, "mask")?;
    decode::mask_image(&bytes).with_context(|| format!("cannot read the mask {}", path.display()))
}

/// The bytes of an input file (`what`: "image" or "mask", for the message).
fn read_input(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
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

    /// A one-line warning when the output format is lossy, for the CLI to print before the
    /// model runs: JPEG (the `image` crate's encoder, quality 75) changes every pixel, the
    /// known ones included. PNG and BMP are lossless, and so is WebP here: the `image` crate
    /// 0.25 encodes WebP only losslessly (VP8L, `WebPEncoder::new_lossless`), so `.webp` gets
    /// no warning.
    pub fn lossy_warning(&self) -> Option<String> {
        match self.format {
            ImageFormat::Jpeg => Some(format!(
                "{}: JPEG is lossy (quality 75): the known pixels will not be byte-identical to \
                 the input; use .png (or .webp, .bmp) to keep them",
                self.path.display()
            )),
            _ => None,
        }
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

/// Every file of `tests/fixtures/inputs/` (written by `tests/fixtures/generate_inputs.py` with
/// Pillow and numpy) read here and compared with the reference the generator computed.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn inputs() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/inputs")
    }

    /// Images: (file, reference, tolerance = max abs difference per channel). JPEG references
    /// are PIL's (libjpeg-turbo) decode of the same file, transposed; zune-jpeg differs from it
    /// by IDCT rounding (4:4:4), and by chroma upsampling as well (4:2:0).
    const IMAGES: &[(&str, &str, u8)] = &[
        ("upright.png", "upright.png", 0),
        ("orient1.png", "orient1.png.ref.png", 0),
        ("orient2.png", "orient2.png.ref.png", 0),
        ("orient3.png", "orient3.png.ref.png", 0),
        ("orient4.png", "orient4.png.ref.png", 0),
        ("orient5.png", "orient5.png.ref.png", 0),
        ("orient6.png", "orient6.png.ref.png", 0),
        ("orient7.png", "orient7.png.ref.png", 0),
        ("orient8.png", "orient8.png.ref.png", 0),
        ("orient3.jpg", "orient3.jpg.ref.png", 3),
        ("orient6.jpg", "orient6.jpg.ref.png", 3),
        ("orient8.jpg", "orient8.jpg.ref.png", 3),
        ("orient6-mm-420.jpg", "orient6-mm-420.jpg.ref.png", 5),
        ("orient3.webp", "orient3.webp.ref.png", 0),
        ("orient6.webp", "orient6.webp.ref.png", 0),
        ("rgb16.png", "rgb16.png.rgb.png", 0),
        ("rgba16.png", "rgba16.png.rgb.png", 0),
        ("gray16.png", "gray16.png.rgb.png", 0),
        ("la16.png", "la16.png.rgb.png", 0),
        ("gray8.png", "gray8.png.rgb.png", 0),
        ("la8.png", "la8.png.rgb.png", 0),
        ("palette.png", "palette.png.rgb.png", 0),
        ("palette-trns.png", "palette-trns.png.rgb.png", 0),
        ("gray1.png", "gray1.png.rgb.png", 0),
    ];

    /// Masks: (file, reference), exact.
    const MASKS: &[(&str, &str)] = &[
        ("mask-upright.png", "mask-upright.png"),
        ("mask-orient6.png", "mask-orient6.png.ref.png"),
        ("rgb16.png", "rgb16.png.mask.png"),
        ("rgba16.png", "rgba16.png.mask.png"),
        ("gray16.png", "gray16.png.mask.png"),
        ("la16.png", "la16.png.mask.png"),
        ("gray8.png", "gray8.png.mask.png"),
        ("la8.png", "la8.png.mask.png"),
        ("palette.png", "palette.png.mask.png"),
        ("palette-trns.png", "palette-trns.png.mask.png"),
        ("gray1.png", "gray1.png.mask.png"),
    ];

    fn max_diff(a: &[u8], b: &[u8]) -> u8 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0)
    }

    /// Every fixture compared with its reference; all the failures listed at once.
    #[test]
    fn images_load_upright_as_8_bit_rgb_like_the_reference() {
        let mut failures = Vec::new();
        for &(file, reference, tolerance) in IMAGES {
            let got = load_image(&inputs().join(file)).unwrap();
            let want = image::open(inputs().join(reference)).unwrap().to_rgb8();
            let want_size = (want.width() as usize, want.height() as usize);
            if (got.width, got.height) != want_size {
                failures.push(format!(
                    "{file}: {}x{}, want {}x{}",
                    got.width, got.height, want_size.0, want_size.1
                ));
                continue;
            }
            let d = max_diff(&got.data, want.as_raw());
            if d > tolerance {
                failures.push(format!(
                    "{file}: differs from {reference} by up to {d} (tolerance {tolerance})"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn orientation_fixtures_are_stored_other_than_upright() {
        // Without the EXIF orientation, every fixture but orientation 1 reads wrong: the test
        // above would catch an `image` crate that silently stopped reporting it.
        for &(file, reference, tolerance) in IMAGES {
            if !file.starts_with("orient") || file.starts_with("orient1.") {
                continue;
            }
            let raw = image::open(inputs().join(file)).unwrap().to_rgb8();
            let want = image::open(inputs().join(reference)).unwrap().to_rgb8();
            let same = raw.dimensions() == want.dimensions()
                && max_diff(raw.as_raw(), want.as_raw()) <= tolerance;
            assert!(!same, "{file} decodes upright even without its orientation");
        }
    }

    #[test]
    fn masks_load_upright_as_pil_convert_l() {
        let mut failures = Vec::new();
        for &(file, reference) in MASKS {
            let got = load_mask(&inputs().join(file)).unwrap();
            let want = image::open(inputs().join(reference)).unwrap().to_luma8();
            let want_size = (want.width() as usize, want.height() as usize);
            if (got.width, got.height) != want_size {
                failures.push(format!(
                    "{file}: {}x{}, want {}x{}",
                    got.width, got.height, want_size.0, want_size.1
                ));
            } else if got.data != *want.as_raw() {
                failures.push(format!("{file}: values differ from {reference}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_fixture_of_inputs_json_is_checked() {
        let json = std::fs::read_to_string(inputs().join("inputs.json")).unwrap();
        let key = "\"file\": \"";
        let listed: Vec<&str> = json
            .match_indices(key)
            .map(|(i, _)| {
                let rest = &json[i + key.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        assert!(listed.len() > 20, "inputs.json lists {listed:?}");
        for file in &listed {
            let checked = IMAGES.iter().any(|e| e.0 == *file)
                || MASKS.iter().any(|e| e.0 == *file)
                || file.starts_with("bomb-");
            assert!(checked, "{file} of inputs.json has no test");
        }
        for file in IMAGES.iter().map(|e| e.0).chain(MASKS.iter().map(|e| e.0)) {
            assert!(listed.contains(&file), "{file} is not in inputs.json");
        }
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        let path = inputs().join("bomb-20000x20000.png");
        for message in [
            format!("{:#}", load_image(&path).unwrap_err()),
            format!("{:#}", load_mask(&path).unwrap_err()),
        ] {
            assert!(message.contains("bomb-20000x20000.png"), "{message}");
            assert!(message.contains("20000x20000"), "{message}");
            assert!(message.contains("268435456"), "{message}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("nullpaint-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.png");
        let e = format!("{:#}", load_image(&missing).unwrap_err());
        assert!(
            e.contains("cannot read the image") && e.contains("missing.png"),
            "{e}"
        );
        let text = dir.join("notes.png");
        std::fs::write(&text, "not a picture").unwrap();
        let e = format!("{:#}", load_mask(&text).unwrap_err());
        assert!(
            e.contains("cannot read the mask") && e.contains("notes.png"),
            "{e}"
        );
        let truncated = dir.join("truncated.jpg");
        let jpeg = std::fs::read(inputs().join("orient6.jpg")).unwrap();
        std::fs::write(&truncated, &jpeg[..jpeg.len() / 3]).unwrap();
        let e = format!("{:#}", load_image(&truncated).unwrap_err());
        assert!(e.contains("truncated.jpg"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_jpeg_output_is_lossy() {
        let dir = std::env::temp_dir().join(format!("nullpaint-lossy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, lossy) in [
            ("out.jpg", true),
            ("out.JPEG", true),
            ("out.png", false),
            ("out.webp", false),
            ("out.bmp", false),
        ] {
            let output = PendingOutput::create(&dir.join(name), &[]).unwrap();
            let warning = output.lossy_warning();
            assert_eq!(warning.is_some(), lossy, "{name}: {warning:?}");
            if let Some(w) = warning {
                assert!(
                    w.contains("lossy") && w.contains(".png") && !w.contains('\n'),
                    "{w}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn webp_output_is_lossless_indeed() {
        // The claim behind "no warning for .webp": what commit writes reads back identical.
        let dir = std::env::temp_dir().join(format!("nullpaint-webp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = load_image(&inputs().join("rgb16.png")).unwrap();
        let path = dir.join("out.webp");
        PendingOutput::create(&path, &[])
            .unwrap()
            .commit(&image)
            .unwrap();
        let back = load_image(&path).unwrap();
        assert_eq!((back.width, back.height), (image.width, image.height));
        assert_eq!(back.data, image.data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
