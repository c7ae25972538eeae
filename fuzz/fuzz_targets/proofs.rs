//! Fuzz target `proofs`: the body is `auditlog::fuzzing::proofs`, which
//! `cargo test` also runs over `fuzz/corpus/proofs/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| auditlog::fuzzing::proofs(data));
