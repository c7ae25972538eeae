//! Evidence bundles: the file a dispute reviewer verifies offline
//! (FORMAT.md §9).
//!
//! Owns: the bundle's JSON Lines schema (version 1), its writer
//! ([`BundleWriter`]), and [`verify_bundle`], which checks a bundle with
//! nothing but the core and the keys the reviewer trusts.
//!
//! Invariants:
//! - A bundle is verified against keys passed in by the caller only; keys,
//!   names or checkpoints carried inside are data to check, never trust.
//! - Every entry is bound to the bundle's signed checkpoint by its inclusion
//!   proof; every payload to its entry by the commitment; every seal by its
//!   signature and by a consistency proof from its tree to the checkpoint's.
//! - The verifier never panics and never allocates from a length in the
//!   input beyond the line it reads: lines are bounded ([`MAX_LINE`]).

use std::io::{BufRead, Read as _, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::core::checkpoint::Checkpoint;
use crate::core::entry::{commit_payload, leaf_hash_of_encoding, Entry, Salt};
use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::{proof_from_bytes, verify_consistency, verify_inclusion};
use crate::core::note::VerifierKey;
use crate::core::seal::Seal;
use crate::verify::store::note_verdict;
use crate::verify::{Report, Verdict};

/// Value of the header's `format` field.
pub const BUNDLE_FORMAT: &str = "auditlog-bundle";
/// Bundle version written by this code.
pub const BUNDLE_VERSION: u64 = 1;
/// Longest line a reader accepts (a 1 MiB payload in base64 plus proofs).
pub const MAX_LINE: usize = 8 << 20;

/// What the bundle was exported for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Query {
    /// Seqs `[from_seq, to_seq)`: the bundle must hold every one of them.
    SeqRange {
        /// First seq.
        from_seq: u64,
        /// End (exclusive).
        to_seq: u64,
    },
    /// Entries with timestamps in `[since, until)`.
    TimeRange {
        /// Start, Unix nanoseconds.
        since_unix_nanos: i64,
        /// End (exclusive).
        until_unix_nanos: i64,
    },
    /// Entries about a subject.
    Subject {
        /// The subject.
        subject: String,
    },
}

/// Header line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u64,
    log: String,
    origin: String,
    query: Query,
    checkpoint: String,
}

/// One entry as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// Canonical encoding.
    pub encoding: Vec<u8>,
    /// Payload state: "present", "erased", "expired".
    pub state: &'static str,
    /// Salt when present.
    pub salt: Option<Salt>,
    /// Payload when present.
    pub payload: Vec<u8>,
    /// Inclusion proof against the bundle's checkpoint.
    pub proof: Vec<Hash>,
}

/// Writes a bundle, line by line.
pub struct BundleWriter<W: Write> {
    out: W,
    entries: u64,
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn b64_list(hs: &[Hash]) -> Vec<String> {
    hs.iter().map(|h| b64(&h.0)).collect()
}

impl<W: Write> BundleWriter<W> {
    /// Starts a bundle with its header.
    ///
    /// # Errors
    /// Write errors.
    pub fn new(
        mut out: W,
        log: &str,
        origin: &str,
        query: Query,
        checkpoint: &str,
    ) -> std::io::Result<Self> {
        let h = Header {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            log: log.into(),
            origin: origin.into(),
            query,
            checkpoint: checkpoint.into(),
        };
        serde_json::to_writer(&mut out, &h)?;
        out.write_all(b"\n")?;
        Ok(BundleWriter { out, entries: 0 })
    }

    fn line(&mut self, v: serde_json::Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, &v)?;
        self.out.write_all(b"\n")
    }

    /// Adds an entry.
    ///
    /// # Errors
    /// Write errors.
    pub fn entry(&mut self, e: &BundleEntry) -> std::io::Result<()> {
        self.entries += 1;
        self.line(json!({
            "type": "entry",
            "encoding": b64(&e.encoding),
            "payload_state": e.state,
            "salt": e.salt.map(|s| b64(&s.0)),
            "payload": (e.state == "present").then(|| b64(&e.payload)),
            "inclusion_proof": b64_list(&e.proof),
        }))
    }

    /// Adds a seal with the consistency proof from its tree to the
    /// checkpoint's (empty when the sizes are equal).
    ///
    /// # Errors
    /// Write errors.
    pub fn seal(&mut self, signed: &str, consistency: &[Hash]) -> std::io::Result<()> {
        self.line(json!({
            "type": "seal",
            "seal": signed,
            "consistency_proof": b64_list(consistency),
        }))
    }

    /// Adds the proof that an earlier checkpoint (a receipt's) is a prefix
    /// of the bundle's.
    ///
    /// # Errors
    /// Write errors.
    pub fn since(&mut self, signed: &str, consistency: &[Hash]) -> std::io::Result<()> {
        self.line(json!({
            "type": "since",
            "checkpoint": signed,
            "consistency_proof": b64_list(consistency),
        }))
    }

    /// Ends the bundle (the end line lets a verifier see truncation).
    ///
    /// # Errors
    /// Write errors.
    pub fn finish(mut self) -> std::io::Result<W> {
        let n = self.entries;
        self.line(json!({ "type": "end", "entries": n }))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Entry {
        encoding: String,
        payload_state: String,
        salt: Option<String>,
        payload: Option<String>,
        inclusion_proof: Vec<String>,
    },
    Seal {
        seal: String,
        consistency_proof: Vec<String>,
    },
    Since {
        checkpoint: String,
        consistency_proof: Vec<String>,
    },
    End {
        entries: u64,
    },
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

fn proof_of(list: &[String]) -> Option<Vec<Hash>> {
    let raw: Option<Vec<Vec<u8>>> = list.iter().map(|s| unb64(s)).collect();
    proof_from_bytes(&raw?).ok()
}

/// What a verified bundle held (for reports).
#[derive(Debug, Clone, Default)]
pub struct BundleSummary {
    /// Log name in the header.
    pub log: String,
    /// Origin.
    pub origin: String,
    /// The verified checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// Entries that decoded (the verifier streams: it keeps no entry, so
    /// memory does not grow with the bundle).
    pub entries: u64,
}

/// Verifies a bundle read from `input` with the trusted `keys`.
///
/// Problems are findings in the report (never errors): a reviewer needs the
/// list, not the first. `since` optionally carries a checkpoint the reviewer
/// holds (a receipt's); the bundle must prove it is a prefix of its own.
pub fn verify_bundle(
    input: impl BufRead,
    keys: &[VerifierKey],
    since: Option<&str>,
) -> (Report, BundleSummary) {
    let mut report = Report::default();
    let mut summary = BundleSummary::default();
    let mut lines = BoundedLines { input, line: 0 };

    let header: Header = match lines.next() {
        Some(Ok(l)) => match serde_json::from_str::<Header>(&l) {
            Ok(h) if h.format == BUNDLE_FORMAT && h.version == BUNDLE_VERSION => h,
            Ok(h) => {
                report.add(
                    Verdict::Malformed,
                    &h.log,
                    None,
                    None,
                    "header",
                    format!("unknown format {:?} version {}", h.format, h.version),
                );
                return (report, summary);
            }
            Err(e) => {
                report.add(
                    Verdict::Malformed,
                    "",
                    None,
                    None,
                    "header",
                    format!("line 1: {e}"),
                );
                return (report, summary);
            }
        },
        Some(Err(e)) => {
            report.add(Verdict::Malformed, "", None, None, "header", e);
            return (report, summary);
        }
        None => {
            report.add(Verdict::Truncated, "", None, None, "header", "empty bundle");
            return (report, summary);
        }
    };
    summary.log = header.log.clone();
    summary.origin = header.origin.clone();
    let log = header.log.clone();

    let cp = match Checkpoint::open(&header.checkpoint, keys, Some(&header.origin)) {
        Ok((cp, _)) => cp,
        Err(e) => {
            let v = match &e {
                crate::core::checkpoint::CheckpointError::Note(n) => note_verdict(n),
                _ => Verdict::Malformed,
            };
            report.add(v, &log, None, None, "checkpoint", e.to_string());
            return (report, summary);
        }
    };
    report.checkpoints_checked += 1;
    summary.checkpoint = Some(cp.clone());

    let mut prev: Option<(u64, Hash)> = None;
    let mut seqs = Vec::new();
    let mut ended = None;
    let mut since_proven = false;
    while let Some(line) = lines.next() {
        let n = lines.line;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                report.add(Verdict::Malformed, &log, None, None, "line", e);
                break;
            }
        };
        if ended.is_some() {
            report.add(
                Verdict::Malformed,
                &log,
                None,
                None,
                "end",
                format!("line {n} after the end line"),
            );
            break;
        }
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(p) => p,
            Err(e) => {
                report.add(
                    Verdict::Malformed,
                    &log,
                    None,
                    None,
                    "line",
                    format!("line {n}: {e}"),
                );
                continue;
            }
        };
        match parsed {
            Line::Entry {
                encoding,
                payload_state,
                salt,
                payload,
                inclusion_proof,
            } => {
                let Some(enc) = unb64(&encoding) else {
                    report.add(
                        Verdict::Malformed,
                        &log,
                        None,
                        None,
                        "encoding",
                        format!("line {n}: not base64"),
                    );
                    continue;
                };
                let entry = match Entry::decode(&enc) {
                    Ok(e) => e,
                    Err(e) => {
                        report.add(
                            Verdict::Malformed,
                            &log,
                            None,
                            None,
                            "encoding",
                            format!("line {n}: {e}"),
                        );
                        continue;
                    }
                };
                report.entries_checked += 1;
                let seq = entry.seq;
                let leaf = leaf_hash_of_encoding(&enc);
                if entry.origin != header.origin {
                    report.add(
                        Verdict::ChainBroken,
                        &log,
                        Some(seq),
                        None,
                        "origin",
                        format!(
                            "entry of log {:?} in a bundle of {:?}",
                            entry.origin, header.origin
                        ),
                    );
                }
                match proof_of(&inclusion_proof) {
                    None => report.add(
                        Verdict::Malformed,
                        &log,
                        Some(seq),
                        None,
                        "inclusion_proof",
                        "not a list of 32-byte base64 hashes",
                    ),
                    Some(p) => {
                        if let Err(e) =
                            verify_inclusion::<Blake3>(seq, cp.size, &leaf, &p, &cp.root)
                        {
                            report.add(
                                Verdict::BadProof,
                                &log,
                                Some(seq),
                                None,
                                "inclusion_proof",
                                e.to_string(),
                            );
                        }
                    }
                }
                match (payload_state.as_str(), salt, payload) {
                    ("present", Some(salt), Some(payload)) => {
                        match (
                            unb64(&salt).and_then(|s| <[u8; 32]>::try_from(s).ok()),
                            unb64(&payload),
                        ) {
                            (Some(s), Some(p)) => {
                                if p.len() as u64 != entry.payload_len {
                                    report.add(
                                        Verdict::HashMismatch,
                                        &log,
                                        Some(seq),
                                        None,
                                        "payload",
                                        format!(
                                            "{} bytes, the entry says {}",
                                            p.len(),
                                            entry.payload_len
                                        ),
                                    );
                                } else if commit_payload(&Salt(s), &p) != entry.payload_commitment {
                                    report.add(
                                        Verdict::HashMismatch,
                                        &log,
                                        Some(seq),
                                        None,
                                        "payload",
                                        "payload and salt do not match the commitment",
                                    );
                                }
                            }
                            _ => report.add(
                                Verdict::Malformed,
                                &log,
                                Some(seq),
                                None,
                                "payload",
                                "salt or payload is not base64 (or salt is not 32 bytes)",
                            ),
                        }
                    }
                    ("erased", None, None) => report.add(
                        Verdict::Erased,
                        &log,
                        Some(seq),
                        None,
                        "payload",
                        "payload erased; its commitment still verifies",
                    ),
                    ("expired", None, None) => report.add(
                        Verdict::Expired,
                        &log,
                        Some(seq),
                        None,
                        "payload",
                        "payload expired; its commitment still verifies",
                    ),
                    (s, _, _) => report.add(
                        Verdict::Malformed,
                        &log,
                        Some(seq),
                        None,
                        "payload_state",
                        format!("state {s:?} with inconsistent salt/payload fields"),
                    ),
                }
                if let Some((pseq, pleaf)) = prev {
                    if seq <= pseq {
                        report.add(
                            Verdict::ChainBroken,
                            &log,
                            Some(seq),
                            None,
                            "seq",
                            format!("entry {seq} after entry {pseq}: out of order or repeated"),
                        );
                    } else if seq == pseq + 1 && entry.prev_leaf_hash != pleaf {
                        report.add(
                            Verdict::ChainBroken,
                            &log,
                            Some(seq),
                            None,
                            "prev_leaf_hash",
                            "does not link to the previous entry",
                        );
                    }
                }
                prev = Some((seq, leaf));
                seqs.push(seq);
                summary.entries += 1;
            }
            Line::Seal {
                seal,
                consistency_proof,
            } => {
                match Seal::open(&seal, keys) {
                    Err(e) => {
                        let v = match &e {
                            crate::core::seal::SealError::Note(n) => note_verdict(n),
                            _ => Verdict::Malformed,
                        };
                        report.add(v, &log, None, None, "seal", e.to_string());
                    }
                    Ok((s, _)) => {
                        report.seals_checked += 1;
                        if s.origin != header.origin {
                            report.add(
                                Verdict::ChainBroken,
                                &log,
                                None,
                                Some(s.segment),
                                "seal",
                                "seal of another log",
                            );
                        } else if s.end_seq > cp.size {
                            report.add(
                                Verdict::BadProof,
                                &log,
                                None,
                                Some(s.segment),
                                "seal",
                                "seal is beyond the bundle's checkpoint",
                            );
                        } else if s.end_seq > 0 {
                            match proof_of(&consistency_proof) {
                                None => report.add(
                                    Verdict::Malformed,
                                    &log,
                                    None,
                                    Some(s.segment),
                                    "seal",
                                    "bad consistency proof encoding",
                                ),
                                Some(p) => {
                                    if let Err(e) = verify_consistency::<Blake3>(
                                        s.end_seq,
                                        cp.size,
                                        &p,
                                        &s.tree_root,
                                        &cp.root,
                                    ) {
                                        report.add(Verdict::BadProof, &log, None, Some(s.segment), "seal", format!("seal's tree is not a prefix of the checkpoint's: {e}"));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Line::Since {
                checkpoint,
                consistency_proof,
            } => {
                let given = since.unwrap_or(checkpoint.as_str());
                match Checkpoint::open(given, keys, Some(&header.origin)) {
                    Err(e) => report.add(Verdict::BadSignature, &log, None, None, "since", e.to_string()),
                    Ok((old, _)) => match proof_of(&consistency_proof) {
                        None => report.add(Verdict::Malformed, &log, None, None, "since", "bad consistency proof encoding"),
                        Some(p) => match verify_consistency::<Blake3>(old.size, cp.size, &p, &old.root, &cp.root) {
                            Ok(()) => since_proven = true,
                            Err(e) => report.add(Verdict::BadProof, &log, None, None, "since", format!("the earlier checkpoint (size {}) is not a prefix of this one: {e}", old.size)),
                        },
                    },
                }
            }
            Line::End { entries } => ended = Some(entries),
        }
    }
    match ended {
        None => report.add(
            Verdict::Truncated,
            &log,
            None,
            None,
            "end",
            "the bundle ends without its end line",
        ),
        Some(n) if n != seqs.len() as u64 => report.add(
            Verdict::MissingEntry,
            &log,
            None,
            None,
            "end",
            format!(
                "the end line counts {n} entries, the bundle holds {}",
                seqs.len()
            ),
        ),
        Some(_) => {}
    }
    if let Query::SeqRange { from_seq, to_seq } = header.query {
        let want: Vec<u64> = (from_seq..to_seq.min(cp.size)).collect();
        for missing in want
            .iter()
            .filter(|s| seqs.binary_search(s).is_err())
            .take(100)
        {
            report.add(
                Verdict::MissingEntry,
                &log,
                Some(*missing),
                None,
                "seq",
                "asked for but not in the bundle",
            );
        }
    }
    if since.is_some() && !since_proven {
        report.add(
            Verdict::BadProof,
            &log,
            None,
            None,
            "since",
            "no consistency proof from the given checkpoint",
        );
    }
    (report, summary)
}

struct BoundedLines<R> {
    input: R,
    line: usize,
}

impl<R: BufRead> BoundedLines<R> {
    fn next(&mut self) -> Option<Result<String, String>> {
        let mut buf = Vec::new();
        let mut limited = (&mut self.input).take(MAX_LINE as u64 + 1);
        match limited.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                self.line += 1;
                if buf.len() > MAX_LINE {
                    return Some(Err(format!(
                        "line {} is longer than {MAX_LINE} bytes",
                        self.line
                    )));
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Some(String::from_utf8(buf).map_err(|_| format!("line {} is not UTF-8", self.line)))
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }
}
