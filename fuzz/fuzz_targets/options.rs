//! libFuzzer target: [`nullpaint_fuzz::harness::options`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nullpaint_fuzz::harness::options(data));
