//! One behaviour, two stores: the same cases run against the embedded
//! store and the PostgreSQL store (a throwaway server, skipped where
//! PostgreSQL is not installed unless `AUDITLOG_REQUIRE_POSTGRES=1`), so
//! any difference between them is a failing test.
//!
//! Each case gets a fresh store from a [`Maker`], which can also reopen it
//! (a restart).

mod common;

use std::sync::Arc;

use auditlog::bundle::{verify_bundle, Query};
use auditlog::core::hash::Blake3;
use auditlog::core::merkle::{verify_consistency, verify_inclusion};
use auditlog::core::seal::{Seal, SealReason};
use auditlog::engine::admin::Target;
use auditlog::engine::input::{AppendError, Limits};
use auditlog::engine::{AppendOutcome, Engine, LogConfig};
use auditlog::store::embedded::EmbeddedStore;
use auditlog::store::postgres::PgStore;
use auditlog::store::{PayloadState, Store};
use auditlog::verify::Verdict;
use common::pg::Pg;
use common::{chats, check_receipts, input, keyed, open_cp, orders, signer, ManualClock};

/// Makes a fresh store for one case, and reopens it.
trait Maker {
    /// The store, opened again (a restart).
    fn open(&self) -> Arc<dyn Store>;
    /// Verifies the whole store (closed) from what it holds.
    fn verify(&self) -> auditlog::verify::Report;
}

struct EmbeddedMaker(tempfile::TempDir);

impl Maker for EmbeddedMaker {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(self.0.path()).unwrap())
    }
    fn verify(&self) -> auditlog::verify::Report {
        auditlog::verify::store::verify_data_dir(self.0.path(), &[signer().verifier()]).unwrap()
    }
}

struct PgMaker(String);

impl Maker for PgMaker {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(PgStore::connect(&self.0).unwrap())
    }
    fn verify(&self) -> auditlog::verify::Report {
        auditlog::verify::postgres::verify_postgres(&self.0, &[signer().verifier()]).unwrap()
    }
}

fn start(store: Arc<dyn Store>, logs: Vec<LogConfig>, clock: Arc<ManualClock>) -> Engine {
    Engine::start(store, signer(), logs, Limits::default(), clock).unwrap()
}

const ORIGIN: &str = "audit.example.com/orders";

/// Opens the `orders` log on a store used without an engine.
fn open_orders(store: &dyn Store) {
    let spec = auditlog::store::LogSpec {
        name: "orders".into(),
        origin: ORIGIN.into(),
    };
    store.open_log(&spec, 1_000).unwrap();
}

fn receipts_proofs_and_restart(m: &dyn Maker) {
    let clock = ManualClock::at(1_000);
    let engine = Arc::new(start(m.open(), vec![orders(), chats()], clock.clone()));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let entries = (0..(i % 3 + 1))
                            .map(|j| input(&format!("order:{t}"), &format!("p{t}-{i}-{j}")))
                            .collect();
                        engine.append_blocking("orders", entries).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outs: Vec<AppendOutcome> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    for o in &outs {
        check_receipts(o, ORIGIN);
    }
    let mut seqs: Vec<u64> = outs
        .iter()
        .flat_map(|o| o.receipts.iter().map(|r| r.seq))
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "dense seqs"
    );
    let total = seqs.len() as u64;

    // Reads: every entry with a proof against the latest checkpoint, and
    // consistency from every receipt's checkpoint.
    let (size, latest) = engine.checkpoint("orders").unwrap().unwrap();
    assert_eq!(size, total);
    let cp = open_cp(&latest, ORIGIN);
    for seq in 0..total {
        let (stored, proof, _) = engine.entry("orders", seq, 0).unwrap();
        assert_eq!(stored.entry.seq, seq);
        assert_eq!(stored.state, PayloadState::Present);
        verify_inclusion::<Blake3>(seq, cp.size, &stored.leaf_hash, &proof, &cp.root).unwrap();
    }
    for o in outs.iter().take(8) {
        let old = open_cp(&o.checkpoint, ORIGIN);
        let (proof, to_cp, to) = engine.consistency("orders", old.size, 0).unwrap();
        let new = open_cp(&to_cp, ORIGIN);
        assert_eq!(to, new.size);
        verify_consistency::<Blake3>(old.size, new.size, &proof, &old.root, &new.root).unwrap();
    }
    // Queries.
    let store = engine.store().clone();
    let by_subject = store.seqs_by_subject("orders", "order:2", 0, 1000).unwrap();
    // Thread 2 appended 1, 2, 3, 1, 2, 3, 1, 2, 3, 1 entries.
    assert_eq!(by_subject.len(), 19);
    assert!(by_subject.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        store
            .seqs_by_subject("orders", "order:2", by_subject[5], 3)
            .unwrap(),
        by_subject[5..8]
    );
    assert_eq!(
        store
            .seqs_by_actor("orders", "buyer:42", 0, 1000)
            .unwrap()
            .len() as u64,
        total
    );
    assert!(store
        .seqs_by_subject("chats", "order:2", 0, 10)
        .unwrap()
        .is_empty());
    drop(store);
    engine.shutdown();
    drop(engine);

    // Restart: the same head, and appends go on from it.
    clock.set(2_000);
    let engine = start(m.open(), vec![orders(), chats()], clock.clone());
    assert_eq!(
        engine.checkpoint("orders").unwrap().unwrap(),
        (size, latest)
    );
    let more = engine
        .append_blocking("orders", vec![input("order:9", "after restart")])
        .unwrap();
    assert_eq!(more.receipts[0].seq, total);
    check_receipts(&more, ORIGIN);
    let (stored, _, _) = engine.entry("orders", total, 0).unwrap();
    assert_eq!(
        stored.entry.prev_leaf_hash,
        engine.entry("orders", total - 1, 0).unwrap().0.leaf_hash
    );
    // Time: [1000, 2000) holds everything before the restart.
    assert_eq!(
        engine
            .store()
            .seq_range_by_time("orders", 0, 2_000)
            .unwrap(),
        0..total
    );
    assert_eq!(
        engine
            .store()
            .seq_range_by_time("orders", 2_000, 3_000)
            .unwrap(),
        total..total + 1
    );
    engine.shutdown();
}

fn idempotency_and_atomicity(m: &dyn Maker) {
    let clock = ManualClock::at(1_000);
    let engine = start(m.open(), vec![orders()], clock.clone());
    let first = engine
        .append_blocking("orders", vec![keyed("order:1", "prompt", "k-1")])
        .unwrap();
    let again = engine
        .append_blocking(
            "orders",
            vec![
                keyed("order:1", "prompt", "k-1"),
                keyed("order:1", "output", "k-2"),
            ],
        )
        .unwrap();
    assert!(again.receipts[0].duplicate);
    assert_eq!(again.receipts[0].seq, first.receipts[0].seq);
    assert_eq!(again.receipts[0].leaf_hash, first.receipts[0].leaf_hash);
    assert!(!again.receipts[1].duplicate);
    check_receipts(&again, ORIGIN);
    assert!(matches!(
        engine.append_blocking("orders", vec![keyed("order:1", "other", "k-1")]),
        Err(AppendError::IdempotencyConflict { .. })
    ));
    // A batch with one bad entry appends nothing.
    let mut bad = input("order:1", "x");
    bad.kind = String::new();
    let before = engine.checkpoint("orders").unwrap().unwrap().0;
    assert!(engine
        .append_blocking("orders", vec![input("order:1", "fine"), bad])
        .is_err());
    assert_eq!(engine.checkpoint("orders").unwrap().unwrap().0, before);
    engine.shutdown();
    drop(engine);
    // Keys survive a restart.
    let engine = start(m.open(), vec![orders()], clock);
    let after = engine
        .append_blocking("orders", vec![keyed("order:1", "output", "k-2")])
        .unwrap();
    assert!(after.receipts[0].duplicate);
    assert_eq!(after.receipts[0].seq, again.receipts[1].seq);
    engine.shutdown();
}

fn seals_and_checkpoints(m: &dyn Maker) {
    let clock = ManualClock::at(1_000);
    let engine = start(m.open(), vec![orders()], clock.clone());
    let mut sizes = Vec::new();
    for round in 0..3 {
        for i in 0..3 {
            let out = engine
                .append_blocking("orders", vec![input("order:1", &format!("{round}/{i}"))])
                .unwrap();
            sizes.push(out.tree_size);
        }
        clock.set(1_000 + (round + 1) * 100);
        engine.seal_blocking("orders", SealReason::Request).unwrap();
    }
    engine
        .append_blocking("orders", vec![input("order:1", "open")])
        .unwrap();
    let store = engine.store().clone();
    for size in &sizes {
        let text = store.checkpoint_at("orders", *size).unwrap().unwrap();
        assert_eq!(open_cp(&text, ORIGIN).size, *size);
    }
    let segments = store.segments("orders").unwrap();
    assert_eq!(segments.len(), 4);
    let mut prev: Option<Seal> = None;
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.index, i as u64);
        assert_eq!(s.first_seq, 3 * i as u64);
        match &s.seal {
            Some(text) => {
                let (seal, _) = Seal::open(text, &[signer().verifier()]).unwrap();
                seal.check_follows(prev.as_ref()).unwrap();
                assert_eq!(seal.end_seq, s.end_seq);
                prev = Some(seal);
            }
            None => assert_eq!((i, s.end_seq), (3, 10)),
        }
    }
    drop(store);
    engine.shutdown();
    drop(engine);
    // After a restart the open segment is the same and seals go on chaining.
    let engine = start(m.open(), vec![orders()], clock.clone());
    clock.set(2_000);
    engine.seal_blocking("orders", SealReason::Request).unwrap();
    let segments = engine.store().segments("orders").unwrap();
    let (last, _) = Seal::open(segments[3].seal.as_ref().unwrap(), &[signer().verifier()]).unwrap();
    last.check_follows(prev.as_ref()).unwrap();
    assert_eq!((last.first_seq, last.end_seq), (9, 10));
    engine.shutdown();
    drop(engine);
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
    // orders: 4 seals; _system records each of them.
    assert_eq!(report.seals_checked, 4);
}

fn erasure_holds_and_evidence(m: &dyn Maker) {
    let clock = ManualClock::at(1_000);
    let engine = start(m.open(), vec![orders()], clock.clone());
    for i in 0..4 {
        engine
            .append_blocking(
                "orders",
                vec![input(&format!("order:{}", i % 2), &format!("payload {i}"))],
            )
            .unwrap();
    }
    engine.seal_blocking("orders", SealReason::Request).unwrap();
    engine
        .append_blocking("orders", vec![input("order:0", "in the open segment")])
        .unwrap();
    let hold = engine
        .place_hold(Some("orders"), Some("order:1"), "case-1", "dispute", "test")
        .unwrap();
    let erased = engine
        .erase(Some("orders"), &Target::Subject("order:1".into()), "test")
        .unwrap();
    assert_eq!(erased[0].erased, 0, "held");
    engine.release_hold(&hold.id, "closed", "test").unwrap();
    let erased = engine
        .erase(Some("orders"), &Target::Subject("order:1".into()), "test")
        .unwrap();
    assert_eq!(erased[0].erased, 2);
    let (gone, proof, cp) = engine.entry("orders", 1, 0).unwrap();
    assert_eq!(gone.state, PayloadState::Erased);
    assert!(gone.payload.is_empty() && gone.salt.is_none());
    let cp = open_cp(&cp, ORIGIN);
    verify_inclusion::<Blake3>(1, cp.size, &gone.leaf_hash, &proof, &cp.root).unwrap();
    assert_eq!(
        engine.entry("orders", 0, 0).unwrap().0.state,
        PayloadState::Present
    );

    let mut out = Vec::new();
    engine
        .export(
            "orders",
            Query::SeqRange {
                from_seq: 0,
                to_seq: 5,
            },
            None,
            &mut out,
        )
        .unwrap();
    let (report, summary) = verify_bundle(out.as_slice(), &[signer().verifier()], None);
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(summary.entries, 5);
    assert_eq!(report.seals_checked, 1);
    assert_eq!(
        report
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Erased)
            .count(),
        2
    );
    // The open segment's payloads cannot be removed.
    assert!(engine
        .store()
        .remove_payloads("orders", &[4], PayloadState::Erased)
        .is_err());
    engine.shutdown();
    drop(engine);
    // The whole store verifies, the erased payloads reported.
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(report.seals_checked, 1);
    assert_eq!(
        report
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Erased && f.log == "orders")
            .count(),
        2
    );
}

fn limits_and_retention(m: &dyn Maker) {
    const S: i64 = 1_000_000_000;
    let clock = ManualClock::at(100 * S);
    let mut policy = orders();
    policy.seal_after = None;
    policy.retention = Some(std::time::Duration::from_secs(30));
    policy.retention_window = Some(std::time::Duration::from_secs(10));
    let limits = Limits {
        max_payload_bytes: 64,
        ..Limits::default()
    };
    let engine = Engine::start(m.open(), signer(), vec![policy], limits, clock.clone()).unwrap();
    // Limits: refused whole, nothing appended.
    let big = input("order:1", &"x".repeat(65));
    assert!(matches!(
        engine.append_blocking("orders", vec![input("order:1", "ok"), big]),
        Err(AppendError::TooLarge { entry: Some(1), .. })
    ));
    assert!(engine.checkpoint("orders").unwrap().is_none());
    // Retention: entries of the window [100 s, 110 s) expire at 140 s,
    // except those under a hold; their proofs still hold.
    for i in 0..4 {
        engine
            .append_blocking("orders", vec![input(&format!("order:{}", i % 2), "p")])
            .unwrap();
    }
    engine
        .place_hold(Some("orders"), Some("order:1"), "case-2", "dispute", "test")
        .unwrap();
    clock.set(111 * S);
    engine.close_windows_blocking("orders").unwrap();
    clock.set(139 * S);
    let early = engine.apply_retention(139 * S, false, "test").unwrap();
    assert!(early.iter().all(|e| e.entries == 0), "{early:?}");
    let done = engine.apply_retention(141 * S, false, "test").unwrap();
    let orders_done = done.iter().find(|e| e.log == "orders").unwrap();
    assert_eq!((orders_done.entries, orders_done.held), (2, 2));
    let states: Vec<PayloadState> = (0..4)
        .map(|seq| engine.entry("orders", seq, 0).unwrap().0.state)
        .collect();
    assert_eq!(
        states,
        [
            PayloadState::Expired,
            PayloadState::Present,
            PayloadState::Expired,
            PayloadState::Present
        ]
    );
    let (gone, proof, cp) = engine.entry("orders", 0, 0).unwrap();
    let cp = open_cp(&cp, ORIGIN);
    verify_inclusion::<Blake3>(0, cp.size, &gone.leaf_hash, &proof, &cp.root).unwrap();
    engine.shutdown();
}

type Case = (&'static str, fn(&dyn Maker));

const CASES: [Case; 5] = [
    ("limits_and_retention", limits_and_retention),
    ("receipts_proofs_and_restart", receipts_proofs_and_restart),
    ("idempotency_and_atomicity", idempotency_and_atomicity),
    ("seals_and_checkpoints", seals_and_checkpoints),
    ("erasure_holds_and_evidence", erasure_holds_and_evidence),
];

#[test]
fn the_embedded_store_conforms() {
    for (name, case) in CASES {
        eprintln!("embedded: {name}");
        case(&EmbeddedMaker(tempfile::tempdir().unwrap()));
    }
}

#[test]
fn the_postgres_store_conforms() {
    let Some(pg) = Pg::start("the_postgres_store_conforms") else {
        return;
    };
    for (i, (name, case)) in CASES.into_iter().enumerate() {
        eprintln!("postgres: {name}");
        let url = pg.create_db(&format!("case{i}"));
        case(&PgMaker(url));
    }
}

/// A throwaway PostgreSQL for `test` (`None`: skipped) with one database
/// `db`, and the maker of stores on it.
fn pg_database(test: &str, db: &str) -> Option<(Pg, PgMaker)> {
    let pg = Pg::start(test)?;
    let url = pg.create_db(db);
    Some((pg, PgMaker(url)))
}

/// Two engines (as two servers would) on one database, appending
/// concurrently, with the same idempotency keys sent to both and seals from
/// both: one chain, dense seqs, every receipt proven, every key once.
#[test]
fn two_engines_on_one_database_share_one_chain() {
    let Some((_pg, m)) = pg_database("two_engines_on_one_database_share_one_chain", "shared")
    else {
        return;
    };
    let clock = ManualClock::at(1_000);
    let engines: Vec<Arc<Engine>> = (0..2)
        .map(|_| Arc::new(start(m.open(), vec![orders()], clock.clone())))
        .collect();
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let engine = engines[t % 2].clone();
            std::thread::spawn(move || {
                let mut outs = Vec::new();
                for i in 0..30 {
                    // Threads t and t+1 share keys: each key is sent to
                    // both engines.
                    let key = format!("k-{}-{i}", t / 2);
                    let e = keyed(
                        &format!("order:{}", t / 2),
                        &format!("p-{}-{i}", t / 2),
                        &key,
                    );
                    outs.push(engine.append_blocking("orders", vec![e]).unwrap());
                    if i % 10 == 9 {
                        let _ = engine.seal_blocking("orders", SealReason::Request);
                    }
                }
                outs
            })
        })
        .collect();
    let outs: Vec<AppendOutcome> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    for o in &outs {
        check_receipts(o, ORIGIN);
    }
    let mut fresh: Vec<u64> = outs
        .iter()
        .flat_map(|o| o.receipts.iter().filter(|r| !r.duplicate).map(|r| r.seq))
        .collect();
    fresh.sort_unstable();
    // 3 key groups x 30 keys, each appended once whichever engine won.
    assert_eq!(fresh, (0..90).collect::<Vec<_>>());
    for e in &engines {
        e.shutdown();
    }
    drop(engines);
    // The chain, read back through a third connection: links and seals.
    let engine = start(m.open(), vec![orders()], clock);
    let mut prev = auditlog::core::Hash::ZERO;
    for seq in 0..90 {
        let (stored, _, _) = engine.entry("orders", seq, 0).unwrap();
        assert_eq!(stored.entry.prev_leaf_hash, prev, "seq {seq}");
        prev = stored.leaf_hash;
    }
    let mut last: Option<Seal> = None;
    for s in engine.store().segments("orders").unwrap() {
        if let Some(text) = s.seal {
            let (seal, _) = Seal::open(&text, &[signer().verifier()]).unwrap();
            seal.check_follows(last.as_ref()).unwrap();
            last = Some(seal);
        }
    }
    assert!(last.is_some());
    engine.shutdown();
}

/// A batch's writes and its COMMIT go to PostgreSQL in one round trip: when
/// one write fails, the COMMIT must end the transaction as a rollback, with
/// nothing of the batch stored and the append refused. Attack: a row
/// planted (with SQL) where the next batch's checkpoint goes makes that
/// one insert fail while the entries, nodes and head writes beside it
/// succeed.
#[test]
fn a_failed_write_commits_nothing_of_its_batch() {
    let Some((pg, m)) = pg_database(
        "a_failed_write_commits_nothing_of_its_batch",
        "failed_write",
    ) else {
        return;
    };
    let clock = ManualClock::at(1_000);
    let engine = start(m.open(), vec![orders()], clock.clone());
    let first = engine
        .append_blocking("orders", vec![keyed("order:1", "first", "k-1")])
        .unwrap();
    assert_eq!(first.receipts[0].seq, 0);
    let count = |sql: &str| pg.psql("failed_write", sql).trim().to_owned();
    pg.psql(
        "failed_write",
        "INSERT INTO auditlog_checkpoints (log, size, note) VALUES ('orders', 2, 'planted')",
    );
    let refused = engine.append_blocking("orders", vec![keyed("order:2", "second", "k-2")]);
    assert!(
        matches!(refused, Err(AppendError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(count("SELECT count(*) FROM auditlog_entries"), "1");
    assert_eq!(
        count("SELECT size FROM auditlog_logs WHERE name = 'orders'"),
        "1"
    );
    assert_eq!(count("SELECT count(*) FROM auditlog_nodes"), "0");
    // Once the planted row is gone, the same append goes through at the
    // same seq, and the store verifies.
    pg.psql(
        "failed_write",
        "DELETE FROM auditlog_checkpoints WHERE note = 'planted'",
    );
    let second = engine
        .append_blocking("orders", vec![keyed("order:2", "second", "k-2")])
        .unwrap();
    assert_eq!(second.receipts[0].seq, 1);
    assert!(!second.receipts[0].duplicate);
    engine.shutdown();
    drop(engine);
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
}

/// The idempotency keys asked for with a head lock are looked up only
/// once the lock is granted, so a key another server committed while this
/// one waited for the lock is found (else its entry would be appended
/// twice). Attack: a transaction holds the head row and, before it
/// commits, puts back an entry with the key (parked in another log).
#[test]
fn keys_looked_up_with_the_lock_see_what_committed_while_it_was_awaited() {
    let db = "keys_after_lock";
    let Some((pg, m)) = pg_database(db, db) else {
        return;
    };
    let engine = start(m.open(), vec![orders()], ManualClock::at(1_000));
    engine
        .append_blocking("orders", vec![keyed("order:1", "first", "k-1")])
        .unwrap();
    engine.shutdown();
    drop(engine);
    pg.psql(
        db,
        "UPDATE auditlog_entries SET log = 'parked' WHERE log = 'orders'",
    );
    let store = PgStore::connect(&m.0).unwrap();
    open_orders(&store);
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| {
            pg.psql(
                db,
                "BEGIN; SELECT size FROM auditlog_logs WHERE name = 'orders' FOR UPDATE; \
                 SELECT pg_sleep(1); \
                 UPDATE auditlog_entries SET log = 'orders' WHERE log = 'parked'; COMMIT;",
            )
        });
        // The holder has the row once its transaction has an id (taken by
        // the locking read, before the sleep).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pg
            .psql(
                db,
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'transactionid' AND a.query LIKE '%pg_sleep(1)%' \
                 AND a.pid <> pg_backend_pid()",
            )
            .trim()
            == "0"
        {
            assert!(std::time::Instant::now() < until, "the holder never locked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let lock = store.lock_head("orders", &["k-1", "k-2"]).unwrap().unwrap();
        assert_eq!(lock.keys().get("k-1"), Some(&Some(0)));
        assert_eq!(lock.keys().get("k-2"), Some(&None));
        assert_eq!(lock.head().size, 1);
        drop(lock);
        holder.join().unwrap();
    });
}

/// A pool that stays empty is an error after the configured wait, not a
/// hang, and the store goes on once a connection is free. Attack: a server
/// whose only connection is held by a locked head (as a stuck batch would
/// hold it) is asked for a read and another lock.
#[test]
fn an_exhausted_pool_fails_after_its_wait_and_recovers() {
    use auditlog::store::postgres::PoolOptions;
    use std::time::{Duration, Instant};
    let db = "pool_wait";
    let Some((_pg, m)) = pg_database(db, db) else {
        return;
    };
    let wait = Duration::from_millis(700);
    let store = PgStore::connect_with(
        &m.0,
        PoolOptions {
            max_connections: 1,
            wait,
        },
    )
    .unwrap();
    open_orders(&store);
    let lock = store.lock_head("orders", &[]).unwrap().unwrap();
    for attempt in ["entry", "lock_head"] {
        let started = Instant::now();
        let err = match attempt {
            "entry" => store.entry("orders", 0).map(|_| ()).unwrap_err(),
            _ => store.lock_head("orders", &[]).map(|_| ()).unwrap_err(),
        };
        let took = started.elapsed();
        assert!(
            err.to_string().contains("no database connection"),
            "{attempt}: {err}"
        );
        assert!(
            took >= wait,
            "{attempt} gave up after {took:?}, before its wait"
        );
        assert!(took < wait * 10, "{attempt} took {took:?}");
    }
    drop(lock);
    assert!(store.entry("orders", 0).unwrap().is_none());
    assert_eq!(
        store.lock_head("orders", &[]).unwrap().unwrap().head().size,
        0
    );
    assert!(PgStore::connect_with(
        &m.0,
        PoolOptions {
            max_connections: 0,
            wait,
        },
    )
    .is_err());
}

/// A server that wrote a log's head last (several batches in a row under
/// the lock that found the head where it left it) sends its batches
/// without the lock and without looking its keys up first. Attacks: another
/// server appends meanwhile (the pipelined batch starts at a head that
/// moved), and a request reuses a key already in the log (the look-up it
/// skipped would have found it). Each time the database refuses the batch
/// whole, the requests are planned again under the lock, and the callers
/// get receipts, not errors: one chain, dense seqs, each key once.
#[test]
fn a_refused_pipelined_batch_is_planned_again_under_the_lock() {
    let db = "pipelined_refused";
    let Some((pg, m)) = pg_database(db, db) else {
        return;
    };
    let clock = ManualClock::at(1_000);
    let a_store = Arc::new(PgStore::connect(&m.0).unwrap());
    let a = start(a_store.clone(), vec![orders()], clock.clone());
    let b = start(m.open(), vec![orders()], clock.clone());
    let append = |e: &Engine, key: &str| {
        e.append_blocking("orders", vec![keyed("order:1", &format!("p-{key}"), key)])
            .unwrap()
    };
    for i in 0..8 {
        assert_eq!(append(&a, &format!("a-{i}")).receipts[0].seq, i);
    }
    let sent = a_store.pipelined();
    assert!(
        sent >= 2,
        "A never pipelined ({sent} batches without the lock)"
    );

    // B appends: A's next pipelined batch starts at a head that moved.
    assert_eq!(append(&b, "b-0").receipts[0].seq, 8);
    let moved = append(&a, "a-8");
    check_receipts(&moved, ORIGIN);
    assert_eq!(moved.receipts[0].seq, 9);
    assert!(!moved.receipts[0].duplicate);

    // Trusted again after enough quiet batches, A gets a key it appended
    // at seq 2: the unique index refuses the pipelined batch, and the
    // look-up under the lock answers with the original receipt.
    for i in 9..16 {
        append(&a, &format!("a-{i}"));
    }
    let before = a_store.pipelined();
    let again = a
        .append_blocking("orders", vec![keyed("order:1", "p-a-2", "a-2")])
        .unwrap();
    assert!(
        a_store.pipelined() > before,
        "the reused key was not pipelined"
    );
    assert!(again.receipts[0].duplicate);
    assert_eq!(again.receipts[0].seq, 2);
    check_receipts(&again, ORIGIN);
    let fresh = append(&a, "a-16");
    assert_eq!(fresh.receipts[0].seq, 17);

    // Trusted again, A's head is sealed by B: the size stays, the segment
    // moves. A's next pipelined batch must not land in the sealed segment.
    for i in 17..24 {
        append(&a, &format!("a-{i}"));
    }
    let sealed = b
        .seal_blocking("orders", SealReason::Request)
        .unwrap()
        .unwrap();
    assert_eq!(sealed.seal.end_seq, 25);
    let before = a_store.pipelined();
    assert_eq!(append(&a, "a-24").receipts[0].seq, 25);
    assert!(
        a_store.pipelined() > before,
        "the append after the seal was not pipelined"
    );

    // Trusted again, A seals itself (its store forgets the head it wrote,
    // so its next batch goes under the lock after all) and B appends
    // before A's next batch: that batch finds the head moved under the
    // lock, and is planned again too.
    for i in 25..29 {
        append(&a, &format!("a-{i}"));
    }
    a.seal_blocking("orders", SealReason::Request)
        .unwrap()
        .unwrap();
    assert_eq!(append(&b, "b-1").receipts[0].seq, 30);
    let after_seal = append(&a, "a-29");
    check_receipts(&after_seal, ORIGIN);
    assert_eq!(after_seal.receipts[0].seq, 31);

    a.shutdown();
    b.shutdown();
    drop((a, b));
    let count = |sql: &str| pg.psql(db, sql).trim().to_owned();
    assert_eq!(
        count("SELECT count(*) FROM auditlog_entries WHERE log = 'orders'"),
        "32"
    );
    assert_eq!(
        count("SELECT count(DISTINCT idempotency_key) FROM auditlog_entries WHERE log = 'orders'"),
        "32"
    );
    assert_eq!(
        count("SELECT size FROM auditlog_logs WHERE name = 'orders'"),
        "32"
    );
    assert_eq!(
        count("SELECT segment FROM auditlog_entries WHERE log = 'orders' AND seq = 25"),
        (sealed.seal.segment + 1).to_string()
    );
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
}

/// Each log that pipelines holds a pooled connection of its own; with more
/// such logs than the pool has connections, the others go under the lock
/// and the pool stays for everything else. Attack: 40 logs on one server
/// (a pool of 32), every one of them trusted, then reads and appends on
/// all of them: each answers (none waits for a connection that never
/// comes back).
#[test]
fn more_pipelining_logs_than_pooled_connections_all_answer() {
    let db = "many_logs";
    let Some((_pg, m)) = pg_database(db, db) else {
        return;
    };
    let logs: Vec<LogConfig> = (0..40)
        .map(|i| LogConfig::new(&format!("l{i:02}"), &format!("audit.example.com/l{i:02}")))
        .collect();
    let store = Arc::new(PgStore::connect(&m.0).unwrap());
    let engine = start(store.clone(), logs.clone(), ManualClock::at(1_000));
    for round in 0..8 {
        for l in &logs {
            let out = engine
                .append_blocking(&l.name, vec![input("order:1", &format!("{round}"))])
                .unwrap();
            assert_eq!(out.receipts[0].seq, round);
        }
    }
    assert!(store.pipelined() > 0);
    for l in &logs {
        let (stored, _, _) = engine.entry(&l.name, 7, 0).unwrap();
        assert_eq!(stored.payload, b"7");
    }
    engine.shutdown();
    drop(engine);
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
}

/// The database crashes (every connection cut, no shutdown checkpoint,
/// WAL replayed on start) while appenders keep writing, some of them
/// pipelined without the head lock. Attack on durability and recovery:
/// every acknowledged entry must be there afterwards with its leaf hash,
/// the chain dense and verifiable, and appends must go through again
/// once the database is back, without restarting the engine.
#[test]
fn a_database_crash_under_load_loses_no_acknowledged_entry_and_appends_resume() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    let db = "db_crash";
    let Some((pg, m)) = pg_database(db, db) else {
        return;
    };
    let store = Arc::new(PgStore::connect(&m.0).unwrap());
    let engine = Arc::new(start(store.clone(), vec![orders()], ManualClock::at(1_000)));
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let appenders: Vec<_> = (0..6)
        .map(|t| {
            let (engine, stop, refused) = (engine.clone(), stop.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let e = keyed("order:1", &format!("{t}/{n}"), &format!("k-{t}-{n}"));
                    match engine.append_blocking("orders", vec![e]) {
                        Ok(out) => {
                            let r = &out.receipts[0];
                            assert!(!r.duplicate, "a fresh key came back as a duplicate");
                            acked.push((r.seq, r.leaf_hash, format!("{t}/{n}")));
                        }
                        Err(AppendError::Unavailable(_)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("appender {t}: {e:?}"),
                    }
                }
                acked
            })
        })
        .collect();
    let published = || {
        engine
            .checkpoint("orders")
            .unwrap()
            .map_or(0, |(size, _)| size)
    };
    std::thread::sleep(Duration::from_millis(800));
    let before = published();
    assert!(before > 0, "nothing appended before the crash");
    assert!(store.pipelined() > 0, "no batch went without the lock");
    pg.crash_and_restart();
    // Appends go through again once the database is back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed = loop {
        let size = published();
        if size > before + 50 {
            break size;
        }
        assert!(
            Instant::now() < deadline,
            "appends did not resume after the database came back (size {size}, {before} before the crash)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<_> = appenders
        .into_iter()
        .flat_map(|a| a.join().unwrap())
        .collect();
    assert!(resumed > before);
    // Every acknowledged entry is stored at its seq, with its leaf hash
    // and payload, once.
    let mut seqs = std::collections::HashSet::new();
    for (seq, leaf, payload) in &acked {
        assert!(seqs.insert(*seq), "seq {seq} acknowledged twice");
        let (stored, _, _) = engine.entry("orders", *seq, 0).unwrap();
        assert_eq!(stored.leaf_hash, *leaf, "seq {seq}");
        assert_eq!(stored.payload, payload.as_bytes(), "seq {seq}");
    }
    eprintln!(
        "{} appends acknowledged, {} refused while the database was down, {before} entries before the crash",
        acked.len(),
        refused.load(Ordering::Relaxed)
    );
    engine.shutdown();
    drop(engine);
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
}

/// Timestamps never go backwards along a log, whichever server appends and
/// whatever its clock says. Attack: two engines on one database, one clock
/// an hour ahead of the other, appending in turn (so each finds the head
/// the other left), then the fast clock jumps back two hours, then a third
/// engine starts with its clock at zero.
#[test]
fn engines_with_clocks_apart_never_take_a_log_back_in_time() {
    let db = "clocks_apart";
    let Some((_pg, m)) = pg_database(db, db) else {
        return;
    };
    const HOUR: i64 = 3_600_000_000_000;
    let clocks = [ManualClock::at(2 * HOUR), ManualClock::at(HOUR)];
    let engines: Vec<Engine> = clocks
        .iter()
        .map(|c| start(m.open(), vec![orders()], c.clone()))
        .collect();
    let mut stamps = Vec::new();
    for i in 0..40 {
        if i == 20 {
            clocks[0].set(0);
        }
        let out = engines[i % 2]
            .append_blocking("orders", vec![input("order:1", &format!("{i}"))])
            .unwrap();
        stamps.push((out.receipts[0].seq, out.receipts[0].timestamp_unix_nanos));
    }
    for e in &engines {
        e.shutdown();
    }
    drop(engines);
    let engine = start(m.open(), vec![orders()], ManualClock::at(0));
    let out = engine
        .append_blocking("orders", vec![input("order:1", "late")])
        .unwrap();
    stamps.push((out.receipts[0].seq, out.receipts[0].timestamp_unix_nanos));
    let seqs: Vec<u64> = stamps.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (0..41).collect::<Vec<_>>());
    for w in stamps.windows(2) {
        assert!(
            w[1].1 >= w[0].1,
            "seq {} went back in time: {stamps:?}",
            w[1].0
        );
    }
    // The slow engine's first append came after the fast one's: it carried
    // the later time on rather than its own clock's.
    assert!(stamps[1].1 >= 2 * HOUR, "{stamps:?}");
    // And what is stored says the same.
    let mut last = 0;
    for seq in 0..41 {
        let (stored, _, _) = engine.entry("orders", seq, 0).unwrap();
        assert!(stored.entry.timestamp_unix_nanos >= last, "seq {seq}");
        last = stored.entry.timestamp_unix_nanos;
    }
    engine.shutdown();
    drop(engine);
    let report = m.verify();
    assert!(report.is_valid(), "{:?}", report.findings);
}
