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
use crate::core::merkle::{verify_consistency, InclusionVerifier};
use crate::core::note::VerifierKey;
use crate::core::seal::Seal;
use crate::core::transition::{follow, KeyTransition};
use crate::verify::store::{checkpoint_verdict, seal_verdict};
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
    /// Signed key transitions (FORMAT.md §4.1), oldest first; absent when
    /// the server's key never changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    key_transitions: Vec<String>,
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
        key_transitions: &[String],
    ) -> std::io::Result<Self> {
        let h = Header {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            log: log.into(),
            origin: origin.into(),
            query,
            checkpoint: checkpoint.into(),
            key_transitions: key_transitions.to_vec(),
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

/// An entry line borrowed from its text: the common line parsed with no
/// allocation per field. Same fields and strictness as [`Line::Entry`];
/// a line it does not take (another type, or strings with escapes) goes
/// through [`Line`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryLineRef<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    encoding: &'a str,
    payload_state: &'a str,
    #[serde(default)]
    salt: Option<&'a str>,
    #[serde(default)]
    payload: Option<&'a str>,
    #[serde(borrow)]
    inclusion_proof: Vec<&'a str>,
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

/// A proof from its base64 elements, each exactly 32 bytes.
fn proof_of<S: AsRef<str>>(list: &[S]) -> Option<Vec<Hash>> {
    list.iter()
        .map(|s| {
            let mut buf = [0u8; 48];
            match B64.decode_slice(s.as_ref(), &mut buf) {
                Ok(32) => Some(Hash(buf[..32].try_into().expect("32 bytes"))),
                _ => None,
            }
        })
        .collect()
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
    /// What the bundle was exported for, from its header.
    pub query: Option<Query>,
    /// The trusted keys whose signatures on the checkpoint verified.
    pub signed_by: Vec<VerifierKey>,
    /// Every key trusted: those passed in, and those reached through the
    /// bundle's key transitions from them.
    pub trusted: Vec<VerifierKey>,
}

/// Verifies a bundle read from `input` with the trusted `keys`.
///
/// Problems are findings in the report (never errors): a reviewer needs the
/// list, not the first. `since` optionally carries a checkpoint the reviewer
/// holds (a receipt's); the bundle must prove it is a prefix of its own.
pub fn verify_bundle(
    input: impl BufRead + Send,
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
    summary.query = Some(header.query.clone());
    let log = header.log.clone();

    // Trust: the reviewer's keys, extended along signed key transitions
    // that start from one of them.
    let mut transitions = Vec::new();
    for (i, t) in header.key_transitions.iter().enumerate() {
        match KeyTransition::open(t) {
            Ok(t) => transitions.push(t),
            Err(e) => report.add(
                Verdict::BadSignature,
                &log,
                None,
                None,
                "key_transitions",
                format!("transition {i}: {e}"),
            ),
        }
    }
    let trust = follow(keys, &transitions);
    report.transitions = transitions
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), trust.followed.contains(&i)))
        .collect();
    summary.trusted = trust.keys.clone();
    let keys = &trust.keys[..];

    let cp = match Checkpoint::open(&header.checkpoint, keys, Some(&header.origin)) {
        Ok((cp, opened)) => {
            summary.signed_by = keys
                .iter()
                .filter(|k| {
                    opened
                        .verified
                        .iter()
                        .any(|s| s.name == k.name() && s.key_id == k.key_id())
                })
                .cloned()
                .collect();
            cp
        }
        Err(e) => {
            let v = checkpoint_verdict(&e);
            let detail = report.note_detail(v, &e, &header.checkpoint, keys);
            report.add(v, &log, None, None, "checkpoint", detail);
            return (report, summary);
        }
    };
    report.checkpoints_checked += 1;
    summary.checkpoint = Some(cp.clone());

    let mut prev: Option<(u64, Hash)> = None;
    let mut seqs = Vec::new();
    let mut ended = None;
    let mut since_proven = false;
    // Lines are parsed and their entries checked (decoding, hashes, proof,
    // commitment: everything that needs no other line) in parallel, a chunk
    // at a time; what depends on order (chain links, seals, the end) is then
    // checked here, line by line.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    // A reader thread splits lines while the chunk before is checked.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<RawLine>, bool)>(2);
        scope.spawn(move || loop {
            let mut chunk = Vec::with_capacity(CHUNK_LINES);
            let mut last = false;
            while chunk.len() < CHUNK_LINES {
                match lines.next() {
                    Some(l) => chunk.push((lines.line, l)),
                    None => {
                        last = true;
                        break;
                    }
                }
            }
            if tx.send((chunk, last)).is_err() || last {
                break;
            }
        });
        let mut done = false;
        while !done {
            let Ok((chunk, last)) = rx.recv() else { break };
            done = last;
            let checked = precheck_all(&chunk, threads, &header.origin, &cp);
            for ((n, _), pre) in chunk.iter().zip(checked) {
                let n = *n;
                let parsed = match pre {
                    Pre::Unreadable(e) => {
                        report.add(Verdict::Malformed, &log, None, None, "line", e);
                        done = true;
                        break;
                    }
                    _ if ended.is_some() => {
                        report.add(
                            Verdict::Malformed,
                            &log,
                            None,
                            None,
                            "end",
                            format!("line {n} after the end line"),
                        );
                        done = true;
                        break;
                    }
                    Pre::NotJson(e) => {
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
                    Pre::Entry(check) => {
                        report.findings.extend(check.findings.into_iter().map(
                            |(verdict, seq, field, detail)| crate::verify::Finding {
                                verdict,
                                log: log.clone(),
                                seq,
                                segment: None,
                                field: field.to_owned(),
                                detail,
                            },
                        ));
                        let Some((seq, leaf, prev_link)) = check.decoded else {
                            continue;
                        };
                        report.entries_checked += 1;
                        if let Some((pseq, pleaf)) = prev {
                            if seq <= pseq {
                                report.add(
                                    Verdict::ChainBroken,
                                    &log,
                                    Some(seq),
                                    None,
                                    "seq",
                                    format!(
                                        "entry {seq} after entry {pseq}: out of order or repeated"
                                    ),
                                );
                            } else if seq == pseq + 1 && prev_link != pleaf {
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
                        continue;
                    }
                    Pre::Other(line) => line,
                };
                match parsed {
                    Line::Entry { .. } => unreachable!("entries are handled above"),
                    Line::Seal {
                        seal,
                        consistency_proof,
                    } => match Seal::open(&seal, keys) {
                        Err(e) => {
                            let v = seal_verdict(&e);
                            let detail = report.note_detail(v, &e, &seal, keys);
                            report.add(v, &log, None, None, "seal", detail);
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
                    },
                    Line::Since {
                        checkpoint,
                        consistency_proof,
                    } => {
                        let given = since.unwrap_or(checkpoint.as_str());
                        match Checkpoint::open(given, keys, Some(&header.origin)) {
                        Err(e) => {
                            let v = checkpoint_verdict(&e);
                            let detail = report.note_detail(v, &e, given, keys);
                            report.add(v, &log, None, None, "since", detail);
                        }
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
        }
        // Dropping the receiver stops the reader at its next chunk.
        drop(rx);
    });
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
        // Reordered entries are reported above; here only absence counts.
        seqs.sort_unstable();
        seqs.dedup();
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

/// Lines parsed and checked per parallel round.
const CHUNK_LINES: usize = 2048;

/// A line as read: its number and its text, or why it could not be read.
type RawLine = (usize, Result<String, String>);

/// A line after the order-independent work.
enum Pre {
    /// The line could not be read (too long, not UTF-8, I/O).
    Unreadable(String),
    /// Not JSON of a known line type.
    NotJson(String),
    /// An entry with its independent checks done.
    Entry(EntryCheck),
    /// Any other line, for the ordered pass.
    Other(Line),
}

/// Findings of one entry line: (verdict, seq, field, detail).
type EntryFinding = (Verdict, Option<u64>, &'static str, String);

/// Result of the order-independent checks of one entry line.
struct EntryCheck {
    /// Seq, leaf hash and `prev_leaf_hash` when the encoding decoded.
    decoded: Option<(u64, Hash, Hash)>,
    findings: Vec<EntryFinding>,
}

fn precheck_all(
    chunk: &[(usize, Result<String, String>)],
    threads: usize,
    origin: &str,
    cp: &Checkpoint,
) -> Vec<Pre> {
    let one_slow = |v: &mut InclusionVerifier<Blake3>, n: usize, text: &str| {
        match serde_json::from_str::<Line>(text) {
            Err(e) => Pre::NotJson(e.to_string()),
            Ok(Line::Entry {
                encoding,
                payload_state,
                salt,
                payload,
                inclusion_proof,
            }) => Pre::Entry(check_entry(
                n,
                &encoding,
                &payload_state,
                salt.as_deref(),
                payload.as_deref(),
                &inclusion_proof,
                origin,
                v,
            )),
            Ok(other) => Pre::Other(other),
        }
    };
    // Each part remembers its last verified path: lines come in seq order.
    let one = |v: &mut InclusionVerifier<Blake3>, (n, l): &(usize, Result<String, String>)| match l
    {
        Err(e) => Pre::Unreadable(e.clone()),
        Ok(text) => match serde_json::from_str::<EntryLineRef<'_>>(text) {
            Ok(e) if e.kind == "entry" => Pre::Entry(check_entry(
                *n,
                e.encoding,
                e.payload_state,
                e.salt,
                e.payload,
                &e.inclusion_proof,
                origin,
                v,
            )),
            _ => one_slow(v, *n, text),
        },
    };

    let verifier = || InclusionVerifier::<Blake3>::new(cp.size, cp.root);
    if threads <= 1 || chunk.len() < 64 {
        let mut v = verifier();
        return chunk.iter().map(|l| one(&mut v, l)).collect();
    }
    let per = chunk.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunk
            .chunks(per)
            .map(|part| {
                scope.spawn(move || {
                    let mut v = verifier();
                    part.iter().map(|l| one(&mut v, l)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // A panic here would be a bug; report it as unreadable input
                // rather than abort the reviewer's run.
                Err(_) => vec![Pre::Unreadable("internal error while checking".into())],
            })
            .collect()
    })
}

#[allow(clippy::too_many_arguments)]
fn check_entry(
    n: usize,
    encoding: &str,
    payload_state: &str,
    salt: Option<&str>,
    payload: Option<&str>,
    inclusion_proof: &[impl AsRef<str>],
    origin: &str,
    verifier: &mut InclusionVerifier<Blake3>,
) -> EntryCheck {
    let mut findings: Vec<EntryFinding> = Vec::new();
    let Some(enc) = unb64(encoding) else {
        findings.push((
            Verdict::Malformed,
            None,
            "encoding",
            format!("line {n}: not base64"),
        ));
        return EntryCheck {
            decoded: None,
            findings,
        };
    };
    let entry = match Entry::decode(&enc) {
        Ok(e) => e,
        Err(e) => {
            findings.push((
                Verdict::Malformed,
                None,
                "encoding",
                format!("line {n}: {e}"),
            ));
            return EntryCheck {
                decoded: None,
                findings,
            };
        }
    };
    let seq = entry.seq;
    let leaf = leaf_hash_of_encoding(&enc);
    if entry.origin != origin {
        findings.push((
            Verdict::ChainBroken,
            Some(seq),
            "origin",
            format!("entry of log {:?} in a bundle of {origin:?}", entry.origin),
        ));
    }
    match proof_of(inclusion_proof) {
        None => findings.push((
            Verdict::Malformed,
            Some(seq),
            "inclusion_proof",
            "not a list of 32-byte base64 hashes".into(),
        )),
        Some(p) => {
            if let Err(e) = verifier.verify(seq, &leaf, &p) {
                findings.push((
                    Verdict::BadProof,
                    Some(seq),
                    "inclusion_proof",
                    e.to_string(),
                ));
            }
        }
    }
    match (payload_state, salt, payload) {
        ("present", Some(salt), Some(payload)) => {
            match (
                unb64(salt).and_then(|s| <[u8; 32]>::try_from(s).ok()),
                unb64(payload),
            ) {
                (Some(s), Some(p)) => {
                    if p.len() as u64 != entry.payload_len {
                        findings.push((
                            Verdict::HashMismatch,
                            Some(seq),
                            "payload",
                            format!("{} bytes, the entry says {}", p.len(), entry.payload_len),
                        ));
                    } else if commit_payload(&Salt(s), &p) != entry.payload_commitment {
                        findings.push((
                            Verdict::HashMismatch,
                            Some(seq),
                            "payload",
                            "payload and salt do not match the commitment".into(),
                        ));
                    }
                }
                _ => findings.push((
                    Verdict::Malformed,
                    Some(seq),
                    "payload",
                    "salt or payload is not base64 (or salt is not 32 bytes)".into(),
                )),
            }
        }
        ("erased", None, None) => findings.push((
            Verdict::Erased,
            Some(seq),
            "payload",
            "payload erased; its commitment still verifies".into(),
        )),
        ("expired", None, None) => findings.push((
            Verdict::Expired,
            Some(seq),
            "payload",
            "payload expired; its commitment still verifies".into(),
        )),
        (s, _, _) => findings.push((
            Verdict::Malformed,
            Some(seq),
            "payload_state",
            format!("state {s:?} with inconsistent salt/payload fields"),
        )),
    }
    EntryCheck {
        decoded: Some((seq, leaf, entry.prev_leaf_hash)),
        findings,
    }
}

/// One entry line of a bundle as a report shows it. Nothing here is
/// verified: [`verify_bundle`] says what holds; this only reads.
#[derive(Debug, Clone)]
pub struct ShownEntry {
    /// Line number in the bundle (the header is line 1).
    pub line: usize,
    /// The decoded entry, or why the line does not give one.
    pub entry: Result<Entry, String>,
    /// `payload_state` as written: "present", "erased", "expired" or
    /// whatever the line claims.
    pub payload_state: String,
    /// The payload when the line carries one that decodes.
    pub payload: Option<Vec<u8>>,
}

/// Reads the entry lines of a bundle in order, for display, calling `each`
/// per entry line; other lines are skipped. Stops at the first line that
/// cannot be read at all (too long, not UTF-8), as the verifier does.
pub fn read_entries(input: impl BufRead, mut each: impl FnMut(ShownEntry)) {
    let mut lines = BoundedLines { input, line: 0 };
    // The header.
    if !matches!(lines.next(), Some(Ok(_))) {
        return;
    }
    while let Some(Ok(text)) = lines.next() {
        let Ok(Line::Entry {
            encoding,
            payload_state,
            payload,
            ..
        }) = serde_json::from_str::<Line>(&text)
        else {
            continue;
        };
        let entry = match unb64(&encoding) {
            None => Err("the entry's encoding is not base64".to_owned()),
            Some(b) => Entry::decode(&b).map_err(|e| format!("the entry does not decode: {e}")),
        };
        each(ShownEntry {
            line: lines.line,
            entry,
            payload_state,
            payload: payload.as_deref().and_then(unb64),
        });
    }
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
