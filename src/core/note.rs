//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys.
//!
//! Owns: key ids, verifier and signer key text, [`sign`], and [`open`], which
//! checks a note against a set of trusted keys.
//!
//! Invariants:
//! - A note opens only if at least one signature verifies under a key the
//!   caller trusts. Signatures by unknown keys are ignored (they are how
//!   witnesses cosign), never trusted, never an error.
//! - A signature line naming a trusted key (same name and key id) that does
//!   not verify is an error: such a note is forged or damaged.
//! - Verification uses `verify_strict` (no small-order keys, canonical S and R)
//!   and refuses weak keys when they are parsed.
//! - No I/O, no randomness: key generation takes a seed from the caller.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::Digest as _;

/// Signature algorithm byte for Ed25519 in C2SP signed-note.
pub const ALG_ED25519: u8 = 0x01;

/// The em dash that opens every signature line ("— ").
const SIG_PREFIX: &str = "\u{2014} ";

/// Most signature lines a note may carry (as in the Go implementation).
pub const MAX_SIGNATURES: usize = 100;

/// Errors of key parsing, signing and note opening.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The key text does not have the expected shape.
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    /// The key is a small-order (weak) Ed25519 point.
    #[error("weak Ed25519 public key refused")]
    WeakKey,
    /// The key name is empty or contains whitespace or '+'.
    #[error("invalid key name {0:?}: it must be non-empty and contain no spaces or '+'")]
    BadName(String),
    /// Note text is not valid for signing (see the message).
    #[error("malformed note text: {0}")]
    MalformedText(&'static str),
    /// The note's signature block is not well formed.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// A signature line for a trusted key does not verify.
    #[error("invalid signature by trusted key {name}+{key_id:08x}")]
    InvalidSignature {
        /// Name of the trusted key.
        name: String,
        /// Its key id.
        key_id: u32,
    },
    /// No signature by any trusted key.
    #[error("no signature by a trusted key (signed by: {})", if .signers.is_empty() { "nobody".to_string() } else { .signers.join(", ") })]
    UnverifiedNote {
        /// `name+keyid` of every signature present, for the message.
        signers: Vec<String>,
    },
}

/// C2SP key id: the first 4 bytes (big-endian) of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::BadName(name.to_owned()));
    }
    Ok(())
}

/// A public key trusted to sign notes.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl VerifierKey {
    /// Builds a verifier from a name and a raw Ed25519 public key.
    ///
    /// # Errors
    /// Bad name, invalid point, or weak key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<VerifierKey, NoteError> {
        check_name(name)?;
        let key = VerifyingKey::from_bytes(public_key)
            .map_err(|_| NoteError::MalformedKey("not an Ed25519 point"))?;
        if key.is_weak() {
            return Err(NoteError::WeakKey);
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: key_id(name, public_key),
            key,
        })
    }

    /// Parses verifier key text: `name+hex8(keyid)+base64(0x01 || key)`.
    ///
    /// # Errors
    /// When the text is malformed, the id does not match, or the key is weak.
    pub fn from_text(text: &str) -> Result<VerifierKey, NoteError> {
        let text = text.trim_end_matches(['\n', '\r']);
        let mut parts = text.splitn(3, '+');
        let (name, id_hex, b64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(i), Some(b)) => (n, i, b),
            _ => return Err(NoteError::MalformedKey("expected name+id+key")),
        };
        let (id, pk) = parse_key_body(id_hex, b64)?;
        let v = VerifierKey::new(name, &pk)?;
        if v.key_id != id {
            return Err(NoteError::MalformedKey("key id does not match the key"));
        }
        Ok(v)
    }

    /// Verifier key text.
    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Raw public key.
    pub fn public_key(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Checks an Ed25519 signature with `verify_strict`.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.key
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }
}

fn parse_key_id(id_hex: &str) -> Result<u32, NoteError> {
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::MalformedKey("key id must be 8 hex digits"));
    }
    u32::from_str_radix(id_hex, 16).map_err(|_| NoteError::MalformedKey("key id is not hex"))
}

/// The key id and the 32 key bytes of a key text's last two fields (the
/// bytes are base64 of the algorithm byte, Ed25519, then the key).
fn parse_key_body(id_hex: &str, b64: &str) -> Result<(u32, [u8; 32]), NoteError> {
    let id = parse_key_id(id_hex)?;
    let raw = B64
        .decode(b64)
        .map_err(|_| NoteError::MalformedKey("key is not base64"))?;
    match raw.split_first() {
        Some((&ALG_ED25519, key)) if key.len() == 32 => Ok((id, key.try_into().expect("32 bytes"))),
        _ => Err(NoteError::MalformedKey("not an Ed25519 key")),
    }
}

/// A private key that signs notes.
#[derive(Clone)]
pub struct SignerKey {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({}+{:08x})", self.name, self.key_id)
    }
}

impl SignerKey {
    /// Derives a signer from a 32-byte Ed25519 seed (the caller draws it).
    ///
    /// # Errors
    /// When the name is not a valid key name.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<SignerKey, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(seed);
        Ok(SignerKey {
            name: name.to_owned(),
            key_id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// Parses signer key text:
    /// `PRIVATE+KEY+name+hex8(keyid)+base64(0x01 || seed)`.
    ///
    /// # Errors
    /// When the text is malformed or the id does not match the key.
    pub fn from_text(text: &str) -> Result<SignerKey, NoteError> {
        let text = text.trim_end_matches(['\n', '\r']);
        let mut parts = text.splitn(5, '+');
        let (p, k, name, id_hex, b64) = match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(p), Some(k), Some(n), Some(i), Some(b)) => (p, k, n, i, b),
            _ => return Err(NoteError::MalformedKey("expected PRIVATE+KEY+name+id+key")),
        };
        if p != "PRIVATE" || k != "KEY" {
            return Err(NoteError::MalformedKey(
                "signer key must start PRIVATE+KEY+",
            ));
        }
        let (id, seed) = parse_key_body(id_hex, b64)?;
        let s = SignerKey::from_seed(name, &seed)?;
        if s.key_id != id {
            return Err(NoteError::MalformedKey("key id does not match the key"));
        }
        Ok(s)
    }

    /// Signer key text. This is the secret: write it only to mode-0600 files.
    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            B64.encode(raw)
        )
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Raw Ed25519 signature over `msg`.
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key id.
    pub key_id: u32,
    /// Signature bytes after the key id (64 for Ed25519).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line as it appears in a note, with its final newline.
    pub fn to_line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }
}

/// A note whose text carries at least one signature by a trusted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNote {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Signatures that verified under trusted keys.
    pub verified: Vec<NoteSignature>,
    /// Signatures by keys the caller did not supply (not checked).
    pub unverified: Vec<NoteSignature>,
}

/// Checks that `text` may be signed: non-empty, ends in a newline, has no
/// ASCII control characters other than newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::MalformedText("text must end in a newline"));
    }
    if text.chars().any(|c| c != '\n' && c.is_ascii_control()) {
        return Err(NoteError::MalformedText(
            "text contains a control character",
        ));
    }
    Ok(())
}

/// Signs `text` with each signer and returns the full note.
///
/// # Errors
/// When the text cannot be a note's text.
pub fn sign(text: &str, signers: &[&SignerKey]) -> Result<String, NoteError> {
    check_text(text)?;
    let mut note = String::with_capacity(text.len() + 1 + signers.len() * 120);
    note.push_str(text);
    note.push('\n');
    for s in signers {
        let sig = NoteSignature {
            name: s.name.clone(),
            key_id: s.key_id,
            signature: s.sign_bytes(text.as_bytes()).to_vec(),
        };
        note.push_str(&sig.to_line());
    }
    Ok(note)
}

/// Splits a note into its text and its parsed signature lines, without
/// checking any signature.
///
/// # Errors
/// [`NoteError::MalformedNote`] when the note does not have the C2SP shape.
pub fn parse(note: &str) -> Result<(String, Vec<NoteSignature>), NoteError> {
    let malformed = |why: &str| NoteError::MalformedNote(why.to_owned());
    if !note.ends_with('\n') {
        return Err(malformed("does not end in a newline"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| malformed("no blank line before the signatures"))?;
    let text = &note[..split + 1];
    check_text(text).map_err(|e| NoteError::MalformedNote(e.to_string()))?;
    let block = &note[split + 2..];
    let mut sigs = Vec::new();
    for line in block.split_terminator('\n') {
        if sigs.len() == MAX_SIGNATURES {
            return Err(malformed("too many signatures"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| malformed("a signature line does not start with an em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| malformed("a signature line has no space after the name"))?;
        check_name(name).map_err(|e| NoteError::MalformedNote(e.to_string()))?;
        let raw = B64
            .decode(b64)
            .map_err(|_| malformed("signature is not base64"))?;
        if raw.len() < 5 {
            return Err(malformed("signature is too short"));
        }
        sigs.push(NoteSignature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            signature: raw[4..].to_vec(),
        });
    }
    if sigs.is_empty() {
        return Err(malformed("no signatures"));
    }
    Ok((text.to_owned(), sigs))
}

/// Opens a note: parses it and checks its signatures against `trusted`.
///
/// # Errors
/// Malformed notes, a failing signature by a trusted key, or no signature by
/// any trusted key.
pub fn open(note: &str, trusted: &[VerifierKey]) -> Result<OpenedNote, NoteError> {
    let (text, sigs) = parse(note)?;
    let mut verified: Vec<NoteSignature> = Vec::new();
    let mut unverified = Vec::new();
    for sig in sigs {
        let Some(key) = trusted
            .iter()
            .find(|k| k.name == sig.name && k.key_id == sig.key_id)
        else {
            unverified.push(sig);
            continue;
        };
        if verified
            .iter()
            .any(|v| v.name == sig.name && v.key_id == sig.key_id)
        {
            return Err(NoteError::MalformedNote(format!(
                "two signatures by {}+{:08x}",
                sig.name, sig.key_id
            )));
        }
        let ok = <&[u8; 64]>::try_from(sig.signature.as_slice())
            .map(|s| key.verify(text.as_bytes(), s))
            .unwrap_or(false);
        if !ok {
            return Err(NoteError::InvalidSignature {
                name: sig.name,
                key_id: sig.key_id,
            });
        }
        verified.push(sig);
    }
    if verified.is_empty() {
        return Err(NoteError::UnverifiedNote {
            signers: unverified
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.key_id))
                .collect(),
        });
    }
    Ok(OpenedNote {
        text,
        verified,
        unverified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, seed: u8) -> SignerKey {
        SignerKey::from_seed(name, &[seed; 32]).unwrap()
    }

    #[test]
    fn key_text_round_trips() {
        let s = signer("audit.example.com/orders", 9);
        let s2 = SignerKey::from_text(&s.to_text()).unwrap();
        assert_eq!(s2.to_text(), s.to_text());
        let v = VerifierKey::from_text(&s.verifier().to_text()).unwrap();
        assert_eq!(v, s.verifier());
    }

    #[test]
    fn key_text_with_wrong_id_or_shape_is_refused() {
        let v = signer("log", 1).verifier().to_text();
        let (head, tail) = v.split_at(v.find('+').unwrap() + 1);
        let wrong_id = format!("{head}00000000{}", &tail[8..]);
        for bad in [
            wrong_id.as_str(),
            "log+1234",
            "log+zzzzzzzz+AAAA",
            "+00000000+AA==",
            "log name+00000000+AA==",
        ] {
            assert!(VerifierKey::from_text(bad).is_err(), "{bad}");
        }
        assert!(SignerKey::from_text(&v).is_err());
    }

    #[test]
    fn key_bytes_of_another_algorithm_or_length_are_refused() {
        let s = signer("log", 3);
        let (v, p) = (s.verifier().to_text(), s.to_text());
        let id_of = |t: &str| t.rsplit('+').nth(1).unwrap().to_owned();
        let (vid, pid) = (id_of(&v), id_of(&p));
        let good = B64.decode(v.rsplit('+').next().unwrap()).unwrap();
        let mut other_alg = good.clone();
        other_alg[0] = 0x02;
        let mut long = good.clone();
        long.push(0);
        for raw in [other_alg, good[..32].to_vec(), long, vec![ALG_ED25519]] {
            let b64 = B64.encode(&raw);
            let err = VerifierKey::from_text(&format!("log+{vid}+{b64}")).unwrap_err();
            assert_eq!(
                err,
                NoteError::MalformedKey("not an Ed25519 key"),
                "{raw:?}"
            );
            let err = SignerKey::from_text(&format!("PRIVATE+KEY+log+{pid}+{b64}")).unwrap_err();
            assert_eq!(
                err,
                NoteError::MalformedKey("not an Ed25519 key"),
                "{raw:?}"
            );
        }
        let err = SignerKey::from_text(&format!("PRIVATE+KEY+log+{pid}+not base64!")).unwrap_err();
        assert_eq!(err, NoteError::MalformedKey("key is not base64"));
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point encodes as 0x01 followed by zeros: small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            VerifierKey::new("x", &identity).unwrap_err(),
            NoteError::WeakKey
        );
    }

    #[test]
    fn sign_then_open_and_unknown_keys() {
        let a = signer("a", 1);
        let b = signer("b", 2);
        let note = sign("hello\nworld\n", &[&a, &b]).unwrap();
        let opened = open(&note, &[a.verifier()]).unwrap();
        assert_eq!(opened.text, "hello\nworld\n");
        assert_eq!(opened.verified.len(), 1);
        assert_eq!(opened.unverified.len(), 1);
        let c = signer("c", 3);
        assert!(matches!(
            open(&note, &[c.verifier()]),
            Err(NoteError::UnverifiedNote { .. })
        ));
    }

    #[test]
    fn tampered_text_fails_for_trusted_key() {
        let a = signer("a", 1);
        let note = sign("size 10\n", &[&a]).unwrap().replace("10", "11");
        assert_eq!(
            open(&note, &[a.verifier()]),
            Err(NoteError::InvalidSignature {
                name: "a".into(),
                key_id: a.key_id()
            })
        );
    }

    #[test]
    fn same_name_other_key_is_not_trusted() {
        let real = signer("log", 1);
        let impostor = signer("log", 2);
        let note = sign("x\n", &[&impostor]).unwrap();
        assert!(matches!(
            open(&note, &[real.verifier()]),
            Err(NoteError::UnverifiedNote { .. })
        ));
    }

    #[test]
    fn duplicate_trusted_signature_is_malformed() {
        let a = signer("a", 1);
        let note = sign("x\n", &[&a, &a]).unwrap();
        assert!(matches!(
            open(&note, &[a.verifier()]),
            Err(NoteError::MalformedNote(_))
        ));
    }

    #[test]
    fn text_rules() {
        let a = signer("a", 1);
        assert!(sign("", &[&a]).is_err());
        assert!(sign("no newline", &[&a]).is_err());
        assert!(sign("tab\there\n", &[&a]).is_err());
    }
}
