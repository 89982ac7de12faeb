//! Image and mask files to the pipeline's pixel buffers, with the `image` crate (feature
//! `decode`: the CLI, batch and server; the page decodes in the browser, see www/app.js).
//!
//! Conventions, as diffusers reads its inputs (`PIL.Image.open(...).convert(...)`) except where
//! stated: the photo as 8-bit RGB with the alpha dropped (not composited), the mask by luminance
//! with PIL's `convert("L")` weights, both upright (EXIF orientation applied, as browsers and
//! `ImageOps.exif_transpose` do). Every file is treated as hostile: its claimed size is checked
//! before any pixel is decoded and the decoder's allocations are capped (fuzzed: fuzz/).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits};

use crate::pixels::{MaskImage, RgbImage};

/// The largest picture read, in pixels: 2^28 = 268,435,456 (16384 x 16384, above any phone or
/// camera photo). A file whose header claims more is refused before its pixels are decoded: a
/// few bytes of PNG can claim gigabytes (a "decompression bomb").
pub const MAX_PIXELS: u64 = 1 << 28;

/// The most memory a decoder may allocate (the `image` crate's `Limits::max_alloc`): 4 GiB,
/// enough for [`MAX_PIXELS`] of 16-bit RGBA (2 GiB) plus the decoder's own buffers.
pub const MAX_DECODER_ALLOC: u64 = 4 << 30;

/// Why a file could not be read as a picture.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The header claims more than [`MAX_PIXELS`].
    #[error(
        "{width}x{height} ({pixels} pixels): more than the {MAX_PIXELS} pixels (2^28, e.g. \
         16384x16384) nullpaint reads; a damaged file or a decompression bomb?"
    )]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
    },
    /// Decoding would allocate more than the limit given to the decoder.
    #[error(
        "the decoder would need more than {} of memory (a damaged file or a decompression \
         bomb?): {error}", human_bytes(*limit)
    )]
    Limits { error: ImageError, limit: u64 },
    /// Not a format the `image` build reads, or a damaged file.
    #[error("{0} (nullpaint reads PNG, JPEG, WebP and BMP)")]
    Image(#[from] ImageError),
}

/// `4294967296` -> "4 GiB", `1536` -> "1.5 KiB".
fn human_bytes(n: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    let v = format!("{v:.1}");
    format!("{} {}", v.trim_end_matches(".0"), units[unit])
}

/// Decodes `bytes` upright with the allocation cap `max_alloc` (bytes): the format is guessed
/// from the content, the size checked against [`MAX_PIXELS`], the EXIF orientation that the
/// `image` crate reads (JPEG APP1, PNG eXIf before the pixel data, WebP EXIF chunk) applied. An
/// EXIF block that cannot be read is ignored (the picture is taken as stored), as browsers do.
/// Colour type and bit depth are kept; [`rgb_image`] and [`mask_image`] convert.
pub fn decode_upright_with_limit(
    bytes: &[u8],
    max_alloc: u64,
) -> Result<DynamicImage, DecodeError> {
    let limits_error = |e: ImageError| match e {
        ImageError::Limits(_) => DecodeError::Limits {
            error: e,
            limit: max_alloc,
        },
        e => DecodeError::Image(e),
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Image(ImageError::IoError(e)))?;
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(limits_error)?;
    // `into_decoder` caps the decoder's own buffers only; the picture's buffer is reserved
    // here, as `ImageReader::decode` does (without it a file within MAX_PIXELS could still ask
    // for more than the cap).
    limits
        .reserve(decoder.total_bytes())
        .map_err(limits_error)?;
    decoder.set_limits(limits).map_err(limits_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
        });
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(limits_error)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// [`decode_upright_with_limit`] with [`MAX_DECODER_ALLOC`].
pub fn decode_upright(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    decode_upright_with_limit(bytes, MAX_DECODER_ALLOC)
}

/// A decoded picture as the photo: 8-bit RGB, alpha dropped (not composited), gray replicated to
/// R = G = B, palettes looked up, low bit depths scaled to 0..255, 16-bit samples rounded to 8
/// bits as `round(v * 255 / 65535)` (`(v + 128) / 257`, the `image` crate's conversion; PIL
/// instead keeps the high byte of 16-bit RGB and clips 16-bit gray, which this does not copy).
pub fn to_rgb_image(img: &DynamicImage) -> RgbImage {
    let rgb = img.to_rgb8();
    RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    }
}

/// A decoded picture as the mask: grayscale as is (16-bit gray rounded to 8 bits as in
/// [`to_rgb_image`]); colour converted with PIL's `convert("L")` weights (ITU-R 601-2,
/// `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`), as diffusers does, on the 8-bit RGB that
/// [`to_rgb_image`] gives (so a 16-bit colour mask is first rounded to 8 bits per channel);
/// alpha ignored.
pub fn to_mask_image(img: &DynamicImage) -> MaskImage {
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
    MaskImage {
        width: img.width() as usize,
        height: img.height() as usize,
        data,
    }
}

/// The photo in `bytes` (any format [`decode_upright`] reads), upright, as 8-bit RGB.
pub fn rgb_image(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_upright(bytes).map(|img| to_rgb_image(&img))
}

/// The mask in `bytes`, upright, by luminance (see [`to_mask_image`]).
pub fn mask_image(bytes: &[u8]) -> Result<MaskImage, DecodeError> {
    decode_upright(bytes).map(|img| to_mask_image(&img))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .unwrap_or_else(|e| panic!("{e}"));
        out.into_inner()
    }

    #[test]
    fn rgba_photo_drops_alpha_and_mask_ignores_it() {
        let img = image::RgbaImage::from_raw(2, 1, vec![200, 100, 50, 0, 255, 255, 255, 0])
            .unwrap_or_else(|| unreachable!());
        let bytes = png(DynamicImage::ImageRgba8(img));
        let photo = rgb_image(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(photo.data, vec![200, 100, 50, 255, 255, 255]);
        let mask = mask_image(&bytes).unwrap_or_else(|e| panic!("{e}"));
        // (19595*200 + 38470*100 + 7471*50 + 0x8000) >> 16 = 124 (PIL: 0.299 R + 0.587 G + 0.114 B).
        assert_eq!(mask.data, vec![124, 255]);
    }

    #[test]
    fn garbage_and_bombs_are_errors() {
        assert!(matches!(
            rgb_image(b"not an image at all"),
            Err(DecodeError::Image(_))
        ));
        // A valid PNG header (CRC fixed) claiming 65536 x 65536 pixels (2^32), nothing behind.
        let mut bytes = png(DynamicImage::ImageLuma8(image::GrayImage::new(1, 1)));
        bytes[16..20].copy_from_slice(&65536u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&65536u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = mask_image(&bytes).map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    pixels: 4294967296,
                    ..
                }
            ),
            "{err}"
        );
        // Within MAX_PIXELS but over a small allocation limit: the limit error, limit named.
        let bytes = png(DynamicImage::ImageLuma8(image::GrayImage::new(64, 64)));
        let err = decode_upright_with_limit(&bytes, 1536)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, DecodeError::Limits { .. }), "{err}");
        assert!(
            err.to_string().contains("more than 1.5 KiB of memory"),
            "{err}"
        );
        assert_eq!(human_bytes(MAX_DECODER_ALLOC), "4 GiB");
    }

    /// PNG's CRC-32 (ISO 3309, reflected 0xEDB88320), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
