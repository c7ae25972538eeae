//! Append requests as they arrive, their limits and validation.
//!
//! Owns: [`EntryInput`], [`Limits`] (with defaults), [`AppendError`], and
//! [`prepare`], which validates a whole request and computes each entry's
//! salt and commitment on the caller's thread, off the sequencer's path.
//!
//! Invariant: a request either prepares completely or fails with the index
//! and field of its first bad entry; nothing of a failed request reaches the
//! sequencer.

use std::collections::BTreeMap;

use crate::core::commit::commit_payloads;
use crate::core::entry::Salt;
use crate::core::hash::Hash;

/// Content type recorded when a client sends none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// One entry a client asks to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryInput {
    /// What the entry is about (`order:8812`).
    pub subject: String,
    /// Who caused it (`buyer:42`).
    pub actor: String,
    /// What kind of record it is (`prompt`).
    pub kind: String,
    /// Media type of the payload; empty means [`DEFAULT_CONTENT_TYPE`].
    pub content_type: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Small string attributes.
    pub attributes: BTreeMap<String, String>,
    /// Client retry token; empty for none.
    pub idempotency_key: String,
}

/// Size limits of append requests. Defaults suit marketplace records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one entry.
    pub max_payload_bytes: usize,
    /// Largest request: payloads plus metadata of all its entries.
    pub max_request_bytes: usize,
    /// Most entries in one request.
    pub max_entries_per_request: usize,
    /// Longest subject, actor, kind, content type or idempotency key.
    pub max_field_bytes: usize,
    /// Most attributes on one entry.
    pub max_attributes: usize,
    /// Longest attribute key.
    pub max_attribute_key_bytes: usize,
    /// Longest attribute value.
    pub max_attribute_value_bytes: usize,
}

impl Limits {
    /// These limits, raised where they are below the defaults: what the
    /// server's own records (`_system`, `_access`) are held to, so a
    /// configuration strict for clients never stops the server recording a
    /// hold, an erasure plan or an access.
    #[must_use]
    pub fn at_least_default(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_payload_bytes: self.max_payload_bytes.max(d.max_payload_bytes),
            max_request_bytes: self.max_request_bytes.max(d.max_request_bytes),
            max_entries_per_request: self.max_entries_per_request.max(d.max_entries_per_request),
            max_field_bytes: self.max_field_bytes.max(d.max_field_bytes),
            max_attributes: self.max_attributes.max(d.max_attributes),
            max_attribute_key_bytes: self.max_attribute_key_bytes.max(d.max_attribute_key_bytes),
            max_attribute_value_bytes: self
                .max_attribute_value_bytes
                .max(d.max_attribute_value_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_request_bytes: 4 << 20,
            max_entries_per_request: 10_000,
            max_field_bytes: 256,
            max_attributes: 32,
            max_attribute_key_bytes: 128,
            max_attribute_value_bytes: 1024,
        }
    }
}

/// Why an append was refused or failed. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// An entry is invalid.
    #[error("entry {entry}: field {field}: {reason}")]
    Invalid {
        /// Index of the entry in the request.
        entry: usize,
        /// Field name as in the gRPC contract.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A size limit was exceeded.
    #[error("{}field {field} is {actual} bytes, over the limit of {limit}", .entry.map(|e| format!("entry {e}: ")).unwrap_or_default())]
    TooLarge {
        /// Index of the entry, when the limit is per entry.
        entry: Option<usize>,
        /// What is too large.
        field: &'static str,
        /// The limit.
        limit: usize,
        /// The size given.
        actual: usize,
    },
    /// The idempotency key was used before for different content.
    #[error(
        "entry {entry}: idempotency key {key:?} was already used for different content (seq {seq})"
    )]
    IdempotencyConflict {
        /// Index of the entry.
        entry: usize,
        /// The key.
        key: String,
        /// Seq of the entry that holds the key.
        seq: u64,
    },
    /// No such log.
    #[error("unknown log {0:?}")]
    UnknownLog(String),
    /// The log cannot take appends now (refused for corruption, shutting
    /// down, or a failed write).
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

/// A validated entry with its salt and commitment computed.
#[derive(Debug, Clone)]
pub struct PreparedEntry {
    /// The input, with the default content type filled in.
    pub input: EntryInput,
    /// Fresh random salt.
    pub salt: Salt,
    /// `BLAKE3(salt || payload)`.
    pub commitment: Hash,
}

fn check_text(
    entry: usize,
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), AppendError> {
    if required && value.is_empty() {
        return Err(AppendError::Invalid {
            entry,
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > max {
        return Err(AppendError::TooLarge {
            entry: Some(entry),
            field,
            limit: max,
            actual: value.len(),
        });
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(AppendError::Invalid {
            entry,
            field,
            reason: format!("contains the control character U+{:04X}", c as u32),
        });
    }
    Ok(())
}

/// Validates one entry against the limits.
///
/// # Errors
/// The first problem, naming the entry index and field.
pub fn validate(limits: &Limits, entry: usize, e: &EntryInput) -> Result<(), AppendError> {
    check_text(entry, "subject", &e.subject, limits.max_field_bytes, true)?;
    check_text(entry, "actor", &e.actor, limits.max_field_bytes, true)?;
    check_text(entry, "kind", &e.kind, limits.max_field_bytes, true)?;
    check_text(
        entry,
        "content_type",
        &e.content_type,
        limits.max_field_bytes,
        false,
    )?;
    check_text(
        entry,
        "idempotency_key",
        &e.idempotency_key,
        limits.max_field_bytes,
        false,
    )?;
    if e.payload.len() > limits.max_payload_bytes {
        return Err(AppendError::TooLarge {
            entry: Some(entry),
            field: "payload",
            limit: limits.max_payload_bytes,
            actual: e.payload.len(),
        });
    }
    if e.attributes.len() > limits.max_attributes {
        return Err(AppendError::TooLarge {
            entry: Some(entry),
            field: "attributes",
            limit: limits.max_attributes,
            actual: e.attributes.len(),
        });
    }
    for (k, v) in &e.attributes {
        check_text(entry, "attributes", k, limits.max_attribute_key_bytes, true)?;
        if v.len() > limits.max_attribute_value_bytes {
            return Err(AppendError::TooLarge {
                entry: Some(entry),
                field: "attributes",
                limit: limits.max_attribute_value_bytes,
                actual: v.len(),
            });
        }
        if v.contains('\0') {
            return Err(AppendError::Invalid {
                entry,
                field: "attributes",
                reason: format!("value of {k:?} contains a NUL character"),
            });
        }
    }
    Ok(())
}

/// Bytes an entry counts against [`Limits::max_request_bytes`].
pub fn request_bytes(e: &EntryInput) -> usize {
    e.payload.len()
        + e.subject.len()
        + e.actor.len()
        + e.kind.len()
        + e.content_type.len()
        + e.idempotency_key.len()
        + e.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Validates a request and prepares its entries, drawing one salt per entry
/// from `random` (injected so that tests are deterministic).
///
/// # Errors
/// The first invalid entry, or a request over the limits.
pub fn prepare(
    limits: &Limits,
    entries: Vec<EntryInput>,
    mut random: impl FnMut(&mut [u8; 32]),
) -> Result<Vec<PreparedEntry>, AppendError> {
    if entries.is_empty() {
        return Err(AppendError::Invalid {
            entry: 0,
            field: "entries",
            reason: "a request must carry at least one entry".into(),
        });
    }
    if entries.len() > limits.max_entries_per_request {
        return Err(AppendError::TooLarge {
            entry: None,
            field: "entries",
            limit: limits.max_entries_per_request,
            actual: entries.len(),
        });
    }
    let total: usize = entries.iter().map(request_bytes).sum();
    if total > limits.max_request_bytes {
        return Err(AppendError::TooLarge {
            entry: None,
            field: "request",
            limit: limits.max_request_bytes,
            actual: total,
        });
    }
    for (i, e) in entries.iter().enumerate() {
        validate(limits, i, e)?;
    }
    let salts: Vec<Salt> = entries
        .iter()
        .map(|_| {
            let mut salt = [0u8; 32];
            random(&mut salt);
            Salt(salt)
        })
        .collect();
    // All of the request's commitments at once: BLAKE3 then hashes many
    // payloads side by side (see core::commit).
    let payloads: Vec<&[u8]> = entries.iter().map(|e| e.payload.as_slice()).collect();
    let commitments = commit_payloads(&salts, &payloads);
    Ok(entries
        .into_iter()
        .zip(salts)
        .zip(commitments)
        .map(|((mut input, salt), commitment)| {
            if input.content_type.is_empty() {
                input.content_type = DEFAULT_CONTENT_TYPE.to_owned();
            }
            PreparedEntry {
                input,
                salt,
                commitment,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::entry::commit_payload;

    fn ok() -> EntryInput {
        EntryInput {
            subject: "order:1".into(),
            actor: "buyer:1".into(),
            kind: "prompt".into(),
            payload: b"p".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_table() {
        let l = Limits::default();
        type Mutate = Box<dyn Fn(&mut EntryInput)>;
        let cases: Vec<(&str, Mutate, &str)> = vec![
            ("empty subject", Box::new(|e| e.subject.clear()), "subject"),
            ("empty actor", Box::new(|e| e.actor.clear()), "actor"),
            ("empty kind", Box::new(|e| e.kind.clear()), "kind"),
            (
                "long subject",
                Box::new(|e| e.subject = "s".repeat(257)),
                "subject",
            ),
            (
                "control char",
                Box::new(|e| e.actor = "a\u{7}".into()),
                "actor",
            ),
            (
                "newline in kind",
                Box::new(|e| e.kind = "a\nb".into()),
                "kind",
            ),
            (
                "big payload",
                Box::new(|e| e.payload = vec![0; (1 << 20) + 1]),
                "payload",
            ),
            (
                "long key",
                Box::new(|e| {
                    e.idempotency_key = "k".repeat(300);
                }),
                "idempotency_key",
            ),
            (
                "many attributes",
                Box::new(|e| {
                    for i in 0..33 {
                        e.attributes.insert(format!("k{i}"), "v".into());
                    }
                }),
                "attributes",
            ),
            (
                "empty attribute key",
                Box::new(|e| {
                    e.attributes.insert(String::new(), "v".into());
                }),
                "attributes",
            ),
            (
                "NUL in value",
                Box::new(|e| {
                    e.attributes.insert("k".into(), "a\0".into());
                }),
                "attributes",
            ),
            (
                "long value",
                Box::new(|e| {
                    e.attributes.insert("k".into(), "v".repeat(1025));
                }),
                "attributes",
            ),
        ];
        for (name, mutate, field) in cases {
            let mut e = ok();
            mutate(&mut e);
            let err = validate(&l, 3, &e).unwrap_err();
            match &err {
                AppendError::Invalid {
                    entry, field: f, ..
                }
                | AppendError::TooLarge {
                    entry: Some(entry),
                    field: f,
                    ..
                } => {
                    assert_eq!((*entry, *f), (3, field), "{name}: {err}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        validate(&l, 0, &ok()).unwrap();
    }

    #[test]
    fn prepare_is_all_or_nothing_and_fills_defaults() {
        let l = Limits::default();
        let mut bad = ok();
        bad.kind.clear();
        let err = prepare(&l, vec![ok(), bad, ok()], |s| *s = [1; 32]).unwrap_err();
        assert!(matches!(
            err,
            AppendError::Invalid {
                entry: 1,
                field: "kind",
                ..
            }
        ));
        let p = prepare(&l, vec![ok()], |s| *s = [1; 32]).unwrap();
        assert_eq!(p[0].input.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(p[0].commitment, commit_payload(&Salt([1; 32]), b"p"));
        assert!(prepare(&l, vec![], |_| {}).is_err());
        let small = Limits {
            max_request_bytes: 10,
            ..Limits::default()
        };
        let mut big = ok();
        big.payload = vec![0; 20];
        assert!(matches!(
            prepare(&small, vec![big], |_| {}),
            Err(AppendError::TooLarge {
                entry: None,
                field: "request",
                ..
            })
        ));
    }
}
