//! 8-bit pixel buffers exchanged with the pipeline: the photo (RGB) and the mask (one byte per
//! pixel, luminance >= 128 = hole). Decoding files is the callers' business (the CLI's `image`
//! crate, the browser's canvas); the library only sees these.

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// An 8-bit single-channel mask: luminance >= 128 marks the hole (to be filled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The pixel at `(x, y)`.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

impl MaskImage {
    /// Whether pixel `i` (row-major) is in the hole.
    pub fn is_hole(&self, i: usize) -> bool {
        self.data[i] >= 128
    }

    /// Whether pixel `(x, y)` is in the hole.
    pub fn is_hole_at(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x] >= 128
    }

    /// Whether any pixel is in the hole.
    pub fn has_hole(&self) -> bool {
        self.data.iter().any(|&v| v >= 128)
    }
}
