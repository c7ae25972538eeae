//! The embedded store: one data directory, segment files as the source of
//! truth, sled for derived indexes.
//!
//! Layout (FORMAT.md §8):
//! ```text
//! DATA/LOCK                      held exclusively while a process uses DATA
//! DATA/logs/<log>/<segment>.seg  segment files, 20-digit zero-padded numbers
//! DATA/index/                    sled database (derived; may be deleted)
//! ```
//!
//! Invariants:
//! - Appends are durable (`fdatasync`) before [`Store::append`] returns; new
//!   files are followed by a directory fsync.
//! - On open, the last segment's uncommitted tail (bytes after its last
//!   checkpoint or seal record) is cut and reported; bad bytes followed by a
//!   valid record, or any bad bytes in a sealed segment, refuse the log with
//!   the file and offset until an operator acts.
//! - The index catches up from the segments on open; an index that claims
//!   more than the segments hold is discarded and rebuilt.
//! - After a failed write or sync the log is refused until restart: the
//!   state of the page cache after a failed fsync is unknown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::ops::ControlFlow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::{CompactRange, NodeId, NodeReadError, NodeReader};
use crate::core::note;
use crate::core::seal::Seal;

use super::index::{DenseEntry, DenseIndex, Location, LogIndex};
use super::postings::{key_hash, EntryKeys, KeyKind, Postings};
use super::segment::{
    self, encode_entry_record, encode_other_record, list_segments, read_record_at, BadBytes,
    PayloadState, Record, RecordKind, SegmentHeader, SegmentReader, SegmentWriter,
};
use super::{
    Batch, LogHead, LogSpec, OpenSegment, Removal, SegmentInfo, Store, StoreError, StoredEntry,
    SyncPoint,
};

/// What recovery cut from a log's last segment (never acknowledged data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Log name.
    pub log: String,
    /// File that was cut.
    pub file: PathBuf,
    /// New length of the file.
    pub cut_at: u64,
    /// Bytes removed.
    pub bytes_cut: u64,
    /// Complete entry records removed (their batch had no checkpoint yet).
    pub entries_cut: u64,
    /// Why the tail was bad, if it was not simply an unfinished batch.
    pub reason: Option<String>,
}

struct LogState {
    writer: SegmentWriter,
    segment: u64,
    segment_first_seq: u64,
    /// Entries published: durable, indexed and visible to readers.
    size: u64,
    /// Batches written to the open segment but not yet published (see
    /// [`Store::write_unsynced`]), oldest first; `size` plus their entries
    /// is where the next batch starts.
    unpublished: std::collections::VecDeque<Unpublished>,
    refused: Option<(String, String)>,
    /// Index jobs sent to the indexer.
    jobs_sent: u64,
    /// The buffer batches are framed in, kept between batches: a fresh
    /// buffer of a large batch is fresh pages, faulted in and zeroed by
    /// the kernel each time, then copied from cold.
    frame: Vec<u8>,
}

/// The dense index records of a written batch.
fn dense_records(batch: &Batch, u: &Unpublished) -> Vec<DenseEntry> {
    batch
        .entries
        .iter()
        .zip(&u.offsets)
        .map(|(e, off)| DenseEntry {
            location: Location {
                segment: u.segment,
                offset: *off,
            },
            leaf_hash: e.leaf_hash,
            timestamp: e.entry.timestamp_unix_nanos,
        })
        .collect()
}

/// The keyed facts of a batch's entries, in order.
fn entry_keys(batch: &Batch) -> impl Iterator<Item = EntryKeys<'_>> {
    batch.entries.iter().map(|e| EntryKeys {
        subject: &e.entry.subject,
        actor: &e.entry.actor,
        idempotency_key: &e.entry.idempotency_key,
    })
}

/// A batch in the open segment file, not yet published.
struct Unpublished {
    first_seq: u64,
    /// The segment its records are in.
    segment: u64,
    /// File offset of each entry record.
    offsets: Vec<u64>,
    /// Set by `stage`: the batch's dense records and nodes are written
    /// (beyond the published size, so no reader looks at them), and these
    /// are its postings, hashed.
    staged: Option<Vec<(u64, u64)>>,
}

/// Keyed-index work handed to a log's indexer thread, in log order. The
/// append path never writes to sled itself: sled serialises writers, and a
/// large indexer batch would stall it. (A batch's checkpoint is written by
/// `publish` itself, to the checkpoint files: two `pwrite`s, no thread hop.)
enum IndexJob {
    /// A segment was opened (`seal: None`) or sealed.
    Segment {
        index: u64,
        first_seq: u64,
        seal: Option<String>,
    },
}

/// How far the keyed index has caught up with the durable log.
struct Progress {
    /// Entries whose dense records and checkpoints are written (the
    /// published size): what the indexer's next sync may mark as indexed.
    keyed_size: u64,
    /// Jobs applied.
    done: u64,
    failed: Option<String>,
}

struct LogFiles {
    dir: PathBuf,
    index: Arc<LogIndex>,
    state: Mutex<LogState>,
    /// Subject, actor and idempotency-key postings (up to date with every
    /// acknowledged batch).
    postings: Postings,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    /// The published size (`LogState::size`), for readers that take no
    /// lock: tree nodes beyond it (a batch staged, not yet durable) are
    /// not served.
    published: AtomicU64,
    /// Held (read) while a location is looked up and its record read;
    /// held (write) while a rewritten segment is renamed into place and its
    /// locations moved, so no reader pairs an old offset with a new file.
    relocating: RwLock<()>,
    /// One payload removal at a time per log.
    rewriting: Mutex<()>,
    indexer: Mutex<Option<mpsc::SyncSender<IndexJob>>>,
    indexer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl LogState {
    /// Seq the next written batch starts at.
    fn written(&self) -> u64 {
        self.unpublished
            .back()
            .map_or(self.size, |u| u.first_seq + u.offsets.len() as u64)
    }

    /// Refuses the log after a failed update of its derived index `what`
    /// (readers would find the index behind the size), passing `e` on.
    fn refuse_index(&mut self, what: &str, e: StoreError) -> StoreError {
        self.refused = Some((
            "index".into(),
            format!("{what} update failed: {e}; restart to rebuild"),
        ));
        e
    }

    /// Fails while the log is refused (corruption found, or a failed write).
    fn check_serving(&self, log: &str) -> Result<(), StoreError> {
        match &self.refused {
            None => Ok(()),
            Some((location, reason)) => Err(StoreError::Corrupt {
                log: log.to_owned(),
                location: location.clone(),
                reason: reason.clone(),
            }),
        }
    }
}

impl LogFiles {
    /// Queues keyed-index work; a stopped indexer refuses the log.
    fn send_job(&self, st: &mut LogState, job: IndexJob) {
        let sent = self
            .indexer
            .lock()
            .expect("indexer lock")
            .as_ref()
            .is_some_and(|tx| tx.send(job).is_ok());
        if sent {
            st.jobs_sent += 1;
        } else {
            st.refused = Some((
                "index".into(),
                "the indexer stopped; restart to rebuild".into(),
            ));
        }
    }
}

/// Refuses the log after a failed write or sync of its open segment (the
/// file may hold a torn tail, which the next start cuts back).
fn refuse_write(st: &mut LogState, what: &str, e: io::Error) -> StoreError {
    let location = st.writer.path().display().to_string();
    st.refused = Some((
        location.clone(),
        format!("write failed: {e}; restart to recover"),
    ));
    StoreError::Io {
        context: format!("{what} {location}"),
        source: e,
    }
}

/// How long the indexer waits between syncs of the dense files (and moves
/// of `indexed_size`).
const INDEX_SYNC_EVERY: Duration = Duration::from_millis(1000);

/// Most index jobs queued for a log's indexer.
const INDEX_QUEUE_JOBS: usize = 64;

/// Most jobs the indexer applies to sled in one batch.
const MAX_INDEX_BATCH_JOBS: usize = 256;

/// Suffix of the marker of a segment whose rewrite may not have moved its
/// dense locations yet.
const RELOCATE_SUFFIX: &str = ".relocate";

fn relocate_marker(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!(
        "{}{RELOCATE_SUFFIX}",
        segment::segment_file_name(seg)
    ))
}

/// How long a reader waits for the keyed index to catch up.
const INDEX_WAIT: Duration = Duration::from_secs(30);

fn run_indexer(
    index: Arc<LogIndex>,
    rx: mpsc::Receiver<IndexJob>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
) {
    let mut synced_at = Instant::now();
    let mut recorded = None;
    let fail = |e: StoreError| {
        let (m, cv) = &*progress;
        m.lock().expect("progress lock").failed = Some(e.to_string());
        cv.notify_all();
    };
    loop {
        let first = rx.recv_timeout(INDEX_SYNC_EVERY);
        let closed = matches!(first, Err(RecvTimeoutError::Disconnected));
        if let Ok(first) = first {
            // What is queued is applied together, up to a bound.
            let mut jobs = vec![first];
            while jobs.len() < MAX_INDEX_BATCH_JOBS {
                let Ok(j) = rx.try_recv() else { break };
                jobs.push(j);
            }
            let applied = jobs.iter().try_for_each(|j| match j {
                IndexJob::Segment {
                    index: seg,
                    first_seq,
                    seal: Some(text),
                } => index.keyed.add_seal(*seg, *first_seq, text),
                IndexJob::Segment {
                    index: seg,
                    first_seq,
                    seal: None,
                } => index.keyed.add_segment(*seg, *first_seq),
            });
            if let Err(e) = applied {
                fail(e);
                return;
            }
            let (m, cv) = &*progress;
            let mut p = m.lock().expect("progress lock");
            p.done += jobs.len() as u64;
            cv.notify_all();
        }
        if closed || synced_at.elapsed() >= INDEX_SYNC_EVERY {
            let size = progress.0.lock().expect("progress lock").keyed_size;
            if recorded != Some(size) {
                // Dense files first, then the mark that trusts them.
                if let Err(e) = index
                    .dense
                    .sync()
                    .and_then(|()| index.keyed.set_indexed_size(size))
                {
                    fail(e);
                    return;
                }
                recorded = Some(size);
            }
            synced_at = Instant::now();
        }
        if closed {
            return;
        }
    }
}

/// The embedded store. See the module documentation.
pub struct EmbeddedStore {
    root: PathBuf,
    db: sled::Db,
    logs: RwLock<HashMap<String, Arc<LogFiles>>>,
    recoveries: Mutex<Vec<Recovery>>,
    _lock: File,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Is `name` usable as a log name (and directory name)?
pub fn is_valid_log_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
        && !name.starts_with('.')
}

/// State of a last-segment scan.
struct TailScan {
    header: SegmentHeader,
    /// Leaf hashes of the committed entries of the segment.
    leaves: Vec<Hash>,
    /// Timestamp of the last committed entry.
    last_ts: Option<i64>,
    /// Timestamp of the first committed entry.
    first_ts: Option<i64>,
    /// Offset just after the last committed record.
    committed_len: u64,
    /// The seal, when the segment is sealed.
    seal: Option<Seal>,
    recovery: Option<Recovery>,
}

impl EmbeddedStore {
    /// Opens (creating) a data directory and takes its lock.
    ///
    /// # Errors
    /// When the directory is locked by another process, or I/O fails.
    pub fn open(root: &Path) -> Result<EmbeddedStore, StoreError> {
        fs::create_dir_all(root.join("logs")).map_err(io(format!("create {}", root.display())))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("LOCK"))
            .map_err(io("open LOCK"))?;
        lock.try_lock().map_err(|e| StoreError::Io {
            context: format!(
                "data directory {} is in use by another process",
                root.display()
            ),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Our LOCK is held, so no other process uses the index; a sled lock
        // still held means a store of this process was just dropped and
        // sled's background thread has not released it yet.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new()
                .path(root.join("index").join("sled"))
                .flush_every_ms(Some(1000))
                .cache_capacity(64 << 20)
                .mode(sled::Mode::LowSpace)
                .open()
            {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        Ok(EmbeddedStore {
            root: root.to_owned(),
            db,
            logs: RwLock::new(HashMap::new()),
            recoveries: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of a log's dense index files.
    fn dense_dir(&self, log: &str) -> PathBuf {
        self.root.join("index").join("dense").join(log)
    }

    fn postings_dir(&self, log: &str) -> PathBuf {
        self.root.join("index").join("postings").join(log)
    }

    /// Waits until the keyed index holds everything durable now.
    fn wait_keyed(&self, files: &LogFiles) -> Result<(), StoreError> {
        let target = files.state.lock().expect("log state lock").jobs_sent;
        let (m, cv) = &*files.progress;
        let guard = m.lock().expect("progress lock");
        let (guard, timeout) = cv
            .wait_timeout_while(guard, INDEX_WAIT, |p| p.done < target && p.failed.is_none())
            .expect("progress lock");
        if let Some(f) = &guard.failed {
            return Err(StoreError::Index(f.clone()));
        }
        if timeout.timed_out() {
            return Err(StoreError::Index(format!(
                "index is {} jobs behind after {INDEX_WAIT:?}",
                target - guard.done
            )));
        }
        Ok(())
    }

    /// Directory of a log's segment files.
    pub fn log_dir(&self, log: &str) -> PathBuf {
        self.root.join("logs").join(log)
    }

    /// What recovery cut since the store was opened (drained).
    pub fn take_recoveries(&self) -> Vec<Recovery> {
        std::mem::take(&mut self.recoveries.lock().expect("recoveries lock"))
    }

    fn log(&self, log: &str) -> Result<Arc<LogFiles>, StoreError> {
        self.logs
            .read()
            .expect("logs lock")
            .get(log)
            .cloned()
            .ok_or_else(|| StoreError::UnknownLog(log.to_owned()))
    }

    fn corrupt(log: &str, path: &Path, bad: &BadBytes) -> StoreError {
        StoreError::Corrupt {
            log: log.to_owned(),
            location: format!("{} at byte {}", path.display(), bad.offset),
            reason: bad.reason.to_owned(),
        }
    }

    /// The entry of a record read at `off` of `path`; a record whose check
    /// matched but whose encoding does not decode is corruption there.
    fn decode_at(
        log: &str,
        path: &Path,
        off: u64,
        e: &segment::EntryRecord,
    ) -> Result<crate::core::entry::Entry, StoreError> {
        e.entry().map_err(|_| {
            Self::corrupt(
                log,
                path,
                &BadBytes {
                    offset: off,
                    reason: "entry does not decode",
                },
            )
        })
    }

    /// Scans the last segment, cutting its uncommitted tail.
    fn scan_tail(&self, spec: &LogSpec, path: &Path, index: u64) -> Result<TailScan, StoreError> {
        let ctx = || format!("read {}", path.display());
        let mut r = SegmentReader::open(path).map_err(io(ctx()))?;
        let header = match r.next_record().map_err(io(ctx()))? {
            Ok(Some((_, Record::Header(h)))) => h,
            Ok(_) => {
                return Err(Self::corrupt(
                    &spec.name,
                    path,
                    &BadBytes {
                        offset: 0,
                        reason: "segment does not start with a header",
                    },
                ))
            }
            Err(bad) => return Err(Self::corrupt(&spec.name, path, &bad)),
        };
        if header.segment != index {
            return Err(Self::corrupt(
                &spec.name,
                path,
                &BadBytes {
                    offset: 0,
                    reason: "header names another segment number",
                },
            ));
        }
        if header.origin != spec.origin {
            return Err(StoreError::OriginMismatch {
                log: spec.name.clone(),
                stored: header.origin,
                configured: spec.origin.clone(),
            });
        }
        let mut leaves = Vec::new();
        let mut pending: Vec<(Hash, i64)> = Vec::new();
        let mut last_ts = None;
        let mut first_ts = None;
        let mut committed_len = r.offset();
        let mut seal = None;
        let mut bad_tail = None;
        loop {
            match r.next_record().map_err(io(ctx()))? {
                Ok(None) => break,
                Ok(Some((off, rec))) => {
                    if seal.is_some() {
                        return Err(Self::corrupt(
                            &spec.name,
                            path,
                            &BadBytes {
                                offset: off,
                                reason: "record after the seal",
                            },
                        ));
                    }
                    match rec {
                        Record::Entry(e) => {
                            let entry = Self::decode_at(&spec.name, path, off, &e)?;
                            let want = header.first_seq + (leaves.len() + pending.len()) as u64;
                            if entry.seq != want {
                                return Err(Self::corrupt(
                                    &spec.name,
                                    path,
                                    &BadBytes {
                                        offset: off,
                                        reason: "entry out of sequence",
                                    },
                                ));
                            }
                            pending.push((e.leaf_hash, entry.timestamp_unix_nanos));
                        }
                        Record::Checkpoint(_) | Record::Seal(_) => {
                            for (h, ts) in pending.drain(..) {
                                leaves.push(h);
                                first_ts.get_or_insert(ts);
                                last_ts = Some(ts);
                            }
                            committed_len = r.offset();
                            if let Record::Seal(text) = rec {
                                seal = Some(parse_seal(&text).ok_or_else(|| {
                                    Self::corrupt(
                                        &spec.name,
                                        path,
                                        &BadBytes {
                                            offset: off,
                                            reason: "seal record is not a seal",
                                        },
                                    )
                                })?);
                            }
                        }
                        Record::Header(_) => {
                            return Err(Self::corrupt(
                                &spec.name,
                                path,
                                &BadBytes {
                                    offset: off,
                                    reason: "second header",
                                },
                            ))
                        }
                    }
                }
                Err(bad) => {
                    if let Some(at) = r.valid_record_after(bad.offset).map_err(io(ctx()))? {
                        return Err(StoreError::Corrupt {
                            log: spec.name.clone(),
                            location: format!("{} at byte {}", path.display(), bad.offset),
                            reason: format!(
                                "{}, and a valid record follows at byte {at}",
                                bad.reason
                            ),
                        });
                    }
                    bad_tail = Some(bad);
                    break;
                }
            }
        }
        let file_len = r.file_len();
        let recovery = (committed_len != file_len).then(|| Recovery {
            log: spec.name.clone(),
            file: path.to_owned(),
            cut_at: committed_len,
            bytes_cut: file_len - committed_len,
            entries_cut: pending.len() as u64,
            reason: bad_tail.map(|b| format!("{} at byte {}", b.reason, b.offset)),
        });
        Ok(TailScan {
            header,
            leaves,
            last_ts,
            first_ts,
            committed_len,
            seal,
            recovery,
        })
    }

    /// Re-indexes segments from the one holding seq `from` up to `size`.
    fn catch_up(
        &self,
        spec: &LogSpec,
        index: &LogIndex,
        segments: &[(u64, PathBuf)],
        from: u64,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut frontier = CompactRange::<Blake3>::from_reader(&IndexReader(&index.dense), from)
            .map_err(|e| StoreError::Index(e.to_string()))?;
        let mut next = from;
        for (seg, path) in segments {
            let ctx = || format!("read {}", path.display());
            let mut r = SegmentReader::open(path).map_err(io(ctx()))?;
            let mut pending: Vec<(u64, crate::core::entry::Entry, Hash)> = Vec::new();
            let mut nodes = Vec::new();
            let mut header_first = None;
            while let Some((off, rec)) = r
                .next_record()
                .map_err(io(ctx()))?
                .map_err(|bad| Self::corrupt(&spec.name, path, &bad))?
            {
                match rec {
                    Record::Header(h) => {
                        header_first = Some(h.first_seq);
                        index.keyed.add_segment(*seg, h.first_seq)?;
                    }
                    Record::Entry(e) => {
                        let entry = Self::decode_at(&spec.name, path, off, &e)?;
                        if entry.seq >= next && entry.seq < size {
                            pending.push((off, entry, e.leaf_hash));
                        }
                    }
                    Record::Checkpoint(_) | Record::Seal(_) => {
                        let (cp, is_seal) = match rec {
                            Record::Seal(t) => (t, true),
                            Record::Checkpoint(t) => (t, false),
                            _ => unreachable!("matched above"),
                        };
                        if !pending.is_empty() {
                            if pending[0].1.seq != next {
                                return Err(StoreError::Corrupt {
                                    log: spec.name.clone(),
                                    location: format!("{}", path.display()),
                                    reason: format!(
                                        "expected seq {next}, found {}",
                                        pending[0].1.seq
                                    ),
                                });
                            }
                            nodes.clear();
                            for (_, _, leaf) in &pending {
                                frontier.append(*leaf, |id, h| nodes.push((id, h)));
                            }
                            let dense: Vec<DenseEntry> = pending
                                .iter()
                                .map(|(off, entry, leaf)| DenseEntry {
                                    location: Location {
                                        segment: *seg,
                                        offset: *off,
                                    },
                                    leaf_hash: *leaf,
                                    timestamp: entry.timestamp_unix_nanos,
                                })
                                .collect();
                            index.dense.add(next, &dense, &nodes)?;
                            let end = next + pending.len() as u64;
                            if !is_seal {
                                index.keyed.add_checkpoints([(end, cp.as_str())])?;
                            }
                            next += pending.len() as u64;
                            pending.clear();
                        } else if !is_seal {
                            if let Some(size) = checkpoint_size(&cp) {
                                index.keyed.add_checkpoints([(size, cp.as_str())])?;
                            }
                        }
                        if is_seal {
                            let first = header_first.unwrap_or(0);
                            index.keyed.add_seal(*seg, first, &cp)?;
                        }
                    }
                }
            }
        }
        if next != size {
            return Err(StoreError::Corrupt {
                log: spec.name.clone(),
                location: self.log_dir(&spec.name).display().to_string(),
                reason: format!("segments hold entries up to {next}, expected {size}"),
            });
        }
        index.dense.sync()?;
        index.keyed.set_indexed_size(size)?;
        Ok(())
    }
}

/// Reads the text of a signed seal note (signatures are the verifier's job).
fn parse_seal(signed: &str) -> Option<Seal> {
    let (text, _) = note::parse(signed).ok()?;
    Seal::from_text(&text).ok()
}

fn checkpoint_size(signed: &str) -> Option<u64> {
    let (text, _) = note::parse(signed).ok()?;
    crate::core::checkpoint::Checkpoint::from_text(&text)
        .ok()
        .map(|c| c.size)
}

struct IndexReader<'a>(&'a DenseIndex);

impl NodeReader for IndexReader<'_> {
    fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
        self.0.node(id)
    }
}

impl Store for EmbeddedStore {
    fn open_log(&self, spec: &LogSpec, now: i64) -> Result<LogHead, StoreError> {
        if !is_valid_log_name(&spec.name) {
            return Err(StoreError::Io {
                context: format!("log name {:?}", spec.name),
                source: std::io::Error::other(
                    "log names are 1-64 characters of a-z, 0-9, '_', '-', '.'",
                ),
            });
        }
        let dir = self.log_dir(&spec.name);
        let mut index = LogIndex::open(&self.db, &self.dense_dir(&spec.name), &spec.name)?;
        SegmentWriter::remove_temporaries(&dir).map_err(io(format!("clean {}", dir.display())))?;
        let mut segments = list_segments(&dir).map_err(io(format!("list {}", dir.display())))?;

        if segments.is_empty() {
            fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            segment::sync_dir(&self.root.join("logs")).map_err(io("sync logs dir"))?;
            index.keyed.clear()?;
            index.dense = DenseIndex::open(&self.dense_dir(&spec.name), 0)?.0;
            let header = SegmentHeader {
                segment: 0,
                first_seq: 0,
                span_from: now,
                origin: spec.origin.clone(),
            };
            let writer = SegmentWriter::create(&dir, &header)
                .map_err(io(format!("create segment in {}", dir.display())))?;
            index.keyed.add_segment(0, 0)?;
            let (postings, _) = Postings::open(&self.postings_dir(&spec.name), 0)?;
            self.install(spec, dir, index, postings, writer, 0, 0, 0);
            return Ok(LogHead {
                size: 0,
                prev_leaf: Hash::ZERO,
                last_timestamp: now,
                frontier: Vec::new(),
                segment: OpenSegment {
                    index: 0,
                    first_seq: 0,
                    span_from: now,
                    frontier: Vec::new(),
                    first_timestamp: None,
                },
                prev_seal: Hash::ZERO,
                latest_checkpoint: None,
            });
        }

        for (i, (n, path)) in segments.iter().enumerate() {
            if *n != i as u64 {
                return Err(StoreError::Corrupt {
                    log: spec.name.clone(),
                    location: path.display().to_string(),
                    reason: format!("segment {i} is missing"),
                });
            }
        }
        let (last_index, last_path) = segments.last().cloned().expect("non-empty");
        let tail = self.scan_tail(spec, &last_path, last_index)?;
        if let Some(rec) = &tail.recovery {
            self.recoveries
                .lock()
                .expect("recoveries lock")
                .push(rec.clone());
        }
        let mut writer = SegmentWriter::reopen(&last_path, tail.committed_len)
            .map_err(io(format!("reopen {}", last_path.display())))?;
        let size = tail.header.first_seq + tail.leaves.len() as u64;

        // Index catch-up (or rebuild when it claims more than the files hold).
        let mut indexed = index.keyed.indexed_size()?;
        if indexed > size {
            index.keyed.clear()?;
            index.dense = DenseIndex::open(&self.dense_dir(&spec.name), 0)?.0;
            indexed = 0;
        }
        let known = index.keyed.segments()?;
        let first_unsealed =
            (0..last_index).find(|n| !known.iter().any(|k| k.0 == *n && k.2.is_some()));
        if indexed < size || first_unsealed.is_some() {
            let containing = if indexed == 0 {
                0
            } else {
                known
                    .iter()
                    .filter(|k| k.1 <= indexed)
                    .map(|k| k.0)
                    .max()
                    .unwrap_or(0)
            };
            let start = first_unsealed.map_or(containing, |u| u.min(containing)) as usize;
            self.catch_up(spec, &index, &segments[start..], indexed, size)?;
        }
        Self::finish_relocations(spec, &index, &dir)?;
        index
            .keyed
            .add_segment(tail.header.segment, tail.header.first_seq)?;

        // A sealed last segment: open the next one.
        let (open, prev_seal) = match &tail.seal {
            Some(seal) => {
                let header = SegmentHeader {
                    segment: last_index + 1,
                    first_seq: seal.end_seq,
                    span_from: seal.span_to,
                    origin: spec.origin.clone(),
                };
                writer = SegmentWriter::create(&dir, &header)
                    .map_err(io(format!("create segment in {}", dir.display())))?;
                index.keyed.add_segment(header.segment, header.first_seq)?;
                segments.push((header.segment, writer.path().to_owned()));
                (
                    OpenSegment {
                        index: header.segment,
                        first_seq: header.first_seq,
                        span_from: header.span_from,
                        frontier: Vec::new(),
                        first_timestamp: None,
                    },
                    seal.hash(),
                )
            }
            None => {
                let mut seg_frontier = CompactRange::<Blake3>::new();
                for l in &tail.leaves {
                    seg_frontier.append(*l, |_, _| {});
                }
                let prev_seal = if last_index == 0 {
                    Hash::ZERO
                } else {
                    let seals = index.keyed.segments()?;
                    let text = seals
                        .iter()
                        .find(|s| s.0 == last_index - 1)
                        .and_then(|s| s.2.clone())
                        .ok_or_else(|| StoreError::Corrupt {
                            log: spec.name.clone(),
                            location: segments[segments.len() - 2].1.display().to_string(),
                            reason: "segment before the open one has no seal".into(),
                        })?;
                    parse_seal(&text)
                        .ok_or_else(|| StoreError::Index("stored seal does not parse".into()))?
                        .hash()
                };
                (
                    OpenSegment {
                        index: last_index,
                        first_seq: tail.header.first_seq,
                        span_from: tail.header.span_from,
                        frontier: seg_frontier.hashes().to_vec(),
                        first_timestamp: tail.first_ts,
                    },
                    prev_seal,
                )
            }
        };

        let frontier = CompactRange::<Blake3>::from_reader(&IndexReader(&index.dense), size)
            .map_err(|e| StoreError::Index(e.to_string()))?;
        let prev_leaf = if size == 0 {
            Hash::ZERO
        } else {
            index
                .dense
                .node(NodeId::leaf(size - 1))
                .map_err(|e| StoreError::Index(e.to_string()))?
        };
        let last_timestamp = match tail.last_ts {
            Some(ts) => ts,
            None if size == 0 => tail.header.span_from,
            None => {
                // The open segment is empty: the previous entry's time, or
                // the span start if later (spans never go back).
                let prev = index.dense.get(size - 1)?;
                prev.map(|e| e.timestamp)
                    .unwrap_or(open.span_from)
                    .max(open.span_from)
            }
        };
        let latest_checkpoint = index.keyed.latest_checkpoint()?.map(|(_, t)| t);
        let (postings, opened) = Postings::open(&self.postings_dir(&spec.name), size)?;
        Self::catch_up_postings(spec, &index, &postings, &dir, opened.covered, size)?;
        self.install(
            spec,
            dir,
            index,
            postings,
            writer,
            open.index,
            open.first_seq,
            size,
        );
        Ok(LogHead {
            size,
            prev_leaf,
            last_timestamp,
            frontier: frontier.hashes().to_vec(),
            segment: open,
            prev_seal,
            latest_checkpoint,
        })
    }

    fn logs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .logs
            .read()
            .expect("logs lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn append(&self, log: &str, batch: &Batch) -> Result<(), StoreError> {
        let synced = match self.write_unsynced(log, batch)? {
            Some(point) => point.sync(),
            None => Ok(()),
        };
        self.publish(log, batch, synced)
    }

    fn write_unsynced(&self, log: &str, batch: &Batch) -> Result<Option<SyncPoint>, StoreError> {
        let files = self.log(log)?;
        let mut st = files.state.lock().expect("log state lock");
        st.check_serving(log)?;
        let written = st.written();
        if batch.first_seq != written {
            return Err(StoreError::HeadMoved {
                log: log.to_owned(),
                expected: batch.first_seq,
                actual: written,
            });
        }
        let payload_bytes: usize = batch
            .entries
            .iter()
            .map(|e| e.payload.len() + e.encoding.len() + 128)
            .sum();
        let mut buf = std::mem::take(&mut st.frame);
        buf.clear();
        buf.reserve(payload_bytes + batch.checkpoint.len() + 64);
        let base = st.writer.len();
        let mut offsets = Vec::with_capacity(batch.entries.len());
        for e in &batch.entries {
            offsets.push(base + buf.len() as u64);
            let present = e.state == PayloadState::Present;
            encode_entry_record(
                &mut buf,
                &e.encoding,
                &e.leaf_hash,
                e.state,
                present.then_some(&e.salt),
                if present { &e.payload } else { &[] },
            );
        }
        encode_other_record(
            &mut buf,
            RecordKind::Checkpoint,
            batch.checkpoint.as_bytes(),
        );
        let written = st.writer.write(&buf);
        st.frame = buf;
        if let Err(e) = written {
            return Err(refuse_write(&mut st, "append to", e));
        }
        let segment = st.segment;
        st.unpublished.push_back(Unpublished {
            first_seq: batch.first_seq,
            segment,
            offsets,
            staged: None,
        });
        Ok(Some(SyncPoint::new(st.writer.sync_point())))
    }

    fn stage(&self, log: &str, batch: &Batch) {
        let Ok(files) = self.log(log) else {
            return;
        };
        let records = {
            let st = files.state.lock().expect("log state lock");
            match st
                .unpublished
                .iter()
                .find(|u| u.first_seq == batch.first_seq)
            {
                Some(u) if u.staged.is_none() && u.offsets.len() == batch.entries.len() => {
                    dense_records(batch, u)
                }
                _ => return,
            }
        };
        // No lock while the index files are written and the keys hashed:
        // the previous batch's `publish` goes on meanwhile. The records lie
        // beyond the published size: no reader looks there, and a batch
        // that never publishes is written over by the one that replaces
        // it (or cut when the index is opened).
        if files
            .index
            .dense
            .add(batch.first_seq, &records, &batch.nodes)
            .is_err()
        {
            return; // `publish` writes them again, and reports the error.
        }
        let postings = Postings::hash(batch.first_seq, entry_keys(batch));
        let mut st = files.state.lock().expect("log state lock");
        if let Some(u) = st
            .unpublished
            .iter_mut()
            .find(|u| u.first_seq == batch.first_seq)
        {
            u.staged = Some(postings);
        }
    }

    fn publish(&self, log: &str, batch: &Batch, synced: io::Result<()>) -> Result<(), StoreError> {
        let files = self.log(log)?;
        let mut st = files.state.lock().expect("log state lock");
        if let Err(e) = synced {
            return Err(refuse_write(&mut st, "sync of", e));
        }
        // A refusal after the write (a later batch's failed write or sync)
        // refuses this batch too: it shares the file's fate.
        st.check_serving(log)?;
        let oldest = st.unpublished.front().map(|u| u.first_seq);
        if oldest != Some(batch.first_seq) {
            return Err(StoreError::Index(format!(
                "publish of the batch at seq {} out of order (oldest unpublished: {oldest:?})",
                batch.first_seq
            )));
        }
        let unpublished = st.unpublished.pop_front().expect("checked");
        let n = batch.entries.len() as u64;
        let postings = match unpublished.staged {
            Some(postings) => postings,
            None => {
                // Dense records before the size moves: a reader that sees
                // the new size finds them.
                files
                    .index
                    .dense
                    .add(
                        batch.first_seq,
                        &dense_records(batch, &unpublished),
                        &batch.nodes,
                    )
                    .map_err(|e| st.refuse_index("index", e))?;
                Postings::hash(batch.first_seq, entry_keys(batch))
            }
        };
        files
            .postings
            .add_hashed(batch.first_seq, n, &postings)
            .map_err(|e| st.refuse_index("postings", e))?;
        // The checkpoint too, then the size the indexer may mark as indexed
        // once it has synced the files.
        let end = batch.first_seq + n;
        files
            .index
            .keyed
            .add_checkpoints([(end, batch.checkpoint.as_str())])
            .map_err(|e| st.refuse_index("checkpoint index", e))?;
        files.progress.0.lock().expect("progress lock").keyed_size = end;
        st.size += n;
        files.published.store(st.size, Ordering::Release);
        Ok(())
    }

    fn seal(&self, log: &str, seal: &Seal, signed: &str) -> Result<(), StoreError> {
        let files = self.log(log)?;
        let mut st = files.state.lock().expect("log state lock");
        st.check_serving(log)?;
        if seal.segment != st.segment
            || seal.first_seq != st.segment_first_seq
            || seal.end_seq != st.size
            || !st.unpublished.is_empty()
        {
            return Err(StoreError::Index(format!(
                "seal of segment {} [{}, {}) does not close the open segment {} [{}, {})",
                seal.segment,
                seal.first_seq,
                seal.end_seq,
                st.segment,
                st.segment_first_seq,
                st.size
            )));
        }
        let mut buf = Vec::new();
        encode_other_record(&mut buf, RecordKind::Seal, signed.as_bytes());
        if let Err(e) = st.writer.write_and_sync(&buf) {
            return Err(refuse_write(&mut st, "seal", e));
        }
        files.send_job(
            &mut st,
            IndexJob::Segment {
                index: seal.segment,
                first_seq: seal.first_seq,
                seal: Some(signed.to_owned()),
            },
        );
        let header = SegmentHeader {
            segment: seal.segment + 1,
            first_seq: seal.end_seq,
            span_from: seal.span_to,
            origin: seal.origin.clone(),
        };
        match SegmentWriter::create(&files.dir, &header) {
            Ok(w) => {
                st.writer = w;
                st.segment = header.segment;
                st.segment_first_seq = header.first_seq;
            }
            Err(e) => {
                st.refused = Some((
                    files.dir.display().to_string(),
                    format!("cannot create the next segment: {e}; restart to recover"),
                ));
                return Err(StoreError::Io {
                    context: "create next segment".into(),
                    source: e,
                });
            }
        }
        files.send_job(
            &mut st,
            IndexJob::Segment {
                index: header.segment,
                first_seq: header.first_seq,
                seal: None,
            },
        );
        Ok(())
    }

    fn entry(&self, log: &str, seq: u64) -> Result<Option<StoredEntry>, StoreError> {
        let files = self.log(log)?;
        let size = files.state.lock().expect("log state lock").size;
        if seq >= size {
            return Ok(None);
        }
        let result = {
            let _stable = files.relocating.read().expect("relocating lock");
            self.read_entry_with(log, &files.dir, &files.index, seq)
        };
        if let Err(StoreError::Corrupt {
            location, reason, ..
        }) = &result
        {
            let mut st = files.state.lock().expect("log state lock");
            if st.refused.is_none() {
                tracing::error!(
                    log,
                    location = %location,
                    reason = %reason,
                    "log {log} refused: corrupt record at {location}: {reason}; it serves \
                     nothing until an operator acts"
                );
                st.refused = Some((location.clone(), reason.clone()));
            }
        }
        result
    }

    fn seq_by_idempotency_key(&self, log: &str, key: &str) -> Result<Option<u64>, StoreError> {
        let files = self.log(log)?;
        let found = self.keyed_seqs(log, &files, KeyKind::Idempotency, key, 0, 1, |e| {
            e.idempotency_key == key
        })?;
        Ok(found.first().copied())
    }

    fn seqs_by_subject(
        &self,
        log: &str,
        subject: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let files = self.log(log)?;
        self.keyed_seqs(
            log,
            &files,
            KeyKind::Subject,
            subject,
            from_seq,
            limit,
            |e| e.subject == subject,
        )
    }

    fn seqs_by_actor(
        &self,
        log: &str,
        actor: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let files = self.log(log)?;
        self.keyed_seqs(log, &files, KeyKind::Actor, actor, from_seq, limit, |e| {
            e.actor == actor
        })
    }

    fn seq_range_by_time(
        &self,
        log: &str,
        since: i64,
        until: i64,
    ) -> Result<Range<u64>, StoreError> {
        let files = self.log(log)?;
        let size = files.state.lock().expect("log state lock").size;
        files.index.seq_range_by_time(since, until, size)
    }

    fn node(&self, log: &str, id: NodeId) -> Result<Hash, NodeReadError> {
        match self.log(log) {
            // Only nodes of the published tree: the nodes of a batch
            // staged ahead of its sync could still be replaced.
            Ok(f) if id.end_leaf() > f.published.load(Ordering::Acquire) => Err(NodeReadError {
                id,
                reason: "node not indexed".into(),
            }),
            Ok(f) => f.index.dense.node(id),
            Err(e) => Err(NodeReadError {
                id,
                reason: e.to_string(),
            }),
        }
    }

    fn checkpoint_at(&self, log: &str, size: u64) -> Result<Option<String>, StoreError> {
        let files = self.log(log)?;
        self.wait_keyed(&files)?;
        files.index.keyed.checkpoint_at(size)
    }

    fn checkpoints_after(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let files = self.log(log)?;
        self.wait_keyed(&files)?;
        files.index.keyed.checkpoints_after(after, limit)
    }

    fn stored_logs(&self) -> Result<Vec<LogSpec>, StoreError> {
        let dir = self.root.join("logs");
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(format!("list {}", dir.display()))(e)),
        };
        for e in entries {
            let e = e.map_err(io(format!("list {}", dir.display())))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_valid_log_name(&name) || !e.path().is_dir() {
                continue;
            }
            let segments =
                list_segments(&e.path()).map_err(io(format!("list {}", e.path().display())))?;
            let Some((_, first)) = segments.first() else {
                continue;
            };
            let mut reader =
                SegmentReader::open(first).map_err(io(format!("open {}", first.display())))?;
            match reader.next_record() {
                Ok(Ok(Some((_, Record::Header(h))))) => out.push(LogSpec {
                    name,
                    origin: h.origin,
                }),
                _ => {
                    return Err(StoreError::Corrupt {
                        log: name,
                        location: first.display().to_string(),
                        reason: "the first segment does not start with a header".into(),
                    })
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn health(&self, log: &str) -> super::LogHealth {
        let Ok(files) = self.log(log) else {
            return super::LogHealth::default();
        };
        let (size, refused) = {
            let st = files.state.lock().expect("log state lock");
            (st.size, st.refused.is_some())
        };
        let keyed = files.progress.0.lock().expect("progress lock").keyed_size;
        super::LogHealth {
            index_lag: Some(size.saturating_sub(keyed)),
            refused,
        }
    }

    fn segments(&self, log: &str) -> Result<Vec<SegmentInfo>, StoreError> {
        let files = self.log(log)?;
        self.wait_keyed(&files)?;
        let size = files.state.lock().expect("log state lock").size;
        files
            .index
            .keyed
            .segments()?
            .into_iter()
            .map(|(index, first_seq, seal)| {
                let end_seq = match &seal {
                    Some(s) => {
                        parse_seal(s)
                            .ok_or_else(|| {
                                StoreError::Index(format!("seal of segment {index} does not parse"))
                            })?
                            .end_seq
                    }
                    None => size,
                };
                Ok(SegmentInfo {
                    index,
                    first_seq,
                    end_seq,
                    seal,
                })
            })
            .collect()
    }

    fn remove_payloads(
        &self,
        log: &str,
        seqs: &[u64],
        state: PayloadState,
    ) -> Result<Removal, StoreError> {
        let files = self.log(log)?;
        let _one = files.rewriting.lock().expect("rewriting lock");
        let (open_first, size) = {
            let st = files.state.lock().expect("log state lock");
            st.check_serving(log)?;
            (st.segment_first_seq, st.size)
        };
        let mut by_segment: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
        for &seq in seqs {
            super::check_removable(seq, size, open_first)?;
            let at = files
                .index
                .dense
                .get(seq)?
                .ok_or_else(|| StoreError::Index(format!("no location for seq {seq}")))?;
            by_segment
                .entry(at.location.segment)
                .or_default()
                .insert(seq);
        }
        let mut total = Removal::default();
        for (seg, targets) in by_segment {
            total += self.rewrite_segment(log, &files, seg, &targets, state)?;
        }
        Ok(total)
    }
}

impl EmbeddedStore {
    /// Rewrites sealed segment `seg` without the payloads of `targets`.
    /// Steps (each a crash point): a `.relocate` marker is made durable; the
    /// rewrite is written and synced as `.seg.rewrite`; it is renamed over
    /// the segment; the dense locations are moved and synced; the marker
    /// goes. On open, a leftover `.seg.rewrite` is deleted (the original
    /// is intact) and a leftover marker has the segment's locations
    /// re-derived from the file, whichever version it is.
    fn rewrite_segment(
        &self,
        log: &str,
        files: &LogFiles,
        seg: u64,
        targets: &HashSet<u64>,
        state: PayloadState,
    ) -> Result<Removal, StoreError> {
        let path = files.dir.join(segment::segment_file_name(seg));
        let marker = relocate_marker(&files.dir, seg);
        let dir_io = io(format!("rewrite {}", path.display()));
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .and_then(|()| segment::sync_dir(&files.dir))
            .map_err(dir_io)?;
        super::failpoint("rewrite:marker");
        let rw = segment::rewrite_without_payloads(&path, state, |s| targets.contains(&s))
            .map_err(io(format!("rewrite {}", path.display())))?
            .map_err(|bad| Self::corrupt(log, &path, &bad))?;
        super::failpoint("rewrite:written");
        if rw.removed > 0 {
            let _w = files.relocating.write().expect("relocating lock");
            let moved = fs::rename(&rw.tmp, &path)
                .and_then(|()| segment::sync_dir(&files.dir))
                .map_err(io(format!("rename over {}", path.display())))
                .and_then(|()| {
                    super::failpoint("rewrite:renamed");
                    for (seq, offset) in &rw.offsets {
                        files.index.dense.set_location(
                            *seq,
                            Location {
                                segment: seg,
                                offset: *offset,
                            },
                        )?;
                    }
                    files.index.dense.sync()
                });
            if let Err(e) = moved {
                files.state.lock().expect("log state lock").refused = Some((
                    path.display().to_string(),
                    format!("payload removal failed midway: {e}; restart to recover"),
                ));
                return Err(e);
            }
            super::failpoint("rewrite:relocated");
        } else {
            fs::remove_file(&rw.tmp).map_err(io(format!("remove {}", rw.tmp.display())))?;
        }
        fs::remove_file(&marker)
            .and_then(|()| segment::sync_dir(&files.dir))
            .map_err(io(format!("remove {}", marker.display())))?;
        Ok(Removal {
            segments: u64::from(rw.removed > 0),
            entries: rw.removed,
            bytes: rw.old_len.saturating_sub(rw.new_len),
        })
    }

    /// Finishes relocations a crash interrupted: the dense locations of
    /// each marked segment are re-derived from the segment file.
    fn finish_relocations(spec: &LogSpec, index: &LogIndex, dir: &Path) -> Result<(), StoreError> {
        let ctx = || format!("list {}", dir.display());
        for de in fs::read_dir(dir).map_err(io(ctx()))? {
            let de = de.map_err(io(ctx()))?;
            let name = de.file_name().to_string_lossy().into_owned();
            let Some(seg) = name
                .strip_suffix(RELOCATE_SUFFIX)
                .and_then(segment::parse_segment_file_name)
            else {
                continue;
            };
            let path = dir.join(segment::segment_file_name(seg));
            let rctx = || format!("read {}", path.display());
            let mut r = SegmentReader::open(&path).map_err(io(rctx()))?;
            while let Some((off, rec)) = r
                .next_record()
                .map_err(io(rctx()))?
                .map_err(|bad| Self::corrupt(&spec.name, &path, &bad))?
            {
                if let Record::Entry(e) = rec {
                    let seq = Self::decode_at(&spec.name, &path, off, &e)?.seq;
                    index.dense.set_location(
                        seq,
                        Location {
                            segment: seg,
                            offset: off,
                        },
                    )?;
                }
            }
            index.dense.sync()?;
            fs::remove_file(de.path())
                .and_then(|()| segment::sync_dir(dir))
                .map_err(io(format!("remove {name}")))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &self,
        spec: &LogSpec,
        dir: PathBuf,
        index: LogIndex,
        postings: Postings,
        writer: SegmentWriter,
        segment: u64,
        segment_first_seq: u64,
        size: u64,
    ) {
        let index = Arc::new(index);
        let progress = Arc::new((
            Mutex::new(Progress {
                keyed_size: size,
                done: 0,
                failed: None,
            }),
            Condvar::new(),
        ));
        // Bounded: when sled falls behind, appends wait rather than memory grow.
        let (tx, rx) = mpsc::sync_channel(INDEX_QUEUE_JOBS);
        let thread = {
            let (index, progress) = (index.clone(), progress.clone());
            std::thread::Builder::new()
                .name(format!("index-{}", spec.name))
                .spawn(move || run_indexer(index, rx, progress))
                .ok()
        };
        let files = LogFiles {
            dir,
            index,
            state: Mutex::new(LogState {
                writer,
                segment,
                segment_first_seq,
                size,
                unpublished: Default::default(),
                refused: None,
                jobs_sent: 0,
                frame: Vec::new(),
            }),
            postings,
            progress,
            published: AtomicU64::new(size),
            relocating: RwLock::new(()),
            rewriting: Mutex::new(()),
            indexer: Mutex::new(Some(tx)),
            indexer_thread: Mutex::new(thread),
        };
        self.logs
            .write()
            .expect("logs lock")
            .insert(spec.name.clone(), Arc::new(files));
    }

    /// Re-adds postings of entries `[from, size)` from the segment files
    /// (the dense index, already caught up, says where `from` is).
    fn catch_up_postings(
        spec: &LogSpec,
        index: &LogIndex,
        postings: &Postings,
        dir: &Path,
        from: u64,
        size: u64,
    ) -> Result<(), StoreError> {
        if from >= size {
            return Ok(());
        }
        let Some(start) = index.dense.get(from)? else {
            return Err(StoreError::Index(format!(
                "postings catch-up: no location for seq {from}"
            )));
        };
        const CHUNK: usize = 1024;
        let mut owned: Vec<(String, String, String)> = Vec::with_capacity(CHUNK);
        let mut chunk_first = from;
        let flush = |owned: &mut Vec<(String, String, String)>, first: u64| {
            let keys = owned.iter().map(|(s, a, i)| EntryKeys {
                subject: s,
                actor: a,
                idempotency_key: i,
            });
            let r = postings.add(first, keys);
            owned.clear();
            r
        };
        let mut next = from;
        let mut seg = start.location.segment;
        let mut offset = start.location.offset;
        while next < size {
            let path = dir.join(segment::segment_file_name(seg));
            let ctx = || format!("read {}", path.display());
            let mut r = SegmentReader::open_at(&path, offset).map_err(io(ctx()))?;
            while next < size {
                let Some((off, rec)) = r
                    .next_record()
                    .map_err(io(ctx()))?
                    .map_err(|bad| Self::corrupt(&spec.name, &path, &bad))?
                else {
                    break;
                };
                let Record::Entry(e) = rec else { continue };
                let entry = Self::decode_at(&spec.name, &path, off, &e)?;
                if entry.seq != next {
                    return Err(StoreError::Corrupt {
                        log: spec.name.clone(),
                        location: format!("{}:{off}", path.display()),
                        reason: format!("expected seq {next}, found {}", entry.seq),
                    });
                }
                owned.push((entry.subject, entry.actor, entry.idempotency_key));
                next += 1;
                if owned.len() == CHUNK {
                    flush(&mut owned, chunk_first)?;
                    chunk_first = next;
                }
            }
            seg += 1;
            offset = 0;
        }
        flush(&mut owned, chunk_first)
    }

    /// Seqs (at least `from_seq`, at most `limit`, in order) whose entry
    /// has `key` of `kind`: the postings' candidates, each checked against
    /// the entry itself (posting hashes can collide).
    #[allow(clippy::too_many_arguments)]
    fn keyed_seqs(
        &self,
        log: &str,
        files: &LogFiles,
        kind: KeyKind,
        key: &str,
        from_seq: u64,
        limit: usize,
        matches: impl Fn(&crate::core::entry::Entry) -> bool,
    ) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut failed = None;
        files
            .postings
            .for_each_candidate(key_hash(kind, key), from_seq, |seq| {
                let read = {
                    let _stable = files.relocating.read().expect("relocating lock");
                    self.read_entry_with(log, &files.dir, &files.index, seq)
                };
                match read {
                    Ok(Some(stored)) if matches(&stored.entry) => out.push(seq),
                    Ok(_) => {}
                    Err(e) => {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn read_entry_with(
        &self,
        log: &str,
        dir: &Path,
        index: &LogIndex,
        seq: u64,
    ) -> Result<Option<StoredEntry>, StoreError> {
        let Some(DenseEntry {
            location: loc,
            leaf_hash: leaf,
            ..
        }) = index.dense.get(seq)?
        else {
            return Ok(None);
        };
        let path = dir.join(segment::segment_file_name(loc.segment));
        let rec =
            read_record_at(&path, loc.offset).map_err(io(format!("read {}", path.display())))?;
        let bad = |reason: &'static str| {
            Self::corrupt(
                log,
                &path,
                &BadBytes {
                    offset: loc.offset,
                    reason,
                },
            )
        };
        match rec {
            Ok(Record::Entry(e)) => {
                if e.leaf_hash != leaf {
                    return Err(bad("leaf hash differs from the index"));
                }
                let entry = e.entry().map_err(|_| bad("entry does not decode"))?;
                if entry.seq != seq {
                    return Err(bad("entry has another seq than the index says"));
                }
                Ok(Some(StoredEntry {
                    entry,
                    encoding: e.encoding,
                    leaf_hash: e.leaf_hash,
                    state: e.state,
                    salt: e.salt,
                    payload: e.payload,
                }))
            }
            Ok(_) => Err(bad("index points at a record that is not an entry")),
            Err(b) => Err(Self::corrupt(log, &path, &b)),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let logs = std::mem::take(&mut *self.logs.write().expect("logs lock"));
        for files in logs.values() {
            files.indexer.lock().expect("indexer lock").take();
        }
        for files in logs.values() {
            if let Some(t) = files.indexer_thread.lock().expect("indexer lock").take() {
                let _ = t.join();
            }
        }
        let _ = self.db.flush();
    }
}
