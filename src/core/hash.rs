//! 32-byte digests and the tree hash functions.
//!
//! Owns: the [`Hash`] value type, the [`TreeHasher`] trait that the Merkle
//! code is generic over, and its two instances: [`Blake3`] (the product) and
//! [`Sha256`] (RFC 6962 test vectors).
//!
//! Invariant: leaf hashes are `H(0x00 || data)` and interior nodes
//! `H(0x01 || left || right)` (RFC 9162 §2.1.1), whatever `H` is; the empty
//! tree hashes to `H("")`.

use std::fmt;

use sha2::Digest as _;

/// Length in bytes of every digest used by auditlog.
pub const HASH_LEN: usize = 32;

/// A 32-byte digest: a leaf hash, a tree node, a root, a payload commitment.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// All zero bytes; the genesis link of every chain (see FORMAT.md).
    pub const ZERO: Hash = Hash([0u8; HASH_LEN]);

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Parses exactly 32 bytes.
    ///
    /// # Errors
    /// [`HashLengthError`] when `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Hash, HashLengthError> {
        <[u8; HASH_LEN]>::try_from(bytes)
            .map(Hash)
            .map_err(|_| HashLengthError(bytes.len()))
    }

    /// Lower-case hexadecimal.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hexadecimal digits.
    ///
    /// # Errors
    /// When `s` is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Hash, HashLengthError> {
        let bytes = hex::decode(s).map_err(|_| HashLengthError(s.len() / 2))?;
        Hash::from_slice(&bytes)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A byte string that should have been a 32-byte digest but was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a hash must be {HASH_LEN} bytes, got {0}")]
pub struct HashLengthError(pub usize);

/// The hash function of a Merkle tree, with RFC 9162 domain separation.
pub trait TreeHasher {
    /// Hash of the empty tree: `H("")`.
    fn empty_root() -> Hash;
    /// `H(0x00 || data)`.
    fn hash_leaf(data: &[u8]) -> Hash;
    /// `H(0x01 || left || right)`.
    fn hash_children(left: &Hash, right: &Hash) -> Hash;
}

/// BLAKE3: the tree hash of every auditlog log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blake3;

impl TreeHasher for Blake3 {
    fn empty_root() -> Hash {
        Hash(*blake3::hash(b"").as_bytes())
    }

    fn hash_leaf(data: &[u8]) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&[0x00]);
        h.update(data);
        Hash(*h.finalize().as_bytes())
    }

    fn hash_children(left: &Hash, right: &Hash) -> Hash {
        let mut buf = [0u8; 1 + 2 * HASH_LEN];
        buf[0] = 0x01;
        buf[1..33].copy_from_slice(&left.0);
        buf[33..].copy_from_slice(&right.0);
        Hash(*blake3::hash(&buf).as_bytes())
    }
}

/// SHA-256: the hash of RFC 6962 / RFC 9162 test vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sha256;

impl TreeHasher for Sha256 {
    fn empty_root() -> Hash {
        Hash(sha2::Sha256::digest(b"").into())
    }

    fn hash_leaf(data: &[u8]) -> Hash {
        let mut h = sha2::Sha256::new();
        h.update([0x00]);
        h.update(data);
        Hash(h.finalize().into())
    }

    fn hash_children(left: &Hash, right: &Hash) -> Hash {
        let mut h = sha2::Sha256::new();
        h.update([0x01]);
        h.update(left.0);
        h.update(right.0);
        Hash(h.finalize().into())
    }
}

/// Plain BLAKE3 of the concatenation of `parts` (no domain prefix).
pub fn blake3_concat(parts: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    Hash(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_roots_are_hash_of_empty_string() {
        assert_eq!(
            Sha256::empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Blake3::empty_root().to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn leaf_and_node_are_domain_separated() {
        let a = Hash([1; 32]);
        let b = Hash([2; 32]);
        let mut concat = Vec::new();
        concat.extend_from_slice(&a.0);
        concat.extend_from_slice(&b.0);
        assert_ne!(Blake3::hash_leaf(&concat), Blake3::hash_children(&a, &b));
        assert_ne!(Sha256::hash_leaf(&concat), Sha256::hash_children(&a, &b));
    }

    #[test]
    fn from_slice_rejects_wrong_lengths() {
        assert!(Hash::from_slice(&[0; 31]).is_err());
        assert!(Hash::from_slice(&[0; 33]).is_err());
        assert!(Hash::from_slice(&[]).is_err());
        assert_eq!(Hash::from_slice(&[7; 32]).unwrap(), Hash([7; 32]));
    }
}
