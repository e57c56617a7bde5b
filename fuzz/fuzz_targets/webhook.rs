//! The `webhook` fuzz target: the property is `soul_fuzz::webhook`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| soul_fuzz::webhook(data));
