//! libFuzzer target: [`nullpaint_fuzz::harness::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nullpaint_fuzz::harness::config(data));
