//! The sans-I/O core: everything that is hashed, signed or verified.
//!
//! Nothing in this module touches files, sockets, clocks or randomness: time
//! and salts are passed in. The server, the stores and the offline verifier
//! all build on it, so a proof checked by `auditlog verify` is checked by the
//! very code that made it.

pub mod checkpoint;
pub mod commit;
pub mod entry;
pub mod hash;
pub mod merkle;
pub mod note;
pub mod seal;
pub mod transition;

pub use checkpoint::Checkpoint;
pub use entry::{commit_payload, Entry, Salt};
pub use hash::{Blake3, Hash, Sha256, TreeHasher};
pub use note::{SignerKey, VerifierKey};
pub use seal::{RetainUntil, Seal, SealReason};
pub use transition::KeyTransition;
