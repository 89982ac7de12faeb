//! The fuzz targets of fuzz/fuzz_targets/ (see fuzz/README.md).
pub mod harness;
