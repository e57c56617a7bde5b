//! The `cassette` fuzz target: the property is `soul_fuzz::cassette`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| soul_fuzz::cassette(data));
