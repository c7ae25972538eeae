//! Verification of a whole embedded data directory, from the segment files
//! alone (the sled index is never trusted nor needed).
//!
//! For every log: every record's check is recomputed (an entry's is its leaf
//! hash; a present payload must match its commitment), seqs must be dense and
//! each entry must link to the previous leaf hash, timestamps must not go
//! back, every checkpoint must be signed by a trusted key and match the tree
//! recomputed from the leaves, and every seal must be signed, chain to the
//! previous one, tile seqs and time, and match the segment's and the log's
//! roots. Each problem is a [`Finding`](super::Finding) naming log, seq or
//! segment, field, and a verdict code.
//!
//! What the files alone cannot show: entries removed from the end of a log
//! together with their checkpoints and seals (the log simply looks
//! shorter), and a history rewritten and signed again by whoever holds the
//! key. A checkpoint held outside the server (a receipt's, an auditor's
//! copy) shows both: with it ([`verify_data_dir_since`], `verify
//! --since-checkpoint`), the log of its origin must hold at least its size
//! of committed entries and recompute its root at that size.

use std::path::Path;

use crate::core::checkpoint::{Checkpoint, CheckpointError};
use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::CompactRange;
use crate::core::note::{NoteError, VerifierKey};
use crate::core::seal::{Seal, SealError};
use crate::core::transition::{follow, KeyTransition, Trust};
use crate::engine::admin::{transition_of, ROTATE_KIND, SEAL_KIND, SYSTEM_LOG};
use crate::store::embedded::is_valid_log_name;
use crate::store::segment::{list_segments, EntryRecord, PayloadState, Record, SegmentReader};

use super::{Anchor, Report, Verdict};

/// Maps a note error to its verdict.
pub fn note_verdict(e: &NoteError) -> Verdict {
    match e {
        NoteError::UnverifiedNote { .. } => Verdict::UnknownKey,
        NoteError::InvalidSignature { .. } => Verdict::BadSignature,
        _ => Verdict::Malformed,
    }
}

/// Maps a checkpoint error to its verdict.
pub fn checkpoint_verdict(e: &CheckpointError) -> Verdict {
    match e {
        CheckpointError::Note(n) => note_verdict(n),
        _ => Verdict::Malformed,
    }
}

/// Maps a seal error to its verdict.
pub fn seal_verdict(e: &SealError) -> Verdict {
    match e {
        SealError::Note(n) => note_verdict(n),
        SealError::Discontinuous { .. } => Verdict::ChainBroken,
        _ => Verdict::Malformed,
    }
}

/// Verifies every log under `root/logs`.
///
/// # Errors
/// I/O errors reading the directory (problems with contents are findings).
pub fn verify_data_dir(root: &Path, keys: &[VerifierKey]) -> std::io::Result<Report> {
    verify_data_dir_since(root, keys, None)
}

/// [`verify_data_dir`], and with `since` (a signed checkpoint held outside
/// the store: see [`Anchor`]) also that the log of its origin extends it.
///
/// # Errors
/// I/O errors (problems with contents are findings).
pub fn verify_data_dir_since(
    root: &Path,
    keys: &[VerifierKey],
    since: Option<&str>,
) -> std::io::Result<Report> {
    let mut report = Report::default();
    let (transitions, recorded) = read_system(root, &mut report)?;
    let trust = follow_keys(keys, &transitions, &mut report);
    let keys = &trust.keys[..];
    let anchor = since.and_then(|text| Anchor::open(text, keys, &mut report));
    let mut anchored = false;
    let logs_dir = root.join("logs");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&logs_dir)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            if e.path().is_dir() && is_valid_log_name(n) {
                names.push(n.to_owned());
            }
        }
    }
    names.sort();
    let mut seals = std::collections::HashMap::new();
    for name in names {
        let (with_anchor, found) = check_log_dir(
            &logs_dir.join(&name),
            LogCheck::new(&name, keys).anchored(anchor.as_ref()),
            &mut report,
        )?;
        anchored |= with_anchor;
        seals.insert(name, found);
    }
    if let (Some(a), false) = (&anchor, anchored) {
        a.no_log(&mut report);
    }
    check_recorded_seals(&recorded, &seals, &mut report);
    Ok(report)
}

/// The seals a log check found: segment, and the seal's hash if it opened.
pub(crate) type FoundSeals = Vec<(u64, Option<Hash>)>;

/// A seal as the system log recorded it (a `seal` entry of `_system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedSeal {
    /// The `_system` entry's seq.
    pub system_seq: u64,
    pub log: String,
    pub segment: u64,
    pub end_seq: u64,
    pub hash: Hash,
}

impl RecordedSeal {
    /// Reads a `_system` entry's payload, if it records a seal.
    pub(crate) fn of(system_seq: u64, kind: &str, payload: &[u8]) -> Option<RecordedSeal> {
        if kind != SEAL_KIND {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        Some(RecordedSeal {
            system_seq,
            log: v["log"].as_str()?.to_owned(),
            segment: v["segment"].as_u64()?,
            end_seq: v["end_seq"].as_u64()?,
            hash: Hash::from_hex(v["seal_hash"].as_str()?).ok()?,
        })
    }
}

/// Every seal the system log recorded must be in its log, the same seal:
/// a log cut at its end loses its last seals, but not the system log's
/// records of them (the system log itself would have to be cut too).
pub(crate) fn check_recorded_seals(
    recorded: &[RecordedSeal],
    found: &std::collections::HashMap<String, FoundSeals>,
    report: &mut Report,
) {
    for r in recorded {
        let Some(seals) = found.get(&r.log) else {
            report.add(
                Verdict::MissingEntry,
                &r.log,
                None,
                Some(r.segment),
                "seal",
                format!(
                    "the system log (seq {}) records the seal of segment {} of this log, \
                     which is not in the store",
                    r.system_seq, r.segment
                ),
            );
            continue;
        };
        match seals.iter().find(|(segment, _)| *segment == r.segment) {
            None => report.add(
                Verdict::Truncated,
                &r.log,
                Some(r.end_seq),
                Some(r.segment),
                "seal",
                format!(
                    "the system log (seq {}) records the seal of segment {} (entries to seq {}), \
                     which the log does not hold: entries were removed from its end",
                    r.system_seq, r.segment, r.end_seq
                ),
            ),
            // A seal that does not open is a finding of its own already.
            Some((_, Some(hash))) if *hash != r.hash => report.add(
                Verdict::HashMismatch,
                &r.log,
                None,
                Some(r.segment),
                "seal",
                format!(
                    "the seal of segment {} is not the one the system log recorded (seq {})",
                    r.segment, r.system_seq
                ),
            ),
            Some(_) => {}
        }
    }
}

/// The keys to trust in a data directory: `keys`, extended along the key
/// transitions recorded in its `_system` log (`key.rotate` entries; each
/// transition is signed by both its keys, so its place in the store adds
/// no trust). A `key.rotate` entry whose transition does not open is a
/// finding.
///
/// # Errors
/// I/O errors reading the `_system` segments.
pub fn follow_transitions(
    root: &Path,
    keys: &[VerifierKey],
    report: &mut Report,
) -> std::io::Result<Trust> {
    let (transitions, _) = read_system(root, report)?;
    Ok(follow_keys(keys, &transitions, report))
}

/// One pass over a data directory's `_system` log: its key transitions
/// (`key.rotate` entries; one whose transition does not open is a
/// finding) and its records of seals. Damaged records are the log check's
/// findings; here they are only skipped.
///
/// # Errors
/// I/O errors reading the `_system` segments.
fn read_system(
    root: &Path,
    report: &mut Report,
) -> std::io::Result<(Vec<KeyTransition>, Vec<RecordedSeal>)> {
    let dir = root.join("logs").join(SYSTEM_LOG);
    let (mut transitions, mut seals) = (Vec::new(), Vec::new());
    if dir.is_dir() {
        for (index, path) in list_segments(&dir)? {
            let mut reader = SegmentReader::open(&path)?;
            while let Ok(Some((_, record))) = reader.next_record()? {
                let Record::Entry(e) = record else { continue };
                let Ok(entry) = e.entry() else { continue };
                if e.state != PayloadState::Present {
                    continue;
                }
                seals.extend(RecordedSeal::of(entry.seq, &entry.kind, &e.payload));
                if entry.kind != ROTATE_KIND {
                    continue;
                }
                match transition_of(&e.payload) {
                    Some((t, _)) => transitions.push(t),
                    None => report.add(
                        Verdict::BadSignature,
                        SYSTEM_LOG,
                        Some(entry.seq),
                        Some(index),
                        "transition",
                        "a key.rotate entry whose transition does not open",
                    ),
                }
            }
        }
    }
    Ok((transitions, seals))
}

/// `keys` extended along `transitions`, noting in the report which were
/// followed.
pub(crate) fn follow_keys(
    keys: &[VerifierKey],
    transitions: &[KeyTransition],
    report: &mut Report,
) -> Trust {
    let trust = follow(keys, transitions);
    report.transitions = transitions
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), trust.followed.contains(&i)))
        .collect();
    trust
}

/// Per-log verification state.
pub(crate) struct LogCheck<'a> {
    log: &'a str,
    keys: &'a [VerifierKey],
    origin: Option<String>,
    tree: CompactRange<Blake3>,
    /// Leaves and timestamps read since the last commit record.
    pending: Vec<(Hash, i64)>,
    prev_leaf: Hash,
    last_ts: i64,
    prev_seal: Option<Seal>,
    /// A checkpoint held outside the store that this log, if of its
    /// origin, must extend, and the recomputed root at its size once the
    /// tree has reached it.
    anchor: Option<&'a Anchor>,
    anchor_root: Option<Hash>,
    /// The seals found (segment, and hash if it opened), for the system
    /// log's records.
    pub(crate) seals: FoundSeals,
}

/// Verifies the segment files of one log directory into `report`.
///
/// # Errors
/// I/O errors.
pub fn verify_log_dir(
    dir: &Path,
    log: &str,
    keys: &[VerifierKey],
    report: &mut Report,
) -> std::io::Result<()> {
    check_log_dir(dir, LogCheck::new(log, keys), report).map(drop)
}

/// Runs `c` over the segment files of one log directory; returns whether
/// the log is of `c`'s anchor's origin (see [`LogCheck::finish_anchor`])
/// and the seals found.
fn check_log_dir(
    dir: &Path,
    mut c: LogCheck<'_>,
    report: &mut Report,
) -> std::io::Result<(bool, FoundSeals)> {
    let log = c.log;
    let segments = list_segments(dir)?;
    let mut expected_segment = 0u64;
    for (i, (n, path)) in segments.iter().enumerate() {
        if *n != expected_segment {
            report.add(
                Verdict::MissingEntry,
                log,
                None,
                Some(expected_segment),
                "segment",
                format!("segment files {expected_segment} to {} are missing", n - 1),
            );
        }
        expected_segment = n + 1;
        let last = i + 1 == segments.len();
        let sealed = c.segment(*n, path, last, report)?;
        if !sealed && !last {
            report.add(
                Verdict::Truncated,
                log,
                None,
                Some(*n),
                "seal",
                format!("segment {n} has no seal, yet segment {} exists", n + 1),
            );
        }
    }
    Ok((c.finish_anchor(report), c.seals))
}

/// What is known of the segment being checked.
pub(crate) struct SegState {
    index: u64,
    tree: CompactRange<Blake3>,
    pending: Vec<Hash>,
    span_from: Option<i64>,
    first_seq: u64,
    sealed: bool,
    max_ts: i64,
    saw_header: bool,
}

impl<'a> LogCheck<'a> {
    /// The checks of log `log` against `keys`, before its first segment.
    pub(crate) fn new(log: &'a str, keys: &'a [VerifierKey]) -> LogCheck<'a> {
        LogCheck {
            log,
            keys,
            origin: None,
            tree: CompactRange::new(),
            pending: Vec::new(),
            prev_leaf: Hash::ZERO,
            last_ts: i64::MIN,
            prev_seal: None,
            anchor: None,
            anchor_root: None,
            seals: Vec::new(),
        }
    }

    /// The same checks, also against `anchor` (see [`Anchor`]).
    pub(crate) fn anchored(mut self, anchor: Option<&'a Anchor>) -> LogCheck<'a> {
        self.anchor = anchor;
        self
    }

    /// After the log's last entry: whether the log is of the anchor's
    /// origin, and if so a finding unless it extends the anchor (holds at
    /// least its size of committed entries, with its root at that size).
    pub(crate) fn finish_anchor(&self, report: &mut Report) -> bool {
        let Some(a) = self.anchor else {
            return false;
        };
        let cp = &a.checkpoint;
        if self.origin.as_deref() != Some(cp.origin.as_str()) {
            return false;
        }
        let size = self.tree.size();
        let root = if cp.size == 0 {
            Some(CompactRange::<Blake3>::new().root())
        } else {
            self.anchor_root
        };
        if size < cp.size {
            report.add(
                Verdict::Truncated,
                self.log,
                Some(size),
                None,
                "since",
                format!(
                    "the log holds {size} committed entries, but the checkpoint you hold is \
                     signed at size {}: entries were removed from its end",
                    cp.size
                ),
            );
        } else if root != Some(cp.root) {
            report.add(
                Verdict::HashMismatch,
                self.log,
                Some(cp.size),
                None,
                "since",
                format!(
                    "the log's tree at size {} is not the one of the checkpoint you hold: its \
                     history was rewritten",
                    cp.size
                ),
            );
        }
        true
    }

    /// Entries committed by a checkpoint or seal so far.
    pub(crate) fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The committed tree's frontier, concatenated.
    pub(crate) fn frontier_bytes(&self) -> Vec<u8> {
        self.tree.hashes().iter().flat_map(|h| h.0).collect()
    }

    /// The last entry's leaf hash (zeros before any).
    pub(crate) fn prev_leaf_bytes(&self) -> Vec<u8> {
        self.prev_leaf.0.to_vec()
    }
}

impl LogCheck<'_> {
    /// Verifies one segment file; returns whether it ended with a seal.
    fn segment(
        &mut self,
        index: u64,
        path: &Path,
        last_file: bool,
        report: &mut Report,
    ) -> std::io::Result<bool> {
        let log = self.log;
        let mut reader = SegmentReader::open(path)?;
        let mut seg = self.start_segment(index);
        loop {
            let next = reader.next_record()?;
            let (offset, record) = match next {
                Ok(None) => break,
                Ok(Some(r)) => r,
                Err(bad) => {
                    let resume = reader.valid_record_after(bad.offset)?;
                    if resume.is_none() && last_file {
                        // An unfinished write at the end of the open segment:
                        // never acknowledged, cut by the store on start.
                        break;
                    }
                    let (verdict, field) = match bad.reason {
                        "leaf hash mismatch" => (Verdict::HashMismatch, "entry"),
                        "payload does not match its commitment" => {
                            (Verdict::HashMismatch, "payload")
                        }
                        "record check mismatch" => (Verdict::HashMismatch, "record"),
                        _ => (Verdict::Malformed, "record"),
                    };
                    report.add(
                        verdict,
                        log,
                        Some(self.tree.size() + self.pending.len() as u64),
                        Some(index),
                        field,
                        format!(
                            "{} at byte {} of {}",
                            bad.reason,
                            bad.offset,
                            path.display()
                        ),
                    );
                    match resume {
                        Some(at) => {
                            reader = SegmentReader::open_at(path, at)?;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            self.record(&mut seg, &format!("byte {offset}"), record, report);
        }
        Ok(self.end_segment(seg, last_file, report))
    }

    pub(crate) fn start_segment(&self, index: u64) -> SegState {
        SegState {
            index,
            tree: CompactRange::new(),
            pending: Vec::new(),
            span_from: None,
            first_seq: self.tree.size(),
            sealed: false,
            max_ts: i64::MIN,
            saw_header: false,
        }
    }

    /// Checks one well-framed record of segment `seg` (`at` says where it
    /// is, for messages).
    pub(crate) fn record(
        &mut self,
        seg: &mut SegState,
        at: &str,
        record: Record,
        report: &mut Report,
    ) {
        let log = self.log;
        let index = seg.index;
        if seg.sealed {
            report.add(
                Verdict::Malformed,
                log,
                None,
                Some(index),
                "seal",
                format!("record at {at} after the seal"),
            );
            return;
        }
        match record {
            Record::Header(h) => {
                if seg.saw_header {
                    report.add(
                        Verdict::Malformed,
                        log,
                        None,
                        Some(index),
                        "header",
                        "second header",
                    );
                    return;
                }
                seg.saw_header = true;
                if h.segment != index {
                    report.add(
                        Verdict::Malformed,
                        log,
                        None,
                        Some(index),
                        "header",
                        format!("file of segment {index} says segment {}", h.segment),
                    );
                }
                match &self.origin {
                    None => self.origin = Some(h.origin.clone()),
                    Some(o) if *o != h.origin => report.add(
                        Verdict::ChainBroken,
                        log,
                        None,
                        Some(index),
                        "origin",
                        format!("segment of origin {:?} in log of origin {o:?}", h.origin),
                    ),
                    Some(_) => {}
                }
                if h.first_seq != self.tree.size() {
                    let v = if h.first_seq > self.tree.size() {
                        Verdict::MissingEntry
                    } else {
                        Verdict::ChainBroken
                    };
                    report.add(
                        v,
                        log,
                        Some(self.tree.size()),
                        Some(index),
                        "header",
                        format!(
                            "segment starts at seq {} but the log holds {} entries before it",
                            h.first_seq,
                            self.tree.size()
                        ),
                    );
                }
                if let Some(p) = &self.prev_seal {
                    if h.span_from != p.span_to {
                        report.add(
                            Verdict::ChainBroken,
                            log,
                            None,
                            Some(index),
                            "span",
                            "segment time span does not start where the previous seal's ends",
                        );
                    }
                }
                seg.first_seq = self.tree.size();
                seg.span_from = Some(h.span_from);
                self.last_ts = self.last_ts.max(h.span_from);
            }
            Record::Entry(e) => self.entry(seg, &e, report),
            Record::Checkpoint(text) => {
                self.commit_pending(&mut seg.tree, &mut seg.pending);
                self.checkpoint(&text, index, report);
            }
            Record::Seal(text) => {
                self.commit_pending(&mut seg.tree, &mut seg.pending);
                seg.sealed = true;
                self.seal(
                    &text,
                    index,
                    seg.first_seq,
                    seg.span_from,
                    seg.max_ts,
                    &seg.tree,
                    report,
                );
            }
        }
    }

    fn entry(&mut self, seg: &mut SegState, e: &EntryRecord, report: &mut Report) {
        let log = self.log;
        let index = seg.index;
        let expected = self.tree.size() + self.pending.len() as u64;
        let entry = match e.entry() {
            Ok(x) => x,
            Err(err) => {
                report.add(
                    Verdict::Malformed,
                    log,
                    Some(expected),
                    Some(index),
                    "entry",
                    err.to_string(),
                );
                return;
            }
        };
        report.entries_checked += 1;
        if entry.seq > expected {
            report.add(
                Verdict::MissingEntry,
                log,
                Some(expected),
                Some(index),
                "seq",
                format!("entries {expected} to {} are missing", entry.seq - 1),
            );
        } else if entry.seq < expected {
            report.add(
                Verdict::ChainBroken,
                log,
                Some(entry.seq),
                Some(index),
                "seq",
                format!(
                    "entry {} found where entry {expected} belongs (reordered or repeated)",
                    entry.seq
                ),
            );
        } else if entry.prev_leaf_hash != self.prev_leaf {
            report.add(
                Verdict::ChainBroken,
                log,
                Some(entry.seq),
                Some(index),
                "prev_leaf_hash",
                "does not link to the previous entry's leaf hash",
            );
        }
        if let Some(o) = &self.origin {
            if entry.origin != *o {
                report.add(
                    Verdict::ChainBroken,
                    log,
                    Some(entry.seq),
                    Some(index),
                    "origin",
                    format!("entry of origin {:?} in log {o:?}", entry.origin),
                );
            }
        }
        if entry.timestamp_unix_nanos < self.last_ts {
            report.add(
                Verdict::ChainBroken,
                log,
                Some(entry.seq),
                Some(index),
                "timestamp",
                "earlier than the previous entry or the segment start",
            );
        }
        match e.state {
            PayloadState::Present => {}
            PayloadState::Erased => report.add(
                Verdict::Erased,
                log,
                Some(entry.seq),
                Some(index),
                "payload",
                "payload erased",
            ),
            PayloadState::Expired => report.add(
                Verdict::Expired,
                log,
                Some(entry.seq),
                Some(index),
                "payload",
                "payload expired",
            ),
        }
        self.last_ts = self.last_ts.max(entry.timestamp_unix_nanos);
        seg.max_ts = seg.max_ts.max(entry.timestamp_unix_nanos);
        self.prev_leaf = e.leaf_hash;
        self.pending.push((e.leaf_hash, entry.timestamp_unix_nanos));
        seg.pending.push(e.leaf_hash);
    }

    /// Ends segment `seg`; returns whether it was sealed.
    pub(crate) fn end_segment(
        &mut self,
        mut seg: SegState,
        last: bool,
        report: &mut Report,
    ) -> bool {
        let log = self.log;
        let index = seg.index;
        if !seg.saw_header {
            report.add(
                Verdict::Malformed,
                log,
                None,
                Some(index),
                "header",
                "segment has no header",
            );
        }
        // Entries after the last commit record of the last segment were
        // never acknowledged; anywhere else they are covered by nothing.
        if !self.pending.is_empty() && !last {
            report.add(
                Verdict::Truncated,
                log,
                Some(self.tree.size()),
                Some(index),
                "checkpoint",
                format!(
                    "{} entries are not covered by any checkpoint or seal",
                    self.pending.len()
                ),
            );
        }
        if !last {
            self.commit_pending(&mut seg.tree, &mut seg.pending);
        }
        seg.sealed
    }

    fn commit_pending(&mut self, seg_tree: &mut CompactRange<Blake3>, seg_pending: &mut Vec<Hash>) {
        for (h, _) in self.pending.drain(..) {
            self.tree.append(h, |_, _| {});
            if let Some(a) = self.anchor {
                let cp = &a.checkpoint;
                if self.tree.size() == cp.size && self.origin.as_deref() == Some(&cp.origin) {
                    self.anchor_root = Some(self.tree.root());
                }
            }
        }
        for h in seg_pending.drain(..) {
            seg_tree.append(h, |_, _| {});
        }
    }

    fn checkpoint(&mut self, text: &str, segment: u64, report: &mut Report) {
        let log = self.log;
        let cp = match Checkpoint::open(text, self.keys, self.origin.as_deref()) {
            Ok((cp, _)) => cp,
            Err(e) => {
                let v = checkpoint_verdict(&e);
                let detail = report.note_detail(v, &e, text, self.keys);
                report.add(
                    v,
                    log,
                    Some(self.tree.size()),
                    Some(segment),
                    "checkpoint",
                    detail,
                );
                return;
            }
        };
        report.checkpoints_checked += 1;
        if cp.size != self.tree.size() {
            let v = if cp.size > self.tree.size() {
                Verdict::MissingEntry
            } else {
                Verdict::Malformed
            };
            report.add(
                v,
                log,
                Some(self.tree.size()),
                Some(segment),
                "checkpoint",
                format!(
                    "checkpoint of size {} after {} entries",
                    cp.size,
                    self.tree.size()
                ),
            );
        } else if cp.root != self.tree.root() {
            report.add(
                Verdict::HashMismatch,
                log,
                Some(cp.size.saturating_sub(1)),
                Some(segment),
                "checkpoint",
                format!(
                    "signed root at size {} differs from the root of the stored entries",
                    cp.size
                ),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn seal(
        &mut self,
        text: &str,
        segment: u64,
        first_seq: u64,
        span_from: Option<i64>,
        max_ts: i64,
        seg_tree: &CompactRange<Blake3>,
        report: &mut Report,
    ) {
        let log = self.log;
        let seal = match Seal::open(text, self.keys) {
            Ok((s, _)) => s,
            Err(e) => {
                let v = seal_verdict(&e);
                let detail = report.note_detail(v, &e, text, self.keys);
                report.add(v, log, None, Some(segment), "seal", detail);
                self.seals.push((segment, None));
                return;
            }
        };
        report.seals_checked += 1;
        self.seals.push((segment, Some(seal.hash())));
        let mut bad = |v: Verdict, detail: String| {
            report.add(v, log, None, Some(segment), "seal", detail);
        };
        if let Err(e) = seal.check_follows(self.prev_seal.as_ref()) {
            bad(seal_verdict(&e), e.to_string());
        }
        if Some(&seal.origin) != self.origin.as_ref() {
            bad(
                Verdict::ChainBroken,
                format!("seal of origin {:?}", seal.origin),
            );
        }
        if seal.segment != segment || seal.first_seq != first_seq {
            bad(
                Verdict::Malformed,
                format!(
                    "seal names segment {} from seq {}, the file is segment {segment} from seq {first_seq}",
                    seal.segment, seal.first_seq
                ),
            );
        }
        if seal.end_seq != self.tree.size() {
            let v = if seal.end_seq > self.tree.size() {
                Verdict::MissingEntry
            } else {
                Verdict::Malformed
            };
            bad(
                v,
                format!(
                    "seal ends at seq {}, the segment ends at {}",
                    seal.end_seq,
                    self.tree.size()
                ),
            );
        } else {
            if seal.segment_root != seg_tree.root() {
                bad(
                    Verdict::HashMismatch,
                    "segment root differs from the segment's entries".into(),
                );
            }
            if seal.tree_root != self.tree.root() {
                bad(
                    Verdict::HashMismatch,
                    "tree root differs from the log's entries".into(),
                );
            }
        }
        if span_from.is_some_and(|f| f != seal.span_from) {
            bad(
                Verdict::ChainBroken,
                "seal span does not start where the segment does".into(),
            );
        }
        if max_ts != i64::MIN && (max_ts > seal.span_to || max_ts < seal.span_from) {
            bad(
                Verdict::ChainBroken,
                "an entry's time lies outside the seal's span".into(),
            );
        }
        self.last_ts = self.last_ts.max(seal.span_to);
        self.prev_seal = Some(seal);
    }
}
