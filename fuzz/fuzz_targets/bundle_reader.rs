//! Fuzz target `bundle_reader`: the body is `auditlog::fuzzing::bundle_reader`, which
//! `cargo test` also runs over `fuzz/corpus/bundle_reader/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auditlog::fuzzing::bundle_reader(data));
