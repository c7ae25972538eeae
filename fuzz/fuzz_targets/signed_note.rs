//! Fuzz target `signed_note`: the body is `auditlog::fuzzing::signed_note`, which
//! `cargo test` also runs over `fuzz/corpus/signed_note/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auditlog::fuzzing::signed_note(data));
