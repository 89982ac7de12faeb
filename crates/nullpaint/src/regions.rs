//! Photos larger than the model: regions (SPEC.md, "Photos larger than the model").
//!
//! Stable Diffusion is trained at its working size `S` (`unet sample_size x VAE factor`: 512 for
//! SD 1.x / 2.x-base, 768 for SD 2.x-v) and paints repeated patterns far above it; a 12-megapixel
//! photo run whole also takes hours. So a large photo is inpainted by regions around its holes,
//! as A1111's "inpaint only masked", IOPaint's crop strategy, diffusers' `padding_mask_crop` and
//! ComfyUI's Crop&Stitch do; this module is pure (no model, no device) and holds every rule, so
//! the CLI and the browser run the same geometry. The exact rules, boxes half-open
//! `[x0, x1) x [y0, y1)`:
//!
//! 0. Outpainting ([`extend_canvas`]): the canvas grows by `(left, top, right, bottom)` pixels;
//!    new pixels take the nearest original pixel (edge replication) and are hole.
//! 1. Parts ([`hole_parts`]): 8-connected components of the hole (mask >= 128), as bounding boxes.
//! 2. A group of parts with union box `B` gets the region ([`region_rect`]), per axis: the
//!    context margin `c` (`lo = max(0, B.lo - c)`, `hi = min(side, B.hi + c)`), then growth to
//!    `T = min(S, side)` when shorter: `extra = T - (hi - lo)`, `lo -= extra / 2`,
//!    `hi += extra - extra / 2`, shifted back inside the image rather than clipped.
//! 3. Merging ([`plan`]): one group per part, sorted by region `(y0, x0, y1, x1)`; while some pair
//!    of regions overlaps (positive area), the first such pair `(i < j)` becomes one group (union of
//!    boxes), its region recomputed, the list re-sorted.
//! 4. Regions run in order `(y0, x0)`; region `k` uses seed `seed + k` (wrapping).
//! 5. A region whose longer side exceeds `S` runs scaled ([`run_size`]): longer side `S`, shorter
//!    `max(1, round_half_up(short * S / long))`; the image by an area filter (Pillow's `BOX`),
//!    the mask by "hole if any hole pixel in the footprint" ([`downscale_mask`]); its raw decode is
//!    upscaled back with Lanczos3 (Pillow's `LANCZOS`). Resampling is `fast_image_resize`'s
//!    convolution, which follows Pillow's.
//! 6. Blend ([`blend`]) inside the region box only: hole pixels take the result; with feather `f`
//!    a known pixel at Euclidean distance `0 < d <= f` from the hole takes
//!    `round_half_even(w * result + (1 - w) * canvas)`, `w = 1 - d / (f + 1)`, in f64; every other
//!    pixel is untouched. Later regions see earlier results. `f <= c` keeps the band inside the
//!    box (a hole pixel within `f` of a box belongs to that box's region, else the two regions
//!    would overlap and have been merged).
//! 7. Whole mode is one region, the whole canvas, never scaled, seed + 0: with `f = 0` exactly
//!    the single pass of SPEC.md (same seed, same image as diffusers).

use std::fmt;
use std::str::FromStr;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::pixels::{MaskImage, RgbImage};

/// Default context margin around each hole, in pixels (IOPaint's crop margin).
pub const DEFAULT_CONTEXT: usize = 128;
/// Largest context margin accepted.
pub const MAX_CONTEXT: usize = 4096;
/// Largest feather band accepted, in pixels.
pub const MAX_FEATHER: usize = 512;
/// Largest extension of one side, in pixels.
pub const MAX_EXTEND: usize = 8192;
/// Largest canvas (after extension), in pixels: 2^28 (16384 x 16384), 768 MiB of RGB.
pub const MAX_CANVAS_PIXELS: usize = 1 << 28;

/// How a photo is split: `auto` runs it whole when it fits the working size, else by regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegionMode {
    #[default]
    Auto,
    /// One pass over the whole canvas, whatever its size.
    Whole,
    /// Regions around the holes, whatever the size.
    Crop,
}

impl FromStr for RegionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "whole" => Ok(Self::Whole),
            "crop" => Ok(Self::Crop),
            other => Err(format!(
                "region mode {other:?}: use \"auto\", \"whole\" or \"crop\""
            )),
        }
    }
}

impl fmt::Display for RegionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Whole => "whole",
            Self::Crop => "crop",
        })
    }
}

/// Pixels added on each side of the canvas for outpainting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extend {
    pub left: usize,
    pub top: usize,
    pub right: usize,
    pub bottom: usize,
}

impl Extend {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The canvas size for a `width x height` photo, `None` when it would overflow.
    pub fn canvas_size(&self, width: usize, height: usize) -> Option<(usize, usize)> {
        let w = width.checked_add(self.left)?.checked_add(self.right)?;
        let h = height.checked_add(self.top)?.checked_add(self.bottom)?;
        Some((w, h))
    }
}

impl FromStr for Extend {
    type Err = String;
    /// `L,T,R,B` in pixels, or one number for all four sides.
    fn from_str(s: &str) -> Result<Self, String> {
        let values = s
            .split(',')
            .map(|v| v.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                format!("extend {s:?}: give LEFT,TOP,RIGHT,BOTTOM in whole pixels (or one number for all sides)")
            })?;
        match values[..] {
            [n] => Ok(Self {
                left: n,
                top: n,
                right: n,
                bottom: n,
            }),
            [left, top, right, bottom] => Ok(Self {
                left,
                top,
                right,
                bottom,
            }),
            _ => Err(format!(
                "extend {s:?}: give 4 numbers LEFT,TOP,RIGHT,BOTTOM (or one for all sides), not {}",
                values.len()
            )),
        }
    }
}

impl fmt::Display for Extend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.left, self.top, self.right, self.bottom
        )
    }
}

/// A box of pixels, `[x, x + width) x [y, y + height)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Rect {
    pub fn right(&self) -> usize {
        self.x + self.width
    }

    pub fn bottom(&self) -> usize {
        self.y + self.height
    }

    /// Whether the two boxes share pixels (touching edges do not).
    pub fn overlaps(&self, other: &Rect) -> bool {
        self.x < other.right()
            && other.x < self.right()
            && self.y < other.bottom()
            && other.y < self.bottom()
    }

    /// The smallest box holding both.
    pub fn union(&self, other: &Rect) -> Rect {
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        Rect {
            x,
            y,
            width: self.right().max(other.right()) - x,
            height: self.bottom().max(other.bottom()) - y,
        }
    }

    fn sort_key(&self) -> (usize, usize, usize, usize) {
        (self.y, self.x, self.bottom(), self.right())
    }
}

/// One region to inpaint: its box in the canvas, the size the model runs it at, its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub rect: Rect,
    pub run_width: usize,
    pub run_height: usize,
    pub seed: u64,
}

impl Region {
    /// Whether the region runs downscaled (and its result is upscaled back).
    pub fn is_scaled(&self) -> bool {
        (self.run_width, self.run_height) != (self.rect.width, self.rect.height)
    }
}

/// Whether a `width x height` canvas is inpainted by regions.
pub fn uses_regions(mode: RegionMode, width: usize, height: usize, working_size: usize) -> bool {
    match mode {
        RegionMode::Whole => false,
        RegionMode::Crop => true,
        RegionMode::Auto => width > working_size || height > working_size,
    }
}

/// The canvas grown by `extend`: new pixels replicate the nearest edge pixel and are hole.
pub fn extend_canvas(image: &RgbImage, mask: &MaskImage, extend: Extend) -> (RgbImage, MaskImage) {
    let (w, h) = (image.width, image.height);
    let (cw, ch) = (
        w + extend.left + extend.right,
        h + extend.top + extend.bottom,
    );
    let mut data = Vec::with_capacity(cw * ch * 3);
    let mut mdata = Vec::with_capacity(cw * ch);
    for y in 0..ch {
        let inside_y = y >= extend.top && y < extend.top + h;
        let sy = y.saturating_sub(extend.top).min(h - 1);
        for x in 0..cw {
            let inside = inside_y && x >= extend.left && x < extend.left + w;
            let sx = x.saturating_sub(extend.left).min(w - 1);
            let i = sy * w + sx;
            data.extend_from_slice(&image.data[i * 3..i * 3 + 3]);
            mdata.push(if inside { mask.data[i] } else { 255 });
        }
    }
    (
        RgbImage {
            width: cw,
            height: ch,
            data,
        },
        MaskImage {
            width: cw,
            height: ch,
            data: mdata,
        },
    )
}

/// Bounding boxes of the 8-connected parts of the hole, in the order their first pixel is met
/// (row-major).
pub fn hole_parts(mask: &MaskImage) -> Vec<Rect> {
    let (w, h) = (mask.width, mask.height);
    let mut seen = vec![false; w * h];
    let mut parts = vec![];
    let mut stack: Vec<usize> = vec![];
    for start in 0..w * h {
        if seen[start] || !mask.is_hole(start) {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = ny * w + nx;
                    if !seen[j] && mask.is_hole(j) {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        parts.push(Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        });
    }
    parts
}

/// One axis of [`region_rect`]: `[lo, hi)` of the hole inside `[0, side)`.
fn axis_span(lo: usize, hi: usize, side: usize, working: usize, context: usize) -> (usize, usize) {
    let mut lo = lo.saturating_sub(context) as i64;
    let mut hi = hi.saturating_add(context).min(side) as i64;
    let (side, target) = (side as i64, working.min(side) as i64);
    if hi - lo < target {
        let extra = target - (hi - lo);
        lo -= extra / 2;
        hi += extra - extra / 2;
        if lo < 0 {
            hi -= lo;
            lo = 0;
        }
        if hi > side {
            lo -= hi - side;
            hi = side;
        }
    }
    (lo as usize, hi as usize)
}

/// The region of a group of parts whose bounding boxes' union is `bbox`, in a
/// `width x height` canvas: `bbox` plus the context margin (clipped at the canvas), grown
/// around its centre to at least `min(working_size, side)` per side (shifted, not clipped, at
/// the borders).
pub fn region_rect(
    bbox: Rect,
    width: usize,
    height: usize,
    working_size: usize,
    context: usize,
) -> Rect {
    let (x0, x1) = axis_span(bbox.x, bbox.right(), width, working_size, context);
    let (y0, y1) = axis_span(bbox.y, bbox.bottom(), height, working_size, context);
    Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    }
}

/// The size a `width x height` region runs at: itself when its longer side is at most
/// `working_size`, else scaled so that the longer side is `working_size` (aspect kept,
/// the shorter side rounded half up, at least 1).
pub fn run_size(width: usize, height: usize, working_size: usize) -> (usize, usize) {
    let long = width.max(height);
    if long <= working_size {
        return (width, height);
    }
    let scale = |short: usize| ((short * working_size + long / 2) / long).max(1);
    if width >= height {
        (working_size, scale(height))
    } else {
        (scale(width), working_size)
    }
}

/// The regions to inpaint, in the order they run (empty when the mask has no hole).
pub fn plan(
    mask: &MaskImage,
    working_size: usize,
    context: usize,
    mode: RegionMode,
    seed: u64,
) -> Vec<Region> {
    let (w, h) = (mask.width, mask.height);
    let parts = hole_parts(mask);
    if parts.is_empty() {
        return vec![];
    }
    if !uses_regions(mode, w, h, working_size) {
        return vec![Region {
            rect: Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
            run_width: w,
            run_height: h,
            seed,
        }];
    }
    // (union of the group's part boxes, its region)
    let region_of = |b: Rect| (b, region_rect(b, w, h, working_size, context));
    let mut groups: Vec<(Rect, Rect)> = parts.into_iter().map(region_of).collect();
    groups.sort_by_key(|g| g.1.sort_key());
    'merge: loop {
        for i in 0..groups.len() {
            for j in i + 1..groups.len() {
                if groups[i].1.overlaps(&groups[j].1) {
                    let merged = region_of(groups[i].0.union(&groups[j].0));
                    groups.remove(j);
                    groups[i] = merged;
                    groups.sort_by_key(|g| g.1.sort_key());
                    continue 'merge;
                }
            }
        }
        break;
    }
    groups.sort_by_key(|g| (g.1.y, g.1.x));
    groups
        .into_iter()
        .enumerate()
        .map(|(k, (_, rect))| {
            let (run_width, run_height) = run_size(rect.width, rect.height, working_size);
            Region {
                rect,
                run_width,
                run_height,
                seed: seed.wrapping_add(k as u64),
            }
        })
        .collect()
}

/// The pixels of `image` inside `rect`.
pub fn crop_image(image: &RgbImage, rect: Rect) -> RgbImage {
    let mut data = Vec::with_capacity(rect.width * rect.height * 3);
    for y in rect.y..rect.bottom() {
        let row = (y * image.width + rect.x) * 3;
        data.extend_from_slice(&image.data[row..row + rect.width * 3]);
    }
    RgbImage {
        width: rect.width,
        height: rect.height,
        data,
    }
}

/// The mask values inside `rect`.
pub fn crop_mask(mask: &MaskImage, rect: Rect) -> MaskImage {
    let mut data = Vec::with_capacity(rect.width * rect.height);
    for y in rect.y..rect.bottom() {
        let row = y * mask.width + rect.x;
        data.extend_from_slice(&mask.data[row..row + rect.width]);
    }
    MaskImage {
        width: rect.width,
        height: rect.height,
        data,
    }
}

/// Resampling filters: an area filter to shrink, Lanczos3 to enlarge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow's `BOX`: for a downscale, each output pixel averages its source footprint.
    Area,
    /// Pillow's `LANCZOS` (a = 3).
    Lanczos3,
}

/// Resampling failed (only for sizes the planner never produces, such as zero).
#[derive(Debug, thiserror::Error)]
#[error("resampling {from_width}x{from_height} to {to_width}x{to_height}: {message}")]
pub struct ResizeError {
    pub from_width: usize,
    pub from_height: usize,
    pub to_width: usize,
    pub to_height: usize,
    pub message: String,
}

/// `image` resampled to `width x height` by `filter`: separable convolution as Pillow's,
/// the horizontal pass first into an 8-bit intermediate, then the vertical pass.
/// (`fast_image_resize` alone runs 8-bit images vertical-first, which rounds and clips the
/// intermediate differently from Pillow by up to 6 levels next to sharp edges.)
pub fn resize(
    image: &RgbImage,
    width: usize,
    height: usize,
    filter: Filter,
) -> Result<RgbImage, ResizeError> {
    let horizontal = resize_pass(image, width, image.height, filter)?;
    resize_pass(&horizontal, width, height, filter).map_err(|e| ResizeError {
        from_width: image.width,
        from_height: image.height,
        ..e
    })
}

/// One call of the resampler; with one side unchanged, one pass.
fn resize_pass(
    image: &RgbImage,
    width: usize,
    height: usize,
    filter: Filter,
) -> Result<RgbImage, ResizeError> {
    let error = |message: String| ResizeError {
        from_width: image.width,
        from_height: image.height,
        to_width: width,
        to_height: height,
        message,
    };
    if (width, height) == (image.width, image.height) {
        return Ok(image.clone());
    }
    let side = |v: usize| u32::try_from(v).map_err(|_| error(format!("{v} is too large")));
    let src = ImageRef::new(
        side(image.width)?,
        side(image.height)?,
        &image.data,
        PixelType::U8x3,
    )
    .map_err(|e| error(e.to_string()))?;
    let mut dst = Image::new(side(width)?, side(height)?, PixelType::U8x3);
    let filter = match filter {
        Filter::Area => FilterType::Box,
        Filter::Lanczos3 => FilterType::Lanczos3,
    };
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)),
        )
        .map_err(|e| error(e.to_string()))?;
    Ok(RgbImage {
        width,
        height,
        data: dst.into_vec(),
    })
}

/// `mask` at `width x height` (smaller): a pixel is hole (255) when any hole pixel lies in its
/// source footprint, else keep (0). Nothing to be removed can hide in a known pixel.
pub fn downscale_mask(mask: &MaskImage, width: usize, height: usize) -> MaskImage {
    let (sw, sh) = (mask.width, mask.height);
    let span = |i: usize, src: usize, dst: usize| (i * src / dst, ((i + 1) * src).div_ceil(dst));
    let mut data = vec![0u8; width * height];
    for oy in 0..height {
        let (r0, r1) = span(oy, sh, height);
        for ox in 0..width {
            let (c0, c1) = span(ox, sw, width);
            let hole = (r0..r1).any(|y| {
                mask.data[y * sw + c0..y * sw + c1]
                    .iter()
                    .any(|&v| v >= 128)
            });
            data[oy * width + ox] = if hole { 255 } else { 0 };
        }
    }
    MaskImage {
        width,
        height,
        data,
    }
}

/// Squared Euclidean distance from each pixel of `rect` to the nearest hole pixel of `mask`
/// inside `rect` (0 on the hole; a large value when `rect` has no hole). The exact transform
/// of Felzenszwalb & Huttenlocher (2012), one pass per axis.
fn squared_distances(mask: &MaskImage, rect: Rect) -> Vec<f64> {
    const FAR: f64 = 1e20;
    let (w, h) = (rect.width, rect.height);
    let mut grid: Vec<f64> = (0..w * h)
        .map(|i| {
            if mask.is_hole_at(rect.x + i % w, rect.y + i / w) {
                0.0
            } else {
                FAR
            }
        })
        .collect();
    let n = w.max(h);
    let (mut f, mut d) = (vec![0.0; n], vec![0.0; n]);
    let (mut v, mut z) = (vec![0usize; n], vec![0.0; n + 1]);
    // 1-D transform of f[..len] into d[..len].
    let mut transform = |f: &[f64], d: &mut [f64]| {
        let len = f.len();
        let mut k = 0usize;
        v[0] = 0;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in 1..len {
            let qf = q as f64;
            loop {
                let p = v[k] as f64;
                let s = ((f[q] + qf * qf) - (f[v[k]] + p * p)) / (2.0 * qf - 2.0 * p);
                if s <= z[k] {
                    // z[0] is -inf, so k > 0 here.
                    k -= 1;
                } else {
                    k += 1;
                    v[k] = q;
                    z[k] = s;
                    z[k + 1] = f64::INFINITY;
                    break;
                }
            }
        }
        k = 0;
        for q in 0..len {
            while z[k + 1] < q as f64 {
                k += 1;
            }
            let dq = q as f64 - v[k] as f64;
            d[q] = dq * dq + f[v[k]];
        }
    };
    for x in 0..w {
        for y in 0..h {
            f[y] = grid[y * w + x];
        }
        transform(&f[..h], &mut d[..h]);
        for y in 0..h {
            grid[y * w + x] = d[y];
        }
    }
    for y in 0..h {
        f[..w].copy_from_slice(&grid[y * w..(y + 1) * w]);
        transform(&f[..w], &mut d[..w]);
        grid[y * w..(y + 1) * w].copy_from_slice(&d[..w]);
    }
    grid
}

/// The feather weight of a known pixel at squared distance `d2` from the hole (`None`
/// outside the band): `1 - d / (f + 1)`.
pub fn feather_weight(d2: f64, feather: usize) -> Option<f64> {
    let f = feather as f64;
    (d2 > 0.0 && d2 <= f * f).then(|| 1.0 - d2.sqrt() / (f + 1.0))
}

/// Blends a region's result (`rect`'s size) into `canvas`: hole pixels (of the canvas-sized
/// `mask`) take the result, known pixels within `feather` of the hole a mix of both, all
/// others keep their bytes. Without paste-back the whole box takes the result.
pub fn blend(
    canvas: &mut RgbImage,
    rect: Rect,
    result: &RgbImage,
    mask: &MaskImage,
    feather: usize,
    paste_back: bool,
) {
    debug_assert_eq!((result.width, result.height), (rect.width, rect.height));
    let distances = (paste_back && feather > 0).then(|| squared_distances(mask, rect));
    for y in 0..rect.height {
        for x in 0..rect.width {
            let (cx, cy) = (rect.x + x, rect.y + y);
            let ci = (cy * canvas.width + cx) * 3;
            let ri = (y * rect.width + x) * 3;
            let src = &result.data[ri..ri + 3];
            if !paste_back || mask.is_hole_at(cx, cy) {
                canvas.data[ci..ci + 3].copy_from_slice(src);
            } else if let Some(w) = distances
                .as_ref()
                .and_then(|d| feather_weight(d[y * rect.width + x], feather))
            {
                for c in 0..3 {
                    let v = w * src[c] as f64 + (1.0 - w) * canvas.data[ci + c] as f64;
                    canvas.data[ci + c] = v.round_ties_even().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mask_with(w: usize, h: usize, holes: &[Rect]) -> MaskImage {
        let mut data = vec![0u8; w * h];
        for r in holes {
            for y in r.y..r.bottom() {
                for x in r.x..r.right() {
                    data[y * w + x] = 255;
                }
            }
        }
        MaskImage {
            width: w,
            height: h,
            data,
        }
    }

    fn rect(x: usize, y: usize, width: usize, height: usize) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn parts_are_eight_connected() {
        // two pixels touching at a corner are one part; a gap of one pixel makes two
        let mut m = mask_with(
            10,
            6,
            &[rect(1, 1, 2, 2), rect(3, 3, 1, 1), rect(6, 0, 1, 6)],
        );
        m.data[5 * 10 + 9] = 200; // >= 128: hole
        m.data[0] = 127; // < 128: keep
        let parts = hole_parts(&m);
        // in the order their first pixel is met, row by row
        assert_eq!(
            parts,
            vec![rect(6, 0, 1, 6), rect(1, 1, 3, 3), rect(9, 5, 1, 1)]
        );
    }

    #[test]
    fn region_adds_context_and_grows_centred_then_shifts() {
        // centred growth far from borders
        assert_eq!(
            region_rect(rect(1000, 800, 100, 40), 4000, 3000, 512, 128),
            rect(1000 - 128 - 78, 800 - 128 - 108, 512, 512)
        );
        // at the top-left corner: shifted, not clipped
        assert_eq!(
            region_rect(rect(0, 0, 10, 10), 4000, 3000, 512, 128),
            rect(0, 0, 512, 512)
        );
        // bottom-right corner
        assert_eq!(
            region_rect(rect(3990, 2995, 10, 5), 4000, 3000, 512, 128),
            rect(4000 - 512, 3000 - 512, 512, 512)
        );
        // larger than S: context only, clipped at the image
        assert_eq!(
            region_rect(rect(50, 100, 900, 20), 4000, 3000, 512, 128),
            rect(0, 0, 50 + 900 + 128, 512)
        );
        // a thin photo: the short side is the whole side
        assert_eq!(
            region_rect(rect(2000, 10, 30, 20), 4000, 300, 512, 128),
            rect(2015 - 256, 0, 512, 300)
        );
        // odd extra: the odd pixel goes right / down
        assert_eq!(axis_span(100, 101, 1000, 10, 0), (96, 106));
    }

    #[test]
    fn run_size_keeps_aspect_with_longer_side_s() {
        assert_eq!(run_size(512, 300, 512), (512, 300));
        assert_eq!(run_size(556, 556, 512), (512, 512));
        assert_eq!(run_size(1078, 512, 512), (512, 243)); // 243.17
        assert_eq!(run_size(300, 1000, 512), (154, 512)); // 153.6
        assert_eq!(run_size(10000, 3, 512), (512, 1));
        assert_eq!(run_size(148, 128, 128), (128, 111)); // 110.7
    }

    #[test]
    fn plan_whole_when_it_fits_and_regions_when_not() {
        let m = mask_with(512, 400, &[rect(10, 10, 5, 5)]);
        let p = plan(&m, 512, 128, RegionMode::Auto, 7);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rect, rect(0, 0, 512, 400));
        assert!(!p[0].is_scaled());
        // crop on a small image: the region grows to the whole image
        assert_eq!(
            plan(&m, 512, 128, RegionMode::Crop, 7)[0].rect,
            rect(0, 0, 512, 400)
        );
        // whole on a large image: one unscaled pass
        let big = mask_with(2000, 1000, &[rect(10, 10, 5, 5)]);
        let p = plan(&big, 512, 128, RegionMode::Whole, 7);
        assert_eq!((p.len(), p[0].run_width, p[0].run_height), (1, 2000, 1000));
        // no hole, no region
        assert!(plan(&mask_with(900, 900, &[]), 512, 128, RegionMode::Auto, 0).is_empty());
    }

    #[test]
    fn plan_merges_overlapping_regions_and_orders_seeds() {
        // two holes far apart: two regions in reading order, seeds counting up
        let m = mask_with(
            3000,
            2000,
            &[rect(2000, 100, 50, 50), rect(100, 1500, 300, 300)],
        );
        let p = plan(&m, 512, 128, RegionMode::Auto, 10);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].rect, rect(1769, 0, 512, 512));
        assert_eq!((p[0].seed, p[1].seed), (10, 11));
        assert!(!p[0].is_scaled());
        assert_eq!(p[1].rect, rect(0, 1372, 528, 556));
        assert_eq!((p[1].run_width, p[1].run_height), (486, 512));
        // two holes 200 px apart: their 512 px regions overlap, one region around both
        let m = mask_with(
            3000,
            2000,
            &[rect(1000, 1000, 20, 20), rect(1220, 1000, 20, 20)],
        );
        let p = plan(&m, 512, 128, RegionMode::Auto, 0);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rect, rect(864, 754, 512, 512));
        // regions that touch but do not overlap stay apart
        let m = mask_with(2048, 512, &[rect(200, 200, 10, 10), rect(763, 200, 10, 10)]);
        let p = plan(&m, 512, 128, RegionMode::Auto, 0);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].rect.right(), p[1].rect.x), (512, 512));
    }

    /// A tiny deterministic generator for the property test (no extra dependency).
    fn lcg(state: &mut u64) -> usize {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 33) as usize
    }

    #[test]
    fn plans_never_overlap_and_cover_every_part_with_its_context() {
        let mut state = 1u64;
        for case in 0..300 {
            let (w, h) = (200 + lcg(&mut state) % 3000, 200 + lcg(&mut state) % 2000);
            let s = [64, 128, 512][case % 3];
            let context = lcg(&mut state) % 200;
            let holes: Vec<Rect> = (0..1 + lcg(&mut state) % 6)
                .map(|_| {
                    let (hw, hh) = (1 + lcg(&mut state) % 300, 1 + lcg(&mut state) % 300);
                    let (hw, hh) = (hw.min(w), hh.min(h));
                    rect(
                        lcg(&mut state) % (w - hw + 1),
                        lcg(&mut state) % (h - hh + 1),
                        hw,
                        hh,
                    )
                })
                .collect();
            let m = mask_with(w, h, &holes);
            let p = plan(&m, s, context, RegionMode::Crop, 5);
            for (i, a) in p.iter().enumerate() {
                assert!(a.rect.right() <= w && a.rect.bottom() <= h);
                assert!(a.rect.width >= s.min(w) && a.rect.height >= s.min(h));
                assert_eq!(
                    a.run_width.max(a.run_height),
                    a.rect.width.max(a.rect.height).min(s)
                );
                assert_eq!(a.seed, 5 + i as u64);
                for b in &p[i + 1..] {
                    assert!(!a.rect.overlaps(&b.rect), "case {case}: {a:?} {b:?}");
                    assert!((a.rect.y, a.rect.x) <= (b.rect.y, b.rect.x));
                }
            }
            for part in hole_parts(&m) {
                let inside: Vec<_> = p.iter().filter(|r| r.rect.overlaps(&part)).collect();
                assert_eq!(inside.len(), 1, "case {case}: part {part:?} in {inside:?}");
                let ctx = region_rect(part, w, h, 0, context);
                let r = inside[0].rect;
                assert!(
                    r.x <= ctx.x
                        && r.y <= ctx.y
                        && r.right() >= ctx.right()
                        && r.bottom() >= ctx.bottom(),
                    "case {case}: {r:?} lacks the context {ctx:?}"
                );
            }
        }
    }

    #[test]
    fn plan_a_hole_larger_than_the_working_size_and_a_very_wide_one() {
        let m = mask_with(4000, 3000, &[rect(500, 400, 2000, 1500)]);
        let p = plan(&m, 512, 128, RegionMode::Auto, 0);
        assert_eq!(p[0].rect, rect(372, 272, 2256, 1756));
        assert_eq!((p[0].run_width, p[0].run_height), (512, 399)); // 398.5 rounds up
        let m = mask_with(4000, 3000, &[rect(0, 1000, 4000, 3)]);
        let p = plan(&m, 512, 128, RegionMode::Auto, 0);
        assert_eq!(p[0].rect, rect(0, 1000 + 1 - 255, 4000, 512)); // 259 + 253 split
        assert_eq!((p[0].run_width, p[0].run_height), (512, 66));
    }

    #[test]
    fn extension_replicates_edges_and_is_hole() {
        let image = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 2, 3, 4, 5, 6],
        };
        let mask = MaskImage {
            width: 2,
            height: 1,
            data: vec![0, 255],
        };
        let e: Extend = "1,0,2,1".parse().unwrap();
        let (img, m) = extend_canvas(&image, &mask, e);
        assert_eq!((img.width, img.height), (5, 2));
        assert_eq!(m.data, vec![255, 0, 255, 255, 255, 255, 255, 255, 255, 255]);
        assert_eq!(img.pixel(0, 0), [1, 2, 3]);
        assert_eq!(img.pixel(4, 1), [4, 5, 6]);
        assert_eq!(
            "3".parse::<Extend>(),
            Ok(Extend {
                left: 3,
                top: 3,
                right: 3,
                bottom: 3
            })
        );
        assert!("1,2".parse::<Extend>().is_err());
        assert!("1,-2,3,4".parse::<Extend>().is_err());
    }

    #[test]
    fn mask_downscale_keeps_every_hole_pixel() {
        let m = mask_with(10, 10, &[rect(9, 9, 1, 1)]);
        let d = downscale_mask(&m, 3, 3);
        assert_eq!(d.data, vec![0, 0, 0, 0, 0, 0, 0, 0, 255]);
        let m = mask_with(10, 10, &[rect(3, 0, 1, 1)]); // column 3 lies in footprints 0 and 1
        assert_eq!(downscale_mask(&m, 3, 3).data[..3], [255, 255, 0]);
    }

    #[test]
    fn distances_are_euclidean() {
        let m = mask_with(9, 7, &[rect(4, 3, 1, 1)]);
        let d = squared_distances(&m, rect(0, 0, 9, 7));
        for y in 0..7 {
            for x in 0..9 {
                let want = (x as f64 - 4.0).powi(2) + (y as f64 - 3.0).powi(2);
                assert_eq!(d[y * 9 + x], want, "({x}, {y})");
            }
        }
        // brute force on an irregular hole, inside an offset box
        let m = mask_with(
            40,
            30,
            &[rect(12, 9, 3, 8), rect(20, 20, 6, 2), rect(30, 5, 1, 1)],
        );
        let r = rect(5, 3, 30, 24);
        let d = squared_distances(&m, r);
        for y in 0..r.height {
            for x in 0..r.width {
                let mut best = f64::MAX;
                for hy in 0..r.height {
                    for hx in 0..r.width {
                        if m.is_hole_at(r.x + hx, r.y + hy) {
                            let dd =
                                (x as f64 - hx as f64).powi(2) + (y as f64 - hy as f64).powi(2);
                            best = best.min(dd);
                        }
                    }
                }
                assert_eq!(d[y * r.width + x], best);
            }
        }
    }

    #[test]
    fn feather_weights_fall_linearly_and_blend_rounds_half_even() {
        assert_eq!(feather_weight(0.0, 3), None);
        assert_eq!(feather_weight(1.0, 3), Some(0.75));
        assert_eq!(feather_weight(4.0, 3), Some(0.5));
        assert_eq!(feather_weight(9.0, 3), Some(0.25));
        assert_eq!(feather_weight(10.0, 3), None);
        assert_eq!(feather_weight(2.0, 3), Some(1.0 - 2f64.sqrt() / 4.0));
        // a 1-pixel hole at x = 0 of a 5x1 strip, feather 3: weights 1, .75, .5, .25, 0
        let mut canvas = RgbImage {
            width: 5,
            height: 1,
            data: vec![100; 15],
        };
        let result = RgbImage {
            width: 5,
            height: 1,
            data: [[201u8; 3], [202; 3], [201; 3], [200; 3], [7; 3]].concat(),
        };
        let mask = mask_with(5, 1, &[rect(0, 0, 1, 1)]);
        blend(&mut canvas, rect(0, 0, 5, 1), &result, &mask, 3, true);
        // .75 * 202 + .25 * 100 = 176.5 -> 176; .5 * 201 + .5 * 100 = 150.5 -> 150;
        // .25 * 200 + .75 * 100 = 125
        let got: Vec<u8> = canvas.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(got, vec![201, 176, 150, 125, 100]);
        // feather 0: only the hole changes
        let mut canvas = RgbImage {
            width: 5,
            height: 1,
            data: vec![100; 15],
        };
        blend(&mut canvas, rect(0, 0, 5, 1), &result, &mask, 0, true);
        assert_eq!(&canvas.data[3..], &[100; 12]);
        // without paste-back the box takes the result
        blend(&mut canvas, rect(0, 0, 5, 1), &result, &mask, 0, false);
        assert_eq!(canvas.data, result.data);
    }
}
