//! Seals: the signed statements that close a segment for good.
//!
//! Owns: the [`Seal`] body (a signed note text, FORMAT.md §5), its strict
//! parser, the seal hash that chains seals together, and the checks a seal
//! must pass against its predecessor and against the entries it covers.
//!
//! Invariants:
//! - The body is line-oriented text so that a seal is a C2SP signed note
//!   signed by the log key; its first line `auditlog/seal/v1` and its second
//!   line `origin ...` make it impossible to read as a checkpoint (whose
//!   second line is a bare number) and vice versa.
//! - [`Seal::from_text`] accepts exactly what [`Seal::to_text`] produces.
//! - Seals chain: `prev_seal` is the [`Seal::hash`] of the previous seal's
//!   body, [`Hash::ZERO`] for segment 0; segment ranges and time spans tile
//!   the log with no gap and no overlap ([`Seal::check_follows`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::checkpoint::{is_valid_origin, parse_b64_hash, parse_canonical_u64};
use super::hash::{blake3_concat, Hash};
use super::note::{self, NoteError, OpenedNote, SignerKey, VerifierKey};

/// First line of every version-1 seal body.
pub const SEAL_HEADER: &str = "auditlog/seal/v1";

/// Why a segment was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SealReason {
    /// The segment reached its size limit.
    Size,
    /// The segment reached its age limit.
    Age,
    /// An operator asked.
    Request,
    /// A retention window ended (the segment may be empty).
    Window,
    /// The server shut down cleanly.
    Shutdown,
}

impl SealReason {
    /// The token used in the seal body.
    pub fn as_str(self) -> &'static str {
        match self {
            SealReason::Size => "size",
            SealReason::Age => "age",
            SealReason::Request => "request",
            SealReason::Window => "window",
            SealReason::Shutdown => "shutdown",
        }
    }

    fn parse(s: &str) -> Option<SealReason> {
        Some(match s {
            "size" => SealReason::Size,
            "age" => SealReason::Age,
            "request" => SealReason::Request,
            "window" => SealReason::Window,
            "shutdown" => SealReason::Shutdown,
            _ => return None,
        })
    }
}

/// When the retention of a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetainUntil {
    /// Never expires.
    Forever,
    /// Unix nanoseconds after which payloads may be expired.
    At(i64),
}

/// The statement that closes segment `segment` of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// Log origin.
    pub origin: String,
    /// Segment number, from 0, dense.
    pub segment: u64,
    /// First seq in the segment.
    pub first_seq: u64,
    /// One past the last seq (equal to `first_seq` for an empty segment).
    pub end_seq: u64,
    /// Start of the time span the segment covers (Unix nanoseconds).
    pub span_from: i64,
    /// End of the time span (inclusive), the sealing time.
    pub span_to: i64,
    /// RFC 9162 root over the segment's leaf hashes alone (`H("")` if empty).
    pub segment_root: Hash,
    /// Root of the whole log tree at `end_seq` leaves.
    pub tree_root: Hash,
    /// [`Seal::hash`] of the previous seal, [`Hash::ZERO`] for segment 0.
    pub prev_seal: Hash,
    /// Why it was sealed.
    pub reason: SealReason,
    /// When its retention ends.
    pub retain_until: RetainUntil,
}

/// Why a seal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The note did not open.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The body is not a canonical seal body.
    #[error("malformed seal: {0}")]
    Malformed(&'static str),
    /// The seal does not follow its predecessor.
    #[error("seal {segment} does not follow the previous seal: {why}")]
    Discontinuous {
        /// Segment of the seal being checked.
        segment: u64,
        /// What does not line up.
        why: String,
    },
}

impl Seal {
    /// The body text (FORMAT.md §5).
    pub fn to_text(&self) -> String {
        let retain = match self.retain_until {
            RetainUntil::Forever => "forever".to_string(),
            RetainUntil::At(t) => t.to_string(),
        };
        format!(
            "{SEAL_HEADER}\norigin {}\nsegment {}\nentries {} {}\nspan {} {}\nsegment-root {}\ntree {} {}\nprev-seal {}\nreason {}\nretain-until {}\n",
            self.origin,
            self.segment,
            self.first_seq,
            self.end_seq,
            self.span_from,
            self.span_to,
            B64.encode(self.segment_root.0),
            self.end_seq,
            B64.encode(self.tree_root.0),
            B64.encode(self.prev_seal.0),
            self.reason.as_str(),
            retain,
        )
    }

    /// Parses a seal body, accepting only the canonical text.
    ///
    /// # Errors
    /// [`SealError::Malformed`] naming the first bad line.
    pub fn from_text(text: &str) -> Result<Seal, SealError> {
        let mut lines = text.split('\n');
        if lines.next() != Some(SEAL_HEADER) {
            return Err(SealError::Malformed("first line is not auditlog/seal/v1"));
        }
        let mut field = |key: &'static str, err: &'static str| -> Result<&str, SealError> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or(SealError::Malformed(err))
        };
        let origin = field("origin", "origin line")?.to_owned();
        if !is_valid_origin(&origin) {
            return Err(SealError::Malformed(
                "origin is empty or has spaces, '+' or control characters",
            ));
        }
        let segment = field("segment", "segment line")
            .map(parse_canonical_u64)?
            .ok_or(SealError::Malformed("segment is not a number"))?;
        let (first_seq, end_seq) = two(field("entries", "entries line")?, parse_canonical_u64)
            .ok_or(SealError::Malformed("entries line needs two numbers"))?;
        let (span_from, span_to) = two(field("span", "span line")?, |s| s.parse::<i64>().ok())
            .ok_or(SealError::Malformed("span line needs two timestamps"))?;
        let segment_root = parse_b64_hash(field("segment-root", "segment-root line")?).ok_or(
            SealError::Malformed("segment-root is not base64 of 32 bytes"),
        )?;
        let tree = field("tree", "tree line")?;
        let (tree_size, tree_root) = tree
            .split_once(' ')
            .and_then(|(s, r)| Some((parse_canonical_u64(s)?, parse_b64_hash(r)?)))
            .ok_or(SealError::Malformed("tree line needs a size and a root"))?;
        let prev_seal = parse_b64_hash(field("prev-seal", "prev-seal line")?)
            .ok_or(SealError::Malformed("prev-seal is not base64 of 32 bytes"))?;
        let reason = SealReason::parse(field("reason", "reason line")?)
            .ok_or(SealError::Malformed("unknown seal reason"))?;
        let retain_until = match field("retain-until", "retain-until line")? {
            "forever" => RetainUntil::Forever,
            t => RetainUntil::At(
                t.parse()
                    .map_err(|_| SealError::Malformed("retain-until is not a timestamp"))?,
            ),
        };
        if tree_size != end_seq {
            return Err(SealError::Malformed(
                "tree size differs from the end of entries",
            ));
        }
        if end_seq < first_seq {
            return Err(SealError::Malformed("entries range ends before it starts"));
        }
        if span_to < span_from {
            return Err(SealError::Malformed("span ends before it starts"));
        }
        let seal = Seal {
            origin,
            segment,
            first_seq,
            end_seq,
            span_from,
            span_to,
            segment_root,
            tree_root,
            prev_seal,
            reason,
            retain_until,
        };
        // One seal, one text: anything else (leading zeros, '+', extra lines)
        // is refused.
        if seal.to_text() != text {
            return Err(SealError::Malformed("not in canonical form"));
        }
        Ok(seal)
    }

    /// `BLAKE3(body text)`: what the next seal's `prev-seal` must be. Over the
    /// body, not the signatures, so re-signing (key rotation) keeps the chain.
    pub fn hash(&self) -> Hash {
        blake3_concat(&[self.to_text().as_bytes()])
    }

    /// Number of entries covered.
    pub fn len(&self) -> u64 {
        self.end_seq - self.first_seq
    }

    /// True for a seal of an interval with no entries.
    pub fn is_empty(&self) -> bool {
        self.end_seq == self.first_seq
    }

    /// Signs the seal.
    ///
    /// # Errors
    /// When the origin holds a control character.
    pub fn sign(&self, signer: &SignerKey) -> Result<String, NoteError> {
        note::sign(&self.to_text(), &[signer])
    }

    /// Opens a signed seal with the trusted keys.
    ///
    /// # Errors
    /// When the note does not open or the body is not a seal.
    pub fn open(signed: &str, trusted: &[VerifierKey]) -> Result<(Seal, OpenedNote), SealError> {
        let opened = note::open(signed, trusted)?;
        let seal = Seal::from_text(&opened.text)?;
        Ok((seal, opened))
    }

    /// Checks that `self` directly follows `prev` (or is the first seal when
    /// `prev` is `None`): same origin, next segment number, chained hash,
    /// contiguous seqs and time span.
    ///
    /// # Errors
    /// [`SealError::Discontinuous`] saying what does not line up.
    pub fn check_follows(&self, prev: Option<&Seal>) -> Result<(), SealError> {
        let fail = |why: String| {
            Err(SealError::Discontinuous {
                segment: self.segment,
                why,
            })
        };
        match prev {
            None => {
                if self.segment != 0 || self.first_seq != 0 || self.prev_seal != Hash::ZERO {
                    return fail(
                        "the first seal must be segment 0 from seq 0 with a zero prev-seal".into(),
                    );
                }
            }
            Some(p) => {
                if self.origin != p.origin {
                    return fail(format!("origin {:?} after {:?}", self.origin, p.origin));
                }
                if self.segment != p.segment + 1 {
                    return fail(format!(
                        "segment {} after segment {}",
                        self.segment, p.segment
                    ));
                }
                if self.first_seq != p.end_seq {
                    return fail(format!(
                        "starts at seq {} but the previous segment ended at {}",
                        self.first_seq, p.end_seq
                    ));
                }
                if self.span_from != p.span_to {
                    return fail(format!(
                        "time span starts at {} but the previous one ended at {}",
                        self.span_from, p.span_to
                    ));
                }
                if self.prev_seal != p.hash() {
                    return fail("prev-seal is not the hash of the previous seal".into());
                }
            }
        }
        Ok(())
    }
}

fn two<T>(s: &str, parse: impl Fn(&str) -> Option<T>) -> Option<(T, T)> {
    let (a, b) = s.split_once(' ')?;
    Some((parse(a)?, parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Seal {
        Seal {
            origin: "audit.example.com/orders".into(),
            segment: 0,
            first_seq: 0,
            end_seq: 3,
            span_from: 1_000,
            span_to: 2_000,
            segment_root: Hash([1; 32]),
            tree_root: Hash([1; 32]),
            prev_seal: Hash::ZERO,
            reason: SealReason::Request,
            retain_until: RetainUntil::At(1_000_000),
        }
    }

    #[test]
    fn text_round_trip() {
        let s = sample();
        assert_eq!(Seal::from_text(&s.to_text()).unwrap(), s);
        let mut f = sample();
        f.retain_until = RetainUntil::Forever;
        f.span_from = -5;
        assert_eq!(Seal::from_text(&f.to_text()).unwrap(), f);
    }

    #[test]
    fn non_canonical_bodies_are_refused() {
        let good = sample().to_text();
        let cases = [
            good.replace("segment 0", "segment 00"),
            good.replace("span 1000", "span +1000"),
            good.replace("tree 3", "tree 4"),
            good.replace("reason request", "reason whim"),
            good.replace("auditlog/seal/v1", "auditlog/seal/v2"),
            format!("{good}extra\n"),
            good.trim_end().to_string(),
            good.replace("entries 0 3", "entries 3 0"),
            good.replace("span 1000 2000", "span 2000 1000"),
            good.replace("origin ", "origin  "),
        ];
        for bad in cases {
            assert!(Seal::from_text(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_seal_is_not_a_checkpoint_and_back() {
        use crate::core::checkpoint::Checkpoint;
        assert!(Checkpoint::from_text(&sample().to_text()).is_err());
        let cp = Checkpoint {
            origin: SEAL_HEADER.into(),
            size: 3,
            root: Hash([1; 32]),
            extensions: vec![],
        };
        assert!(Seal::from_text(&cp.to_text()).is_err());
    }

    #[test]
    fn chain_checks() {
        let first = sample();
        first.check_follows(None).unwrap();
        let mut next = sample();
        next.segment = 1;
        next.first_seq = 3;
        next.end_seq = 3;
        next.span_from = 2_000;
        next.span_to = 3_000;
        next.prev_seal = first.hash();
        next.check_follows(Some(&first)).unwrap();

        let mut broken = next.clone();
        broken.prev_seal = Hash([9; 32]);
        assert!(broken.check_follows(Some(&first)).is_err());
        let mut gap = next.clone();
        gap.first_seq = 4;
        gap.end_seq = 4;
        assert!(gap.check_follows(Some(&first)).is_err());
        let mut time_gap = next.clone();
        time_gap.span_from = 2_500;
        assert!(time_gap.check_follows(Some(&first)).is_err());
        let mut skipped = next.clone();
        skipped.segment = 2;
        assert!(skipped.check_follows(Some(&first)).is_err());
        let mut not_first = first.clone();
        not_first.segment = 1;
        assert!(not_first.check_follows(None).is_err());
    }
}
