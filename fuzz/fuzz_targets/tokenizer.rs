//! libFuzzer target: [`nullpaint_fuzz::harness::tokenizer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nullpaint_fuzz::harness::tokenizer(data));
