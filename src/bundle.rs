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
use crate::core::commit::commit_payloads;
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

/// Strict standard base64 (padding required, no whitespace, unused bits
/// zero), decoded with SIMD where the CPU has it: the verifier spends more
/// time here than anywhere but BLAKE3. Exactly as strict as the `base64`
/// crate's `STANDARD` engine the writer uses (tested below).
fn unb64(s: &str) -> Option<Vec<u8>> {
    base64_simd::STANDARD.decode_to_vec(s).ok()
}

/// A 32-byte hash (or salt) from its base64: always 44 characters.
fn b64_hash(s: &[u8]) -> Option<Hash> {
    if s.len() != 44 {
        return None;
    }
    let mut out = [0u8; 33];
    let decoded = base64_simd::STANDARD
        .decode(s, base64_simd::Out::from_slice(&mut out))
        .ok()?;
    Some(Hash(<[u8; 32]>::try_from(&*decoded).ok()?))
}

/// A proof from its base64 elements, each exactly 32 bytes.
fn proof_of<S: AsRef<str>>(list: &[S]) -> Option<Vec<Hash>> {
    list.iter()
        .map(|s| b64_hash(s.as_ref().as_bytes()))
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
    // commitment: everything that needs no other line) by a pool of
    // checkers, a block of lines at a time; what depends on order (chain
    // links, seals, the end) is then checked here, block by block in input
    // order, line by line.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    std::thread::scope(|scope| {
        let checked = spawn_checkers(
            scope,
            &mut lines.input,
            lines.line,
            threads,
            &header.origin,
            &cp,
        );
        let mut early = std::collections::BTreeMap::new();
        let mut next_block = 0usize;
        let mut done = false;
        while !done {
            let Ok((block, pres)) = checked.recv() else {
                break;
            };
            early.insert(block, pres);
            // The next blocks in input order, as far as they have come.
            let mut pres = Vec::new();
            while let Some(more) = early.remove(&next_block) {
                next_block += 1;
                pres.extend(more);
            }
            for (n, pre) in pres {
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
        // Dropping the receiver stops the checkers, then the reader.
        drop(checked);
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

/// Bytes of input per block handed to a checker (whole lines: a block
/// ends at the last newline within it).
const BLOCK_BYTES: usize = 1 << 20;

/// What the reader hands the checkers: a block of whole lines, or where
/// and why reading stopped.
enum Work {
    Lines {
        block: usize,
        first_line: usize,
        data: Vec<u8>,
    },
    Stop {
        block: usize,
        line: usize,
        error: String,
    },
}

/// Checked lines of one block: (block number, [(line number, result)]).
type Checked = (usize, Vec<(usize, Pre)>);

/// Starts a reader and `threads` checkers on the lines after line
/// `lines_read`; the receiver yields each block's results, blocks in any
/// order (numbered from 0), each block's lines in order. A line that
/// cannot be read (too long, not UTF-8, an I/O error) is the last result.
fn spawn_checkers<'s, R: std::io::Read + Send>(
    scope: &'s std::thread::Scope<'s, '_>,
    input: &'s mut R,
    lines_read: usize,
    threads: usize,
    origin: &'s str,
    cp: &'s Checkpoint,
) -> std::sync::mpsc::Receiver<Checked> {
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<Work>(threads * 2);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Checked>(threads * 2);
    scope.spawn(move || read_blocks(input, lines_read, &work_tx));
    let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
    for _ in 0..threads.max(1) {
        let work_rx = std::sync::Arc::clone(&work_rx);
        let done_tx = done_tx.clone();
        scope.spawn(move || {
            // Each checker remembers its last verified path: a block's
            // lines come in seq order.
            let mut v = InclusionVerifier::<Blake3>::new(cp.size, cp.root);
            let mut scratch = Scratch::default();
            loop {
                let next = match work_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let out = match next {
                    Err(_) => break,
                    Ok(Work::Stop { block, line, error }) => {
                        (block, vec![(line, Pre::Unreadable(error))])
                    }
                    Ok(Work::Lines {
                        block,
                        first_line,
                        data,
                    }) => (
                        block,
                        check_block(&mut v, &mut scratch, first_line, &data, origin),
                    ),
                };
                if done_tx.send(out).is_err() {
                    break;
                }
            }
        });
    }
    done_rx
}

/// Reads the input after line `line` in blocks of whole lines and sends
/// them, numbered, then stops at the end or at the first line that
/// cannot be read (longer than [`MAX_LINE`] with its newline, or an I/O
/// error), sent as a [`Work::Stop`]. Stops early when nobody listens.
fn read_blocks(
    input: &mut impl std::io::Read,
    mut line: usize,
    tx: &std::sync::mpsc::SyncSender<Work>,
) {
    let mut block = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut failed = None;
    let stop = |block: usize, line: usize, error: String| {
        let _ = tx.send(Work::Stop { block, line, error });
    };
    while !eof && failed.is_none() {
        // Read one more block after the carried partial line (into spare
        // capacity: nothing is zeroed first).
        buf.reserve(BLOCK_BYTES);
        match (&mut *input).take(BLOCK_BYTES as u64).read_to_end(&mut buf) {
            Ok(k) => eof = k < BLOCK_BYTES,
            Err(e) => failed = Some(e.to_string()),
        }
        // Whole lines only; the rest is carried into the next block.
        let cut = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(p) => p + 1,
                None if buf.len() > MAX_LINE || failed.is_some() => 0,
                None => continue,
            }
        };
        // The first line too long ends the input there.
        let mut start = 0;
        let mut lines = 0;
        let mut too_long = None;
        for end in memchr::memchr_iter(b'\n', &buf[..cut])
            .map(|p| p + 1)
            .chain((eof && cut > 0 && buf[cut - 1] != b'\n').then_some(cut))
        {
            if end - start > MAX_LINE {
                too_long = Some(start);
                break;
            }
            lines += 1;
            start = end;
        }
        let rest = buf.split_off(too_long.unwrap_or(cut));
        if !buf.is_empty() {
            let data = std::mem::replace(&mut buf, rest);
            if tx
                .send(Work::Lines {
                    block,
                    first_line: line + 1,
                    data,
                })
                .is_err()
            {
                return;
            }
            block += 1;
        } else {
            buf = rest;
        }
        line += lines;
        if too_long.is_some() || (buf.len() > MAX_LINE && !eof) {
            stop(
                block,
                line + 1,
                format!("line {} is longer than {MAX_LINE} bytes", line + 1),
            );
            return;
        }
    }
    if let Some(e) = failed {
        stop(block, line + 1, e);
    }
}

/// Checks the lines of one block, the first numbered `first_line`.
fn check_block(
    v: &mut InclusionVerifier<Blake3>,
    scratch: &mut Scratch,
    first_line: usize,
    data: &[u8],
    origin: &str,
) -> Vec<(usize, Pre)> {
    let mut out = Vec::new();
    let mut deferred = Deferred::default();
    let mut start = 0;
    let mut n = first_line;
    while start < data.len() {
        let rest = &data[start..];
        // The fast path finds the line's end itself; a line it takes is
        // ASCII, hence UTF-8.
        let (pre, len) = match fast_entry(rest, scratch) {
            Some(e) => (
                Pre::Entry(check_decoded(
                    n,
                    e.encoding,
                    Some(e.proof),
                    e.payload,
                    origin,
                    v,
                    Some((&mut deferred, out.len())),
                )),
                e.len,
            ),
            None => {
                let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                let pre = match std::str::from_utf8(&rest[..len]) {
                    Err(_) => Pre::Unreadable(format!("line {n} is not UTF-8")),
                    Ok(text) => precheck(v, n, text, origin),
                };
                (pre, len)
            }
        };
        let stop = matches!(pre, Pre::Unreadable(_));
        out.push((n, pre));
        if stop {
            break;
        }
        start += len + 1;
        n += 1;
    }
    deferred.check(&mut out);
    out
}

/// Payload commitments of a block's fast-path entries, checked together
/// once the block is read: [`commit_payloads`] then hashes them side by
/// side. The payload check is the last of an entry's checks, so its
/// finding lands where [`check_decoded`] would have put it.
#[derive(Default)]
struct Deferred {
    /// The payloads, one after another.
    payloads: Vec<u8>,
    items: Vec<DeferredPayload>,
}

/// One payload left to [`Deferred::check`].
struct DeferredPayload {
    /// The entry's index in the block's output.
    index: usize,
    seq: u64,
    salt: Salt,
    /// Where the payload ends in [`Deferred::payloads`].
    end: usize,
    /// The commitment the entry states.
    stated: Hash,
}

impl Deferred {
    fn push(&mut self, index: usize, seq: u64, salt: Salt, payload: &[u8], stated: Hash) {
        self.payloads.extend_from_slice(payload);
        self.items.push(DeferredPayload {
            index,
            seq,
            salt,
            end: self.payloads.len(),
            stated,
        });
    }

    /// Adds a finding to each entry of `out` whose payload and salt do not
    /// match its commitment.
    fn check(self, out: &mut [(usize, Pre)]) {
        let salts: Vec<Salt> = self.items.iter().map(|i| i.salt).collect();
        let mut from = 0;
        let payloads: Vec<&[u8]> = self
            .items
            .iter()
            .map(|i| {
                let p = &self.payloads[from..i.end];
                from = i.end;
                p
            })
            .collect();
        let computed = commit_payloads(&salts, &payloads);
        for (item, c) in self.items.iter().zip(computed) {
            if c != item.stated {
                if let Some((_, Pre::Entry(check))) = out.get_mut(item.index) {
                    check.findings.push(payload_mismatch(item.seq));
                }
            }
        }
    }
}

/// The finding of a payload and salt that do not match the commitment.
fn payload_mismatch(seq: u64) -> EntryFinding {
    (
        Verdict::HashMismatch,
        Some(seq),
        "payload",
        "payload and salt do not match the commitment".into(),
    )
}

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
#[derive(Debug, PartialEq)]
struct EntryCheck {
    /// Seq, leaf hash and `prev_leaf_hash` when the encoding decoded.
    decoded: Option<(u64, Hash, Hash)>,
    findings: Vec<EntryFinding>,
}

/// The order-independent work on one line `n`: parse it and, for an entry,
/// every check that needs no other line.
fn precheck(v: &mut InclusionVerifier<Blake3>, n: usize, text: &str, origin: &str) -> Pre {
    let slow = |v: &mut InclusionVerifier<Blake3>| match serde_json::from_str::<Line>(text) {
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
    };
    match serde_json::from_str::<EntryLineRef<'_>>(text) {
        Ok(e) if e.kind == "entry" => Pre::Entry(check_entry(
            n,
            e.encoding,
            e.payload_state,
            e.salt,
            e.payload,
            &e.inclusion_proof,
            origin,
            v,
        )),
        _ => slow(v),
    }
}

/// An entry line's payload fields, decoded.
enum PayloadIn<'a> {
    /// `present` with a 32-byte salt and a payload.
    Present(Salt, &'a [u8]),
    /// `present`, but the salt or payload is not base64 (or the salt is
    /// not 32 bytes).
    Undecodable,
    Erased,
    Expired,
    /// Any other combination of state, salt and payload.
    Inconsistent(&'a str),
}

/// Checks an entry line from its JSON string fields (the general path).
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
    let Some(enc) = unb64(encoding) else {
        return EntryCheck {
            decoded: None,
            findings: vec![(
                Verdict::Malformed,
                None,
                "encoding",
                format!("line {n}: not base64"),
            )],
        };
    };
    let proof = proof_of(inclusion_proof);
    let decoded;
    let payload = match (payload_state, salt, payload) {
        ("present", Some(salt), Some(payload)) => match (b64_hash(salt.as_bytes()), unb64(payload))
        {
            (Some(s), Some(p)) => {
                decoded = p;
                PayloadIn::Present(Salt(s.0), &decoded)
            }
            _ => PayloadIn::Undecodable,
        },
        ("erased", None, None) => PayloadIn::Erased,
        ("expired", None, None) => PayloadIn::Expired,
        (s, _, _) => PayloadIn::Inconsistent(s),
    };
    check_decoded(n, &enc, proof.as_deref(), payload, origin, verifier, None)
}

/// The checks of one entry line once its fields are decoded: `proof` is
/// `None` when the proof was not a list of 32-byte hashes. With `defer`
/// (the block's [`Deferred`] and this entry's index in the block's output)
/// the payload commitment is left to the block's end.
fn check_decoded(
    n: usize,
    enc: &[u8],
    proof: Option<&[Hash]>,
    payload: PayloadIn<'_>,
    origin: &str,
    verifier: &mut InclusionVerifier<Blake3>,
    defer: Option<(&mut Deferred, usize)>,
) -> EntryCheck {
    let mut findings: Vec<EntryFinding> = Vec::new();
    let entry = match Entry::decode(enc) {
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
    let leaf = leaf_hash_of_encoding(enc);
    if entry.origin != origin {
        findings.push((
            Verdict::ChainBroken,
            Some(seq),
            "origin",
            format!("entry of log {:?} in a bundle of {origin:?}", entry.origin),
        ));
    }
    match proof {
        None => findings.push((
            Verdict::Malformed,
            Some(seq),
            "inclusion_proof",
            "not a list of 32-byte base64 hashes".into(),
        )),
        Some(p) => {
            if let Err(e) = verifier.verify(seq, &leaf, p) {
                findings.push((
                    Verdict::BadProof,
                    Some(seq),
                    "inclusion_proof",
                    e.to_string(),
                ));
            }
        }
    }
    match payload {
        PayloadIn::Present(s, p) => {
            if p.len() as u64 != entry.payload_len {
                findings.push((
                    Verdict::HashMismatch,
                    Some(seq),
                    "payload",
                    format!("{} bytes, the entry says {}", p.len(), entry.payload_len),
                ));
            } else if let Some((deferred, index)) = defer {
                deferred.push(index, seq, s, p, entry.payload_commitment);
            } else if commit_payload(&s, p) != entry.payload_commitment {
                findings.push(payload_mismatch(seq));
            }
        }
        PayloadIn::Undecodable => findings.push((
            Verdict::Malformed,
            Some(seq),
            "payload",
            "salt or payload is not base64 (or salt is not 32 bytes)".into(),
        )),
        PayloadIn::Erased => findings.push((
            Verdict::Erased,
            Some(seq),
            "payload",
            "payload erased; its commitment still verifies".into(),
        )),
        PayloadIn::Expired => findings.push((
            Verdict::Expired,
            Some(seq),
            "payload",
            "payload expired; its commitment still verifies".into(),
        )),
        PayloadIn::Inconsistent(s) => findings.push((
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

/// Reused buffers of the fast path, one set per checker.
#[derive(Default)]
struct Scratch {
    encoding: Vec<u8>,
    payload: Vec<u8>,
    proof: Vec<Hash>,
}

/// The fast path: an entry line exactly as [`BundleWriter`] writes it
/// (keys in that order, no whitespace, every base64 value valid), decoded
/// into `scratch` with no allocation, from the start of `text` to the end
/// of `text` or its first newline, whichever comes first. `None` for
/// anything else, which then takes the general path.
///
/// Exactly as strict: every line it takes is valid JSON with the fields of
/// [`EntryLineRef`], and every string it takes decoded as strict base64, so
/// it held only base64 characters (no escape, no control character) and
/// JSON reads it as the same bytes; the general path would read the same
/// values (tested against it). Every line it takes is ASCII, so it runs
/// before the line's UTF-8 check.
fn fast_entry<'a>(text: &[u8], scratch: &'a mut Scratch) -> Option<FastEntry<'a>> {
    /// A JSON string with no escape: the bytes up to the next quote (the
    /// caller decodes them as base64 or compares them, which refuses any
    /// escape).
    fn string<'t>(rest: &mut &'t [u8]) -> Option<&'t [u8]> {
        let body = rest.strip_prefix(b"\"")?;
        let end = memchr::memchr(b'"', body)?;
        *rest = &body[end + 1..];
        Some(&body[..end])
    }
    fn b64_into(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
        out.clear();
        base64_simd::STANDARD.decode_append(s, out).ok()
    }
    /// A quoted 32-byte hash: always 44 characters, so no search for the
    /// closing quote (a valid decode holds none).
    fn hash(rest: &mut &[u8]) -> Option<Hash> {
        let (quoted, after) = rest.split_at_checked(46)?;
        let h = b64_hash(quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?)?;
        *rest = after;
        Some(h)
    }
    /// `null`, or a string.
    fn nullable<'t>(rest: &mut &'t [u8]) -> Option<Option<&'t [u8]>> {
        match rest.strip_prefix(b"null") {
            Some(r) => {
                *rest = r;
                Some(None)
            }
            None => string(rest).map(Some),
        }
    }
    let mut rest = text.strip_prefix(b"{\"encoding\":")?;
    b64_into(string(&mut rest)?, &mut scratch.encoding)?;
    rest = rest.strip_prefix(b",\"inclusion_proof\":[")?;
    scratch.proof.clear();
    if let Some(r) = rest.strip_prefix(b"]") {
        rest = r;
    } else {
        loop {
            scratch.proof.push(hash(&mut rest)?);
            match rest.split_first()? {
                (b',', r) => rest = r,
                (b']', r) => {
                    rest = r;
                    break;
                }
                _ => return None,
            }
        }
    }
    rest = rest.strip_prefix(b",\"payload\":")?;
    let payload = nullable(&mut rest)?;
    rest = rest.strip_prefix(b",\"payload_state\":")?;
    let state = string(&mut rest)?;
    rest = rest.strip_prefix(b",\"salt\":")?;
    let salt = match rest.strip_prefix(b"null") {
        Some(r) => {
            rest = r;
            None
        }
        None => Some(hash(&mut rest)?),
    };
    rest = rest.strip_prefix(b",\"type\":\"entry\"}")?;
    // The line ends here.
    if !(rest.is_empty() || rest[0] == b'\n') {
        return None;
    }
    let len = text.len() - rest.len();
    let payload = match (state, salt, payload) {
        (b"present", Some(salt), Some(payload)) => {
            b64_into(payload, &mut scratch.payload)?;
            PayloadIn::Present(Salt(salt.0), &scratch.payload)
        }
        (b"erased", None, None) => PayloadIn::Erased,
        (b"expired", None, None) => PayloadIn::Expired,
        _ => return None,
    };
    Some(FastEntry {
        len,
        encoding: &scratch.encoding,
        proof: &scratch.proof,
        payload,
    })
}

/// An entry line read by [`fast_entry`].
struct FastEntry<'a> {
    /// Bytes of the line (its newline excluded).
    len: usize,
    encoding: &'a [u8],
    proof: &'a [Hash],
    payload: PayloadIn<'a>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the `base64` crate's strict engine (the writer's) decodes.
    fn reference(s: &str) -> Option<Vec<u8>> {
        B64.decode(s).ok()
    }

    /// Strings near valid base64: valid encodings, then each with one
    /// character replaced, dropped or added, so padding, unused bits and
    /// lengths are all tried.
    fn near_base64() -> impl Strategy<Value = String> {
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n\\\"é"
                .chars()
                .collect();
        (
            proptest::collection::vec(any::<u8>(), 0..80),
            0usize..4,
            any::<prop::sample::Index>(),
            prop::sample::select(alphabet),
        )
            .prop_map(|(bytes, how, at, c)| {
                let mut s: Vec<char> = B64.encode(&bytes).chars().collect();
                let i = if s.is_empty() { 0 } else { at.index(s.len()) };
                match how {
                    0 => {}
                    1 if !s.is_empty() => s[i] = c,
                    2 if !s.is_empty() => {
                        s.remove(i);
                    }
                    _ => s.insert(i, c),
                }
                s.into_iter().collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn decoding_is_exactly_as_strict_as_the_writers_engine(s in near_base64()) {
            prop_assert_eq!(unb64(&s), reference(&s));
            let as_hash = proof_of(&[&s]).map(|p| p[0].0.to_vec());
            let want = reference(&s).filter(|b| b.len() == 32);
            prop_assert_eq!(as_hash, want);
        }
    }

    /// The fixture's entry lines, and an erased one made from the first.
    fn entry_lines() -> Vec<String> {
        let mut lines: Vec<String> = include_str!("../tests/fixtures/bundle-v1.jsonl")
            .lines()
            .filter(|l| l.contains("\"type\":\"entry\""))
            .map(str::to_owned)
            .collect();
        let mut v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        v["payload_state"] = "erased".into();
        v["payload"] = serde_json::Value::Null;
        v["salt"] = serde_json::Value::Null;
        lines.push(serde_json::to_string(&v).unwrap());
        lines
    }

    /// What the general path (serde) makes of an entry line, if it is one.
    fn general(text: &str) -> Option<EntryCheck> {
        general_at(2, text)
    }

    /// [`general`] for line `n`.
    fn general_at(n: usize, text: &str) -> Option<EntryCheck> {
        let mut v = InclusionVerifier::<Blake3>::new(1000, Hash([9; 32]));
        match serde_json::from_str::<Line>(text).ok()? {
            Line::Entry {
                encoding,
                payload_state,
                salt,
                payload,
                inclusion_proof,
            } => Some(check_entry(
                n,
                &encoding,
                &payload_state,
                salt.as_deref(),
                payload.as_deref(),
                &inclusion_proof,
                "audit.example.com/orders",
                &mut v,
            )),
            _ => None,
        }
    }

    fn fast(text: &str) -> Option<EntryCheck> {
        let mut v = InclusionVerifier::<Blake3>::new(1000, Hash([9; 32]));
        let mut scratch = Scratch::default();
        let e = fast_entry(text.as_bytes(), &mut scratch)?;
        assert_eq!(e.len, text.len(), "{text}");
        Some(check_decoded(
            2,
            e.encoding,
            Some(e.proof),
            e.payload,
            "audit.example.com/orders",
            &mut v,
            None,
        ))
    }

    /// A block's payloads are checked together at its end: each entry's
    /// findings are still those of its line checked alone, tampered
    /// payloads included, whichever shapes the block mixes.
    #[test]
    fn a_block_finds_what_each_line_alone_finds() {
        let mut lines = entry_lines();
        // The same lines with one payload character changed (still
        // base64, so the fast path takes them and only the commitment
        // fails), and a line the fast path leaves to the general path.
        for l in entry_lines() {
            if let Some(at) = l.find("\"payload\":\"") {
                let i = at + "\"payload\":\"".len() + 2;
                let mut b = l.clone().into_bytes();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                lines.push(String::from_utf8(b).unwrap());
            }
        }
        lines.push(lines[0].replacen("{", "{ ", 1));
        let data = lines.join("\n");
        let mut v = InclusionVerifier::<Blake3>::new(1000, Hash([9; 32]));
        let got = check_block(
            &mut v,
            &mut Scratch::default(),
            2,
            data.as_bytes(),
            "audit.example.com/orders",
        );
        assert_eq!(got.len(), lines.len());
        let mut mismatches = 0;
        for ((n, pre), l) in got.into_iter().zip(&lines) {
            let Pre::Entry(check) = pre else {
                panic!("not an entry: {l}")
            };
            mismatches += check
                .findings
                .iter()
                .filter(|f| f.0 == Verdict::HashMismatch)
                .count();
            assert_eq!(Some(check), general_at(n, l), "{l}");
        }
        assert!(mismatches >= entry_lines().len() - 1, "{mismatches}");
    }

    #[test]
    fn the_fast_path_takes_what_the_writer_writes() {
        for l in entry_lines() {
            let f = fast(&l).expect("the writer's own lines take the fast path");
            assert_eq!(Some(f), general(&l));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Any line the fast path takes, the general path reads the same:
        /// lines near the writer's, with a character replaced, dropped,
        /// added, or a `/` written as the JSON escape `\/`.
        #[test]
        fn the_fast_path_reads_what_the_general_path_reads(
            pick in any::<prop::sample::Index>(),
            how in 0usize..4,
            at in any::<prop::sample::Index>(),
            c in prop::sample::select(vec!['\\', '"', '/', ' ', 'A', '=', 'n', '}', ',', ']', 'é', '\u{1}']),
        ) {
            let lines = entry_lines();
            let mut l: Vec<char> = lines[pick.index(lines.len())].chars().collect();
            let i = at.index(l.len());
            match how {
                0 => l[i] = c,
                1 => { l.remove(i); }
                2 => l.insert(i, c),
                _ => {
                    if let Some(j) = (i..l.len()).find(|&j| l[j] == '/') {
                        l.insert(j, '\\');
                    }
                }
            }
            let l: String = l.into_iter().collect();
            if let Some(f) = fast(&l) {
                // What it takes is ASCII, so it may skip UTF-8 validation.
                prop_assert!(l.is_ascii(), "{}", l);
                prop_assert_eq!(Some(f), general(&l), "{}", l);
            }
        }
    }

    /// Numbered lines, and where and why reading stopped.
    type Split = (Vec<(usize, Vec<u8>)>, Option<(usize, String)>);

    /// Lines (numbered from 2) and the stop, as `read_blocks` sends them.
    fn blocks_of(input: &[u8]) -> Split {
        let (tx, rx) = std::sync::mpsc::sync_channel(1000);
        read_blocks(&mut std::io::Cursor::new(input), 1, &tx);
        drop(tx);
        let (mut lines, mut stop, mut next_block) = (Vec::new(), None, 0);
        for w in rx {
            match w {
                Work::Lines {
                    block,
                    first_line,
                    data,
                } => {
                    assert_eq!((block, first_line), (next_block, lines.len() + 2));
                    assert!(stop.is_none());
                    next_block += 1;
                    let body = data.strip_suffix(b"\n").unwrap_or(&data);
                    lines.extend(
                        body.split(|b| *b == b'\n')
                            .map(|l| l.to_vec())
                            .enumerate()
                            .map(|(i, l)| (first_line + i, l)),
                    );
                }
                Work::Stop { block, line, error } => {
                    assert_eq!(block, next_block);
                    stop = Some((line, error));
                }
            }
        }
        (lines, stop)
    }

    /// The same, read the way the header is read (`BoundedLines`).
    fn bounded_of(input: &[u8]) -> Split {
        let mut r = BoundedLines { input, line: 1 };
        let mut lines = Vec::new();
        while let Some(l) = r.next() {
            match l {
                Ok(l) => lines.push((r.line, l.into_bytes())),
                Err(e) => return (lines, Some((r.line, e))),
            }
        }
        (lines, None)
    }

    #[test]
    fn blocks_split_lines_as_the_line_reader_does() {
        let long = |n: usize| vec![b'a'; n];
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\n".to_vec(),
            b"a\n\nb".to_vec(),
            b"a\nb\n".to_vec(),
            // Lines across block boundaries.
            (0..3000)
                .flat_map(|i| format!("line {i} {}\n", "x".repeat(i % 997)).into_bytes())
                .collect(),
            // The limit: MAX_LINE bytes with the newline pass, one more is
            // refused; at the very end a line without newline may be MAX_LINE.
            [b"a\n".to_vec(), long(MAX_LINE - 1), b"\nb\n".to_vec()].concat(),
            [b"a\n".to_vec(), long(MAX_LINE), b"\nb\n".to_vec()].concat(),
            [b"a\n".to_vec(), long(MAX_LINE)].concat(),
            [b"a\n".to_vec(), long(MAX_LINE + 1)].concat(),
            [
                long(BLOCK_BYTES - 1),
                b"\n".to_vec(),
                long(BLOCK_BYTES + 5),
                b"\nz".to_vec(),
            ]
            .concat(),
        ];
        for (i, c) in cases.iter().enumerate() {
            let (got, want) = (blocks_of(c), bounded_of(c));
            assert_eq!(got.0.len(), want.0.len(), "case {i}");
            assert!(got.0 == want.0, "case {i}: lines differ");
            assert_eq!(got.1, want.1, "case {i}");
        }
    }

    /// A read error ends the input where it happens: the whole lines read
    /// before it are checked, then the error is the last result.
    #[test]
    fn a_read_error_stops_after_the_lines_before_it() {
        struct Failing(std::io::Cursor<&'static [u8]>);
        impl std::io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(std::io::Error::other("disk on fire")),
                    k => Ok(k),
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(10);
        read_blocks(&mut Failing(std::io::Cursor::new(b"a\nb\npartial")), 1, &tx);
        drop(tx);
        let got: Vec<_> = rx
            .into_iter()
            .map(|w| match w {
                Work::Lines {
                    block,
                    first_line,
                    data,
                } => (block, first_line, String::from_utf8(data).unwrap()),
                Work::Stop { block, line, error } => (block, line, error),
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, 2, "a\nb\n".to_owned()),
                (1, 4, "disk on fire".to_owned())
            ]
        );
    }

    /// The fixture with `line` inserted after its line `after`.
    fn fixture_with(after: usize, line: &[u8]) -> Vec<u8> {
        let text = include_bytes!("../tests/fixtures/bundle-v1.jsonl");
        let mut out = Vec::new();
        for (i, l) in text.split_inclusive(|b| *b == b'\n').enumerate() {
            out.extend_from_slice(l);
            if i + 1 == after {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
        out
    }

    /// A line that is not UTF-8 stops verification there, named by its
    /// number; the entries after it are not read.
    #[test]
    fn a_line_not_utf8_stops_verification_there() {
        let keys = [
            VerifierKey::from_text(include_str!("../tests/fixtures/bundle-v1.pub").trim()).unwrap(),
        ];
        let good = include_bytes!("../tests/fixtures/bundle-v1.jsonl");
        let (report, summary) = verify_bundle(&good[..], &keys, None);
        assert!(report.is_valid(), "{:?}", report.findings);
        assert_eq!(summary.entries, 5);
        let bad = fixture_with(3, b"{\"type\":\"\xff\"}");
        let (report, summary) = verify_bundle(&bad[..], &keys, None);
        assert!(!report.is_valid());
        assert_eq!(summary.entries, 2, "entries on lines 2 and 3 only");
        let f = &report.findings[0];
        assert_eq!(
            (f.verdict, f.detail.as_str()),
            (Verdict::Malformed, "line 4 is not UTF-8")
        );
    }

    #[test]
    fn unused_bits_and_padding_are_refused() {
        for s in [
            "QR==", "QUJ=", "QQ", "QQ=", "Q===", "QQ==QQ==", " QQ==", "QQ==\n",
        ] {
            assert_eq!(unb64(s), None, "{s:?}");
            assert_eq!(reference(s), None, "{s:?}");
        }
        assert_eq!(unb64("QUJD"), Some(b"ABC".to_vec()));
    }
}
