//! auditlog: a tamper-evident audit-log store.
//!
//! Entries are hash-chained and put in an RFC 9162 Merkle tree (BLAKE3);
//! checkpoints and segment seals are C2SP signed notes (Ed25519); evidence
//! verifies offline with nothing but a public key. See `ARCHITECTURE.md` for
//! the code map and `docs/FORMAT.md` for every byte that is hashed or signed.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod bundle;
pub mod config;
pub mod copy;
pub mod core;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod rotation;
pub mod serve;
pub mod service;
pub mod store;
pub mod verify;

/// Generated gRPC types of `proto/auditlog/v1/auditlog.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("auditlog.v1");

    /// Encoded `FileDescriptorSet` of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/auditlog_descriptor.bin"));
}
