//! `auditlog copy`: moves logs between stores (a data directory and a
//! PostgreSQL database, either way) with every entry, checkpoint and seal
//! exactly as signed.
//!
//! Owns: the replay of a log's history into an empty store: batch by batch
//! (each stored checkpoint closes one), each batch with the very checkpoint
//! the source holds for it, each seal after the batch it closes, and
//! segment 0 opening at the source's span start, so every hash, signature
//! and span on the destination is the source's and both verify alike.
//!
//! Invariants: nothing is re-signed (no key is needed); payloads already
//! removed stay removed (their state is copied, never a made-up payload); a
//! destination log that already holds entries is refused unless it holds
//! exactly the source's (then it is skipped), so a copy can be re-run
//! after an interruption only from scratch or in full.

use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::CompactRange;
use crate::core::note;
use crate::core::seal::Seal;
use crate::core::Salt;
use crate::store::embedded::EmbeddedStore;
use crate::store::postgres::PgStore;
use crate::store::{Batch, BatchEntry, LogSpec, Store, StoreError};

/// Checkpoints read from the source per round.
const CHUNK: usize = 256;

/// What was copied of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedLog {
    /// Log name.
    pub log: String,
    /// Entries copied (0 when the destination already held them).
    pub entries: u64,
    /// Checkpoints (batches) copied.
    pub checkpoints: u64,
    /// Seals copied.
    pub seals: u64,
    /// True when the destination already held exactly this log.
    pub already_there: bool,
}

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// Reading the source or writing the destination failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source is not something that can be replayed as is.
    #[error("log {log}: {reason}")]
    Source {
        /// Log.
        log: String,
        /// What is wrong.
        reason: String,
    },
    /// The destination holds another history of the log.
    #[error("log {log}: the destination already holds {entries} entries of another history; copy into an empty store")]
    NotEmpty {
        /// Log.
        log: String,
        /// Entries there.
        entries: u64,
    },
}

/// Opens `location`: a `postgres://` URL, or an embedded data directory
/// (which, unless `must_exist`, is created).
///
/// # Errors
/// Connection, lock or I/O failures; a source directory with no logs.
pub fn open_location(location: &str, must_exist: bool) -> Result<Box<dyn Store>, CopyError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Ok(Box::new(PgStore::connect(location)?));
    }
    let dir = std::path::Path::new(location);
    if must_exist && !dir.join("logs").is_dir() {
        return Err(source_err(
            "*",
            format!("{location} is not an auditlog data directory (no logs/ in it)"),
        ));
    }
    Ok(Box::new(EmbeddedStore::open(dir)?))
}

fn source_err(log: &str, reason: impl Into<String>) -> CopyError {
    CopyError::Source {
        log: log.to_owned(),
        reason: reason.into(),
    }
}

/// Copies every log of `from` into `to`, calling `progress(log, entries
/// copied so far, entries in the log)` as it goes.
///
/// # Errors
/// Store failures; a source log that cannot be replayed; a destination log
/// with another history.
pub fn copy_store(
    from: &dyn Store,
    to: &dyn Store,
    mut progress: impl FnMut(&str, u64, u64),
) -> Result<Vec<CopiedLog>, CopyError> {
    let mut out = Vec::new();
    for spec in from.stored_logs()? {
        out.push(copy_log(from, to, &spec, &mut progress)?);
    }
    Ok(out)
}

fn copy_log(
    from: &dyn Store,
    to: &dyn Store,
    spec: &LogSpec,
    progress: &mut impl FnMut(&str, u64, u64),
) -> Result<CopiedLog, CopyError> {
    let log = spec.name.as_str();
    let head = from.open_log(spec, 0)?;
    let segments = from.segments(log)?;
    let seals: Vec<Seal> = segments
        .iter()
        .filter_map(|s| s.seal.as_ref())
        .map(|text| {
            let (body, _) = note::parse(text).map_err(|e| source_err(log, e.to_string()))?;
            Seal::from_text(&body).map_err(|e| source_err(log, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let seal_texts: Vec<&String> = segments.iter().filter_map(|s| s.seal.as_ref()).collect();
    // Segment 0 opens where the source's did.
    let span0 = seals
        .first()
        .map_or(head.segment.span_from, |s| s.span_from);
    let there = to.open_log(spec, span0)?;
    if there.size > 0 || !to.segments(log)?.iter().all(|s| s.seal.is_none()) {
        let same = there.size == head.size
            && there.latest_checkpoint == head.latest_checkpoint
            && to.segments(log)?.len() == segments.len();
        if same {
            return Ok(CopiedLog {
                log: log.to_owned(),
                entries: 0,
                checkpoints: 0,
                seals: 0,
                already_there: true,
            });
        }
        return Err(CopyError::NotEmpty {
            log: log.to_owned(),
            entries: there.size,
        });
    }

    let mut copied = CopiedLog {
        log: log.to_owned(),
        entries: 0,
        checkpoints: 0,
        seals: 0,
        already_there: false,
    };
    let mut tree = CompactRange::<Blake3>::new();
    let mut next_seal = 0usize;
    let mut size = 0u64;
    // Seals of segments that end where the log is now (empty segments
    // included) come before the next batch.
    let seal_due = |size: u64, copied: &mut CopiedLog, next_seal: &mut usize| {
        while let Some(seal) = seals.get(*next_seal) {
            if seal.end_seq != size {
                break;
            }
            to.seal(log, seal, seal_texts[*next_seal])?;
            copied.seals += 1;
            *next_seal += 1;
        }
        Ok::<(), StoreError>(())
    };
    seal_due(size, &mut copied, &mut next_seal)?;
    loop {
        let cps = from.checkpoints_after(log, size, CHUNK)?;
        if cps.is_empty() {
            break;
        }
        for (end, checkpoint) in cps {
            let mut entries = Vec::with_capacity((end - size) as usize);
            let mut nodes = Vec::new();
            for seq in size..end {
                let stored = from
                    .entry(log, seq)?
                    .ok_or_else(|| source_err(log, format!("entry {seq} is missing")))?;
                tree.append(stored.leaf_hash, |id, h: Hash| {
                    if id.level > 0 {
                        nodes.push((id, h));
                    }
                });
                entries.push(BatchEntry {
                    entry: stored.entry,
                    encoding: stored.encoding,
                    leaf_hash: stored.leaf_hash,
                    salt: stored.salt.unwrap_or(Salt([0; 32])),
                    payload: stored.payload,
                    state: stored.state,
                });
            }
            to.append(
                log,
                &Batch {
                    first_seq: size,
                    entries,
                    nodes,
                    checkpoint,
                },
            )?;
            copied.entries += end - size;
            copied.checkpoints += 1;
            size = end;
            seal_due(size, &mut copied, &mut next_seal)?;
            progress(log, size, head.size);
        }
    }
    if size != head.size {
        return Err(source_err(
            log,
            format!(
                "checkpoints cover {size} entries, the log holds {}",
                head.size
            ),
        ));
    }
    if next_seal != seals.len() {
        return Err(source_err(log, "a seal closes no copied batch"));
    }
    Ok(copied)
}
