//! Helpers shared by the tests of the `nullpaint` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A fresh, empty folder for one test (named after the process, so test binaries never share).
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nullpaint-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The largest difference of one channel of one pixel between two pictures of the same size.
pub fn max_level_diff(got: &image::RgbImage, want: &image::RgbImage) -> u8 {
    assert_eq!(got.dimensions(), want.dimensions());
    got.as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap()
}
