//! The engine: one sequencer thread per log doing group commit over a
//! [`Store`], and the read operations that answer with proofs.
//!
//! ```text
//!  append() ──prepare (validate, salt, commitment) on the caller's thread──┐
//!                                                                          ▼
//!  log thread:  gather every queued request ─▶ idempotency ─▶ Sequencer::sequence
//!               ─▶ sign checkpoint ─▶ store.write_unsynced ─▶ Sequencer::commit
//!               ─▶ hand over to the syncer ─▶ store.stage, receipts' proofs
//!               ─▶ next batch
//!  syncer:      one fdatasync for every batch handed over ─▶ store.publish
//!               ─▶ reply to each caller              (see [`pipeline`])
//! ```
//!
//! On a shared store (PostgreSQL) there is no pipeline: the log thread
//! writes each batch durably under the log's head lock and replies itself.
//!
//! Invariants:
//! - A reply is sent only after the batch is durable and published.
//! - A request is all or nothing: it is validated whole before it is queued,
//!   and an idempotency conflict fails the whole request.
//! - The state of a log thread (its [`Sequencer`]) moves past a batch only
//!   once the store wrote it; when a write or a sync fails, every request of
//!   that batch and of the batches behind it fails, and the state goes back
//!   to the last durable batch.
//! - An idempotency key of a batch in flight (written, not yet published,
//!   so not yet in the store's index) is never planned against the store:
//!   a request reusing it waits for that batch.
//! - Seals and answers of only duplicates wait for every batch in flight.
//! - Readers see a log's size and checkpoint only after the nodes and
//!   entries behind them are durable and indexed.

pub mod admin;
pub mod input;
mod pipeline;
pub mod sequencer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::core::entry::commit_payload;
use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::{self, TreeError};
use crate::core::note::SignerKey;
use crate::core::seal::{Seal, SealReason};
use crate::store::{
    Batch, HeadLock, LogHead, LogNodes, LogSpec, Store, StoreError, StoredEntry, SyncPoint,
};

use input::{prepare, AppendError, EntryInput, Limits, PreparedEntry};
use sequencer::Sequencer;

/// Per-log configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Name (`orders`).
    pub name: String,
    /// Origin (`audit.example.com/orders`).
    pub origin: String,
    /// Seal the open segment once it holds this many entries.
    pub seal_max_entries: u64,
    /// Seal the open segment this long after its first entry.
    pub seal_after: Option<Duration>,
    /// How long payloads are kept after a segment is sealed (`None`: forever).
    pub retention: Option<Duration>,
    /// Seal at every multiple of this duration of Unix time, with or without
    /// entries (`None`: no windows).
    pub retention_window: Option<Duration>,
    /// Whether entries may be erased on request.
    pub erasable: bool,
}

impl LogConfig {
    /// The server's own log of its administration (holds, erasures,
    /// expiries, seals): kept forever, never erased.
    pub fn system(origin: &str) -> LogConfig {
        Self::system_named(admin::SYSTEM_LOG, origin)
    }

    /// One of the server's own logs (`_system`, `_access`): kept forever,
    /// never erased.
    pub fn system_named(name: &str, origin: &str) -> LogConfig {
        LogConfig {
            erasable: false,
            ..LogConfig::new(name, origin)
        }
    }

    /// A log with default policy: seal at 100,000 entries or after an hour,
    /// keep forever.
    pub fn new(name: &str, origin: &str) -> LogConfig {
        LogConfig {
            name: name.to_owned(),
            origin: origin.to_owned(),
            seal_max_entries: 100_000,
            seal_after: Some(Duration::from_secs(3600)),
            retention: None,
            retention_window: None,
            erasable: true,
        }
    }
}

/// The source of time, injected so that tests can move it at will.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in nanoseconds.
    fn now(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

/// Proof that an entry is in a log, handed to the appender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Position.
    pub seq: u64,
    /// Leaf hash.
    pub leaf_hash: Hash,
    /// Server timestamp.
    pub timestamp_unix_nanos: i64,
    /// True when the idempotency key was already used: nothing was appended.
    pub duplicate: bool,
    /// Inclusion proof against the outcome's checkpoint.
    pub inclusion_proof: Vec<Hash>,
}

/// Result of an append: one receipt per entry and the signed checkpoint
/// their proofs are against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// One per entry, in request order.
    pub receipts: Vec<Receipt>,
    /// Signed checkpoint (note text).
    pub checkpoint: String,
    /// Its tree size.
    pub tree_size: u64,
}

/// A sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The seal.
    pub seal: Seal,
    /// Its signed note.
    pub signed: String,
}

/// Errors of read operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No such log.
    #[error("unknown log {0:?}")]
    UnknownLog(String),
    /// Nothing at that position or size.
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be answered as asked.
    #[error("{0}")]
    Invalid(String),
    /// The store failed or refused the log.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A tree query failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

enum Command {
    Append {
        entries: Vec<PreparedEntry>,
        reply: Reply,
    },
    Seal {
        reason: SealReason,
        reply: oneshot::Sender<Result<Option<Sealed>, AppendError>>,
    },
    /// Wakes the log thread (which first seals every window that ended).
    Tick { reply: oneshot::Sender<()> },
}

#[derive(Debug, Clone, Default)]
struct LogView {
    size: u64,
    checkpoint: Option<String>,
}

struct LogRuntime {
    config: LogConfig,
    metrics: Arc<crate::metrics::LogMetrics>,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    view: Arc<RwLock<LogView>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The running engine of a set of logs over one store.
pub struct Engine {
    store: Arc<dyn Store>,
    limits: Limits,
    logs: HashMap<String, LogRuntime>,
    clock: Arc<dyn Clock>,
    admin: admin::AdminState,
    signer: SignerSlot,
}

/// The key every worker signs with; replaced whole by a key rotation.
pub(crate) type SignerSlot = Arc<RwLock<Arc<SignerKey>>>;

/// Entries at which a group commit stops taking requests (it may pass it by
/// the last request's entries). Bigger is not better:
/// with many requests queued (two streams of 256-entry requests), batches
/// of up to 8,192 entries wrote 10 MB at a time, and the server spent 14-19
/// us of CPU per entry against 11-13 us at 1,024 (the batch's buffers no
/// longer stay in cache), for 0.55-0.75x the throughput and 2-5x the p50
/// latency (2026-12-03, alternated runs).
pub const MAX_BATCH_ENTRIES: usize = 1024;
/// Batches from this size build their receipts' proofs while the store
/// writes and syncs.
const OVERLAP_PROOFS_FROM: usize = 32;
/// Payload bytes at which a group commit stops taking requests (it may pass
/// it by the last request's), for the same reason.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

impl Engine {
    /// Opens every configured log (recovering it) and starts its thread.
    ///
    /// # Errors
    /// When a log cannot be opened: corruption, origin mismatch, I/O.
    pub fn start(
        store: Arc<dyn Store>,
        signer: Arc<SignerKey>,
        configs: Vec<LogConfig>,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, StoreError> {
        let signer: SignerSlot = Arc::new(RwLock::new(signer));
        let mut configs = configs;
        for own in [admin::ACCESS_LOG, admin::SYSTEM_LOG] {
            if !configs.iter().any(|c| c.name == own) {
                let origin = admin::own_origin(&configs, own);
                configs.insert(0, LogConfig::system_named(own, &origin));
            }
        }
        // The system log first: the others send it their seals.
        configs.sort_by_key(|c| c.name != admin::SYSTEM_LOG);
        let mut logs = HashMap::new();
        let mut system_tx: Option<(mpsc::Sender<Command>, Arc<crate::metrics::LogMetrics>)> = None;
        for config in configs {
            let spec = LogSpec {
                name: config.name.clone(),
                origin: config.origin.clone(),
            };
            let head = store.open_log(&spec, clock.now())?;
            let view = Arc::new(RwLock::new(LogView {
                size: head.size,
                checkpoint: head.latest_checkpoint.clone(),
            }));
            let (tx, rx) = mpsc::channel();
            let metrics = crate::metrics::global().log(&config.name);
            let is_system = config.name == admin::SYSTEM_LOG;
            if is_system {
                system_tx = Some((tx.clone(), metrics.clone()));
            }
            let mut worker = Worker {
                sequencer: Sequencer::from_head(&config.origin, &head),
                store: store.clone(),
                signer: signer.clone(),
                clock: clock.clone(),
                config: config.clone(),
                view: view.clone(),
                checkpoint: head.latest_checkpoint,
                timer_retry: None,
                system: if is_system {
                    None
                } else {
                    system_tx
                        .clone()
                        .map(|(tx, m)| (tx, limits.at_least_default(), m))
                },
                metrics: metrics.clone(),
                failures: FailureLog::default(),
                syncer: None,
                in_flight: VecDeque::new(),
                key_hasher: std::hash::RandomState::new(),
                quiet: 0,
                retry: Vec::new(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("seq-{}", config.name))
                .spawn(move || worker.run(rx))
                .map_err(|e| StoreError::Io {
                    context: "spawn sequencer thread".into(),
                    source: e,
                })?;
            logs.insert(
                config.name.clone(),
                LogRuntime {
                    config,
                    metrics,
                    tx: Mutex::new(Some(tx)),
                    view,
                    thread: Mutex::new(Some(thread)),
                },
            );
        }
        let engine = Engine {
            store,
            limits,
            logs,
            clock,
            admin: admin::AdminState::default(),
            signer,
        };
        engine.load_admin_state()?;
        Ok(engine)
    }

    /// Now, by the engine's clock (Unix nanoseconds).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The store under the engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Limits applied to appends.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Configured logs, sorted by name.
    pub fn logs(&self) -> Vec<&LogConfig> {
        let mut v: Vec<&LogConfig> = self.logs.values().map(|l| &l.config).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Configuration of a log.
    pub fn log_config(&self, log: &str) -> Option<&LogConfig> {
        self.logs.get(log).map(|l| &l.config)
    }

    fn send(&self, log: &str, cmd: Command) -> Result<(), AppendError> {
        let rt = self
            .logs
            .get(log)
            .ok_or_else(|| AppendError::UnknownLog(log.to_owned()))?;
        let tx = rt.tx.lock().expect("tx lock");
        tx.as_ref()
            .ok_or_else(|| AppendError::Unavailable("shutting down".into()))?
            .send(cmd)
            .map_err(|_| AppendError::Unavailable("sequencer stopped".into()))
    }

    /// Validates and queues an append; the receiver yields once it is
    /// durable (or failed). Validation errors return at once.
    ///
    /// # Errors
    /// Invalid entries, limits, unknown log.
    pub fn submit(
        &self,
        log: &str,
        entries: Vec<EntryInput>,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, AppendError>>, AppendError> {
        let arrived = std::time::Instant::now();
        let Some(rt) = self.logs.get(log) else {
            return Err(AppendError::UnknownLog(log.to_owned()));
        };
        // One system call for every salt of the request.
        let mut pool = vec![0u8; 32 * entries.len()];
        crate::keys::fill_random(&mut pool).map_err(|e| AppendError::Unavailable(e.to_string()))?;
        let mut salts = pool.chunks_exact(32);
        // The server's own logs are held to at least the default limits.
        let own;
        let limits = if log.starts_with('_') {
            own = self.limits.at_least_default();
            &own
        } else {
            &self.limits
        };
        let prepared = prepare(limits, entries, |salt| {
            // Invariant: prepare draws exactly one salt per entry.
            salt.copy_from_slice(salts.next().expect("one salt per entry"));
        })
        .inspect_err(|e| rt.metrics.refused(e))?;
        let (reply, rx) = Reply::new(rt.metrics.clone(), arrived);
        self.send(
            log,
            Command::Append {
                entries: prepared,
                reply,
            },
        )?;
        Ok(rx)
    }

    /// Appends and waits (blocking the thread) until durable.
    ///
    /// # Errors
    /// See [`AppendError`].
    pub fn append_blocking(
        &self,
        log: &str,
        entries: Vec<EntryInput>,
    ) -> Result<AppendOutcome, AppendError> {
        self.submit(log, entries)?
            .blocking_recv()
            .map_err(|_| AppendError::Unavailable("sequencer stopped".into()))?
    }

    /// Appends and awaits durability.
    ///
    /// # Errors
    /// See [`AppendError`].
    pub async fn append(
        &self,
        log: &str,
        entries: Vec<EntryInput>,
    ) -> Result<AppendOutcome, AppendError> {
        self.submit(log, entries)?
            .await
            .map_err(|_| AppendError::Unavailable("sequencer stopped".into()))?
    }

    /// Seals the open segment of a log now (even if empty); returns the
    /// receiver of the seal.
    ///
    /// # Errors
    /// Unknown log or stopped engine.
    pub fn submit_seal(
        &self,
        log: &str,
        reason: SealReason,
    ) -> Result<oneshot::Receiver<Result<Option<Sealed>, AppendError>>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(log, Command::Seal { reason, reply })?;
        Ok(rx)
    }

    /// Seals and waits (blocking).
    ///
    /// # Errors
    /// See [`AppendError`].
    pub fn seal_blocking(
        &self,
        log: &str,
        reason: SealReason,
    ) -> Result<Option<Sealed>, AppendError> {
        self.submit_seal(log, reason)?
            .blocking_recv()
            .map_err(|_| AppendError::Unavailable("sequencer stopped".into()))?
    }

    /// Has the log's thread seal every retention window that ended by now
    /// (its timer does it by itself; this is for callers that moved a test
    /// clock, or need it done before they go on), and waits.
    ///
    /// # Errors
    /// Unknown log, stopped engine.
    pub fn close_windows_blocking(&self, log: &str) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.send(log, Command::Tick { reply })?;
        rx.blocking_recv()
            .map_err(|_| AppendError::Unavailable("sequencer stopped".into()))
    }

    /// The size this process last made durable for `log` (0 for an
    /// unknown log); cheap, for metrics.
    pub fn tree_size(&self, log: &str) -> u64 {
        self.logs
            .get(log)
            .map_or(0, |rt| rt.view.read().expect("view lock").size)
    }

    fn view(&self, log: &str) -> Result<LogView, ReadError> {
        let own = self
            .logs
            .get(log)
            .ok_or_else(|| ReadError::UnknownLog(log.to_owned()))?
            .view
            .read()
            .expect("view lock")
            .clone();
        // On a shared store other processes append too: the latest durable
        // checkpoint is the store's, not this process's last one.
        if self.store.shared() {
            if let Some((size, checkpoint)) = self.store.latest_checkpoint(log)? {
                if size >= own.size {
                    return Ok(LogView {
                        size,
                        checkpoint: Some(checkpoint),
                    });
                }
            }
        }
        Ok(own)
    }

    /// Latest signed checkpoint and its size (`None` before the first append).
    ///
    /// # Errors
    /// Unknown log.
    pub fn checkpoint(&self, log: &str) -> Result<Option<(u64, String)>, ReadError> {
        let v = self.view(log)?;
        Ok(v.checkpoint.map(|c| (v.size, c)))
    }

    /// The signed checkpoint of exactly `size` (0: the latest).
    fn checkpoint_for(&self, log: &str, size: u64) -> Result<(u64, String), ReadError> {
        let v = self.view(log)?;
        let size = if size == 0 { v.size } else { size };
        if size > v.size {
            return Err(ReadError::NotFound(format!(
                "tree size {size} is beyond the log's {} entries",
                v.size
            )));
        }
        if size == 0 {
            return Err(ReadError::NotFound("the log is empty".into()));
        }
        let cp = self.store.checkpoint_at(log, size)?.ok_or_else(|| {
            ReadError::NotFound(format!("no checkpoint was signed at tree size {size}"))
        })?;
        Ok((size, cp))
    }

    /// An entry with its inclusion proof against the checkpoint at
    /// `tree_size` (0: the latest).
    ///
    /// # Errors
    /// Unknown log, no such entry or checkpoint, store failure.
    pub fn entry(
        &self,
        log: &str,
        seq: u64,
        tree_size: u64,
    ) -> Result<(StoredEntry, Vec<Hash>, String), ReadError> {
        let (size, cp) = self.checkpoint_for(log, tree_size)?;
        if seq >= size {
            return Err(ReadError::NotFound(format!(
                "seq {seq} is not in the tree of size {size}"
            )));
        }
        let entry = self
            .store
            .entry(log, seq)?
            .ok_or_else(|| ReadError::NotFound(format!("seq {seq} not found")))?;
        let proof = merkle::inclusion_proof::<Blake3>(
            &LogNodes {
                store: self.store.as_ref(),
                log,
            },
            seq,
            size,
        )?;
        Ok((entry, proof, cp))
    }

    /// Inclusion proof of `seq` at `size` (no checkpoint needed).
    ///
    /// # Errors
    /// Tree errors.
    pub fn inclusion_proof(&self, log: &str, seq: u64, size: u64) -> Result<Vec<Hash>, ReadError> {
        Ok(merkle::inclusion_proof::<Blake3>(
            &LogNodes {
                store: self.store.as_ref(),
                log,
            },
            seq,
            size,
        )?)
    }

    /// Consistency proof from `from_size` to `to_size` (0: the latest), with
    /// the signed checkpoint of `to_size`.
    ///
    /// # Errors
    /// Unknown log, sizes out of range, no checkpoint at `to_size`.
    pub fn consistency(
        &self,
        log: &str,
        from_size: u64,
        to_size: u64,
    ) -> Result<(Vec<Hash>, String, u64), ReadError> {
        let (to, cp) = self.checkpoint_for(log, to_size)?;
        if from_size == 0 || from_size > to {
            return Err(ReadError::Invalid(format!(
                "from_size must be between 1 and {to}, got {from_size}"
            )));
        }
        let proof = merkle::consistency_proof::<Blake3>(
            &LogNodes {
                store: self.store.as_ref(),
                log,
            },
            from_size,
            to,
        )?;
        Ok((proof, cp, to))
    }

    /// Writes an evidence bundle (FORMAT.md §9) of the entries `query`
    /// selects, against the latest checkpoint, with the seals that cover
    /// them and, when `since` (a signed checkpoint) is given, the proof that
    /// it is a prefix of the bundle's checkpoint.
    ///
    /// # Errors
    /// Unknown or empty log, a `since` checkpoint beyond the log, store
    /// failures, write failures.
    pub fn export(
        &self,
        log: &str,
        query: crate::bundle::Query,
        since: Option<&str>,
        out: impl std::io::Write,
    ) -> Result<(), ReadError> {
        use crate::bundle::{BundleEntry, BundleWriter, Query};
        const CHUNK: usize = 1024;
        let config = self
            .log_config(log)
            .ok_or_else(|| ReadError::UnknownLog(log.to_owned()))?
            .clone();
        let (size, checkpoint) = self
            .checkpoint(log)?
            .ok_or_else(|| ReadError::NotFound("the log is empty".into()))?;
        let seqs: Vec<u64> = match &query {
            Query::SeqRange { from_seq, to_seq } => (*from_seq..(*to_seq).min(size)).collect(),
            Query::TimeRange {
                since_unix_nanos,
                until_unix_nanos,
            } => {
                let r = self
                    .store
                    .seq_range_by_time(log, *since_unix_nanos, *until_unix_nanos)?;
                (r.start..r.end.min(size)).collect()
            }
            Query::Subject { subject } => self
                .store
                .seqs_by_subject(log, subject, 0, usize::MAX)?
                .into_iter()
                .filter(|s| *s < size)
                .collect(),
        };
        let io = |e: std::io::Error| ReadError::Invalid(format!("writing the bundle: {e}"));
        let nodes = LogNodes {
            store: self.store.as_ref(),
            log,
        };
        // The proof from `since` first, so that a checkpoint this log does
        // not extend is refused before anything is written.
        let since_proof = match since {
            None => None,
            Some(old) => {
                let (text, _) = crate::core::note::parse(old)
                    .map_err(|e| ReadError::Invalid(format!("since checkpoint: {e}")))?;
                let old_cp = crate::core::checkpoint::Checkpoint::from_text(&text)
                    .map_err(|e| ReadError::Invalid(format!("since checkpoint: {e}")))?;
                if old_cp.origin != config.origin {
                    return Err(ReadError::Invalid(format!(
                        "since checkpoint is for {:?}, not this log",
                        old_cp.origin
                    )));
                }
                if old_cp.size == 0 || old_cp.size > size {
                    return Err(ReadError::Invalid(format!(
                        "since checkpoint has size {}, the log has {size} entries",
                        old_cp.size
                    )));
                }
                if merkle::root_at::<Blake3>(&nodes, old_cp.size)? != old_cp.root {
                    return Err(ReadError::Invalid(format!(
                        "since checkpoint: this log's tree at size {} has another root: the \
                         checkpoint is not of this log's history",
                        old_cp.size
                    )));
                }
                let proof = merkle::consistency_proof::<Blake3>(&nodes, old_cp.size, size)?;
                Some((old, proof))
            }
        };
        let mut w = BundleWriter::new(
            out,
            log,
            &config.origin,
            query,
            &checkpoint,
            &self.key_transitions(),
        )
        .map_err(io)?;
        for chunk in seqs.chunks(CHUNK) {
            let proofs = merkle::inclusion_proofs::<Blake3>(&nodes, chunk.iter().copied(), size)?;
            for (seq, proof) in chunk.iter().zip(proofs) {
                let e = self
                    .store
                    .entry(log, *seq)?
                    .ok_or_else(|| ReadError::NotFound(format!("seq {seq} not found")))?;
                w.entry(&BundleEntry {
                    // The bytes the store checked against the leaf hash: no
                    // re-encoding.
                    encoding: e.encoding,
                    state: match e.state {
                        crate::store::PayloadState::Present => "present",
                        crate::store::PayloadState::Erased => "erased",
                        crate::store::PayloadState::Expired => "expired",
                    },
                    salt: e.salt,
                    payload: e.payload,
                    proof,
                })
                .map_err(io)?;
            }
        }
        // The seals of every segment the entries fall in.
        for seg in self.store.segments(log)? {
            let Some(seal) = seg.seal else { continue };
            let touched = seqs
                .binary_search(&seg.first_seq)
                .map_or_else(|i| seqs.get(i).is_some_and(|s| *s < seg.end_seq), |_| true);
            if !touched || seg.end_seq > size {
                continue;
            }
            let proof = if seg.end_seq == 0 || seg.end_seq == size {
                Vec::new()
            } else {
                merkle::consistency_proof::<Blake3>(&nodes, seg.end_seq, size)?
            };
            w.seal(&seal, &proof).map_err(io)?;
        }
        if let Some((old, proof)) = since_proof {
            w.since(old, &proof).map_err(io)?;
        }
        w.finish().map_err(io)?;
        Ok(())
    }

    /// Stops every log thread after it has answered what was queued.
    pub fn shutdown(&self) {
        for rt in self.logs.values() {
            rt.tx.lock().expect("tx lock").take();
        }
        for rt in self.logs.values() {
            if let Some(t) = rt.thread.lock().expect("thread lock").take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a request's answer goes; answering it also counts it and times
/// it from its arrival (`auditlog_append_latency_seconds`).
struct Reply {
    tx: oneshot::Sender<Result<AppendOutcome, AppendError>>,
    queued: std::time::Instant,
    metrics: Arc<crate::metrics::LogMetrics>,
}

impl Reply {
    /// A reply for a request that arrived at `queued`.
    fn new(
        metrics: Arc<crate::metrics::LogMetrics>,
        queued: std::time::Instant,
    ) -> (Reply, oneshot::Receiver<Result<AppendOutcome, AppendError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Reply {
                tx,
                queued,
                metrics,
            },
            rx,
        )
    }

    fn send(
        self,
        r: Result<AppendOutcome, AppendError>,
    ) -> Result<(), Result<AppendOutcome, AppendError>> {
        self.metrics.answered(self.queued, &r);
        self.tx.send(r)
    }
}
type Request = (Vec<PreparedEntry>, Reply);

/// The idempotency keys `entries` use, in order, with repeats.
fn keys_of<'a>(entries: impl Iterator<Item = &'a PreparedEntry>) -> impl Iterator<Item = &'a str> {
    entries
        .map(|e| e.input.idempotency_key.as_str())
        .filter(|k| !k.is_empty())
}

/// The idempotency keys the requests use (with repeats).
fn request_keys(requests: &[Request]) -> Vec<&str> {
    keys_of(requests.iter().flat_map(|(entries, _)| entries.iter())).collect()
}

/// The idempotency keys the appends among `cmds` use (with repeats).
fn command_keys(cmds: &[Command]) -> Vec<&str> {
    keys_of(cmds.iter().flat_map(|c| match c {
        Command::Append { entries, .. } => entries.as_slice(),
        _ => &[],
    }))
    .collect()
}

/// What a group commit has taken so far, first command included, against
/// its bounds ([`MAX_BATCH_ENTRIES`], [`MAX_BATCH_BYTES`]): it takes queued
/// commands until it reaches one.
#[derive(Default)]
struct BatchRoom {
    entries: usize,
    bytes: usize,
}

impl BatchRoom {
    /// Takes `cmd` into `cmds`, counting what it holds.
    fn push(&mut self, cmd: Command, cmds: &mut Vec<Command>) {
        if let Command::Append { entries, .. } = &cmd {
            self.entries += entries.len();
            self.bytes += entries.iter().map(|e| e.input.payload.len()).sum::<usize>();
        }
        cmds.push(cmd);
    }

    /// Moves the commands queued now into `cmds`, while there is room.
    fn take_queued(&mut self, rx: &mpsc::Receiver<Command>, cmds: &mut Vec<Command>) {
        while self.entries < MAX_BATCH_ENTRIES && self.bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(cmd) => self.push(cmd, cmds),
                Err(_) => break,
            }
        }
    }
}

/// What one entry of a request becomes.
enum Slot {
    /// Appended now, at this position of the batch.
    New(usize),
    /// Already in the log.
    Duplicate { seq: u64, leaf: Hash, ts: i64 },
    /// Its key was first used by another entry of this batch.
    DuplicateInBatch(usize),
}

struct Pending {
    slots: Vec<Slot>,
    reply: Reply,
    /// The request's entries as asked, kept when its batch goes to a shared
    /// store without the head lock: if the store refuses the batch for a
    /// conflict, the request is planned again (see [`Worker::drain`]).
    retry: Option<Vec<PreparedEntry>>,
}

struct Worker {
    sequencer: Sequencer,
    store: Arc<dyn Store>,
    signer: SignerSlot,
    clock: Arc<dyn Clock>,
    config: LogConfig,
    view: Arc<RwLock<LogView>>,
    checkpoint: Option<String>,
    /// Where seals are recorded (the system log's queue), except for the
    /// system log itself.
    system: Option<(
        mpsc::Sender<Command>,
        Limits,
        Arc<crate::metrics::LogMetrics>,
    )>,
    /// This log's append-path metrics.
    metrics: Arc<crate::metrics::LogMetrics>,
    /// Store failures of the append path, logged once each.
    failures: FailureLog,
    /// After a timed seal failed (store down, disk full): not before this,
    /// so a seal that keeps failing is retried, not spun on.
    timer_retry: Option<std::time::Instant>,
    /// The second stage of pipelined appends (see [`pipeline`]), started by
    /// the first batch the store writes without a sync.
    syncer: Option<pipeline::Syncer>,
    /// The batches in flight (written, not yet published), oldest first:
    /// end seq and the hashes (by `key_hasher`) of their idempotency keys.
    in_flight: VecDeque<(u64, HashSet<u64>)>,
    key_hasher: std::hash::RandomState,
    /// On a shared store: batches in a row whose head lock found the head
    /// where this process had left it (no other process appends).
    quiet: u32,
    /// Requests of pipelined batches a shared store refused for a
    /// conflict, to be planned again (under the lock) before anything else.
    retry: Vec<Request>,
}

/// Quiet batches under the head lock before a log's batches are pipelined
/// on a shared store (see [`Worker::trusts_head`]).
const TRUST_AFTER: u32 = 4;

/// While pipelined batches are in flight on a shared store, how often the
/// log thread looks whether one was refused (its requests are planned
/// again at once, not when the next request arrives).
const REFUSAL_POLL: Duration = Duration::from_millis(1);

/// How long a failed timed seal waits before it is tried again.
const TIMER_RETRY: Duration = Duration::from_secs(1);

fn same_content(a: &EntryInput, b: &EntryInput) -> bool {
    a.subject == b.subject
        && a.actor == b.actor
        && a.kind == b.kind
        && a.content_type == b.content_type
        && a.attributes == b.attributes
        && a.payload == b.payload
}

fn matches_stored(stored: &StoredEntry, p: &PreparedEntry) -> bool {
    let e = &stored.entry;
    let i = &p.input;
    e.subject == i.subject
        && e.actor == i.actor
        && e.kind == i.kind
        && e.content_type == i.content_type
        && e.attributes == i.attributes
        && e.payload_len == i.payload.len() as u64
        // Once erased, only the metadata and length can be compared.
        && stored
            .salt
            .as_ref()
            .is_none_or(|salt| commit_payload(salt, &i.payload) == e.payload_commitment)
}

impl Worker {
    /// The key to sign with now (a rotation replaces it between batches).
    fn signing_key(&self) -> Arc<SignerKey> {
        self.signer.read().expect("signer lock").clone()
    }

    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        loop {
            // Windows that ended while the log was idle (or down) are sealed
            // before anything else: an empty window still gets its seal.
            self.close_windows();
            if !self.retry.is_empty() {
                let retry = std::mem::take(&mut self.retry);
                self.append_batch(retry, None);
                continue;
            }
            let deadline = match (self.age_deadline(), self.window_deadline()) {
                (Some(a), Some(w)) => Some(a.min(w)),
                (a, w) => a.or(w),
            }
            .map(|d| match self.timer_retry {
                Some(at) => d.max(at.saturating_duration_since(std::time::Instant::now())),
                None => d,
            });
            // Batches in flight first, then failures: a batch that fails
            // after the first look is still in flight at it.
            let in_flight = self.syncer.as_ref().map_or(0, pipeline::Syncer::in_flight);
            if self.syncer.as_ref().is_some_and(pipeline::Syncer::failed) {
                self.drain();
                if !self.retry.is_empty() {
                    continue;
                }
            }
            let awaits_refusals = self.store.shared() && in_flight > 0;
            let due = deadline.map(|d| std::time::Instant::now() + d);
            let deadline = if awaits_refusals {
                Some(deadline.map_or(REFUSAL_POLL, |d| d.min(REFUSAL_POLL)))
            } else {
                deadline
            };
            let first = match deadline {
                Some(wait) => rx.recv_timeout(wait),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let first = match first {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => {
                    // Only a look for refusals (made at the top of the loop).
                    if awaits_refusals && due.is_none_or(|t| std::time::Instant::now() < t) {
                        continue;
                    }
                    let mut ok = self.close_windows();
                    if self.age_deadline().is_some_and(|d| d.is_zero()) {
                        ok &= self.seal(SealReason::Age).is_ok();
                    }
                    self.timer_retry = (!ok).then(|| std::time::Instant::now() + TIMER_RETRY);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.drain();
                    // Refused requests are answered before the thread ends.
                    while !self.retry.is_empty() {
                        let retry = std::mem::take(&mut self.retry);
                        self.append_batch(retry, None);
                        self.drain();
                    }
                    return;
                }
            };
            self.close_windows();
            // Group commit: take everything queued behind the first command.
            let mut cmds = Vec::new();
            let mut room = BatchRoom::default();
            room.push(first, &mut cmds);
            room.take_queued(&rx, &mut cmds);
            // On a shared store, take the log's head lock (looking up the
            // batch's idempotency keys with it): whatever arrives while
            // another process holds it joins this batch.
            let store = self.store.clone();
            let mut lock = match &cmds[0] {
                Command::Append { .. } if store.shared() && !self.trusts_head() => {
                    let keys = command_keys(&cmds);
                    store.lock_head(&self.config.name, &keys).ok().flatten()
                }
                _ => None,
            };
            if lock.is_some() {
                room.take_queued(&rx, &mut cmds);
            }
            let mut appends = Vec::new();
            for cmd in cmds {
                match cmd {
                    Command::Append { entries, reply } => appends.push((entries, reply)),
                    Command::Seal { reason, reply } => {
                        self.append_batch(std::mem::take(&mut appends), lock.take());
                        let _ = reply.send(self.seal(reason));
                    }
                    Command::Tick { reply } => {
                        let _ = reply.send(());
                    }
                }
            }
            self.append_batch(appends, lock.take());
        }
    }

    /// How long until the open segment is due to be sealed by age.
    fn age_deadline(&self) -> Option<Duration> {
        let after = self.config.seal_after?;
        let first = self.sequencer.segment_first_timestamp()?;
        let due = first.saturating_add(after.as_nanos() as i64);
        Some(Duration::from_nanos(
            due.saturating_sub(self.clock.now()).max(0) as u64,
        ))
    }

    /// End of the retention window the open segment started in.
    fn window_end(&self) -> Option<i64> {
        let w = i64::try_from(self.config.retention_window?.as_nanos()).ok()?;
        let from = self.sequencer.segment_span_from();
        Some(from.div_euclid(w).saturating_add(1).saturating_mul(w))
    }

    /// How long until the open segment's window ends.
    fn window_deadline(&self) -> Option<Duration> {
        let end = self.window_end()?;
        Some(Duration::from_nanos(
            end.saturating_sub(self.clock.now()).max(0) as u64,
        ))
    }

    /// Seals the open segment at the end of its window, and every window
    /// since (empty ones too), until the open segment's window holds now.
    /// False when a seal failed (the store refused; appends will say why).
    fn close_windows(&mut self) -> bool {
        while let Some(end) = self.window_end() {
            let now = self.clock.now().max(self.sequencer.last_timestamp());
            if now < end {
                return true;
            }
            if self.seal_at(end, SealReason::Window).is_err() {
                return false;
            }
        }
        true
    }

    fn seal(&mut self, reason: SealReason) -> Result<Option<Sealed>, AppendError> {
        if matches!(reason, SealReason::Age | SealReason::Size) && self.sequencer.segment_len() == 0
        {
            return Ok(None);
        }
        // A seal never reaches into the next window.
        let now = match self.window_end() {
            Some(end) => self.clock.now().min(end),
            None => self.clock.now(),
        };
        self.seal_at(now, reason).map(Some)
    }

    /// Seals the open segment with its span ending at `span_to` (or at the
    /// last timestamp given out, if later).
    fn seal_at(&mut self, span_to: i64, reason: SealReason) -> Result<Sealed, AppendError> {
        // A seal closes what is durable: every batch in flight first.
        self.drain();
        let unavailable = |e: StoreError| AppendError::Unavailable(e.to_string());
        let store = self.store.clone();
        let lock = store
            .lock_head(&self.config.name, &[])
            .map_err(unavailable)?;
        if let Some(l) = &lock {
            if !self.sequencer.is_at(l.head()) {
                // Another process appended or sealed: what was due may no
                // longer be (its timer looks again); a request seals what
                // is open now.
                self.adopt_head(l.head());
                if reason != SealReason::Request {
                    return Err(AppendError::Unavailable(
                        "the log moved on in another process".into(),
                    ));
                }
            }
        }
        let retention = self.config.retention.map(|d| d.as_nanos() as i64);
        let (seal, next) = self.sequencer.seal(span_to, reason, retention);
        let signed = seal
            .sign(&self.signing_key())
            .map_err(|e| AppendError::Unavailable(format!("signing the seal: {e}")))?;
        let written = match lock {
            Some(l) => l.seal(&seal, &signed),
            None => store.seal(&self.config.name, &seal, &signed),
        };
        if let Err(e) = written {
            crate::metrics::global().seal_failed(&self.config.name);
            tracing::warn!(log = %self.config.name, reason = reason.as_str(), error = %e, "seal failed");
            // Another process sealed or appended first: take the head it
            // left (the next timer or request seals again if due).
            if self.store.shared() {
                let _ = self.refresh_head();
            }
            return Err(AppendError::Unavailable(e.to_string()));
        }
        self.sequencer.commit(next);
        crate::metrics::global().sealed(&self.config.name, reason.as_str());
        tracing::info!(
            log = %self.config.name,
            segment = seal.segment,
            first_seq = seal.first_seq,
            end_seq = seal.end_seq,
            reason = reason.as_str(),
            "sealed segment {} of {}",
            seal.segment,
            self.config.name
        );
        if let Some((tx, limits, metrics)) = &self.system {
            // Best effort: the seal itself is durable in this log's chain;
            // the system entry is its entry in the administration record.
            let entry = admin::seal_entry(&self.config.name, &seal);
            let mut salt_err = None;
            if let Ok(prepared) = prepare(limits, vec![entry], |salt| {
                if let Err(e) = crate::keys::fill_random(salt) {
                    salt_err = Some(e);
                }
            }) {
                if salt_err.is_none() {
                    let (reply, _) = Reply::new(metrics.clone(), std::time::Instant::now());
                    let _ = tx.send(Command::Append {
                        entries: prepared,
                        reply,
                    });
                }
            }
        }
        Ok(Sealed { seal, signed })
    }

    /// Decides, for each request, which entries are new and which are
    /// duplicates; replies at once to requests that conflict. `looked_up`:
    /// keys already looked up under the head lock (see [`HeadLock::keys`]).
    fn plan(
        &self,
        requests: Vec<Request>,
        looked_up: Option<&HashMap<String, Option<u64>>>,
    ) -> (Vec<PreparedEntry>, Vec<Pending>) {
        let mut fresh: Vec<PreparedEntry> = Vec::new();
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut pending = Vec::new();
        // Every key of the batch looked up at once (one query on a
        // database, instead of one per entry), except those the head lock
        // looked up already.
        let mut known: HashMap<String, u64> = looked_up
            .into_iter()
            .flatten()
            .filter_map(|(k, seq)| seq.map(|s| (k.clone(), s)))
            .collect();
        let wanted: Vec<&str> = request_keys(&requests)
            .into_iter()
            .filter(|k| !looked_up.is_some_and(|l| l.contains_key(*k)))
            .collect();
        // Without the lock, on a shared store this process wrote last, keys
        // are not looked up: the database refuses a key used before (its
        // unique index), and the requests are planned again, under the
        // lock, with the look-ups (see `Worker::drain`).
        let trusted = looked_up.is_none() && self.trusts_head();
        let known = if wanted.is_empty() || trusted {
            Ok(known)
        } else {
            self.store
                .seqs_by_idempotency_keys(&self.config.name, &wanted)
                .map(|more| {
                    known.extend(more);
                    known
                })
                .map_err(|e| AppendError::Unavailable(e.to_string()))
        };
        'requests: for (entries, reply) in requests {
            let retry = trusted.then(|| entries.clone());
            let mut slots = Vec::with_capacity(entries.len());
            let mut staged: Vec<PreparedEntry> = Vec::new();
            let mut staged_keys: HashMap<String, usize> = HashMap::new();
            for (i, e) in entries.into_iter().enumerate() {
                let key = &e.input.idempotency_key;
                if !key.is_empty() {
                    let in_batch = keys
                        .get(key)
                        .map(|&j| (j, &fresh[j]))
                        .or_else(|| staged_keys.get(key).map(|&j| (fresh.len() + j, &staged[j])));
                    if let Some((j, first)) = in_batch {
                        if !same_content(&first.input, &e.input) {
                            let _ = reply.send(Err(AppendError::IdempotencyConflict {
                                entry: i,
                                key: key.clone(),
                                seq: self.sequencer.size() + j as u64,
                            }));
                            continue 'requests;
                        }
                        slots.push(Slot::DuplicateInBatch(j));
                        continue;
                    }
                    match self.lookup_key(&known, key) {
                        Err(err) => {
                            let _ = reply.send(Err(err));
                            continue 'requests;
                        }
                        Ok(Some(stored)) => {
                            if !matches_stored(&stored, &e) {
                                let _ = reply.send(Err(AppendError::IdempotencyConflict {
                                    entry: i,
                                    key: key.clone(),
                                    seq: stored.entry.seq,
                                }));
                                continue 'requests;
                            }
                            slots.push(Slot::Duplicate {
                                seq: stored.entry.seq,
                                leaf: stored.leaf_hash,
                                ts: stored.entry.timestamp_unix_nanos,
                            });
                            continue;
                        }
                        Ok(None) => {
                            staged_keys.insert(key.clone(), staged.len());
                        }
                    }
                }
                slots.push(Slot::New(fresh.len() + staged.len()));
                staged.push(e);
            }
            for (k, j) in staged_keys {
                keys.insert(k, fresh.len() + j);
            }
            fresh.extend(staged);
            pending.push(Pending {
                slots,
                reply,
                retry,
            });
        }
        (fresh, pending)
    }

    fn lookup_key(
        &self,
        known: &Result<HashMap<String, u64>, AppendError>,
        key: &str,
    ) -> Result<Option<StoredEntry>, AppendError> {
        let known = known.as_ref().map_err(Clone::clone)?;
        match known.get(key) {
            None => Ok(None),
            Some(&seq) => self
                .store
                .entry(&self.config.name, seq)
                .map_err(|e| AppendError::Unavailable(e.to_string())),
        }
    }

    /// Appends the queued requests as one group commit. On a shared store
    /// the batch is planned and written under the log's head lock (`lock`,
    /// or one taken here), so no other process moves the head meanwhile.
    fn append_batch(&mut self, requests: Vec<Request>, lock: Option<Box<dyn HeadLock + '_>>) {
        if requests.is_empty() {
            return;
        }
        // On a shared store the whole batch (key look-ups, sequencing,
        // signing, writing) happens under the log's head lock: no other
        // process can extend the chain meanwhile.
        let store = self.store.clone();
        let acquired = match lock {
            Some(l) => Ok(Some(l)),
            None if self.trusts_head() => Ok(None),
            None => store.lock_head(&self.config.name, &request_keys(&requests)),
        };
        let lock = match acquired {
            Ok(l) => l,
            Err(e) => {
                for (_, reply) in requests {
                    let _ = reply.send(Err(AppendError::Unavailable(e.to_string())));
                }
                return;
            }
        };
        if let Some(l) = &lock {
            if self.sequencer.is_at(l.head()) {
                self.quiet = self.quiet.saturating_add(1);
            } else {
                self.quiet = 0;
                self.adopt_head(l.head());
            }
        }
        self.write_batch(requests, lock);
    }

    /// On a shared store, whether this log's batches go without the head
    /// lock, pipelined as on the embedded store: once the lock found the
    /// head where this process left it [`TRUST_AFTER`] batches in a row. The
    /// store still refuses a batch if the head moved (the batch and every
    /// one in flight behind it fail, and the lock is taken again).
    fn trusts_head(&self) -> bool {
        self.store.shared() && self.quiet >= TRUST_AFTER
    }

    /// Reads the log's durable head from the store again (another process
    /// appended or sealed).
    fn refresh_head(&mut self) -> Result<(), StoreError> {
        let spec = LogSpec {
            name: self.config.name.clone(),
            origin: self.config.origin.clone(),
        };
        let head = self.store.open_log(&spec, self.clock.now())?;
        self.adopt_head(&head);
        Ok(())
    }

    /// Continues from `head`, written by another process.
    fn adopt_head(&mut self, head: &LogHead) {
        self.sequencer = Sequencer::from_head(&self.config.origin, head);
        self.checkpoint = head.latest_checkpoint.clone();
        let mut v = self.view.write().expect("view lock");
        v.size = head.size;
        v.checkpoint = head.latest_checkpoint.clone();
    }

    /// Plans, sequences, signs and writes a batch. On a shared store this
    /// happens under `lock` and the batch is durable before the requests
    /// are answered here; otherwise it is pipelined: written without a
    /// sync and handed to the syncer thread, which answers once it is
    /// durable, while this thread goes on with the next batch.
    fn write_batch(&mut self, requests: Vec<Request>, lock: Option<Box<dyn HeadLock + '_>>) {
        let pipelined = lock.is_none();
        if pipelined {
            self.settle_in_flight(&requests);
            if self.store.shared() && !self.trusts_head() {
                // A pipelined batch was refused meanwhile: under the lock,
                // its requests first.
                let mut all = std::mem::take(&mut self.retry);
                all.extend(requests);
                self.append_batch(all, None);
                return;
            }
        }
        let (fresh, pending) = self.plan(requests, lock.as_deref().map(|l| l.keys()));
        if pending.is_empty() {
            return;
        }
        // A duplicate beyond this process's head: another process appended
        // it, so the head is stale (under the head lock this cannot happen;
        // a store that broke the lock is not written to).
        let size = self.sequencer.size();
        let stale = pending.iter().any(|p| {
            p.slots
                .iter()
                .any(|s| matches!(s, Slot::Duplicate { seq, .. } if *seq >= size))
        });
        if stale {
            for p in pending {
                let _ = p.reply.send(Err(AppendError::Unavailable(
                    "the log moved on in another process; retry".into(),
                )));
            }
            return;
        }
        // A duplicate's proof reaches into batches still in flight (whose
        // nodes the store has not indexed yet), and an answer of only
        // duplicates names the latest checkpoint: both wait for them.
        let any_duplicate = pending
            .iter()
            .any(|p| p.slots.iter().any(|s| matches!(s, Slot::Duplicate { .. })));
        if fresh.is_empty() || any_duplicate {
            self.drain();
        }
        let log = self.config.name.clone();
        let frontier = self.sequencer.frontier_nodes();
        let slot_seq = |first_seq: u64, slot: &Slot| match *slot {
            Slot::New(j) | Slot::DuplicateInBatch(j) => first_seq + j as u64,
            Slot::Duplicate { seq, .. } => seq,
        };
        // The seq each receipt proves, if the batch starts at `first_seq`.
        let seqs_at = |first_seq: u64| -> Vec<u64> {
            pending
                .iter()
                .flat_map(|p| p.slots.iter().map(|s| slot_seq(first_seq, s)))
                .collect()
        };
        // Every receipt is proven at the new size.
        let node_store = self.store.clone();
        let prove = |seqs: Vec<u64>, size: u64, new_nodes: &sequencer::NodeMap| {
            pipeline::prove(node_store.as_ref(), &log, new_nodes, &frontier, seqs, size)
        };
        if fresh.is_empty() {
            // Only duplicates: answer against the latest checkpoint.
            let Some(cp) = self.checkpoint.clone() else {
                fail_all(pending, "no checkpoint yet");
                return;
            };
            let size = self.sequencer.size();
            match prove(seqs_at(size), size, &sequencer::NodeMap::default()) {
                Ok(proofs) => answer(pending, size, &[], 0, proofs, &cp, size),
                Err(e) => fail_all(pending, &format!("building proofs: {e}")),
            }
            return;
        }
        // Entries stay inside the open segment's window (the clock may have
        // crossed its end since `close_windows` looked).
        let now = match self.window_end() {
            Some(end) => self.clock.now().min(end - 1),
            None => self.clock.now(),
        };
        let proposal = self.sequencer.sequence(fresh, now);
        let (mut batch, cp, new_nodes, next) = proposal.into_parts();
        let signed = match cp.sign(&self.signing_key()) {
            Ok(s) => s,
            Err(e) => {
                fail_all(pending, &format!("signing: {e}"));
                return;
            }
        };
        batch.checkpoint = signed.clone();
        let store = &self.store;
        let started = std::time::Instant::now();
        let (written, proofs) = match lock {
            // Proofs do not depend on durability: build them while the
            // store writes and syncs, and send them only once it has.
            // (A thread per batch costs tens of microseconds: only worth it
            // when the proofs take longer than that.)
            Some(l) if batch.entries.len() >= OVERLAP_PROOFS_FROM => std::thread::scope(|scope| {
                let writer = scope.spawn(|| l.append(&batch));
                let proofs = prove(seqs_at(batch.first_seq), cp.size, &new_nodes);
                let written = writer.join().unwrap_or_else(|_| {
                    Err(StoreError::Index(
                        "the store panicked while appending".into(),
                    ))
                });
                (written, proofs)
            }),
            lock => {
                let written = match lock {
                    Some(l) => l.append(&batch),
                    None => match store.write_unsynced(&log, &batch) {
                        Ok(Some(point)) if self.start_syncer() => {
                            // The syncer starts the sync now; the proofs,
                            // built meanwhile, follow through the slot, and
                            // the receipts go out once both are done.
                            let seqs = seqs_at(batch.first_seq);
                            let (proofs_tx, proofs_slot) = mpsc::sync_channel(1);
                            let size = cp.size;
                            let batch = Arc::new(batch);
                            self.hand_over(
                                batch.clone(),
                                point,
                                pending,
                                proofs_slot,
                                signed,
                                next,
                                started,
                            );
                            // Staged and proven behind every earlier batch
                            // (on the finisher thread when large); the
                            // syncer publishes it once its proofs arrive,
                            // so after its staging ended.
                            let finish = pipeline::Finish {
                                batch,
                                seqs,
                                size,
                                new_nodes,
                                frontier,
                                proofs: proofs_tx,
                            };
                            self.syncer.as_ref().expect("started").finish(finish);
                            self.seal_if_full();
                            return;
                        }
                        // A store that pipelines, but no syncer thread: sync here.
                        Ok(Some(point)) => self.store.publish(&log, &batch, point.sync()),
                        // Durable already (the store does not pipeline), or failed.
                        written => written.map(|_| ()),
                    },
                };
                (
                    written,
                    prove(seqs_at(batch.first_seq), cp.size, &new_nodes),
                )
            }
        };
        if let Err(e) = written {
            self.quiet = 0;
            if !matches!(e, StoreError::Conflict { .. }) {
                self.failures.failed(&log, &e.to_string());
            }
            let again = refuse(pending, &e);
            self.retry.extend(again);
            return;
        }
        let (pending, proofs) = match proofs {
            Ok(p) => (pending, p),
            Err(e) => {
                // Written but not acknowledged: the next batch chains on
                // it, as after a crash that kept it.
                fail_all(pending, &format!("building proofs: {e}"));
                (Vec::new(), Vec::new())
            }
        };
        self.failures.succeeded(&log);
        count_batch(&self.metrics, &batch, started);
        self.commit(next, &signed, true);
        answer_batch(pending, &batch, proofs, &signed);
        self.seal_if_full();
    }

    /// Seals the open segment once it holds its most entries.
    fn seal_if_full(&mut self) {
        if self.sequencer.segment_len() >= self.config.seal_max_entries {
            self.seal(SealReason::Size).ok();
        }
    }

    /// Moves to the state after a written batch; `visible` when it is
    /// durable and indexed already (readers may see it).
    fn commit(&mut self, next: sequencer::ProposalState, signed: &str, visible: bool) {
        self.sequencer.commit(next);
        self.checkpoint = Some(signed.to_owned());
        if visible {
            let mut v = self.view.write().expect("view lock");
            v.size = self.sequencer.size();
            v.checkpoint = Some(signed.to_owned());
        }
    }

    /// Starts the syncer thread unless it runs; false if it cannot start.
    fn start_syncer(&mut self) -> bool {
        if self.syncer.is_none() {
            let target = pipeline::Target {
                store: self.store.clone(),
                log: self.config.name.clone(),
                view: self.view.clone(),
                metrics: self.metrics.clone(),
            };
            let published = self.view.read().expect("view lock").size;
            match pipeline::Syncer::start(target, published) {
                Ok(s) => self.syncer = Some(s),
                Err(e) => {
                    tracing::warn!(log = %self.config.name, error = %e, "no syncer thread: syncing on the log thread")
                }
            }
        }
        self.syncer.is_some()
    }

    /// Hands a written batch to the syncer thread (started already),
    /// which answers `pending` once it is durable; this thread goes on from
    /// the state after it.
    #[allow(clippy::too_many_arguments)]
    fn hand_over(
        &mut self,
        batch: Arc<Batch>,
        point: SyncPoint,
        pending: Vec<Pending>,
        proofs: pipeline::ProofSlot,
        signed: String,
        next: sequencer::ProposalState,
        started: std::time::Instant,
    ) {
        let before = (self.sequencer.clone(), self.checkpoint.clone());
        self.commit(next, &signed, false);
        let keys = batch
            .entries
            .iter()
            .map(|e| e.entry.idempotency_key.as_str())
            .filter(|k| !k.is_empty())
            .map(|k| self.key_hasher.hash_one(k))
            .collect();
        self.in_flight.push_back((self.sequencer.size(), keys));
        let job = pipeline::Job {
            batch,
            point,
            pending,
            proofs,
            checkpoint: signed,
            before,
            started,
        };
        self.syncer.as_mut().expect("started before").send(job);
    }

    /// Before planning a pipelined batch: goes back to the durable state
    /// if a batch in flight failed, forgets the idempotency keys of
    /// batches published since, and waits for the batches in flight when
    /// `requests` reuse one of their keys (the store cannot see those keys
    /// yet).
    fn settle_in_flight(&mut self, requests: &[Request]) {
        let Some(syncer) = &self.syncer else {
            return;
        };
        if syncer.failed() {
            self.drain();
            return;
        }
        let published = syncer.published_end();
        while self
            .in_flight
            .front()
            .is_some_and(|(end, _)| *end <= published)
        {
            self.in_flight.pop_front();
        }
        let reused = keys_of(requests.iter().flat_map(|(entries, _)| entries.iter()))
            .map(|k| self.key_hasher.hash_one(k))
            .any(|k| self.in_flight.iter().any(|(_, keys)| keys.contains(&k)));
        if reused {
            self.drain();
        }
    }

    /// Waits until every batch in flight is answered; after a failure,
    /// continues from the state before the first batch that failed.
    fn drain(&mut self) {
        if let Some(syncer) = &mut self.syncer {
            if let Some(((sequencer, checkpoint), retry)) = syncer.drain() {
                self.sequencer = sequencer;
                self.checkpoint = checkpoint;
                // Another process moved the head or used a key after all
                // (or the database failed): back to the lock.
                self.quiet = 0;
                self.retry.extend(retry);
            }
        }
        self.in_flight.clear();
    }
}

/// Fails every request of a batch with `UNAVAILABLE`.
fn fail_all(pending: Vec<Pending>, why: &str) {
    for p in pending {
        let _ = p.reply.send(Err(AppendError::Unavailable(why.to_owned())));
    }
}

/// Answers the requests of a batch the store refused with `e`. If it
/// refused the batch whole for a conflict (nothing of it kept), the
/// requests that kept their entries for this are returned, to be planned
/// again; every other request fails with `e`.
fn refuse(pending: Vec<Pending>, e: &StoreError) -> Vec<Request> {
    let conflict = matches!(e, StoreError::Conflict { .. });
    let mut again = Vec::new();
    let mut refused = Vec::new();
    for p in pending {
        match p.retry {
            Some(entries) if conflict => again.push((entries, p.reply)),
            _ => refused.push(p),
        }
    }
    fail_all(refused, &e.to_string());
    again
}

/// Answers every request of `batch`, now durable and published, with one
/// proof per slot in `proofs` against the batch's signed `checkpoint`.
fn answer_batch(pending: Vec<Pending>, batch: &Batch, proofs: Vec<Vec<Hash>>, checkpoint: &str) {
    let leaves: Vec<Hash> = batch.entries.iter().map(|e| e.leaf_hash).collect();
    let ts = batch.entries[0].entry.timestamp_unix_nanos;
    let size = batch.first_seq + leaves.len() as u64;
    answer(
        pending,
        batch.first_seq,
        &leaves,
        ts,
        proofs,
        checkpoint,
        size,
    );
}

/// Counts a batch the store made durable, `started` when its write began.
fn count_batch(metrics: &crate::metrics::LogMetrics, batch: &Batch, started: std::time::Instant) {
    let bytes = batch.entries.iter().map(|e| e.entry.payload_len).sum();
    metrics.batch(batch.entries.len(), bytes, started.elapsed());
}

/// The append path's store failures, logged once per distinct failure (not
/// once per batch), and once when appends succeed again.
#[derive(Default)]
struct FailureLog(Option<String>);

impl FailureLog {
    fn failed(&mut self, log: &str, message: &str) {
        if self.0.as_deref() != Some(message) {
            tracing::error!(log = %log, error = %message, "appends failing: the store did not make a batch durable");
            self.0 = Some(message.to_owned());
        }
    }

    fn succeeded(&mut self, log: &str) {
        if self.0.take().is_some() {
            tracing::info!(log = %log, "appends succeed again");
        }
    }
}

/// Answers every request of a batch whose new entries start at
/// `first_seq` with `leaves` (timestamp `ts`), with one proof per slot in
/// `proofs`, against `checkpoint` (of size `size`).
fn answer(
    pending: Vec<Pending>,
    first_seq: u64,
    leaves: &[Hash],
    ts: i64,
    proofs: Vec<Vec<Hash>>,
    checkpoint: &str,
    size: u64,
) {
    let mut proofs = proofs.into_iter();
    for p in pending {
        let receipts = p
            .slots
            .iter()
            .map(|slot| {
                let (seq, leaf, ts, duplicate) = match *slot {
                    Slot::New(j) => (first_seq + j as u64, leaves[j], ts, false),
                    Slot::DuplicateInBatch(j) => (first_seq + j as u64, leaves[j], ts, true),
                    Slot::Duplicate { seq, leaf, ts } => (seq, leaf, ts, true),
                };
                Receipt {
                    seq,
                    leaf_hash: leaf,
                    timestamp_unix_nanos: ts,
                    duplicate,
                    // Invariant: one proof per slot, in the same order.
                    inclusion_proof: proofs.next().expect("one proof per slot"),
                }
            })
            .collect();
        let _ = p.reply.send(Ok(AppendOutcome {
            receipts,
            checkpoint: checkpoint.to_owned(),
            tree_size: size,
        }));
    }
}
