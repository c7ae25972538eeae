//! Checkpoints: the signed tree heads of C2SP tlog-checkpoint
//! (<https://c2sp.org/tlog-checkpoint>).
//!
//! Owns: the checkpoint body (`origin`, size, base64 root, optional
//! extension lines), its strict parser, and signing/opening through
//! [`super::note`].
//!
//! Invariant: [`Checkpoint::from_text`] accepts exactly the texts
//! [`Checkpoint::to_text`] can produce (decimal without leading zeros,
//! canonical padded base64 of 32 bytes), so one tree head has one text.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::hash::Hash;
use super::note::{self, NoteError, OpenedNote, SignerKey, VerifierKey};

/// A tree head: the log's origin, its size and the Merkle root at that size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log origin, first line of the note.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 9162 root at `size`.
    pub root: Hash,
    /// Extension lines (kept and signed; auditlog writes none).
    pub extensions: Vec<String>,
}

/// Why a checkpoint was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The note itself did not open.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The signed text is not a checkpoint body.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The checkpoint is for another log.
    #[error("checkpoint is for origin {found:?}, expected {expected:?}")]
    WrongOrigin {
        /// Origin in the checkpoint.
        found: String,
        /// Origin the caller expected.
        expected: String,
    },
}

/// A log origin as C2SP tlog-checkpoint recommends: a schema-less URL with no
/// whitespace, no '+' and no control characters, at most 255 bytes.
pub fn is_valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= 255
        && !origin
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
}

/// Parses a canonical unsigned decimal (no sign, no leading zeros).
pub(crate) fn parse_canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Parses canonical padded base64 of exactly 32 bytes.
pub(crate) fn parse_b64_hash(s: &str) -> Option<Hash> {
    let raw = B64.decode(s).ok()?;
    let h = Hash::from_slice(&raw).ok()?;
    (B64.encode(h.0) == s).then_some(h)
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n` then extension lines.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        );
        for e in &self.extensions {
            t.push_str(e);
            t.push('\n');
        }
        t
    }

    /// Parses a checkpoint body.
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`] naming the first bad line.
    pub fn from_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        if !text.ends_with('\n') {
            return Err(CheckpointError::Malformed("body must end in a newline"));
        }
        let mut lines = text[..text.len() - 1].split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError::Malformed("empty origin line"))?;
        let size = lines
            .next()
            .and_then(parse_canonical_u64)
            .ok_or(CheckpointError::Malformed(
                "size line is not a decimal number",
            ))?;
        let root = lines
            .next()
            .and_then(parse_b64_hash)
            .ok_or(CheckpointError::Malformed(
                "root line is not base64 of 32 bytes",
            ))?;
        let mut extensions = Vec::new();
        for l in lines {
            if l.is_empty() {
                return Err(CheckpointError::Malformed("empty extension line"));
            }
            extensions.push(l.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint, returning the signed note text.
    ///
    /// # Errors
    /// When the origin is not valid note text (a control character).
    pub fn sign(&self, signer: &SignerKey) -> Result<String, NoteError> {
        note::sign(&self.to_text(), &[signer])
    }

    /// Opens a signed checkpoint with the trusted keys and, when given,
    /// checks it is for `expected_origin`.
    ///
    /// # Errors
    /// When the note does not open, the body is malformed, or the origin
    /// differs.
    pub fn open(
        signed: &str,
        trusted: &[VerifierKey],
        expected_origin: Option<&str>,
    ) -> Result<(Checkpoint, OpenedNote), CheckpointError> {
        let opened = note::open(signed, trusted)?;
        let cp = Checkpoint::from_text(&opened.text)?;
        if let Some(expected) = expected_origin {
            if cp.origin != expected {
                return Err(CheckpointError::WrongOrigin {
                    found: cp.origin,
                    expected: expected.to_owned(),
                });
            }
        }
        Ok((cp, opened))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: "audit.example.com/orders".into(),
            size: 42,
            root: Hash([3; 32]),
            extensions: vec![],
        }
    }

    #[test]
    fn text_round_trip() {
        let c = cp();
        assert_eq!(
            c.to_text(),
            "audit.example.com/orders\n42\nAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\n"
        );
        assert_eq!(Checkpoint::from_text(&c.to_text()).unwrap(), c);
        let mut e = cp();
        e.extensions.push("ext line".into());
        assert_eq!(Checkpoint::from_text(&e.to_text()).unwrap(), e);
    }

    #[test]
    fn non_canonical_bodies_are_refused() {
        let root = B64.encode([3u8; 32]);
        for bad in [
            format!("o\n042\n{root}\n"),
            format!("o\n+42\n{root}\n"),
            format!("o\n42 \n{root}\n"),
            format!("\n42\n{root}\n"),
            format!("o\n42\n{}\n", &root[..root.len() - 1]),
            format!("o\n42\n{}\n", B64.encode([3u8; 31])),
            format!("o\n42\n{root}"),
            format!("o\n42\n{root}\n\n"),
            "o\n42\n".to_string(),
            format!("o\n18446744073709551616\n{root}\n"),
        ] {
            assert!(Checkpoint::from_text(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sign_open_and_origin_check() {
        let k = SignerKey::from_seed("audit.example.com/orders", &[5; 32]).unwrap();
        let signed = cp().sign(&k).unwrap();
        let (c, _) = Checkpoint::open(&signed, &[k.verifier()], Some(&cp().origin)).unwrap();
        assert_eq!(c, cp());
        assert!(matches!(
            Checkpoint::open(&signed, &[k.verifier()], Some("other")),
            Err(CheckpointError::WrongOrigin { .. })
        ));
    }
}
