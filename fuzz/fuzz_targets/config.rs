//! The `config` fuzz target: the property is `soul_fuzz::config`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| soul_fuzz::config(data));
