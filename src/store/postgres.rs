//! The PostgreSQL store: several stateless `auditlog` servers on one
//! database (FORMAT.md §12).
//!
//! Owns: the schema and its forward-only migrations (`auditlog_schema`
//! records the version), and the [`Store`] implementation over it with
//! `tokio-postgres` and a `deadpool` connection pool, driven from the
//! engine's threads through the store's own small runtime.
//!
//! Invariants:
//! - One sequencer per log, enforced by the database: an append or a seal
//!   locks the log's head row (`SELECT ... FOR UPDATE`) and goes ahead only
//!   if the head is where the batch starts ([`StoreError::HeadMoved`]
//!   otherwise), all in one transaction, so the chain never forks, seqs stay
//!   dense, and a process dying mid-batch leaves nothing of it.
//! - An acknowledged batch is committed with `synchronous_commit = on`
//!   (forced per transaction, whatever the server default).
//! - Rows are checked on the way out as segment records are: an entry's
//!   leaf hash must be the hash of its stored encoding and a present
//!   payload must match its commitment, or the read fails as corruption;
//!   the indexed columns (subject, actor, key, time) are derived and every
//!   candidate they give is checked against the decoded entry.
//! - Migrations run under an advisory lock, each in its own transaction
//!   with the version row it sets; a database newer than the code is
//!   refused.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{
    Batch, LogHead, LogSpec, OpenSegment, PayloadState, Removal, SegmentInfo, Store, StoreError,
    StoredEntry, SyncPoint,
};
use crate::core::entry::{commit_payload, leaf_hash_of_encoding, Entry, Salt};
use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::{CompactRange, NodeId, NodeReadError};
use crate::core::seal::Seal;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: i32 = 3;

/// Each migration takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 3] = [
    r"
CREATE TABLE auditlog_logs (
    name text PRIMARY KEY,
    origin text NOT NULL,
    size bigint NOT NULL,
    prev_leaf bytea NOT NULL,
    last_timestamp bigint NOT NULL,
    frontier bytea NOT NULL,
    segment bigint NOT NULL,
    segment_first_seq bigint NOT NULL,
    segment_span_from bigint NOT NULL,
    segment_frontier bytea NOT NULL,
    segment_first_timestamp bigint,
    prev_seal bytea NOT NULL,
    latest_checkpoint text
);
CREATE TABLE auditlog_entries (
    log text NOT NULL,
    seq bigint NOT NULL,
    encoding bytea NOT NULL,
    leaf_hash bytea NOT NULL,
    payload_state smallint NOT NULL,
    salt bytea,
    payload bytea,
    subject text NOT NULL,
    actor text NOT NULL,
    idempotency_key text,
    timestamp_unix_nanos bigint NOT NULL,
    segment bigint NOT NULL,
    PRIMARY KEY (log, seq)
);
CREATE INDEX auditlog_entries_subject ON auditlog_entries (log, subject, seq);
CREATE INDEX auditlog_entries_actor ON auditlog_entries (log, actor, seq);
CREATE INDEX auditlog_entries_key ON auditlog_entries (log, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX auditlog_entries_time ON auditlog_entries (log, timestamp_unix_nanos, seq);
CREATE TABLE auditlog_nodes (
    log text NOT NULL,
    level smallint NOT NULL,
    index bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (log, level, index)
);
CREATE TABLE auditlog_checkpoints (
    log text NOT NULL,
    size bigint NOT NULL,
    note text NOT NULL,
    PRIMARY KEY (log, size)
);
CREATE TABLE auditlog_segments (
    log text NOT NULL,
    segment bigint NOT NULL,
    first_seq bigint NOT NULL,
    span_from bigint NOT NULL,
    end_seq bigint,
    seal text,
    PRIMARY KEY (log, segment)
);
",
    // Version 2: every text column that is a key or an index column
    // compares bytes (COLLATE "C"), whatever the database's default
    // collation. A libc collation costs a strcoll per comparison in every
    // index descent (all keys start with the log name), and its order can
    // change under the database with a C library upgrade, which corrupts
    // the indexes built with the old order: a log kept for years must not
    // depend on it. Only equality and seq order are ever asked of these
    // columns, so answers are unchanged; log names now list in byte order,
    // as the embedded store lists them. The indexes on these columns are
    // rebuilt (the table data is not rewritten).
    r#"
ALTER TABLE auditlog_logs ALTER COLUMN name TYPE text COLLATE "C";
ALTER TABLE auditlog_entries
    ALTER COLUMN log TYPE text COLLATE "C",
    ALTER COLUMN subject TYPE text COLLATE "C",
    ALTER COLUMN actor TYPE text COLLATE "C",
    ALTER COLUMN idempotency_key TYPE text COLLATE "C";
ALTER TABLE auditlog_nodes ALTER COLUMN log TYPE text COLLATE "C";
ALTER TABLE auditlog_checkpoints ALTER COLUMN log TYPE text COLLATE "C";
ALTER TABLE auditlog_segments ALTER COLUMN log TYPE text COLLATE "C";
"#,
    // Version 3: the database itself refuses a second entry with an
    // idempotency key a log already used. A server that wrote the log's
    // head last pipelines its batches without the head lock, so its key
    // look-ups are not under the lock: two servers given the same key at
    // the same moment could otherwise both append it. Now the second
    // insert fails and its batch commits nothing (its requests are
    // refused, and a retry finds the key). A database that holds such a
    // pair already fails this migration, naming the key.
    r"
DROP INDEX auditlog_entries_key;
CREATE UNIQUE INDEX auditlog_entries_key ON auditlog_entries (log, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
",
];

/// Key of the advisory lock migrations hold ("auditlog" in ASCII).
const MIGRATION_LOCK: i64 = 0x6175_6469_746c_6f67;

/// How a server's pool of connections to PostgreSQL is sized (`[store]
/// pool_size` and `pool_wait` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections the server opens (at least 1). Logs that pipeline
    /// their batches hold one each, at most half of them, so reads and
    /// locked writes always have the other half. Size it so that every
    /// server's pool fits the database's `max_connections`.
    pub max_connections: usize,
    /// Longest wait for a free connection before the operation fails (a
    /// pool that stays empty is an error, not a hang).
    pub wait: std::time::Duration,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            max_connections: 32,
            wait: std::time::Duration::from_secs(30),
        }
    }
}

/// Most tree nodes kept in memory (they never change once written).
const NODE_CACHE: usize = 1 << 20;

/// A PostgreSQL database holding logs.
pub struct PgStore {
    /// Always `Some` until dropped (taken to shut it down without blocking,
    /// which is allowed even inside another runtime).
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    origins: RwLock<HashMap<String, String>>,
    nodes: Mutex<HashMap<(String, NodeId), Hash>>,
    /// Per log, what this process writes without the head lock.
    writers: Mutex<HashMap<String, Writer>>,
    /// Batches sent without the head lock (see [`PgStore::pipelined`]).
    pipelined: std::sync::atomic::AtomicU64,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

fn hashes_of(bytes: &[u8]) -> Result<Vec<Hash>, StoreError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(StoreError::Database(
            "stored frontier is not a whole number of hashes".into(),
        ));
    }
    Ok(bytes
        .chunks(32)
        .map(|c| Hash(c.try_into().expect("32 bytes")))
        .collect())
}

fn bytes_of(hashes: &[Hash]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.0).collect()
}

fn hash_of(bytes: &[u8]) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash)
        .map_err(|_| StoreError::Database("stored hash is not 32 bytes".into()))
}

fn seq_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn seq_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Applies the migrations above the database's version up to `target`,
/// under the advisory lock, in one transaction. Returns (version before,
/// version after).
async fn migrate_client(
    client: &mut tokio_postgres::Client,
    target: i32,
) -> Result<(i32, i32), StoreError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS auditlog_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db)?;
    let from: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM auditlog_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if from > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database schema is version {from}, newer than this auditlog's \
             ({SCHEMA_VERSION}): upgrade auditlog"
        )));
    }
    let to = target.max(from);
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(to as usize)
        .skip(from as usize)
    {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Database(format!("migration to schema version {version}: {e}"))
        })?;
        tx.execute(
            "INSERT INTO auditlog_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok((from, to))
}

/// Migrates the database at `url` to [`SCHEMA_VERSION`] (what `auditlog
/// migrate` runs): (version before, version after).
///
/// # Errors
/// Connection failure, a failed migration, a database newer than the code.
pub fn migrate(url: &str) -> Result<(i32, i32), StoreError> {
    migrate_to(url, SCHEMA_VERSION)
}

/// Migrates to exactly version `target` (tests of upgrades from every
/// earlier version).
///
/// # Errors
/// As [`migrate`].
#[doc(hidden)]
pub fn migrate_to(url: &str, target: i32) -> Result<(i32, i32), StoreError> {
    with_connection(url, move |mut client| async move {
        migrate_client(&mut client, target.min(SCHEMA_VERSION)).await
    })
}

/// Runs `f` with one connection to `url`, on a runtime and a thread of its
/// own, so it can be called from any thread, inside another runtime or not.
///
/// # Errors
/// Connection failure, or `f`'s.
pub(crate) fn with_connection<T, F, Fut>(url: &str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                context: "start the PostgreSQL runtime".into(),
                source: e,
            })?;
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.map_err(db)?;
            let driver = tokio::spawn(conn);
            // `f` owns the client: the connection ends when it is done.
            let out = f(client).await;
            let _ = driver.await;
            out
        })
    })
    .join()
    .map_err(|_| StoreError::Database("the PostgreSQL thread panicked".into()))?
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or key=value
    /// string), migrating its schema first.
    ///
    /// # Errors
    /// Bad URL, connection or migration failure.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, PoolOptions::default())
    }

    /// [`PgStore::connect`] with a pool sized by `options`.
    ///
    /// # Errors
    /// Bad URL or pool size, connection or migration failure.
    pub fn connect_with(url: &str, options: PoolOptions) -> Result<PgStore, StoreError> {
        if options.max_connections == 0 {
            return Err(StoreError::Database(
                "the connection pool needs at least 1 connection".into(),
            ));
        }
        migrate(url)?;
        let config: tokio_postgres::Config = url.parse().map_err(db)?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                context: "start the PostgreSQL runtime".into(),
                source: e,
            })?;
        let pool = {
            let _guard = rt.enter();
            Pool::builder(manager)
                .max_size(options.max_connections)
                // A pool that stays empty is an error, not a hang.
                .wait_timeout(Some(options.wait))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(db)?
        };
        Ok(PgStore {
            rt: Some(rt),
            pool,
            origins: RwLock::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
            pipelined: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Runs `f` on the store's runtime and waits for it, from any thread
    /// (an engine thread, a blocking-pool thread, or start-up code inside
    /// another runtime).
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt
            .as_ref()
            .expect("runtime until drop")
            .spawn(async move {
                let _ = tx.send(f.await);
            });
        rx.recv()
            .map_err(|_| StoreError::Database("the PostgreSQL runtime stopped".into()))?
    }

    /// Batches this store sent without taking the head lock first (each
    /// committed or refused whole), since it connected.
    pub fn pipelined(&self) -> u64 {
        self.pipelined.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Store::append`] (under the lock) for a batch planned to go without
    /// it: a head that moved meanwhile refuses the batch as a conflict,
    /// nothing of it kept, so its requests are planned again.
    fn append_as_refusal(&self, log: &str, batch: &Batch) -> Result<Option<SyncPoint>, StoreError> {
        match self.append(log, batch) {
            Ok(()) => Ok(None),
            Err(StoreError::HeadMoved {
                log,
                expected,
                actual,
            }) => Err(StoreError::Conflict {
                log,
                reason: format!(
                    "the head moved in another process (the batch starts at size {expected}, \
                     the log has {actual} entries)"
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Records the head a write under the lock left (`None`: a seal, or a
    /// failure: not trusted until the next such write).
    fn wrote(&self, log: &str, head: Option<LogHead>) {
        let mut writers = self.writers.lock().expect("writers lock");
        let w = writers.entry(log.to_owned()).or_default();
        if head.is_none() {
            w.conn = None;
        }
        w.head = head;
    }

    fn known(&self, log: &str) -> Result<(), StoreError> {
        if self.origins.read().expect("origins lock").contains_key(log) {
            Ok(())
        } else {
            Err(StoreError::UnknownLog(log.to_owned()))
        }
    }

    /// The durable head of `log`, its row locked until the transaction
    /// ends.
    async fn locked_head<C: GenericClient + Sync>(
        client: &C,
        log: &str,
    ) -> Result<LogHead, StoreError> {
        Self::head_query(client, log, " FOR UPDATE")
            .await?
            .ok_or_else(|| StoreError::UnknownLog(log.to_owned()))
    }

    /// The durable head of `log` as the database holds it now.
    async fn head<C: GenericClient + Sync>(
        client: &C,
        log: &str,
    ) -> Result<Option<LogHead>, StoreError> {
        Self::head_query(client, log, "").await
    }

    async fn head_query<C: GenericClient + Sync>(
        client: &C,
        log: &str,
        lock: &str,
    ) -> Result<Option<LogHead>, StoreError> {
        let statement = client
            .prepare_cached(&format!("{HEAD_SQL}{lock}"))
            .await
            .map_err(db)?;
        let row = client.query_opt(&statement, &[&log]).await.map_err(db)?;
        row.as_ref().map(head_of_row).transpose()
    }

    fn client_error(e: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Database(format!("no database connection: {e}"))
    }

    /// Reads and checks one entry row.
    fn stored(
        log: &str,
        seq: u64,
        encoding: Vec<u8>,
        leaf: &[u8],
        state: i16,
        salt: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
    ) -> Result<StoredEntry, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            log: log.to_owned(),
            location: format!("table auditlog_entries, seq {seq}"),
            reason,
        };
        let leaf_hash = hash_of(leaf)?;
        if leaf_hash_of_encoding(&encoding) != leaf_hash {
            return Err(corrupt("leaf hash mismatch".into()));
        }
        let entry = Entry::decode(&encoding).map_err(|e| corrupt(e.to_string()))?;
        if entry.seq != seq {
            return Err(corrupt(format!(
                "row of seq {seq} holds entry {}",
                entry.seq
            )));
        }
        let state = u8::try_from(state)
            .ok()
            .and_then(PayloadState::from_u8)
            .ok_or_else(|| corrupt(format!("unknown payload state {state}")))?;
        let (salt, payload) = match state {
            PayloadState::Present => {
                let salt: Salt = salt
                    .as_deref()
                    .and_then(|s| <[u8; 32]>::try_from(s).ok().map(Salt))
                    .ok_or_else(|| corrupt("present payload without a 32-byte salt".into()))?;
                let payload = payload.unwrap_or_default();
                if payload.len() as u64 != entry.payload_len
                    || commit_payload(&salt, &payload) != entry.payload_commitment
                {
                    return Err(corrupt("payload does not match its commitment".into()));
                }
                (Some(salt), payload)
            }
            _ => {
                if salt.is_some() || payload.as_ref().is_some_and(|p| !p.is_empty()) {
                    return Err(corrupt("removed payload still has bytes".into()));
                }
                (None, Vec::new())
            }
        };
        Ok(StoredEntry {
            entry,
            encoding,
            leaf_hash,
            state,
            salt,
            payload,
        })
    }
}

/// Reads a log's head (`$1`: its name); the caller may append a lock.
const HEAD_SQL: &str = "SELECT size, prev_leaf, last_timestamp, frontier, segment, \
     segment_first_seq, segment_span_from, segment_frontier, segment_first_timestamp, \
     prev_seal, latest_checkpoint FROM auditlog_logs WHERE name = $1";

/// A head row as [`HEAD_SQL`] reads it.
fn head_of_row(r: &tokio_postgres::Row) -> Result<LogHead, StoreError> {
    Ok(LogHead {
        size: seq_u64(r.get(0)),
        prev_leaf: hash_of(r.get(1))?,
        last_timestamp: r.get(2),
        frontier: hashes_of(r.get(3))?,
        segment: OpenSegment {
            index: seq_u64(r.get(4)),
            first_seq: seq_u64(r.get(5)),
            span_from: r.get(6),
            frontier: hashes_of(r.get(7))?,
            first_timestamp: r.get(8),
        },
        prev_seal: hash_of(r.get(9))?,
        latest_checkpoint: r.get(10),
    })
}

/// Queries the entries of `log` appended with any of `keys`, in one
/// round trip, sent at the first poll. The statement is unnamed, so it is
/// planned for these keys each time: a cached generic plan for `= ANY($2)`
/// can pick another index and cost milliseconds once the table is large.
async fn query_keys(
    client: &tokio_postgres::Client,
    log: &str,
    keys: &[String],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    use tokio_postgres::types::Type;
    client
        .query_typed(
            "SELECT seq, encoding FROM auditlog_entries \
             WHERE log = $1 AND idempotency_key = ANY($2)",
            &[(&log, Type::TEXT), (&keys, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(db)
}

/// The seqs of the entries [`query_keys`] found, by key.
fn seqs_of_rows(rows: Vec<tokio_postgres::Row>, keys: &[String]) -> HashMap<String, u64> {
    let wanted: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    // The column is derived: only what the entry itself says counts.
    rows.into_iter()
        .filter_map(|r| {
            let seq = seq_u64(r.get(0));
            let e = Entry::decode(r.get::<_, &[u8]>(1)).ok()?;
            (e.seq == seq && !e.idempotency_key.is_empty()).then_some((e.idempotency_key, seq))
        })
        .filter(|(k, _)| wanted.contains(k.as_str()))
        .collect()
}

/// Inserts a batch's entries (`$1` the log, `$2`-`$11` the columns of
/// [`Rows::entry_columns`], `$12` the segment).
const INSERT_ENTRIES: &str = "INSERT INTO auditlog_entries (log, seq, encoding, leaf_hash, \
     payload_state, salt, payload, subject, actor, idempotency_key, timestamp_unix_nanos, \
     segment) \
     SELECT $1, s, enc, leaf, st, salt, payload, subject, actor, key, ts, $12 \
     FROM unnest($2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[], \
     $7::text[], $8::text[], $9::text[], $10::bigint[], $11::smallint[]) \
     AS t(s, enc, leaf, salt, payload, subject, actor, key, ts, st)";

/// Inserts a batch's new tree nodes.
const INSERT_NODES: &str = "INSERT INTO auditlog_nodes (log, level, index, hash) \
     SELECT $1, l, i, h FROM unnest($2::smallint[], $3::bigint[], $4::bytea[]) AS t(l, i, h)";

/// Inserts a batch's checkpoint.
const INSERT_CHECKPOINT: &str =
    "INSERT INTO auditlog_checkpoints (log, size, note) VALUES ($1, $2, $3)";

/// Moves the head row past a batch, under the lock already held.
const UPDATE_HEAD: &str = "UPDATE auditlog_logs SET size = $2, prev_leaf = $3, \
     last_timestamp = $4, frontier = $5, segment_frontier = $6, segment_first_timestamp = $7, \
     latest_checkpoint = $8 WHERE name = $1";

/// Writes a batch without the head lock, as one statement and so one
/// transaction (sent alone, in autocommit): moves the head row past the
/// batch only if the head is still the one the batch starts at (`$9` its
/// size, `$10` its segment, `$11` its last leaf), else a division by zero
/// fails the statement and nothing of it is kept; inserts the entries, the
/// tree nodes and the checkpoint. Taking the row lock, the update waits for
/// any other writer of the log to commit first and then looks at the head
/// that writer left. Every change of a head row moves its size (appends)
/// or its segment (seals), so the three columns name one head.
const PIPELINED_BATCH: &str = "WITH moved AS (UPDATE auditlog_logs SET size = $2, \
     prev_leaf = $3, last_timestamp = $4, frontier = $5, segment_frontier = $6, \
     segment_first_timestamp = $7, latest_checkpoint = $8 \
     WHERE name = $1 AND size = $9 AND segment = $10 AND prev_leaf = $11 RETURNING 1), \
     e AS (INSERT INTO auditlog_entries (log, seq, encoding, leaf_hash, payload_state, salt, \
     payload, subject, actor, idempotency_key, timestamp_unix_nanos, segment) \
     SELECT $1, s, enc, leaf, st, salt, payload, subject, actor, key, ts, $10 \
     FROM unnest($12::bigint[], $13::bytea[], $14::bytea[], $15::bytea[], $16::bytea[], \
     $17::text[], $18::text[], $19::text[], $20::bigint[], $21::smallint[]) \
     AS t(s, enc, leaf, salt, payload, subject, actor, key, ts, st)), \
     n AS (INSERT INTO auditlog_nodes (log, level, index, hash) \
     SELECT $1, l, i, h FROM unnest($22::smallint[], $23::bigint[], $24::bytea[]) AS t(l, i, h)), \
     c AS (INSERT INTO auditlog_checkpoints (log, size, note) VALUES ($1, $2, $8)) \
     SELECT 1 / count(*) FROM moved";

/// SQLSTATE of [`PIPELINED_BATCH`]'s refusal (division by zero).
const HEAD_MOVED_STATE: &str = "22012";

/// SQLSTATE of a unique index's refusal.
const UNIQUE_VIOLATION_STATE: &str = "23505";

/// The error of a batch's write (`head`: where it starts). A statement the
/// database refused kept nothing (its transaction is rolled back); two
/// refusals are conflicts with another writer, whose requests may be
/// planned again: the head moved ([`PIPELINED_BATCH`]), or an entry reuses
/// a key (or a seq) already in the log.
fn refusal(log: &str, head: &LogHead, e: &tokio_postgres::Error) -> StoreError {
    let conflict = |reason: String| StoreError::Conflict {
        log: log.to_owned(),
        reason,
    };
    match e.code().map(tokio_postgres::error::SqlState::code) {
        Some(HEAD_MOVED_STATE) => conflict(format!(
            "the head moved in another process (the batch starts at size {}, segment {})",
            head.size, head.segment.index
        )),
        Some(UNIQUE_VIOLATION_STATE) => conflict(format!(
            "a row of the batch is in the database already ({})",
            e.as_db_error().map_or("", |d| d.message())
        )),
        _ => db(e),
    }
}

/// The head `batch` leaves when written after `head`.
///
/// # Errors
/// [`StoreError::HeadMoved`] when the batch does not start at `head`; a
/// stored frontier that does not fit its size.
fn head_after(log: &str, head: &LogHead, batch: &Batch) -> Result<LogHead, StoreError> {
    if head.size != batch.first_seq {
        return Err(StoreError::HeadMoved {
            log: log.to_owned(),
            expected: batch.first_seq,
            actual: head.size,
        });
    }
    let mut tree = CompactRange::<Blake3>::from_parts(head.size, head.frontier.clone())
        .ok_or_else(|| StoreError::Database("stored frontier does not fit the size".into()))?;
    let mut seg_tree = CompactRange::<Blake3>::from_parts(
        head.size - head.segment.first_seq,
        head.segment.frontier.clone(),
    )
    .ok_or_else(|| StoreError::Database("stored segment frontier does not fit the size".into()))?;
    for e in &batch.entries {
        tree.append(e.leaf_hash, |_, _| {});
        seg_tree.append(e.leaf_hash, |_, _| {});
    }
    let mut next = head.clone();
    if let Some(last) = batch.entries.last() {
        next.size = batch.first_seq + batch.entries.len() as u64;
        next.prev_leaf = last.leaf_hash;
        next.last_timestamp = last.entry.timestamp_unix_nanos;
        next.frontier = tree.hashes().to_vec();
        next.segment.frontier = seg_tree.hashes().to_vec();
        next.segment.first_timestamp = head
            .segment
            .first_timestamp
            .or(Some(batch.entries[0].entry.timestamp_unix_nanos));
        next.latest_checkpoint = Some(batch.checkpoint.clone());
    }
    Ok(next)
}

/// A batch's writes as statement parameters: the column arrays of its
/// rows and the head row it leaves.
struct Rows<'a> {
    log: &'a str,
    seqs: Vec<i64>,
    encodings: Vec<&'a [u8]>,
    leaves: Vec<&'a [u8]>,
    salts: Vec<Option<&'a [u8]>>,
    payloads: Vec<Option<&'a [u8]>>,
    subjects: Vec<&'a str>,
    actors: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    times: Vec<i64>,
    states: Vec<i16>,
    segment: i64,
    levels: Vec<i16>,
    indexes: Vec<i64>,
    hashes: Vec<&'a [u8]>,
    end: i64,
    checkpoint: &'a str,
    /// The head row after the batch.
    leaf: &'a [u8],
    last_timestamp: i64,
    frontier: Vec<u8>,
    seg_frontier: Vec<u8>,
    first_timestamp: Option<i64>,
    /// The head the batch starts at: size and last leaf.
    size: i64,
    prev_leaf: &'a [u8],
}

impl<'a> Rows<'a> {
    fn of(log: &'a str, batch: &'a Batch, head: &'a LogHead, next: &'a LogHead) -> Rows<'a> {
        let n = batch.entries.len();
        let mut r = Rows {
            log,
            seqs: Vec::with_capacity(n),
            encodings: Vec::with_capacity(n),
            leaves: Vec::with_capacity(n),
            salts: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            subjects: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            segment: seq_i64(head.segment.index),
            levels: batch
                .nodes
                .iter()
                .map(|(id, _)| i16::from(id.level))
                .collect(),
            indexes: batch
                .nodes
                .iter()
                .map(|(id, _)| seq_i64(id.index))
                .collect(),
            hashes: batch.nodes.iter().map(|(_, h)| h.0.as_slice()).collect(),
            end: seq_i64(next.size),
            checkpoint: &batch.checkpoint,
            leaf: next.prev_leaf.0.as_slice(),
            last_timestamp: next.last_timestamp,
            frontier: bytes_of(&next.frontier),
            seg_frontier: bytes_of(&next.segment.frontier),
            first_timestamp: next.segment.first_timestamp,
            size: seq_i64(head.size),
            prev_leaf: head.prev_leaf.0.as_slice(),
        };
        for e in &batch.entries {
            r.seqs.push(seq_i64(e.entry.seq));
            r.encodings.push(e.encoding.as_slice());
            r.leaves.push(e.leaf_hash.0.as_slice());
            let present = e.state == PayloadState::Present;
            r.salts.push(present.then_some(e.salt.0.as_slice()));
            r.payloads.push(present.then_some(e.payload.as_slice()));
            r.states.push(i16::from(e.state as u8));
            r.subjects.push(e.entry.subject.as_str());
            r.actors.push(e.entry.actor.as_str());
            r.keys
                .push(Some(e.entry.idempotency_key.as_str()).filter(|k| !k.is_empty()));
            r.times.push(e.entry.timestamp_unix_nanos);
        }
        r
    }

    /// `$1`-`$8` of [`UPDATE_HEAD`] and [`PIPELINED_BATCH`]: the log and its
    /// head row after the batch.
    fn head_row(&self) -> [Param<'_>; 8] {
        [
            &self.log,
            &self.end,
            &self.leaf,
            &self.last_timestamp,
            &self.frontier,
            &self.seg_frontier,
            &self.first_timestamp,
            &self.checkpoint,
        ]
    }

    /// `$9`-`$11` of [`PIPELINED_BATCH`]: the head the batch starts at.
    fn start(&self) -> [Param<'_>; 3] {
        [&self.size, &self.segment, &self.prev_leaf]
    }

    /// The entries' columns: `$2`-`$11` of [`INSERT_ENTRIES`], `$12`-`$21`
    /// of [`PIPELINED_BATCH`].
    fn entry_columns(&self) -> [Param<'_>; 10] {
        [
            &self.seqs,
            &self.encodings,
            &self.leaves,
            &self.salts,
            &self.payloads,
            &self.subjects,
            &self.actors,
            &self.keys,
            &self.times,
            &self.states,
        ]
    }

    /// The nodes' columns: `$2`-`$4` of [`INSERT_NODES`], `$22`-`$24` of
    /// [`PIPELINED_BATCH`].
    fn node_columns(&self) -> [Param<'_>; 3] {
        [&self.levels, &self.indexes, &self.hashes]
    }
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// Writes `batch` on a connection inside a transaction that holds the
/// log's head row (`head` as read under the lock), and with `commit`
/// commits it. Returns the head it leaves.
async fn write_batch<C: GenericClient + Sync>(
    tx: &C,
    log: &str,
    head: &LogHead,
    batch: &Batch,
    commit: bool,
) -> Result<LogHead, StoreError> {
    let next = head_after(log, head, batch)?;
    let r = Rows::of(log, batch, head, &next);
    let entry_params = [
        &[&r.log as Param<'_>][..],
        &r.entry_columns(),
        &[&r.segment],
    ]
    .concat();
    let node_params = [&[&r.log as Param<'_>][..], &r.node_columns()].concat();
    let checkpoint_params: [Param<'_>; 3] = [&r.log, &r.end, &r.checkpoint];
    let head_params = r.head_row();
    // Each statement is prepared first (once per connection: later
    // batches find it cached), so that sending them is all that is left.
    let prepare = |sql| async move { tx.prepare_cached(sql).await.map_err(db) };
    let entries = prepare(INSERT_ENTRIES).await?;
    let nodes = prepare(INSERT_NODES).await?;
    let checkpoint = prepare(INSERT_CHECKPOINT).await?;
    let head_row = prepare(UPDATE_HEAD).await?;
    let execute = |statement, params| async move {
        tx.execute(statement, params)
            .await
            .map_err(|e| refusal(log, head, &e))
    };
    // The writes are independent, so they go out together and cost one
    // round trip (tokio-postgres pipelines the queries of one connection,
    // in the order they are first polled: `biased` polls in order, and a
    // prepared statement is sent at its first poll). With `commit`, the
    // COMMIT goes out behind them in the same round trip: if any write
    // fails, PostgreSQL ends the aborted transaction at that COMMIT
    // (answering it as a ROLLBACK, which is no error), and the failed
    // write's error is what this returns.
    let commit = async {
        if commit {
            tx.batch_execute("COMMIT").await.map_err(db)
        } else {
            Ok(())
        }
    };
    tokio::try_join!(
        biased;
        execute(&entries, &entry_params[..]),
        execute(&nodes, &node_params[..]),
        execute(&checkpoint, &checkpoint_params[..]),
        execute(&head_row, &head_params[..]),
        commit
    )?;
    Ok(next)
}

/// A connection of a log's own, for the batches this process writes
/// without taking the head lock first (see [`Store::write_unsynced`]):
/// `synchronous_commit` on for the session, and [`PIPELINED_BATCH`]
/// prepared, so each batch is one message sent at its first poll, and
/// batches follow each other on the wire (and commit) in the order they
/// were written.
struct WriterConn {
    client: deadpool_postgres::Object,
    batch: tokio_postgres::Statement,
}

impl WriterConn {
    async fn open(pool: &Pool) -> Result<WriterConn, StoreError> {
        let client = pool.get().await.map_err(PgStore::client_error)?;
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(db)?;
        let batch = client.prepare_cached(PIPELINED_BATCH).await.map_err(db)?;
        Ok(WriterConn { client, batch })
    }

    /// Writes `batch` after `head`, leaving `next`, and commits, in one
    /// round trip. If the statement fails (the head moved, a key another
    /// server used meanwhile, a row planted in the way), nothing of it is
    /// kept, and every batch sent behind it fails too: each starts where
    /// the one before it ends, which the head row then does not say.
    async fn write(
        &self,
        log: &str,
        head: &LogHead,
        next: &LogHead,
        batch: &Batch,
    ) -> Result<(), StoreError> {
        let r = Rows::of(log, batch, head, next);
        let params = [
            &r.head_row()[..],
            &r.start(),
            &r.entry_columns(),
            &r.node_columns(),
        ]
        .concat();
        match self.client.execute(&self.batch, &params[..]).await {
            Ok(_) => Ok(()),
            Err(e) => Err(refusal(log, head, &e)),
        }
    }
}

/// Why a batch written by [`WriterConn::write`] failed: a
/// [`StoreError::Conflict`] (true) or not, and the error's text.
type Failure = (bool, String);

/// How a batch written by [`WriterConn::write`] ended, once it has.
#[derive(Default)]
struct Outcome {
    done: Mutex<Option<Result<(), Failure>>>,
    ended: std::sync::Condvar,
}

impl Outcome {
    fn set(&self, r: Result<(), StoreError>) {
        let r = r.map_err(|e| match e {
            StoreError::Conflict { reason, .. } => (true, reason),
            e => (false, e.to_string()),
        });
        *self.done.lock().expect("outcome lock") = Some(r);
        self.ended.notify_all();
    }

    fn wait(&self) -> Result<(), Failure> {
        let mut done = self.done.lock().expect("outcome lock");
        loop {
            if let Some(r) = &*done {
                return r.clone();
            }
            done = self.ended.wait(done).expect("outcome lock");
        }
    }
}

/// What this process wrote to a log without the head lock.
#[derive(Default)]
struct Writer {
    /// The head this process's last write leaves, while it is trusted:
    /// set by a committed write under the lock and moved by each batch
    /// written without it; cleared by a seal or a failure.
    head: Option<LogHead>,
    /// The connection batches are sent on, one behind the other, taken
    /// from the pool while the head is trusted (at most half the pool's
    /// connections are held so).
    conn: Option<Arc<WriterConn>>,
    /// Batches written without the lock and not yet published: first seq
    /// and how they end.
    unpublished: std::collections::VecDeque<(u64, Arc<Outcome>)>,
}

/// Writes a seal on a connection inside a transaction that holds the log's
/// head row.
async fn write_seal<C: GenericClient + Sync>(
    tx: &C,
    log: &str,
    head: &LogHead,
    seal: &Seal,
    signed: &str,
) -> Result<(), StoreError> {
    if seal.end_seq != head.size {
        return Err(StoreError::HeadMoved {
            log: log.to_owned(),
            expected: seal.end_seq,
            actual: head.size,
        });
    }
    if seal.segment != head.segment.index || seal.first_seq != head.segment.first_seq {
        return Err(StoreError::Index(format!(
            "seal of segment {} [{}, {}) does not close the open segment {} [{}, {})",
            seal.segment,
            seal.first_seq,
            seal.end_seq,
            head.segment.index,
            head.segment.first_seq,
            head.size
        )));
    }
    let (seg, end, next) = (
        seq_i64(seal.segment),
        seq_i64(seal.end_seq),
        seq_i64(seal.segment + 1),
    );
    tx.execute(
        "UPDATE auditlog_segments SET end_seq = $3, seal = $4 WHERE log = $1 AND segment = $2",
        &[&log, &seg, &end, &signed],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "INSERT INTO auditlog_segments (log, segment, first_seq, span_from) \
         VALUES ($1, $2, $3, $4)",
        &[&log, &next, &end, &seal.span_to],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "UPDATE auditlog_logs SET segment = $2, segment_first_seq = $3, \
         segment_span_from = $4, segment_frontier = '', segment_first_timestamp = NULL, \
         prev_seal = $5, last_timestamp = $6 WHERE name = $1",
        &[
            &log,
            &next,
            &end,
            &seal.span_to,
            &seal.hash().0.as_slice(),
            &head.last_timestamp.max(seal.span_to),
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// The head row of a log, locked by an open transaction on one pooled
/// connection until [`HeadLock::append`] or [`HeadLock::seal`] commits, or
/// the lock is dropped (rolled back).
struct PgHeadLock<'a> {
    store: &'a PgStore,
    log: String,
    client: Option<deadpool_postgres::Object>,
    head: LogHead,
    keys: HashMap<String, Option<u64>>,
}

impl PgHeadLock<'_> {
    fn finish<T, F, Fut>(mut self: Box<Self>, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object, String, LogHead) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let client = self.client.take().expect("open until finished");
        let (log, head) = (self.log.clone(), self.head.clone());
        self.store.run(write(client, log, head))
    }
}

impl super::HeadLock for PgHeadLock<'_> {
    fn head(&self) -> &LogHead {
        &self.head
    }

    fn keys(&self) -> &HashMap<String, Option<u64>> {
        &self.keys
    }

    fn append(self: Box<Self>, batch: &Batch) -> Result<(), StoreError> {
        let (store, log) = (self.store, self.log.clone());
        let batch = batch.clone();
        let written = self.finish(move |client, log, head| async move {
            let done = write_batch(&client, &log, &head, &batch, true).await;
            if done.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            done
        });
        store.wrote(&log, written.as_ref().ok().cloned());
        written.map(|_| ())
    }

    fn seal(self: Box<Self>, seal: &Seal, signed: &str) -> Result<(), StoreError> {
        self.store.wrote(&self.log, None);
        let (seal, signed) = (seal.clone(), signed.to_owned());
        self.finish(move |client, log, head| async move {
            let done = async {
                write_seal(&client, &log, &head, &seal, &signed).await?;
                client.batch_execute("COMMIT").await.map_err(db)
            }
            .await;
            if done.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            done
        })
    }
}

impl Drop for PgHeadLock<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Not finished: release the row (the connection goes back to
            // the pool once it has rolled back).
            if let Some(rt) = &self.store.rt {
                rt.spawn(async move {
                    let _ = client.batch_execute("ROLLBACK").await;
                });
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for PgStore {
    fn open_log(&self, spec: &LogSpec, now: i64) -> Result<LogHead, StoreError> {
        if !super::embedded::is_valid_log_name(&spec.name) {
            return Err(StoreError::Database(format!(
                "log name {:?}: log names are 1-64 characters of a-z, 0-9, '_', '-', '.'",
                spec.name
            )));
        }
        let pool = self.pool.clone();
        let spec2 = spec.clone();
        let head = self.run(async move {
            let mut client = pool.get().await.map_err(Self::client_error)?;
            let tx = client.transaction().await.map_err(db)?;
            let inserted = tx
                .execute(
                    "INSERT INTO auditlog_logs (name, origin, size, prev_leaf, last_timestamp, \
                     frontier, segment, segment_first_seq, segment_span_from, segment_frontier, \
                     prev_seal) VALUES ($1, $2, 0, $3, $4, '', 0, 0, $4, '', $3) \
                     ON CONFLICT (name) DO NOTHING",
                    &[&spec2.name, &spec2.origin, &Hash::ZERO.0.as_slice(), &now],
                )
                .await
                .map_err(db)?;
            if inserted == 1 {
                tx.execute(
                    "INSERT INTO auditlog_segments (log, segment, first_seq, span_from) \
                     VALUES ($1, 0, 0, $2)",
                    &[&spec2.name, &now],
                )
                .await
                .map_err(db)?;
            }
            let origin: String = tx
                .query_one(
                    "SELECT origin FROM auditlog_logs WHERE name = $1",
                    &[&spec2.name],
                )
                .await
                .map_err(db)?
                .get(0);
            if origin != spec2.origin {
                return Err(StoreError::OriginMismatch {
                    log: spec2.name.clone(),
                    stored: origin,
                    configured: spec2.origin.clone(),
                });
            }
            let head = Self::head(&tx, &spec2.name)
                .await?
                .ok_or_else(|| StoreError::UnknownLog(spec2.name.clone()))?;
            tx.commit().await.map_err(db)?;
            Ok(head)
        })?;
        self.origins
            .write()
            .expect("origins lock")
            .insert(spec.name.clone(), spec.origin.clone());
        Ok(head)
    }

    fn shared(&self) -> bool {
        true
    }

    fn logs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .origins
            .read()
            .expect("origins lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn append(&self, log: &str, batch: &Batch) -> Result<(), StoreError> {
        self.known(log)?;
        if batch.entries.is_empty() {
            return Ok(());
        }
        let pool = self.pool.clone();
        let log2 = log.to_owned();
        let batch = batch.clone();
        let written = self.run(async move {
            let mut client = pool.get().await.map_err(Self::client_error)?;
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await
                .map_err(db)?;
            let head = Self::locked_head(&tx, &log2).await?;
            let next = write_batch(&tx, &log2, &head, &batch, false).await?;
            tx.commit().await.map_err(db)?;
            Ok(next)
        });
        self.wrote(log, written.as_ref().ok().cloned());
        written.map(|_| ())
    }

    /// Without the head lock when this process wrote the log's head last
    /// (and nothing failed since): the batch is sent on the log's writer
    /// connection behind the batches written before it, in one round trip
    /// (see [`WriterConn::write`]), and the returned sync point waits for
    /// its COMMIT. The head row refuses it if another process moved the
    /// head meanwhile. Otherwise, [`Store::append`] under the lock.
    fn write_unsynced(&self, log: &str, batch: &Batch) -> Result<Option<SyncPoint>, StoreError> {
        self.known(log)?;
        let mut writers = self.writers.lock().expect("writers lock");
        let w = writers.entry(log.to_owned()).or_default();
        let head = match &w.head {
            Some(h) if h.size == batch.first_seq && !batch.entries.is_empty() => h.clone(),
            _ => {
                drop(writers);
                return self.append_as_refusal(log, batch);
            }
        };
        let next = head_after(log, &head, batch)?;
        let next2 = next.clone();
        let held = writers.values().filter(|w| w.conn.is_some()).count();
        let w = writers.get_mut(log).expect("inserted above");
        let conn = match &w.conn {
            Some(c) => c.clone(),
            // Half the pool at most: the rest stays for reads and locks.
            None if held >= self.pool.status().max_size / 2 => {
                // The pool stays for everything else: this log's batches
                // go under the lock.
                drop(writers);
                return self.append_as_refusal(log, batch);
            }
            None => {
                let pool = self.pool.clone();
                let c = Arc::new(self.run(async move { WriterConn::open(&pool).await })?);
                w.conn = Some(c.clone());
                c
            }
        };
        let outcome = Arc::new(Outcome::default());
        // The first poll sends the statement (it needs no runtime: the
        // connection task takes it from a channel), here, so batches go
        // out in the order they are written; the runtime awaits the rest.
        let ended = outcome.clone();
        let (log2, batch2) = (log.to_owned(), batch.clone());
        let mut write = Box::pin(async move {
            let done = conn.write(&log2, &head, &next2, &batch2).await;
            ended.set(done);
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if write.as_mut().poll(&mut cx).is_pending() {
            self.rt.as_ref().expect("runtime until drop").spawn(write);
        }
        self.pipelined
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        w.head = Some(next);
        w.unpublished.push_back((batch.first_seq, outcome.clone()));
        Ok(Some(SyncPoint::new(move || {
            outcome.wait().map_err(|(_, m)| std::io::Error::other(m))
        })))
    }

    /// One batch committing, one more sent behind it: each batch commits
    /// (and syncs) on its own, so later requests wait for the next batch.
    fn max_unpublished(&self) -> u64 {
        1
    }

    /// Waits for the batch's own COMMIT (the sync point run may have been a
    /// later batch's). After a failure nothing is written without the lock
    /// until a write under the lock succeeds again.
    fn publish(
        &self,
        log: &str,
        batch: &Batch,
        synced: std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let oldest = {
            let mut writers = self.writers.lock().expect("writers lock");
            writers.get_mut(log).and_then(|w| w.unpublished.pop_front())
        };
        let outcome = match oldest {
            Some((first, outcome)) if first == batch.first_seq => outcome.wait(),
            other => Err((
                false,
                format!(
                    "{log}: publish of the batch at seq {} out of order (oldest unpublished: {:?})",
                    batch.first_seq,
                    other.map(|(first, _)| first)
                ),
            )),
        };
        // The batch's own outcome decides (a sync point that failed was a
        // later batch's, or this one's).
        let Err((conflict, message)) = outcome else {
            return Ok(());
        };
        let _ = synced;
        if let Some(w) = self.writers.lock().expect("writers lock").get_mut(log) {
            w.head = None;
            w.conn = None;
        }
        Err(if conflict {
            StoreError::Conflict {
                log: log.to_owned(),
                reason: message,
            }
        } else {
            StoreError::Database(message)
        })
    }

    fn seal(&self, log: &str, seal: &Seal, signed: &str) -> Result<(), StoreError> {
        self.known(log)?;
        self.wrote(log, None);
        let pool = self.pool.clone();
        let log = log.to_owned();
        let seal = seal.clone();
        let signed = signed.to_owned();
        self.run(async move {
            let mut client = pool.get().await.map_err(Self::client_error)?;
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await
                .map_err(db)?;
            let head = Self::locked_head(&tx, &log).await?;
            write_seal(&tx, &log, &head, &seal, &signed).await?;
            tx.commit().await.map_err(db)
        })
    }

    fn stored_logs(&self) -> Result<Vec<LogSpec>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            Ok(client
                .query("SELECT name, origin FROM auditlog_logs ORDER BY name", &[])
                .await
                .map_err(db)?
                .into_iter()
                .map(|r| LogSpec {
                    name: r.get(0),
                    origin: r.get(1),
                })
                .collect())
        })
    }

    fn checkpoints_after(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            Ok(client
                .query(
                    "SELECT size, note FROM auditlog_checkpoints WHERE log = $1 AND size > $2 \
                     ORDER BY size LIMIT $3",
                    &[
                        &log,
                        &seq_i64(after),
                        &i64::try_from(limit).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(db)?
                .into_iter()
                .map(|r| (seq_u64(r.get(0)), r.get(1)))
                .collect())
        })
    }

    fn latest_checkpoint(&self, log: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            let r = client
                .query_one(
                    "SELECT size, latest_checkpoint FROM auditlog_logs WHERE name = $1",
                    &[&log],
                )
                .await
                .map_err(db)?;
            let cp: Option<String> = r.get(1);
            Ok(cp.map(|c| (seq_u64(r.get(0)), c)))
        })
    }

    fn lock_head(
        &self,
        log: &str,
        keys: &[&str],
    ) -> Result<Option<Box<dyn super::HeadLock + '_>>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log2 = log.to_owned();
        let asked: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let (client, head, keys) = self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            // BEGIN, the locking read and the key look-up go out together,
            // one round trip, in this order (the read prepared first, both
            // sent at their first poll, polled in order). The
            // look-up runs once the lock is granted (a connection runs its
            // queries in order), so it sees every batch committed before
            // this one can be written.
            let locked = async {
                let lock = client
                    .prepare_cached(&format!("{HEAD_SQL} FOR UPDATE"))
                    .await
                    .map_err(db)?;
                let (_, head, found) = tokio::try_join!(
                    biased;
                    async {
                        client
                            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
                            .await
                            .map_err(db)
                    },
                    async { client.query_opt(&lock, &[&log2]).await.map_err(db) },
                    async {
                        if asked.is_empty() {
                            return Ok(Vec::new());
                        }
                        query_keys(&client, &log2, &asked).await
                    }
                )?;
                let head = head
                    .as_ref()
                    .map(head_of_row)
                    .transpose()?
                    .ok_or_else(|| StoreError::UnknownLog(log2.clone()))?;
                let found = seqs_of_rows(found, &asked);
                let keys: HashMap<String, Option<u64>> = asked
                    .into_iter()
                    .map(|k| {
                        let seq = found.get(&k).copied();
                        (k, seq)
                    })
                    .collect();
                Ok::<_, StoreError>((head, keys))
            }
            .await;
            match locked {
                Ok((head, keys)) => Ok((client, head, keys)),
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })?;
        Ok(Some(Box::new(PgHeadLock {
            store: self,
            log: log.to_owned(),
            client: Some(client),
            head,
            keys,
        })))
    }

    fn entry(&self, log: &str, seq: u64) -> Result<Option<StoredEntry>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            let Some(r) = client
                .query_opt(
                    "SELECT encoding, leaf_hash, payload_state, salt, payload \
                     FROM auditlog_entries WHERE log = $1 AND seq = $2",
                    &[&log, &seq_i64(seq)],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            Self::stored(&log, seq, r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)).map(Some)
        })
    }

    fn seq_by_idempotency_key(&self, log: &str, key: &str) -> Result<Option<u64>, StoreError> {
        self.known(log)?;
        let found = self.matching(log, "idempotency_key", key, 0, 1)?;
        Ok(found.first().copied())
    }

    fn seqs_by_idempotency_keys(
        &self,
        log: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, u64>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            Ok(seqs_of_rows(query_keys(&client, &log, &keys).await?, &keys))
        })
    }

    fn seqs_by_subject(
        &self,
        log: &str,
        subject: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.known(log)?;
        self.matching(log, "subject", subject, from_seq, limit)
    }

    fn seqs_by_actor(
        &self,
        log: &str,
        actor: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.known(log)?;
        self.matching(log, "actor", actor, from_seq, limit)
    }

    fn seq_range_by_time(
        &self,
        log: &str,
        since: i64,
        until: i64,
    ) -> Result<Range<u64>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            let size: i64 = client
                .query_one("SELECT size FROM auditlog_logs WHERE name = $1", &[&log])
                .await
                .map_err(db)?
                .get(0);
            let first_at = |t: i64| {
                let client = &client;
                let log = &log;
                async move {
                    let r = client
                        .query_opt(
                            "SELECT seq FROM auditlog_entries WHERE log = $1 AND \
                             timestamp_unix_nanos >= $2 ORDER BY timestamp_unix_nanos, seq LIMIT 1",
                            &[log, &t],
                        )
                        .await
                        .map_err(db)?;
                    Ok::<u64, StoreError>(seq_u64(r.map_or(size, |r| r.get(0))))
                }
            };
            let from = first_at(since).await?;
            let to = if until <= since {
                from
            } else {
                first_at(until).await?
            };
            Ok(from..to.max(from))
        })
    }

    fn node(&self, log: &str, id: NodeId) -> Result<Hash, NodeReadError> {
        let key = (log.to_owned(), id);
        if let Some(h) = self.nodes.lock().expect("node cache").get(&key) {
            return Ok(*h);
        }
        let pool = self.pool.clone();
        let log2 = log.to_owned();
        let got = self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            let row = if id.level == 0 {
                client
                    .query_opt(
                        "SELECT leaf_hash FROM auditlog_entries WHERE log = $1 AND seq = $2",
                        &[&log2, &seq_i64(id.index)],
                    )
                    .await
            } else {
                client
                    .query_opt(
                        "SELECT hash FROM auditlog_nodes WHERE log = $1 AND level = $2 AND index = $3",
                        &[&log2, &i16::from(id.level), &seq_i64(id.index)],
                    )
                    .await
            }
            .map_err(db)?;
            match row {
                Some(r) => hash_of(r.get(0)).map(Some),
                None => Ok(None),
            }
        });
        match got {
            Ok(Some(h)) => {
                let mut cache = self.nodes.lock().expect("node cache");
                if cache.len() >= NODE_CACHE {
                    cache.clear();
                }
                cache.insert(key, h);
                Ok(h)
            }
            Ok(None) => Err(NodeReadError {
                id,
                reason: "not in the database".into(),
            }),
            Err(e) => Err(NodeReadError {
                id,
                reason: e.to_string(),
            }),
        }
    }

    fn checkpoint_at(&self, log: &str, size: u64) -> Result<Option<String>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            Ok(client
                .query_opt(
                    "SELECT note FROM auditlog_checkpoints WHERE log = $1 AND size = $2",
                    &[&log, &seq_i64(size)],
                )
                .await
                .map_err(db)?
                .map(|r| r.get(0)))
        })
    }

    fn segments(&self, log: &str) -> Result<Vec<SegmentInfo>, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            let rows = client
                .query(
                    "SELECT s.segment, s.first_seq, coalesce(s.end_seq, l.size), s.seal \
                     FROM auditlog_segments s JOIN auditlog_logs l ON l.name = s.log \
                     WHERE s.log = $1 ORDER BY s.segment",
                    &[&log],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .into_iter()
                .map(|r| SegmentInfo {
                    index: seq_u64(r.get(0)),
                    first_seq: seq_u64(r.get(1)),
                    end_seq: seq_u64(r.get(2)),
                    seal: r.get(3),
                })
                .collect())
        })
    }

    fn remove_payloads(
        &self,
        log: &str,
        seqs: &[u64],
        state: PayloadState,
    ) -> Result<Removal, StoreError> {
        self.known(log)?;
        let pool = self.pool.clone();
        let log = log.to_owned();
        let seqs: Vec<i64> = seqs.iter().map(|s| seq_i64(*s)).collect();
        self.run(async move {
            let mut client = pool.get().await.map_err(Self::client_error)?;
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await
                .map_err(db)?;
            let r = tx
                .query_one(
                    "SELECT size, segment_first_seq FROM auditlog_logs WHERE name = $1 FOR SHARE",
                    &[&log],
                )
                .await
                .map_err(db)?;
            let (size, open_first) = (seq_u64(r.get(0)), seq_u64(r.get(1)));
            for &seq in &seqs {
                super::check_removable(seq_u64(seq), size, open_first)?;
            }
            let rows = tx
                .query(
                    "WITH t AS (SELECT seq, segment, \
                       coalesce(octet_length(payload), 0) + coalesce(octet_length(salt), 0) AS n \
                       FROM auditlog_entries WHERE log = $1 AND seq = ANY($2) AND payload_state = 0 \
                       FOR UPDATE) \
                     UPDATE auditlog_entries e SET payload = NULL, salt = NULL, payload_state = $3 \
                     FROM t WHERE e.log = $1 AND e.seq = t.seq RETURNING t.segment, t.n",
                    &[&log, &seqs, &(state as u8 as i16)],
                )
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            let mut segments: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            segments.sort_unstable();
            segments.dedup();
            Ok(Removal {
                segments: segments.len() as u64,
                entries: rows.len() as u64,
                bytes: rows.iter().map(|r| r.get::<_, i32>(1) as u64).sum(),
            })
        })
    }
}

impl PgStore {
    /// Seqs from `from_seq` whose indexed `column` equals `value`, each
    /// checked against its decoded entry (the column is derived; a row
    /// whose column disagrees with its encoding is not an answer).
    fn matching(
        &self,
        log: &str,
        column: &'static str,
        value: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let pool = self.pool.clone();
        let log = log.to_owned();
        let value = value.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(Self::client_error)?;
            let sql = format!(
                "SELECT seq, encoding FROM auditlog_entries WHERE log = $1 AND {column} = $2 \
                 AND seq >= $3 ORDER BY seq LIMIT $4"
            );
            let rows = client
                .query(
                    &sql,
                    &[
                        &log,
                        &value,
                        &seq_i64(from_seq),
                        &i64::try_from(limit).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .into_iter()
                .filter_map(|r| {
                    let seq = seq_u64(r.get(0));
                    let e = Entry::decode(r.get::<_, &[u8]>(1)).ok()?;
                    let field = match column {
                        "subject" => &e.subject,
                        "actor" => &e.actor,
                        _ => &e.idempotency_key,
                    };
                    (*field == value && e.seq == seq).then_some(seq)
                })
                .collect())
        })
    }
}
