//! libFuzzer target: [`nullpaint_fuzz::harness::safetensors`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nullpaint_fuzz::harness::safetensors(data));
