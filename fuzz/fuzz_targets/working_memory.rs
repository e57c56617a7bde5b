//! The `working_memory` fuzz target: the property is `soul_fuzz::working_memory`'s.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| soul_fuzz::working_memory(data));
