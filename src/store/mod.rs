//! Storage of logs: the [`Store`] trait the engine talks to, and its
//! embedded implementation (segment files + sled indexes).
//!
//! The trait is shaped for two implementations: the embedded store (one
//! process owns the data directory) and a PostgreSQL store (many processes
//! share one database). Appends are optimistic: a [`Batch`] names the seq it
//! starts at, and the store refuses it with [`StoreError::HeadMoved`] if the
//! log's durable size is not that seq, so no two writers can ever extend the
//! same chain from the same head.

pub mod embedded;
pub mod index;
pub mod postgres;
pub mod postings;
pub mod segment;

use std::io;
use std::ops::Range;

use crate::core::entry::{Entry, Salt};
use crate::core::hash::Hash;
use crate::core::merkle::{NodeId, NodeReadError};
use crate::core::seal::Seal;

pub use segment::PayloadState;

/// What the store must know to create or open a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// Log name (`orders`), unique in a store.
    pub name: String,
    /// Origin (`audit.example.com/orders`).
    pub origin: String,
}

/// The durable head of a log: everything the sequencer needs to extend it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// Number of durable entries.
    pub size: u64,
    /// Leaf hash of entry `size - 1`, [`Hash::ZERO`] when empty.
    pub prev_leaf: Hash,
    /// Timestamp of entry `size - 1`, or the open segment's span start.
    pub last_timestamp: i64,
    /// Frontier of the log tree at `size` (one hash per set bit of `size`).
    pub frontier: Vec<Hash>,
    /// The segment new entries go to.
    pub segment: OpenSegment,
    /// Hash of the last seal body, [`Hash::ZERO`] before the first seal.
    pub prev_seal: Hash,
    /// Latest signed checkpoint, if any entry was ever appended.
    pub latest_checkpoint: Option<String>,
}

/// The open (unsealed) segment of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSegment {
    /// Segment number.
    pub index: u64,
    /// First seq it holds.
    pub first_seq: u64,
    /// Start of its time span.
    pub span_from: i64,
    /// Frontier of the tree of the segment's own leaves.
    pub frontier: Vec<Hash>,
    /// Timestamp of its first entry, if it has one.
    pub first_timestamp: Option<i64>,
}

/// One sequenced entry, ready to be written.
#[derive(Debug, Clone)]
pub struct BatchEntry {
    /// Decoded fields (for the indexes).
    pub entry: Entry,
    /// Canonical encoding.
    pub encoding: Vec<u8>,
    /// Leaf hash of the encoding.
    pub leaf_hash: Hash,
    /// Payload salt (ignored unless `state` is present).
    pub salt: Salt,
    /// Payload (empty unless `state` is present).
    pub payload: Vec<u8>,
    /// [`PayloadState::Present`] for every new entry; a copy between stores
    /// (`auditlog copy`) also writes entries whose payload was removed.
    pub state: PayloadState,
}

/// A group of entries appended and made durable together, with the signed
/// checkpoint of the tree that ends with them.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Seq of the first entry: must equal the log's durable size.
    pub first_seq: u64,
    /// The entries, in seq order.
    pub entries: Vec<BatchEntry>,
    /// Perfect tree nodes (level >= 1) the entries completed.
    pub nodes: Vec<(NodeId, Hash)>,
    /// Signed checkpoint at `first_seq + entries.len()`.
    pub checkpoint: String,
}

/// An entry as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Decoded fields.
    pub entry: Entry,
    /// The canonical encoding as stored (what the leaf hash is over).
    pub encoding: Vec<u8>,
    /// Leaf hash.
    pub leaf_hash: Hash,
    /// Whether payload and salt are still there.
    pub state: PayloadState,
    /// Salt, when present.
    pub salt: Option<Salt>,
    /// Payload, empty unless present.
    pub payload: Vec<u8>,
}

/// A segment as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment number.
    pub index: u64,
    /// First seq.
    pub first_seq: u64,
    /// One past the last seq (for the open segment: the current size).
    pub end_seq: u64,
    /// Signed seal text, when sealed.
    pub seal: Option<String>,
}

/// See [`Store::health`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogHealth {
    /// Durable entries not yet in the derived index.
    pub index_lag: Option<u64>,
    /// The store refuses the log (corruption found).
    pub refused: bool,
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such log.
    #[error("unknown log {0:?}")]
    UnknownLog(String),
    /// The log's durable size is not where the batch starts.
    #[error("log {log}: head moved (batch starts at {expected}, log has {actual} entries)")]
    HeadMoved {
        /// Log name.
        log: String,
        /// Where the batch starts.
        expected: u64,
        /// Durable size.
        actual: u64,
    },
    /// The log's files are damaged; it is refused until an operator acts.
    #[error("log {log} is refused: corruption in {location}: {reason}")]
    Corrupt {
        /// Log name.
        log: String,
        /// File and offset.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The log was opened with another origin than the one stored.
    #[error("log {log}: stored origin is {stored:?}, configuration says {configured:?}")]
    OriginMismatch {
        /// Log name.
        log: String,
        /// Origin in the files.
        stored: String,
        /// Origin configured.
        configured: String,
    },
    /// A shared store refused a batch written without the head lock as a
    /// whole, keeping nothing of it: another process moved the log's head,
    /// or used one of its idempotency keys, meanwhile. Its requests may be
    /// planned again (under the lock).
    #[error("log {log}: {reason}")]
    Conflict {
        /// Log name.
        log: String,
        /// What conflicted.
        reason: String,
    },
    /// Index database failure.
    #[error("index: {0}")]
    Index(String),
    /// PostgreSQL failure (connection, query, migration).
    #[error("database: {0}")]
    Database(String),
    /// File system failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Index(e.to_string())
    }
}

/// The storage interface of the engine.
///
/// Implementations are shared between threads. Every method that returns
/// is durable (appends, seals) or consistent with what was durable at the
/// time of the call (reads).
pub trait Store: Send + Sync + 'static {
    /// Creates the log if it does not exist (its first segment starting at
    /// `now`), recovers it if it does, and returns its durable head.
    ///
    /// # Errors
    /// Corruption, origin mismatch, I/O.
    fn open_log(&self, spec: &LogSpec, now: i64) -> Result<LogHead, StoreError>;

    /// Names of the logs the store holds.
    fn logs(&self) -> Vec<String>;

    /// True when other processes may append to the same logs (a shared
    /// database): the engine then sequences each batch under
    /// [`Store::lock_head`].
    fn shared(&self) -> bool {
        false
    }

    /// The logs the store holds, with their origins, whether or not they
    /// were opened.
    ///
    /// # Errors
    /// I/O or database failure.
    fn stored_logs(&self) -> Result<Vec<LogSpec>, StoreError>;

    /// Up to `limit` stored checkpoints of sizes above `after`, by size.
    ///
    /// # Errors
    /// Index or database failure.
    fn checkpoints_after(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError>;

    /// For a shared store: the latest durable checkpoint and its size,
    /// whichever process signed it. `None` for a store only this process
    /// writes (the engine knows its own head).
    ///
    /// # Errors
    /// Unknown log, database failure.
    fn latest_checkpoint(&self, log: &str) -> Result<Option<(u64, String)>, StoreError> {
        let _ = log;
        Ok(None)
    }

    /// For a shared store: locks the log's head against every other
    /// process until the returned lock appends or seals (and releases), or
    /// is dropped; the head it holds is the durable one. The idempotency
    /// `keys` are looked up under the lock, in the same round trip (see
    /// [`HeadLock::keys`]). `None` for a store only this process writes
    /// (its head is the engine's own).
    ///
    /// # Errors
    /// Unknown log, database failure.
    fn lock_head(
        &self,
        log: &str,
        keys: &[&str],
    ) -> Result<Option<Box<dyn HeadLock + '_>>, StoreError> {
        let _ = (log, keys);
        Ok(None)
    }

    /// Writes a batch durably (entries, then its checkpoint) and indexes it.
    ///
    /// # Errors
    /// [`StoreError::HeadMoved`] if `batch.first_seq` is not the durable
    /// size; I/O; a refused log.
    fn append(&self, log: &str, batch: &Batch) -> Result<(), StoreError>;

    /// The first half of a pipelined append: writes `batch` after every
    /// batch written before it, without waiting for it to be durable, so
    /// that the next batch can be prepared while this one syncs.
    ///
    /// `None` when the store made the batch durable and visible already
    /// (the default: [`Store::append`]). Otherwise the caller runs the
    /// [`SyncPoint`] (on any thread; it covers every batch written before
    /// it too) and then calls [`Store::publish`] for each written batch, in
    /// the order written. Until then the batch is invisible to readers and
    /// is not acknowledged: a crash may keep it whole or drop it whole.
    ///
    /// # Errors
    /// As [`Store::append`]; `first_seq` must follow the last batch written.
    fn write_unsynced(&self, log: &str, batch: &Batch) -> Result<Option<SyncPoint>, StoreError> {
        self.append(log, batch).map(|()| None)
    }

    /// Batches written by [`Store::write_unsynced`] and not yet published
    /// before the engine waits to hand over more. Deep for a store whose
    /// sync covers every batch written before it (one `fdatasync` for
    /// many); 1 for a database that commits each batch on its own, where
    /// requests are better gathered into the next batch than sent as
    /// small ones queued behind the one committing.
    fn max_unpublished(&self) -> u64 {
        8
    }

    /// Work [`Store::publish`] would do for a batch written by
    /// [`Store::write_unsynced`], done ahead while the batch syncs, on
    /// another thread than the sync: nothing of it becomes visible to
    /// readers before `publish`. Best effort: `publish` does whatever
    /// `stage` did not (it was not called, or failed), and reports its
    /// errors. The engine calls it at most once per batch, before its
    /// `publish`; a call after the `publish`, or during it, changes no
    /// answer (the embedded store's tests hold it to this).
    fn stage(&self, log: &str, batch: &Batch) {
        let _ = (log, batch);
    }

    /// The second half of a pipelined append: makes the oldest batch
    /// written by [`Store::write_unsynced`] and not yet published visible,
    /// given the outcome of a sync point run after it was written. A failed
    /// sync refuses the log, as a failed [`Store::append`] does.
    ///
    /// # Errors
    /// The sync's error; `batch` is not the oldest unpublished one; index
    /// failures.
    fn publish(&self, log: &str, batch: &Batch, synced: io::Result<()>) -> Result<(), StoreError> {
        let _ = (batch, synced);
        Err(StoreError::Index(format!(
            "{log}: publish without a pipelined write"
        )))
    }

    /// Seals the open segment durably and opens the next one (whose span
    /// starts at `seal.span_to`).
    ///
    /// # Errors
    /// When the seal does not close the open segment, I/O.
    fn seal(&self, log: &str, seal: &Seal, signed: &str) -> Result<(), StoreError>;

    /// The entry at `seq`.
    ///
    /// # Errors
    /// I/O or corruption.
    fn entry(&self, log: &str, seq: u64) -> Result<Option<StoredEntry>, StoreError>;

    /// Seq of the entry appended with `key`.
    ///
    /// # Errors
    /// Index failure.
    fn seq_by_idempotency_key(&self, log: &str, key: &str) -> Result<Option<u64>, StoreError>;

    /// The seqs of the entries appended with any of `keys` (keys not used
    /// are absent from the answer).
    ///
    /// # Errors
    /// Index failure.
    fn seqs_by_idempotency_keys(
        &self,
        log: &str,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for k in keys {
            if let Some(seq) = self.seq_by_idempotency_key(log, k)? {
                out.insert((*k).to_owned(), seq);
            }
        }
        Ok(out)
    }

    /// Seqs of entries about `subject`, from `from_seq`, at most `limit`.
    ///
    /// # Errors
    /// Index failure.
    fn seqs_by_subject(
        &self,
        log: &str,
        subject: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// Seqs of entries by `actor`, from `from_seq`, at most `limit`.
    ///
    /// # Errors
    /// Index failure.
    fn seqs_by_actor(
        &self,
        log: &str,
        actor: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// The seqs whose timestamps lie in `[since, until)` (contiguous, since
    /// timestamps never decrease within a log).
    ///
    /// # Errors
    /// Index failure.
    fn seq_range_by_time(
        &self,
        log: &str,
        since: i64,
        until: i64,
    ) -> Result<Range<u64>, StoreError>;

    /// A perfect tree node of the log (level 0 = leaf hashes).
    ///
    /// # Errors
    /// When the node is not (yet) in the tree.
    fn node(&self, log: &str, id: NodeId) -> Result<Hash, NodeReadError>;

    /// The signed checkpoint stored for exactly `size`, if any.
    ///
    /// # Errors
    /// Index failure.
    fn checkpoint_at(&self, log: &str, size: u64) -> Result<Option<String>, StoreError>;

    /// The segments of a log, oldest first, with their seals.
    ///
    /// # Errors
    /// Index failure.
    fn segments(&self, log: &str) -> Result<Vec<SegmentInfo>, StoreError>;

    /// The state of a log's derived data, for metrics: durable entries the
    /// keyed index has not caught up with (`None`: the store keeps no
    /// separate index), and whether the store refuses the log.
    fn health(&self, _log: &str) -> LogHealth {
        LogHealth::default()
    }

    /// Physically removes the payloads and salts of `seqs` (entries of
    /// sealed segments), leaving them in `state` (erased or expired) with
    /// their encoding, leaf hash and commitment: every proof still holds.
    /// Entries whose payload is already gone are left as they are. Atomic
    /// per segment: after a crash, each segment is either rewritten or not.
    ///
    /// # Errors
    /// A seq in the open segment or beyond the log, corruption, I/O.
    fn remove_payloads(
        &self,
        log: &str,
        seqs: &[u64],
        state: PayloadState,
    ) -> Result<Removal, StoreError>;
}

/// Makes durable what a store wrote before it was made (see
/// [`Store::write_unsynced`]); run on any thread, it does not stop the
/// store writing the next batch meanwhile.
pub struct SyncPoint(Box<dyn FnOnce() -> io::Result<()> + Send>);

impl SyncPoint {
    /// A sync point that runs `sync`.
    pub fn new(sync: impl FnOnce() -> io::Result<()> + Send + 'static) -> SyncPoint {
        SyncPoint(Box::new(sync))
    }

    /// Makes the writes before it durable.
    ///
    /// # Errors
    /// The sync's I/O error.
    pub fn sync(self) -> io::Result<()> {
        (self.0)()
    }
}

/// A log's head, locked in a shared store (see [`Store::lock_head`]).
pub trait HeadLock: Send {
    /// The durable head, as read under the lock.
    fn head(&self) -> &LogHead;

    /// Each idempotency key asked for when the lock was taken, with the
    /// seq of the entry that used it (`None`: unused), as
    /// [`Store::seqs_by_idempotency_keys`] answers once the lock is held.
    fn keys(&self) -> &std::collections::HashMap<String, Option<u64>>;

    /// Writes `batch` (which must start at the head) durably and releases
    /// the lock.
    ///
    /// # Errors
    /// As [`Store::append`].
    fn append(self: Box<Self>, batch: &Batch) -> Result<(), StoreError>;

    /// Writes a seal of the open segment durably and releases the lock.
    ///
    /// # Errors
    /// As [`Store::seal`].
    fn seal(self: Box<Self>, seal: &Seal, signed: &str) -> Result<(), StoreError>;
}

/// Checks that `seq` may lose its payload: inside a log of `size`
/// entries and before the open segment (which starts at `open_first`).
///
/// # Errors
/// [`StoreError::Index`] saying which rule refused it.
pub(crate) fn check_removable(seq: u64, size: u64, open_first: u64) -> Result<(), StoreError> {
    if seq >= size {
        return Err(StoreError::Index(format!(
            "seq {seq} is beyond the log ({size} entries)"
        )));
    }
    if seq >= open_first {
        return Err(StoreError::Index(format!(
            "seq {seq} is in the open segment; seal it first"
        )));
    }
    Ok(())
}

/// Crash-test hook: when `AUDITLOG_FAILPOINT` names this step, the process
/// aborts here (as a power cut would stop it). Used by the tests that kill
/// a store at every step of a multi-step change.
pub(crate) fn failpoint(step: &str) {
    if std::env::var("AUDITLOG_FAILPOINT").is_ok_and(|v| v == step) {
        eprintln!("auditlog: failpoint {step}: aborting");
        std::process::abort();
    }
}

/// What [`Store::remove_payloads`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removal {
    /// Segments rewritten.
    pub segments: u64,
    /// Entries whose payload and salt were removed.
    pub entries: u64,
    /// Bytes reclaimed on disk.
    pub bytes: u64,
}

impl std::ops::AddAssign for Removal {
    fn add_assign(&mut self, o: Removal) {
        self.segments += o.segments;
        self.entries += o.entries;
        self.bytes += o.bytes;
    }
}

/// A [`crate::core::merkle::NodeReader`] over one log of a store.
pub struct LogNodes<'a, S: ?Sized> {
    /// The store.
    pub store: &'a S,
    /// The log.
    pub log: &'a str,
}

impl<S: Store + ?Sized> crate::core::merkle::NodeReader for LogNodes<'_, S> {
    fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
        self.store.node(self.log, id)
    }
}
