//! Fuzz target `entry_decode`: the body is `auditlog::fuzzing::entry_decode`, which
//! `cargo test` also runs over `fuzz/corpus/entry_decode/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auditlog::fuzzing::entry_decode(data));
