//! The second stage of a log's pipelined group commit, on two threads of
//! its own: make written batches durable, publish them, answer their
//! requests; and meanwhile stage them and prove their receipts.
//!
//! ```text
//!  log thread:      plan ─▶ sequence ─▶ sign ─▶ write (no sync) ─▶ Job ─▶ Finish ─┐
//!                   (batch N+1 is prepared and written while batch N syncs) │       │
//!                                                                           │       ▼
//!  finisher thread: (or the log thread, for a small batch when it is idle)  │  stage, proofs
//!                                                                           ▼       │
//!  syncer thread:   take every queued job ─▶ one fdatasync for all ─▶ for each, in order,
//!                   once its proofs have arrived: publish (index, then the readers'
//!                   size) ─▶ answer each request
//! ```
//!
//! A job goes to the syncer as soon as its batch is written, so the sync
//! starts while a third thread, the finisher, does what needs no
//! durability: the store's share of publishing ([`Store::stage`]: index
//! records written where no reader looks yet, keys hashed) and the
//! receipts' proofs, which follow through the job's [`ProofSlot`]. For one
//! appender that is work taken off the request's path; for many, off the
//! log thread's, which is free to sequence and write the next batch (on
//! two cores, the log thread was the bottleneck of 256-entry requests).
//!
//! Invariants:
//! - The log thread hands every job's [`Finish`] to the finisher right
//!   after handing the job to the syncer; the finisher takes them in
//!   order, stages the batch, then sends its proofs (or why they failed),
//!   and never waits for the syncer, so the syncer's wait for them always
//!   ends; the syncer publishes a batch only after its proofs arrived, so
//!   after its staging ended (the store never stages and publishes a batch
//!   at once). A batch is staged only after every earlier one was.
//! - Every finish handed over has ended once the syncer answered its job:
//!   after [`Syncer::drain`], nothing of a failed batch is still being
//!   staged when the log thread writes other batches at its seqs.
//! - A job is answered only after a sync that started after its batch was
//!   written returned without error, and after the store published it: no
//!   receipt names an entry a crash could lose or a reader cannot find.
//! - Jobs are synced, published and answered in the order they were sent,
//!   which is the order their batches were written.
//! - After a failed sync or publish, every later job fails too (their
//!   batches chain on the failed one), and [`Syncer::drain`] hands the log
//!   thread the state from before the first failed batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::core::hash::{Blake3, Hash};
use crate::core::merkle;
use crate::store::{Batch, LogNodes, Store, StoreError, SyncPoint};

use super::sequencer::{NodeMap, OverlayReader, Sequencer};
use super::{answer_batch, count_batch, fail_all, refuse, FailureLog, LogView, Pending, Request};

/// Where a job's proofs arrive (see [`Job::proofs`]).
pub(super) type ProofSlot = mpsc::Receiver<Result<Vec<Vec<Hash>>, String>>;

/// Batches of at least this many entries are finished on the finisher
/// thread even when the log thread could do it at once (see
/// [`Syncer::finish`]).
const FINISH_ON_THREAD_FROM: usize = 128;

/// A written batch's work that needs no durability: staging it and
/// proving its receipts (see [`finish`]).
pub(super) struct Finish {
    /// Shared with the syncer's job.
    pub batch: Arc<Batch>,
    /// The seq each receipt proves, in the order of the job's slots.
    pub seqs: Vec<u64>,
    /// The tree size after the batch (its checkpoint's).
    pub size: u64,
    /// Nodes completed by the batch.
    pub new_nodes: NodeMap,
    /// Frontier nodes of the tree before the batch.
    pub frontier: NodeMap,
    /// The other end of the job's [`ProofSlot`].
    pub proofs: mpsc::SyncSender<Result<Vec<Vec<Hash>>, String>>,
}

/// Stages `f`'s batch, then builds its proofs and sends them. Every proof
/// is at the batch's size, over nodes of the batch, of the frontier before
/// it, or published before it (the receipts of a batch with pipelined
/// duplicates wait for the batches in flight: see `Worker::write_batch`).
pub(super) fn finish(store: &dyn Store, log: &str, f: Finish) {
    store.stage(log, &f.batch);
    drop(f.batch);
    let proofs = prove(store, log, &f.new_nodes, &f.frontier, f.seqs, f.size)
        .map_err(|e| format!("building proofs: {e}"));
    // (Gone only if the syncer failed the batch already.)
    let _ = f.proofs.send(proofs);
}

/// Inclusion proofs of `seqs` at `size`, all in one pass (the right edge
/// of the tree is hashed once), reading the nodes a batch completed, then
/// the frontier before it, then the store.
pub(super) fn prove(
    store: &dyn Store,
    log: &str,
    new_nodes: &NodeMap,
    frontier: &NodeMap,
    seqs: Vec<u64>,
    size: u64,
) -> Result<Vec<Vec<Hash>>, merkle::TreeError> {
    let reader = OverlayReader {
        batch: new_nodes,
        frontier,
        store: LogNodes { store, log },
    };
    merkle::inclusion_proofs::<Blake3>(&reader, seqs, size)
}

/// The log thread's state between batches: its sequencer and latest
/// signed checkpoint.
pub(super) type LogState = (Sequencer, Option<String>);

/// A written batch on its way to its answers.
pub(super) struct Job {
    /// Shared with the log thread while it stages the batch.
    pub batch: Arc<Batch>,
    /// Syncs every write up to and including this batch's.
    pub point: SyncPoint,
    pub pending: Vec<Pending>,
    /// One proof per slot of `pending`, in order, at the batch's size,
    /// or why they could not be built: sent by the log thread once built,
    /// which may be after the job (they are built while the sync runs).
    pub proofs: ProofSlot,
    /// The batch's signed checkpoint.
    pub checkpoint: String,
    /// The log thread's state before the batch (restored if it fails).
    pub before: LogState,
    /// When the write started.
    pub started: Instant,
}

#[derive(Default)]
struct Progress {
    /// Jobs answered (successfully or not).
    done: u64,
    /// Entries published (the log's durable size, once known).
    published_end: u64,
    /// The state before the first failed job, until the log thread takes it.
    failed: Option<LogState>,
    /// Requests of jobs the store refused whole for a conflict
    /// ([`StoreError::Conflict`]), to be planned again, oldest first.
    retry: Vec<Request>,
}

/// Handle of a log's syncer thread, owned by the log thread.
pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The finisher thread's queue (see [`Syncer::finish`]); `None` if it
    /// could not start (the log thread finishes its batches itself).
    finisher: Option<(mpsc::Sender<Finish>, JoinHandle<()>)>,
    /// Finishes handed to the finisher thread and not yet ended.
    finishing: Arc<AtomicU64>,
    /// For finishing on the log thread.
    store: Arc<dyn Store>,
    log: String,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    sent: u64,
    /// Jobs in flight before the log thread waits for the syncer (the
    /// store's [`Store::max_unpublished`]): bounds the memory held by
    /// written but unanswered batches.
    max_in_flight: u64,
}

/// What the syncer thread needs of the log.
pub(super) struct Target {
    pub store: Arc<dyn Store>,
    pub log: String,
    pub view: Arc<RwLock<LogView>>,
    pub metrics: Arc<crate::metrics::LogMetrics>,
}

impl Syncer {
    /// Starts the syncer thread of a log whose published size is `size`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(target: Target, size: u64) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::channel();
        let progress = Arc::new((
            Mutex::new(Progress {
                published_end: size,
                ..Progress::default()
            }),
            Condvar::new(),
        ));
        let p = progress.clone();
        let max_in_flight = target.store.max_unpublished().max(1);
        let (store, log) = (target.store.clone(), target.log.clone());
        let (finish_tx, finish_rx) = mpsc::channel::<Finish>();
        let finishing = Arc::new(AtomicU64::new(0));
        let finisher = {
            let (store, log, finishing) = (store.clone(), log.clone(), finishing.clone());
            std::thread::Builder::new()
                .name(format!("finish-{log}"))
                .spawn(move || {
                    for f in finish_rx {
                        finish(store.as_ref(), &log, f);
                        finishing.fetch_sub(1, Ordering::Release);
                    }
                })
        };
        let finisher = match finisher {
            Ok(t) => Some((finish_tx, t)),
            Err(e) => {
                tracing::warn!(log = %log, error = %e, "no finisher thread: batches are staged and proven on the log thread");
                None
            }
        };
        let thread = std::thread::Builder::new()
            .name(format!("sync-{}", target.log))
            .spawn(move || run(target, rx, p))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            finisher,
            finishing,
            store,
            log,
            progress,
            sent: 0,
            max_in_flight,
        })
    }

    /// Hands a written batch over; waits first while too many are in flight.
    /// A job the thread can no longer take is answered here, with an error.
    pub fn send(&mut self, job: Job) {
        let max = self.max_in_flight;
        drop(self.wait_until(|p, sent| sent - p.done < max));
        let tx = self.tx.as_ref().expect("taken only on drop");
        match tx.send(job) {
            Ok(()) => self.sent += 1,
            Err(mpsc::SendError(job)) => fail_all(job.pending, "the syncer stopped"),
        }
    }

    /// Stages a job's batch and proves its receipts, after every earlier
    /// job's: on the finisher thread, or here when the batch is small and
    /// the finisher idle (a hand-over to another thread costs more than a
    /// small batch's finish: it slowed 64 single-entry appenders by
    /// 10-25%), or when the finisher is gone.
    pub fn finish(&self, f: Finish) {
        let idle = self.finishing.load(Ordering::Acquire) == 0;
        let f = match &self.finisher {
            Some((tx, _)) if f.batch.entries.len() >= FINISH_ON_THREAD_FROM || !idle => {
                self.finishing.fetch_add(1, Ordering::AcqRel);
                match tx.send(f) {
                    Ok(()) => return,
                    Err(mpsc::SendError(f)) => {
                        self.finishing.fetch_sub(1, Ordering::AcqRel);
                        f
                    }
                }
            }
            _ => f,
        };
        finish(self.store.as_ref(), &self.log, f);
    }

    /// Entries published so far (everything below is durable and indexed).
    pub fn published_end(&self) -> u64 {
        self.progress.0.lock().expect("progress lock").published_end
    }

    /// Jobs sent and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.progress.0.lock().expect("progress lock").done
    }

    /// True when a job failed since the last [`Syncer::drain`].
    pub fn failed(&self) -> bool {
        self.progress
            .0
            .lock()
            .expect("progress lock")
            .failed
            .is_some()
    }

    /// Waits until every job sent is answered. `Some(state)` when one
    /// failed: the log thread's state from before the first failed batch,
    /// to continue from (the store refused the batches after it too), and
    /// the requests to plan again.
    pub fn drain(&mut self) -> Option<(LogState, Vec<Request>)> {
        if self.sent == 0 {
            return None;
        }
        let mut p = self.wait_until(|p, sent| p.done == sent);
        let retry = std::mem::take(&mut p.retry);
        p.failed.take().map(|state| (state, retry))
    }

    fn wait_until(
        &self,
        ready: impl Fn(&Progress, u64) -> bool,
    ) -> std::sync::MutexGuard<'_, Progress> {
        let (lock, cv) = &*self.progress;
        let mut p = lock.lock().expect("progress lock");
        while !ready(&p, self.sent) {
            p = cv.wait(p).expect("progress lock");
        }
        p
    }
}

impl Drop for Syncer {
    /// Answers everything in flight, then stops the threads. (The
    /// finisher finishes what it was handed, whatever the syncer does.)
    fn drop(&mut self) {
        let finisher = self.finisher.take().map(|(_, t)| t);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = finisher {
            let _ = t.join();
        }
    }
}

fn run(target: Target, rx: mpsc::Receiver<Job>, progress: Arc<(Mutex<Progress>, Condvar)>) {
    let mut failures = FailureLog::default();
    while let Ok(first) = rx.recv() {
        // Group the syncs: the newest job's sync point covers every batch
        // written before it.
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let newest = &mut jobs.last_mut().expect("one job at least").point;
        let synced = std::mem::replace(newest, SyncPoint::new(|| Ok(()))).sync();
        for job in jobs {
            let synced = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            // The proofs first: they arrive once the batch is staged too.
            let proofs = job
                .proofs
                .recv()
                .unwrap_or_else(|_| Err("the thread proving the batch stopped".into()));
            // After a failure the store refuses every later batch (they
            // chain on the failed one), so they fail here too.
            match target.store.publish(&target.log, &job.batch, synced) {
                Ok(()) => {
                    failures.succeeded(&target.log);
                    count_batch(&target.metrics, &job.batch, job.started);
                    let end = job.batch.first_seq + job.batch.entries.len() as u64;
                    {
                        let mut v = target.view.write().expect("view lock");
                        v.size = end;
                        v.checkpoint = Some(job.checkpoint.clone());
                    }
                    progress.0.lock().expect("progress lock").published_end = end;
                    match proofs {
                        Ok(proofs) => {
                            answer_batch(job.pending, &job.batch, proofs, &job.checkpoint);
                        }
                        // Durable but not acknowledged: the next batch
                        // chains on it, as after a crash that kept it.
                        Err(message) => fail_all(job.pending, &message),
                    }
                }
                Err(e) => {
                    // The requests of a batch refused for a conflict go back
                    // to the log thread, to be planned again under the lock.
                    let again = refuse(job.pending, &e);
                    let mut p = progress.0.lock().expect("progress lock");
                    p.failed.get_or_insert(job.before);
                    p.retry.extend(again);
                    drop(p);
                    if matches!(e, StoreError::Conflict { .. }) {
                        tracing::info!(log = %target.log, reason = %e, "pipelined batch refused; its requests are planned again");
                    } else {
                        failures.failed(&target.log, &e.to_string());
                    }
                }
            }
            let (lock, cv) = &*progress;
            lock.lock().expect("progress lock").done += 1;
            cv.notify_all();
        }
    }
}
