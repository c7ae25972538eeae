//! The canonical entry encoding, payload commitments and leaf hashes.
//!
//! Owns: [`Entry`] (every field that is hashed), its byte encoding
//! ([`Entry::encode`], [`Entry::decode`]), the payload commitment
//! ([`commit_payload`]) and the leaf hash that links each entry to the
//! previous one ([`Entry::leaf_hash`]). The byte layout is specified in
//! `docs/FORMAT.md` §2 and must never change for version 1.
//!
//! Invariants:
//! - `decode(encode(e)) == e`, and `decode` accepts nothing else: every byte
//!   string it accepts is the encoding of exactly one entry (no trailing
//!   bytes, no unsorted or duplicate attributes, only valid UTF-8, only the
//!   known version), so two encodings of the same entry cannot exist.
//! - The salt and the payload are not part of the encoding; only the
//!   commitment and the length are. Erasing both leaves every hash intact.
//! - No randomness is drawn here: the caller passes the salt in.

use std::collections::BTreeMap;

use super::hash::{blake3_concat, Blake3, Hash, TreeHasher, HASH_LEN};

/// Fixed bytes that open every encoded entry: domain separation from every
/// other structure auditlog hashes.
pub const ENTRY_DOMAIN: &[u8; 14] = b"auditlog/entry";

/// The entry encoding version this code writes.
pub const ENTRY_VERSION: u8 = 1;

/// Length of the per-entry payload salt.
pub const SALT_LEN: usize = 32;

/// Largest length of any string field (u16 length prefix).
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// Largest number of attributes (u16 count prefix).
pub const MAX_ATTRIBUTES: usize = u16::MAX as usize;

/// The random salt that hides a payload inside its commitment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Salt(pub [u8; SALT_LEN]);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Salts are secrets until erased; do not print them in logs.
        f.write_str("Salt(..)")
    }
}

/// `BLAKE3(salt || payload)`: binds the payload without revealing it, and
/// survives the payload's erasure.
pub fn commit_payload(salt: &Salt, payload: &[u8]) -> Hash {
    blake3_concat(&[&salt.0, payload])
}

/// Every hashed field of one log entry (FORMAT.md §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Origin of the log (e.g. `audit.example.com/orders`).
    pub origin: String,
    /// Position in the log, from 0, dense.
    pub seq: u64,
    /// Server time of sequencing, Unix nanoseconds.
    pub timestamp_unix_nanos: i64,
    /// What the entry is about (`order:8812`).
    pub subject: String,
    /// Who caused it (`buyer:42`).
    pub actor: String,
    /// What kind of record it is (`prompt`, `chat.message`).
    pub kind: String,
    /// Media type of the payload.
    pub content_type: String,
    /// Small string attributes; a `BTreeMap` keeps them in canonical order.
    pub attributes: BTreeMap<String, String>,
    /// Client retry token; empty when none.
    pub idempotency_key: String,
    /// Length of the payload in bytes.
    pub payload_len: u64,
    /// `BLAKE3(salt || payload)`.
    pub payload_commitment: Hash,
    /// Leaf hash of entry `seq - 1`, or [`Hash::ZERO`] for seq 0.
    pub prev_leaf_hash: Hash,
}

/// Why bytes are not the canonical encoding of an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not start with [`ENTRY_DOMAIN`].
    #[error("not an entry: the first bytes are not \"auditlog/entry\"")]
    WrongDomain,
    /// A version this code does not know.
    #[error("unknown entry version {0} (this build knows version 1)")]
    UnknownVersion(u8),
    /// The bytes end inside a field.
    #[error("truncated in field {field} at offset {offset}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Byte offset where more bytes were needed.
        offset: usize,
    },
    /// A string field is not UTF-8.
    #[error("field {field} at offset {offset} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        field: &'static str,
        /// Byte offset of the string.
        offset: usize,
    },
    /// Attributes not in strictly increasing key order.
    #[error("attribute {index} (key {key:?}) is not after the previous key: keys must be sorted and unique")]
    UnsortedAttributes {
        /// Position of the offending attribute.
        index: usize,
        /// Its key.
        key: String,
    },
    /// Bytes left after the last field.
    #[error("{0} trailing bytes after the entry")]
    TrailingBytes(usize),
}

/// Why an entry cannot be encoded (a field too long for its length prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string longer than [`MAX_FIELD_LEN`] bytes.
    #[error("field {field} is {len} bytes; the format allows at most 65535")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("{0} attributes; the format allows at most 65535")]
    TooManyAttributes(usize),
}

impl Entry {
    /// Checks that the entry can be encoded.
    ///
    /// # Errors
    /// The first field that is too long for the format.
    pub fn check_encodable(&self) -> Result<(), EncodeError> {
        let fields: [(&'static str, &str); 6] = [
            ("origin", &self.origin),
            ("subject", &self.subject),
            ("actor", &self.actor),
            ("kind", &self.kind),
            ("content_type", &self.content_type),
            ("idempotency_key", &self.idempotency_key),
        ];
        for (field, value) in fields {
            if value.len() > MAX_FIELD_LEN {
                return Err(EncodeError::FieldTooLong {
                    field,
                    len: value.len(),
                });
            }
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(EncodeError::TooManyAttributes(self.attributes.len()));
        }
        for (k, v) in &self.attributes {
            for (field, value) in [("attribute key", k), ("attribute value", v)] {
                if value.len() > MAX_FIELD_LEN {
                    return Err(EncodeError::FieldTooLong {
                        field,
                        len: value.len(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Length of [`Entry::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let strings = [
            &self.origin,
            &self.subject,
            &self.actor,
            &self.kind,
            &self.content_type,
            &self.idempotency_key,
        ];
        ENTRY_DOMAIN.len()
            + 1
            + 8
            + 8
            + strings.iter().map(|s| 2 + s.len()).sum::<usize>()
            + 2
            + self
                .attributes
                .iter()
                .map(|(k, v)| 4 + k.len() + v.len())
                .sum::<usize>()
            + 8
            + 2 * HASH_LEN
    }

    /// The canonical encoding (FORMAT.md §2).
    ///
    /// # Errors
    /// When a field is too long for its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the canonical encoding to `out`.
    ///
    /// # Errors
    /// When a field is too long for its length prefix; `out` is unchanged.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.check_encodable()?;
        out.reserve(self.encoded_len());
        out.extend_from_slice(ENTRY_DOMAIN);
        out.push(ENTRY_VERSION);
        put_str(out, &self.origin);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp_unix_nanos.to_be_bytes());
        put_str(out, &self.subject);
        put_str(out, &self.actor);
        put_str(out, &self.kind);
        put_str(out, &self.content_type);
        // Checked above: the count fits u16.
        out.extend_from_slice(&(self.attributes.len() as u16).to_be_bytes());
        for (k, v) in &self.attributes {
            put_str(out, k);
            put_str(out, v);
        }
        put_str(out, &self.idempotency_key);
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.extend_from_slice(&self.payload_commitment.0);
        out.extend_from_slice(&self.prev_leaf_hash.0);
        Ok(())
    }

    /// Parses a canonical encoding, rejecting anything else.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the field and offset of the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(ENTRY_DOMAIN.len(), "domain")? != ENTRY_DOMAIN {
            return Err(DecodeError::WrongDomain);
        }
        let version = r.take(1, "version")?[0];
        if version != ENTRY_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let origin = r.string("origin")?;
        let seq = r.u64("seq")?;
        let timestamp_unix_nanos = r.u64("timestamp")? as i64;
        let subject = r.string("subject")?;
        let actor = r.string("actor")?;
        let kind = r.string("kind")?;
        let content_type = r.string("content_type")?;
        let count = r.u16("attribute count")?;
        let mut attributes = BTreeMap::new();
        let mut last: Option<String> = None;
        for index in 0..count as usize {
            let key = r.string("attribute key")?;
            let value = r.string("attribute value")?;
            if last
                .as_ref()
                .is_some_and(|prev| prev.as_bytes() >= key.as_bytes())
            {
                return Err(DecodeError::UnsortedAttributes { index, key });
            }
            last = Some(key.clone());
            attributes.insert(key, value);
        }
        let idempotency_key = r.string("idempotency_key")?;
        let payload_len = r.u64("payload_len")?;
        let payload_commitment = r.hash("payload_commitment")?;
        let prev_leaf_hash = r.hash("prev_leaf_hash")?;
        let rest = bytes.len() - r.pos;
        if rest != 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok(Entry {
            origin,
            seq,
            timestamp_unix_nanos,
            subject,
            actor,
            kind,
            content_type,
            attributes,
            idempotency_key,
            payload_len,
            payload_commitment,
            prev_leaf_hash,
        })
    }

    /// The leaf hash: `BLAKE3(0x00 || encode(self))`, i.e. the RFC 9162 leaf
    /// hash of the encoding. It is also the next entry's `prev_leaf_hash`.
    ///
    /// # Errors
    /// When the entry cannot be encoded.
    pub fn leaf_hash(&self) -> Result<Hash, EncodeError> {
        Ok(leaf_hash_of_encoding(&self.encode()?))
    }
}

/// Leaf hash of an already encoded entry.
pub fn leaf_hash_of_encoding(encoded: &[u8]) -> Hash {
    Blake3::hash_leaf(encoded)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers have checked s.len() <= MAX_FIELD_LEN.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError::Truncated {
                field,
                offset: self.pos,
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn hash(&mut self, field: &'static str) -> Result<Hash, DecodeError> {
        let b = self.take(HASH_LEN, field)?;
        let mut a = [0u8; HASH_LEN];
        a.copy_from_slice(b);
        Ok(Hash(a))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        let offset = self.pos;
        let b = self.take(len, field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8 { field, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Entry {
        let salt = Salt([7u8; 32]);
        let payload = b"Write a haiku about escrow.";
        Entry {
            origin: "audit.example.com/orders".into(),
            seq: 0,
            timestamp_unix_nanos: 1_767_225_600_000_000_000,
            subject: "order:8812".into(),
            actor: "buyer:42".into(),
            kind: "prompt".into(),
            content_type: "text/plain; charset=utf-8".into(),
            attributes: [("model", "gpt-x"), ("gig", "g-77")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            idempotency_key: "req-1".into(),
            payload_len: payload.len() as u64,
            payload_commitment: commit_payload(&salt, payload),
            prev_leaf_hash: Hash::ZERO,
        }
    }

    #[test]
    fn round_trip_and_length() {
        let e = sample();
        let bytes = e.encode().unwrap();
        assert_eq!(bytes.len(), e.encoded_len());
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
    }

    fn with_attrs(attrs: &[(&str, &str)]) -> Vec<u8> {
        // Encodes attributes in the given order, bypassing the BTreeMap, to
        // build non-canonical inputs.
        let mut e = sample();
        e.attributes.clear();
        let canonical = e.encode().unwrap();
        let attr_at = ENTRY_DOMAIN.len()
            + 1
            + 2
            + e.origin.len()
            + 16
            + [&e.subject, &e.actor, &e.kind, &e.content_type]
                .iter()
                .map(|s| 2 + s.len())
                .sum::<usize>();
        let mut out = canonical[..attr_at].to_vec();
        out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        for (k, v) in attrs {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out.extend_from_slice(&canonical[attr_at + 2..]);
        out
    }

    #[test]
    fn decoder_rejects_non_canonical_inputs() {
        let good = sample().encode().unwrap();
        assert!(Entry::decode(&with_attrs(&[("a", "1"), ("b", "2")])).is_ok());

        let mut trailing = good.clone();
        trailing.push(0);
        let mut wrong_version = good.clone();
        wrong_version[ENTRY_DOMAIN.len()] = 2;
        let mut wrong_domain = good.clone();
        wrong_domain[0] = b'A';
        let mut bad_utf8 = good.clone();
        // First byte of the origin string.
        bad_utf8[ENTRY_DOMAIN.len() + 3] = 0xff;
        let mut long_len = good.clone();
        long_len[ENTRY_DOMAIN.len() + 1] = 0xff;

        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            ("trailing byte", trailing, DecodeError::TrailingBytes(1)),
            ("version 2", wrong_version, DecodeError::UnknownVersion(2)),
            ("domain", wrong_domain, DecodeError::WrongDomain),
            (
                "bad utf-8",
                bad_utf8,
                DecodeError::BadUtf8 {
                    field: "origin",
                    offset: ENTRY_DOMAIN.len() + 3,
                },
            ),
            (
                "length beyond end",
                long_len,
                DecodeError::Truncated {
                    field: "origin",
                    offset: ENTRY_DOMAIN.len() + 3,
                },
            ),
            (
                "unsorted attributes",
                with_attrs(&[("b", "1"), ("a", "2")]),
                DecodeError::UnsortedAttributes {
                    index: 1,
                    key: "a".into(),
                },
            ),
            (
                "duplicate attributes",
                with_attrs(&[("a", "1"), ("a", "2")]),
                DecodeError::UnsortedAttributes {
                    index: 1,
                    key: "a".into(),
                },
            ),
            (
                "empty",
                Vec::new(),
                DecodeError::Truncated {
                    field: "domain",
                    offset: 0,
                },
            ),
            (
                "cut before prev hash",
                good[..good.len() - 1].to_vec(),
                DecodeError::Truncated {
                    field: "prev_leaf_hash",
                    offset: good.len() - 32,
                },
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(Entry::decode(&bytes), Err(want), "{name}");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let good = sample().encode().unwrap();
        for n in 0..good.len() {
            assert!(Entry::decode(&good[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn encode_refuses_oversized_fields() {
        let mut e = sample();
        e.subject = "x".repeat(MAX_FIELD_LEN + 1);
        assert_eq!(
            e.encode(),
            Err(EncodeError::FieldTooLong {
                field: "subject",
                len: MAX_FIELD_LEN + 1
            })
        );
        let mut e = sample();
        e.attributes
            .insert("k".into(), "v".repeat(MAX_FIELD_LEN + 1));
        assert!(matches!(
            e.encode(),
            Err(EncodeError::FieldTooLong {
                field: "attribute value",
                ..
            })
        ));
        e.attributes.clear();
        e.subject = "x".repeat(MAX_FIELD_LEN);
        assert!(e.encode().is_ok());
    }

    #[test]
    fn commitment_depends_on_salt_and_payload() {
        let a = commit_payload(&Salt([1; 32]), b"hello");
        assert_ne!(a, commit_payload(&Salt([2; 32]), b"hello"));
        assert_ne!(a, commit_payload(&Salt([1; 32]), b"hellp"));
        let mut concat = [1u8; 32].to_vec();
        concat.extend_from_slice(b"hello");
        assert_eq!(a.0, *blake3::hash(&concat).as_bytes());
    }
}
