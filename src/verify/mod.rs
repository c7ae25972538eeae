//! Verification: stable verdict codes, findings and reports, and the
//! verifiers built on the core.
//!
//! Owns: [`Verdict`] (the codes scripts and reviewers rely on), [`Finding`],
//! [`Report`], and [`store`] (whole data directories).
//!
//! Invariants:
//! - Verifiers trust only the keys their caller passes; a key inside the
//!   data is never trusted.
//! - Verdict code strings never change: they are a contract.
//! - ERASED and EXPIRED are informational; every other code but VALID makes
//!   a report invalid.

pub mod postgres;
pub mod store;

use std::fmt;

use crate::core::note::VerifierKey;
use crate::core::transition::{explain_untrusted, KeyTransition};

/// The stable verdict codes of `auditlog verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Verdict {
    /// Everything checked out.
    Valid,
    /// A hash does not match what it commits to (entry, payload, root).
    HashMismatch,
    /// An entry does not link to its predecessor, or seals do not chain.
    ChainBroken,
    /// A signature by a trusted key does not verify.
    BadSignature,
    /// Signed, but by no key the verifier trusts.
    UnknownKey,
    /// An inclusion or consistency proof does not verify.
    BadProof,
    /// An entry that must exist is not there.
    MissingEntry,
    /// The log or a segment ends before it should.
    Truncated,
    /// Bytes that do not parse as what they must be.
    Malformed,
    /// A payload removed by erasure (informational).
    Erased,
    /// A payload removed when its retention ended (informational).
    Expired,
}

impl Verdict {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Valid => "VALID",
            Verdict::HashMismatch => "HASH_MISMATCH",
            Verdict::ChainBroken => "CHAIN_BROKEN",
            Verdict::BadSignature => "BAD_SIGNATURE",
            Verdict::UnknownKey => "UNKNOWN_KEY",
            Verdict::BadProof => "BAD_PROOF",
            Verdict::MissingEntry => "MISSING_ENTRY",
            Verdict::Truncated => "TRUNCATED",
            Verdict::Malformed => "MALFORMED",
            Verdict::Erased => "ERASED",
            Verdict::Expired => "EXPIRED",
        }
    }

    /// True for codes that do not make evidence invalid.
    pub fn is_informational(self) -> bool {
        matches!(self, Verdict::Valid | Verdict::Erased | Verdict::Expired)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One thing verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its code.
    pub verdict: Verdict,
    /// Log name.
    pub log: String,
    /// Entry, when the finding is about one.
    pub seq: Option<u64>,
    /// Segment, when the finding is about one.
    pub segment: Option<u64>,
    /// The field or structure at fault (`payload`, `prev_leaf_hash`, `seal`).
    pub field: String,
    /// What exactly, for a person.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} log={}", self.verdict, self.log)?;
        if let Some(s) = self.seq {
            write!(f, " seq={s}")?;
        }
        if let Some(s) = self.segment {
            write!(f, " segment={s}")?;
        }
        if !self.field.is_empty() {
            write!(f, " field={}", self.field)?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// A signed checkpoint held outside the store (a receipt's, or one an
/// auditor kept), which a store's log must still extend: verification of
/// a data directory or a database recomputes the log's tree and compares
/// its root at the checkpoint's size (`--since-checkpoint`). This is what
/// sees entries removed from the end of a log together with their
/// checkpoints, which otherwise looks like a shorter log, and a history
/// rewritten and signed again by whoever holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The checkpoint, opened under a trusted key.
    pub checkpoint: crate::core::checkpoint::Checkpoint,
}

impl Anchor {
    /// Opens `text` under `keys`; a checkpoint that does not open is a
    /// finding (field `since`) and no anchor.
    pub fn open(text: &str, keys: &[VerifierKey], report: &mut Report) -> Option<Anchor> {
        match crate::core::checkpoint::Checkpoint::open(text, keys, None) {
            Ok((checkpoint, _)) => Some(Anchor { checkpoint }),
            Err(e) => {
                let verdict = store::checkpoint_verdict(&e);
                let detail = report.note_detail(verdict, &e, text, keys);
                report.add(
                    verdict,
                    "-",
                    None,
                    None,
                    "since",
                    format!("the checkpoint you hold does not open: {detail}"),
                );
                None
            }
        }
    }

    /// The finding when no log of the store has the checkpoint's origin.
    pub(crate) fn no_log(&self, report: &mut Report) {
        report.add(
            Verdict::MissingEntry,
            "-",
            Some(self.checkpoint.size),
            None,
            "since",
            format!(
                "no log of origin {:?} in this store: the checkpoint you hold is of a log \
                 that is not here",
                self.checkpoint.origin
            ),
        );
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Everything found, in the order found.
    pub findings: Vec<Finding>,
    /// Entries whose hashes were recomputed.
    pub entries_checked: u64,
    /// Signed checkpoints verified.
    pub checkpoints_checked: u64,
    /// Seals verified.
    pub seals_checked: u64,
    /// Key transitions found (in order), each with whether it was followed
    /// (its `from` key was trusted, so its `to` key became trusted).
    pub transitions: Vec<(KeyTransition, bool)>,
}

impl Report {
    /// True when no finding is a failure.
    pub fn is_valid(&self) -> bool {
        self.findings.iter().all(|f| f.verdict.is_informational())
    }

    /// The failing findings.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| !f.verdict.is_informational())
    }

    /// True if some finding has this verdict.
    pub fn has(&self, v: Verdict) -> bool {
        self.findings.iter().any(|f| f.verdict == v)
    }

    /// The detail of a note that failed to open: the error, and when it is
    /// signed by no trusted key but by one a key transition names, which
    /// key to add.
    pub(crate) fn note_detail(
        &self,
        verdict: Verdict,
        error: &dyn fmt::Display,
        note: &str,
        trusted: &[VerifierKey],
    ) -> String {
        if verdict != Verdict::UnknownKey {
            return error.to_string();
        }
        let all: Vec<KeyTransition> = self.transitions.iter().map(|(t, _)| t.clone()).collect();
        match explain_untrusted(note, trusted, &all) {
            Some(why) => format!("{error}: {why}"),
            None => error.to_string(),
        }
    }

    pub(crate) fn add(
        &mut self,
        verdict: Verdict,
        log: &str,
        seq: Option<u64>,
        segment: Option<u64>,
        field: &str,
        detail: impl Into<String>,
    ) {
        self.findings.push(Finding {
            verdict,
            log: log.to_owned(),
            seq,
            segment,
            field: field.to_owned(),
            detail: detail.into(),
        });
    }
}
