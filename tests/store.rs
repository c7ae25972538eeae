//! The embedded store and the engine: appends with receipts, idempotency,
//! atomicity, limits, time, seals, restart and index rebuild.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use auditlog::core::hash::Blake3;
use auditlog::core::merkle::{proof_from_bytes, verify_consistency, verify_inclusion};
use auditlog::core::seal::{Seal, SealReason};
use auditlog::engine::input::{AppendError, Limits};
use auditlog::engine::{AppendOutcome, LogConfig};
use auditlog::store::Store;
use auditlog::verify::store::verify_data_dir;
use common::*;

/// Verifies the whole data directory under the test signer's key.
fn assert_verifies(dir: &std::path::Path) -> auditlog::verify::Report {
    let report = verify_data_dir(dir, &[signer().verifier()]).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    report
}

#[test]
fn concurrent_appends_get_receipts_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders(), chats()], ManualClock::at(1_000));
    let engine = Arc::new(f.engine);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let engine = engine.clone();
            thread::spawn(move || {
                let mut outs = Vec::new();
                for i in 0..25 {
                    let entries = (0..(i % 3 + 1))
                        .map(|j| input(&format!("order:{t}"), &format!("p{t}-{i}-{j}")))
                        .collect();
                    outs.push(engine.append_blocking("orders", entries).unwrap());
                }
                outs
            })
        })
        .collect();
    let outs: Vec<AppendOutcome> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut seqs: Vec<u64> = outs
        .iter()
        .flat_map(|o| o.receipts.iter().map(|r| r.seq))
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "dense, no duplicates"
    );
    for o in &outs {
        check_receipts(o, "audit.example.com/orders");
        // Every receipt's checkpoint is consistent with the latest one.
        let (latest_size, latest) = engine.checkpoint("orders").unwrap().unwrap();
        let latest = open_cp(&latest, "audit.example.com/orders");
        let (proof, _, to) = engine
            .consistency("orders", o.tree_size, latest_size)
            .unwrap();
        let old = open_cp(&o.checkpoint, "audit.example.com/orders");
        verify_consistency::<Blake3>(old.size, to, &proof, &old.root, &latest.root).unwrap();
    }
    // Each entry reads back with the payload and a proof at an old size.
    let first = &outs[0];
    for r in &first.receipts {
        let (stored, proof, cp) = engine.entry("orders", r.seq, first.tree_size).unwrap();
        assert_eq!(stored.leaf_hash, r.leaf_hash);
        assert_eq!(stored.entry.leaf_hash().unwrap(), r.leaf_hash);
        assert!(String::from_utf8(stored.payload).unwrap().starts_with('p'));
        let cp = open_cp(&cp, "audit.example.com/orders");
        verify_inclusion::<Blake3>(r.seq, cp.size, &r.leaf_hash, &proof, &cp.root).unwrap();
    }
    // The other log is untouched and independent.
    assert!(engine.checkpoint("chats").unwrap().is_none());
    let c = engine
        .append_blocking("chats", vec![input("conversation:1", "hi")])
        .unwrap();
    assert_eq!(c.receipts[0].seq, 0);
    check_receipts(&c, "audit.example.com/chats");
    engine.shutdown();
    drop(engine);
    drop(f.store);
    let report = assert_verifies(dir.path());
    assert_eq!(report.entries_checked, seqs.len() as u64 + 1);
}

#[test]
fn idempotent_retries_return_the_original_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(1_000));
    let a = f
        .engine
        .append_blocking("orders", vec![keyed("order:1", "prompt", "k1")])
        .unwrap();
    f.clock.set(2_000);
    let again = f
        .engine
        .append_blocking("orders", vec![keyed("order:1", "prompt", "k1")])
        .unwrap();
    assert!(again.receipts[0].duplicate);
    assert_eq!(again.receipts[0].seq, a.receipts[0].seq);
    assert_eq!(again.receipts[0].leaf_hash, a.receipts[0].leaf_hash);
    assert_eq!(again.receipts[0].timestamp_unix_nanos, 1_000);
    assert_eq!(again.tree_size, 1, "nothing appended");
    check_receipts(&again, "audit.example.com/orders");

    // Same key, other payload: refused, nothing appended.
    let err = f
        .engine
        .append_blocking(
            "orders",
            vec![input("order:1", "x"), keyed("order:1", "other", "k1")],
        )
        .unwrap_err();
    assert_eq!(
        err,
        AppendError::IdempotencyConflict {
            entry: 1,
            key: "k1".into(),
            seq: 0
        }
    );
    assert_eq!(f.engine.checkpoint("orders").unwrap().unwrap().0, 1);

    // A mix of new and duplicate entries; a key repeated inside one request.
    let mixed = f
        .engine
        .append_blocking(
            "orders",
            vec![
                keyed("order:1", "prompt", "k1"),
                keyed("order:2", "new", "k2"),
                keyed("order:2", "new", "k2"),
            ],
        )
        .unwrap();
    let r = &mixed.receipts;
    assert!(r[0].duplicate && !r[1].duplicate && r[2].duplicate);
    assert_eq!((r[0].seq, r[1].seq, r[2].seq), (0, 1, 1));
    check_receipts(&mixed, "audit.example.com/orders");
    let err = f
        .engine
        .append_blocking(
            "orders",
            vec![keyed("order:3", "a", "k3"), keyed("order:3", "b", "k3")],
        )
        .unwrap_err();
    assert!(matches!(
        err,
        AppendError::IdempotencyConflict { entry: 1, .. }
    ));

    // Still a duplicate after a restart (the index survives or is rebuilt).
    f.close();
    let f = open(dir.path(), vec![orders()], ManualClock::at(3_000));
    let again = f
        .engine
        .append_blocking("orders", vec![keyed("order:2", "new", "k2")])
        .unwrap();
    assert!(again.receipts[0].duplicate);
    assert_eq!(again.receipts[0].seq, 1);
}

#[test]
fn a_request_with_one_bad_entry_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_payload_bytes: 100,
        ..Limits::default()
    };
    let f = open_with(dir.path(), vec![orders()], ManualClock::at(1), limits);
    f.engine
        .append_blocking("orders", vec![input("order:1", "ok")])
        .unwrap();
    let mut bad = input("order:1", "ok");
    bad.actor.clear();
    let err = f
        .engine
        .append_blocking(
            "orders",
            vec![input("order:1", "a"), input("order:1", "b"), bad],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::Invalid {
                entry: 2,
                field: "actor",
                ..
            }
        ),
        "{err}"
    );
    let big = input("order:1", &"x".repeat(101));
    let err = f
        .engine
        .append_blocking("orders", vec![input("order:1", "a"), big])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::TooLarge {
                entry: Some(1),
                field: "payload",
                limit: 100,
                actual: 101
            }
        ),
        "{err}"
    );
    assert!(matches!(
        f.engine
            .append_blocking("nope", vec![input("order:1", "a")]),
        Err(AppendError::UnknownLog(_))
    ));
    assert_eq!(
        f.engine.checkpoint("orders").unwrap().unwrap().0,
        1,
        "nothing appended"
    );
    assert_eq!(
        f.store
            .seqs_by_subject("orders", "order:1", 0, 100)
            .unwrap(),
        vec![0]
    );
}

#[test]
fn timestamps_never_go_backwards_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(5_000));
    let a = f
        .engine
        .append_blocking("orders", vec![input("s:1", "a")])
        .unwrap();
    f.clock.set(1_000);
    let b = f
        .engine
        .append_blocking("orders", vec![input("s:1", "b")])
        .unwrap();
    assert_eq!(a.receipts[0].timestamp_unix_nanos, 5_000);
    assert_eq!(b.receipts[0].timestamp_unix_nanos, 5_000);
    f.close();
    let f = open(dir.path(), vec![orders()], ManualClock::at(10));
    let c = f
        .engine
        .append_blocking("orders", vec![input("s:1", "c")])
        .unwrap();
    assert_eq!(c.receipts[0].timestamp_unix_nanos, 5_000);
    f.clock.set(6_000);
    let d = f
        .engine
        .append_blocking("orders", vec![input("s:1", "d")])
        .unwrap();
    assert_eq!(d.receipts[0].timestamp_unix_nanos, 6_000);
    assert_eq!(
        f.store.seq_range_by_time("orders", 5_000, 6_000).unwrap(),
        0..3
    );
    assert_eq!(
        f.store.seq_range_by_time("orders", 5_001, 7_000).unwrap(),
        3..4
    );
}

#[test]
fn segments_seal_by_size_on_request_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = orders();
    cfg.seal_max_entries = 5;
    cfg.seal_after = None;
    cfg.retention = Some(std::time::Duration::from_secs(60));
    let f = open(dir.path(), vec![cfg.clone()], ManualClock::at(1_000));
    for i in 0..12 {
        f.clock.set(1_000 + i);
        f.engine
            .append_blocking("orders", vec![input("order:1", &format!("{i}"))])
            .unwrap();
    }
    let sealed = f
        .engine
        .seal_blocking("orders", SealReason::Request)
        .unwrap()
        .unwrap();
    assert_eq!((sealed.seal.first_seq, sealed.seal.end_seq), (10, 12));
    // An empty segment can be sealed on request: the gap becomes visible.
    let empty = f
        .engine
        .seal_blocking("orders", SealReason::Request)
        .unwrap()
        .unwrap();
    assert!(empty.seal.is_empty());
    let segs = f.store.segments("orders").unwrap();
    let ranges: Vec<_> = segs
        .iter()
        .map(|s| (s.index, s.first_seq, s.end_seq, s.seal.is_some()))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (0, 0, 5, true),
            (1, 5, 10, true),
            (2, 10, 12, true),
            (3, 12, 12, true),
            (4, 12, 12, false)
        ]
    );
    let mut prev: Option<Seal> = None;
    for s in &segs[..4] {
        let (seal, _) = Seal::open(s.seal.as_ref().unwrap(), &[signer().verifier()]).unwrap();
        seal.check_follows(prev.as_ref()).unwrap();
        assert_eq!(
            seal.retain_until,
            auditlog::core::seal::RetainUntil::At(seal.span_to + 60_000_000_000)
        );
        prev = Some(seal);
    }
    f.close();

    // Age: with the real clock and a short seal_after, the thread seals by itself.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = orders();
    cfg.seal_after = Some(std::time::Duration::from_millis(50));
    let store = Arc::new(auditlog::store::embedded::EmbeddedStore::open(dir2.path()).unwrap());
    let engine = auditlog::engine::Engine::start(
        store.clone(),
        signer(),
        vec![cfg],
        Limits::default(),
        Arc::new(auditlog::engine::SystemClock),
    )
    .unwrap();
    engine
        .append_blocking("orders", vec![input("order:1", "a")])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.segments("orders").unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no age seal");
        thread::sleep(std::time::Duration::from_millis(10));
    }
    let seal = store.segments("orders").unwrap()[0].seal.clone().unwrap();
    assert!(Seal::open(&seal, &[signer().verifier()]).unwrap().0.reason == SealReason::Age);
    engine.shutdown();
    drop(engine);
    drop(store);
    for d in [dir.path(), dir2.path()] {
        assert_verifies(d);
    }
}

#[test]
fn retention_windows_seal_at_every_boundary_even_when_empty() {
    const S: i64 = 1_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = orders();
    cfg.seal_after = None;
    cfg.retention = Some(std::time::Duration::from_secs(30));
    cfg.retention_window = Some(std::time::Duration::from_secs(10));
    let f = open(dir.path(), vec![cfg.clone()], ManualClock::at(5 * S));
    f.engine
        .append_blocking("orders", vec![input("order:1", "in window 0")])
        .unwrap();
    // Two whole windows pass with no entry; the next append lands in the
    // window that holds now, after a seal for each window that ended.
    f.clock.set(31 * S);
    let out = f
        .engine
        .append_blocking("orders", vec![input("order:2", "in window 3")])
        .unwrap();
    assert_eq!(out.receipts[0].seq, 1);
    assert_eq!(out.receipts[0].timestamp_unix_nanos, 31 * S);
    // Idle: the log thread seals the window that ends, with no append.
    f.clock.set(45 * S);
    f.engine.close_windows_blocking("orders").unwrap();
    // A seal on request inside a window ends the segment, not the window.
    f.clock.set(47 * S);
    f.engine
        .seal_blocking("orders", SealReason::Request)
        .unwrap()
        .unwrap();
    let segs = f.store.segments("orders").unwrap();
    let seals: Vec<Seal> = segs
        .iter()
        .filter_map(|s| s.seal.as_ref())
        .map(|t| Seal::open(t, &[signer().verifier()]).unwrap().0)
        .collect();
    let shape: Vec<_> = seals
        .iter()
        .map(|s| {
            (
                s.first_seq,
                s.end_seq,
                s.span_from / S,
                s.span_to / S,
                s.reason,
            )
        })
        .collect();
    use SealReason::{Request, Window};
    assert_eq!(
        shape,
        vec![
            (0, 1, 5, 10, Window),
            (1, 1, 10, 20, Window),
            (1, 1, 20, 30, Window),
            (1, 2, 30, 40, Window),
            (2, 2, 40, 47, Request),
        ]
    );
    let mut prev: Option<&Seal> = None;
    for s in &seals {
        s.check_follows(prev).unwrap();
        assert_eq!(
            s.retain_until,
            auditlog::core::seal::RetainUntil::At(s.span_to + 30 * S)
        );
        prev = Some(s);
    }
    // Restarted after a long stop, the log first seals the windows it missed.
    f.close();
    let f = open(dir.path(), vec![cfg], ManualClock::at(75 * S));
    f.engine.close_windows_blocking("orders").unwrap();
    let spans: Vec<_> = f
        .store
        .segments("orders")
        .unwrap()
        .iter()
        .filter_map(|s| s.seal.as_ref())
        .map(|t| {
            let s = Seal::open(t, &[signer().verifier()]).unwrap().0;
            (s.span_from / S, s.span_to / S)
        })
        .skip(5)
        .collect();
    assert_eq!(spans, vec![(47, 50), (50, 60), (60, 70)]);
    f.close();
    assert_verifies(dir.path());
}

#[test]
fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = orders();
    cfg.seal_max_entries = 4;
    let f = open(dir.path(), vec![cfg.clone()], ManualClock::at(1));
    for i in 0..6 {
        f.engine
            .append_blocking("orders", vec![input("order:1", &format!("{i}"))])
            .unwrap();
    }
    let before = f.engine.checkpoint("orders").unwrap().unwrap();
    f.close();
    let f = open(dir.path(), vec![cfg.clone()], ManualClock::at(2));
    assert_eq!(f.engine.checkpoint("orders").unwrap().unwrap(), before);
    let out = f
        .engine
        .append_blocking("orders", vec![input("order:1", "after")])
        .unwrap();
    assert_eq!(out.receipts[0].seq, 6);
    check_receipts(&out, "audit.example.com/orders");
    let old = open_cp(&before.1, "audit.example.com/orders");
    let new = open_cp(&out.checkpoint, "audit.example.com/orders");
    let (proof, _, _) = f.engine.consistency("orders", old.size, new.size).unwrap();
    verify_consistency::<Blake3>(old.size, new.size, &proof, &old.root, &new.root).unwrap();
    // Origin is part of the log: opening it under another origin is refused.
    f.close();
    let store = Arc::new(auditlog::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
    let err = auditlog::engine::Engine::start(
        store,
        signer(),
        vec![LogConfig::new("orders", "other.example/orders")],
        Limits::default(),
        ManualClock::at(3),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("origin"), "{err}");
}

#[test]
fn a_second_process_cannot_open_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _a = auditlog::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
    let b = auditlog::store::embedded::EmbeddedStore::open(dir.path());
    assert!(b.err().unwrap().to_string().contains("in use"));
}

/// Everything a query can answer, for comparing two stores.
fn snapshot(f: &Fixture, log: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let (size, cp) = f.engine.checkpoint(log).unwrap().unwrap();
    m.insert("checkpoint".into(), cp);
    for seq in 0..size {
        let e = f.store.entry(log, seq).unwrap().unwrap();
        m.insert(format!("entry {seq}"), format!("{:?}", e));
        let proof = f.engine.inclusion_proof(log, seq, size).unwrap();
        m.insert(format!("proof {seq}"), format!("{proof:?}"));
        if seq > 0 {
            let (c, cps, _) = f.engine.consistency(log, seq, 0).unwrap();
            m.insert(format!("consistency {seq}"), format!("{c:?}"));
            m.insert(
                format!("checkpoint at {seq}"),
                format!(
                    "{:?}",
                    f.store.checkpoint_at(log, seq).unwrap().map(|_| cps)
                ),
            );
            m.insert(
                format!("stored checkpoint at {seq}"),
                format!("{:?}", f.store.checkpoint_at(log, seq).unwrap()),
            );
        }
    }
    for s in 0..5 {
        let subject = format!("order:{s}");
        m.insert(
            subject.clone(),
            format!(
                "{:?}",
                f.store.seqs_by_subject(log, &subject, 0, 1000).unwrap()
            ),
        );
        m.insert(
            format!("from 3 {subject}"),
            format!(
                "{:?}",
                f.store.seqs_by_subject(log, &subject, 3, 2).unwrap()
            ),
        );
        let actor = format!("actor:{s}");
        m.insert(
            actor.clone(),
            format!("{:?}", f.store.seqs_by_actor(log, &actor, 0, 1000).unwrap()),
        );
        let key = format!("key-{s}");
        m.insert(
            key.clone(),
            format!("{:?}", f.store.seq_by_idempotency_key(log, &key).unwrap()),
        );
    }
    for (a, b) in [(0, 5), (3, 9), (100, 200), (7, 7)] {
        m.insert(
            format!("time {a}..{b}"),
            format!("{:?}", f.store.seq_range_by_time(log, a, b).unwrap()),
        );
    }
    m.insert(
        "segments".into(),
        format!("{:?}", f.store.segments(log).unwrap()),
    );
    m.insert(
        "checkpoints after 0".into(),
        format!("{:?}", f.store.checkpoints_after(log, 0, 10_000).unwrap()),
    );
    m.insert(
        "checkpoints after 5, 3".into(),
        format!("{:?}", f.store.checkpoints_after(log, 5, 3).unwrap()),
    );
    m
}

#[test]
fn deleting_the_index_rebuilds_it_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = orders();
    cfg.seal_max_entries = 7;
    let f = open(dir.path(), vec![cfg.clone(), chats()], ManualClock::at(0));
    for i in 0..30i64 {
        f.clock.set(i / 3);
        let mut e = input(&format!("order:{}", i % 5), &format!("payload {i}"));
        e.actor = format!("actor:{}", i % 4);
        if i % 2 == 0 {
            e.idempotency_key = format!("key-{}", i / 2);
        }
        e.attributes.insert("i".into(), i.to_string());
        f.engine.append_blocking("orders", vec![e]).unwrap();
        f.engine
            .append_blocking("chats", vec![input("conversation:1", "hi")])
            .unwrap();
    }
    f.engine
        .seal_blocking("orders", SealReason::Request)
        .unwrap();
    let before = snapshot(&f, "orders");
    let before_chats = snapshot(&f, "chats");
    f.close();

    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let f = open(dir.path(), vec![cfg.clone(), chats()], ManualClock::at(100));
    assert_eq!(snapshot(&f, "orders"), before);
    assert_eq!(snapshot(&f, "chats"), before_chats);
    // And the rebuilt log keeps working.
    let mut retry = keyed("order:2", "payload 2", "key-1");
    retry.actor = "actor:2".into();
    retry.attributes.insert("i".into(), "2".into());
    let out = f.engine.append_blocking("orders", vec![retry]).unwrap();
    assert!(out.receipts[0].duplicate);
    assert_eq!(out.receipts[0].seq, 2);
}

#[test]
fn proofs_from_the_store_match_receipts_at_many_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(0));
    let mut outs = Vec::new();
    for i in 0..40 {
        let n = (i % 4) + 1;
        outs.push(
            f.engine
                .append_blocking(
                    "orders",
                    (0..n)
                        .map(|j| input("order:1", &format!("{i}/{j}")))
                        .collect(),
                )
                .unwrap(),
        );
    }
    for o in &outs {
        for r in &o.receipts {
            let p = f
                .engine
                .inclusion_proof("orders", r.seq, o.tree_size)
                .unwrap();
            assert_eq!(p, r.inclusion_proof);
            let (_, p2, cp) = f.engine.entry("orders", r.seq, o.tree_size).unwrap();
            assert_eq!(p2, r.inclusion_proof);
            assert_eq!(cp, o.checkpoint);
            let bytes: Vec<Vec<u8>> = p.iter().map(|h| h.0.to_vec()).collect();
            assert_eq!(proof_from_bytes(&bytes).unwrap(), p);
        }
    }
    assert!(f.engine.entry("orders", 0, 3).is_err() || outs.iter().any(|o| o.tree_size == 3));
}

#[test]
fn damaged_dense_index_files_are_repaired_from_segments() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(0));
    for i in 0..37 {
        f.engine
            .append_blocking(
                "orders",
                vec![keyed(&format!("order:{}", i % 5), "p", &format!("key-{i}"))],
            )
            .unwrap();
    }
    let before = snapshot(&f, "orders");
    f.close();
    let dense = dir.path().join("index/dense/orders");
    // Garbage after what was recorded (a power loss after unsynced writes)...
    let mut locs = std::fs::OpenOptions::new()
        .append(true)
        .open(dense.join("locations"))
        .unwrap();
    std::io::Write::write_all(&mut locs, &[0xab; 500]).unwrap();
    // ...and a node file shorter than recorded (lost data).
    let n2 = dense.join("nodes-02");
    let len = std::fs::metadata(&n2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&n2)
        .unwrap()
        .set_len(len - 64)
        .unwrap();
    // ...and the text of the last checkpoints lost (lost data again).
    let txt = dense.join("checkpoints.txt");
    let len = std::fs::metadata(&txt).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&txt)
        .unwrap()
        .set_len(len - 700)
        .unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(0));
    assert_eq!(snapshot(&f, "orders"), before);
}

/// Indexes written before checkpoints moved out of sled have no checkpoint
/// files: the store indexes the log again rather than answer without them.
#[test]
fn an_index_without_checkpoint_files_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(0));
    for i in 0..23 {
        f.engine
            .append_blocking("orders", vec![input(&format!("order:{}", i % 5), "p")])
            .unwrap();
    }
    let before = snapshot(&f, "orders");
    f.close();
    let dense = dir.path().join("index/dense/orders");
    std::fs::remove_file(dense.join("checkpoints.idx")).unwrap();
    std::fs::remove_file(dense.join("checkpoints.txt")).unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(0));
    assert_eq!(snapshot(&f, "orders"), before);
}

/// Postings are 64-bit hashes, so a lookup yields candidates that the store
/// must check against the entries themselves. Forge a run file (valid
/// checksum, FORMAT §8) in which entry 1, about order:2, is posted under
/// order:1's hash, as a collision would: order:1 still answers only entry 0.
#[test]
fn a_colliding_posting_never_reaches_an_answer() {
    use auditlog::store::postings::{key_hash, KeyKind};
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(1_000));
    for subject in ["order:1", "order:2"] {
        f.engine
            .append_blocking("orders", vec![input(subject, "p")])
            .unwrap();
    }
    f.close(); // a clean close writes the postings of entries [0, 2) as a run
    let run = dir
        .path()
        .join("index/postings/orders")
        .join(format!("run-{:020}-{:020}", 0, 2));
    let bytes = std::fs::read(&run).unwrap();
    let (header, body) = bytes[..bytes.len() - 32].split_at(32);
    let (h1, h2) = (
        key_hash(KeyKind::Subject, "order:1"),
        key_hash(KeyKind::Subject, "order:2"),
    );
    let mut postings: Vec<(u64, u64)> = body
        .chunks_exact(16)
        .map(|c| {
            let h = u64::from_be_bytes(c[..8].try_into().unwrap());
            let seq = u64::from_be_bytes(c[8..].try_into().unwrap());
            (if h == h2 { h1 } else { h }, seq)
        })
        .collect();
    postings.sort();
    let mut forged = header.to_vec();
    for (h, seq) in postings {
        forged.extend_from_slice(&h.to_be_bytes());
        forged.extend_from_slice(&seq.to_be_bytes());
    }
    let sum = blake3::hash(&forged);
    forged.extend_from_slice(sum.as_bytes());
    std::fs::write(&run, forged).unwrap();

    let f = open(dir.path(), vec![orders()], ManualClock::at(2_000));
    assert_eq!(
        f.store
            .seqs_by_subject("orders", "order:1", 0, usize::MAX)
            .unwrap(),
        vec![0],
        "the forged candidate is checked against entry 1 and dropped"
    );
    // The forged run was used (not rebuilt): order:2 lost its posting.
    assert!(f
        .store
        .seqs_by_subject("orders", "order:2", 0, usize::MAX)
        .unwrap()
        .is_empty());
    f.close();
}

/// The embedded store with faults and pauses put in: seals that always
/// fail (a disk that refuses writes, counting how often a seal is tried),
/// and syncs of pipelined appends that wait at a gate the test opens, and
/// then succeed or fail.
#[derive(Default)]
struct Hooked {
    inner: Option<Arc<auditlog::store::embedded::EmbeddedStore>>,
    fail_seals: bool,
    seals: std::sync::atomic::AtomicU64,
    /// Batches written without a sync, syncs that ran (past the gate, one
    /// per sync point run), and batches published after a good sync.
    writes: std::sync::atomic::AtomicU64,
    syncs: Arc<std::sync::atomic::AtomicU64>,
    publishes: std::sync::atomic::AtomicU64,
    /// Open: syncs proceed (`true`) or fail (`false`); `None`: they wait.
    gate: Arc<(std::sync::Mutex<Option<bool>>, std::sync::Condvar)>,
    /// First seq of each batch staged, in the order their staging ended.
    staged: std::sync::Mutex<Vec<u64>>,
    /// Staging of a batch of 100 entries or more takes 30 ms longer.
    slow_stages: std::sync::atomic::AtomicBool,
    /// The next staging of a batch of 100 entries or more panics (a store
    /// bug on the thread that stages it).
    panic_next_large_stage: std::sync::atomic::AtomicBool,
    /// Batches published (or failed at publish) with no staging ended
    /// before: the pipeline promises none.
    unstaged_publishes: std::sync::atomic::AtomicU64,
}

impl Hooked {
    fn over(dir: &std::path::Path) -> Hooked {
        Hooked {
            inner: Some(Arc::new(
                auditlog::store::embedded::EmbeddedStore::open(dir).unwrap(),
            )),
            ..Hooked::default()
        }
    }

    fn inner(&self) -> &auditlog::store::embedded::EmbeddedStore {
        self.inner.as_ref().expect("a store")
    }

    /// Lets waiting and later syncs run (`succeed`) or fail.
    fn open_gate(&self, succeed: bool) {
        *self.gate.0.lock().unwrap() = Some(succeed);
        self.gate.1.notify_all();
    }

    /// Waits (up to 10 s) until `n` batches were written.
    fn wait_writes(&self, n: u64) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.writes.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < until, "no write {n}");
            thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Store for Hooked {
    fn open_log(
        &self,
        spec: &auditlog::store::LogSpec,
        now: i64,
    ) -> Result<auditlog::store::LogHead, auditlog::store::StoreError> {
        self.inner().open_log(spec, now)
    }
    fn logs(&self) -> Vec<String> {
        self.inner().logs()
    }
    fn stored_logs(&self) -> Result<Vec<auditlog::store::LogSpec>, auditlog::store::StoreError> {
        self.inner().stored_logs()
    }
    fn checkpoints_after(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, auditlog::store::StoreError> {
        self.inner().checkpoints_after(log, after, limit)
    }
    fn append(
        &self,
        log: &str,
        batch: &auditlog::store::Batch,
    ) -> Result<(), auditlog::store::StoreError> {
        self.inner().append(log, batch)
    }
    fn write_unsynced(
        &self,
        log: &str,
        batch: &auditlog::store::Batch,
    ) -> Result<Option<auditlog::store::SyncPoint>, auditlog::store::StoreError> {
        let point = self.inner().write_unsynced(log, batch)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (gate, syncs) = (self.gate.clone(), self.syncs.clone());
        let point = point.expect("the embedded store pipelines");
        Ok(Some(auditlog::store::SyncPoint::new(move || {
            let mut open = gate.0.lock().unwrap();
            while open.is_none() {
                open = gate.1.wait(open).unwrap();
            }
            if *open == Some(false) {
                return Err(std::io::Error::other("the disk went away"));
            }
            drop(open);
            syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            point.sync()
        })))
    }
    fn stage(&self, log: &str, batch: &auditlog::store::Batch) {
        if batch.entries.len() >= 100 && self.slow_stages.load(std::sync::atomic::Ordering::SeqCst)
        {
            thread::sleep(std::time::Duration::from_millis(30));
        }
        if batch.entries.len() >= 100
            && self
                .panic_next_large_stage
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("staging failed (a store bug, put in by the test)");
        }
        self.inner().stage(log, batch);
        self.staged.lock().unwrap().push(batch.first_seq);
    }
    fn publish(
        &self,
        log: &str,
        batch: &auditlog::store::Batch,
        synced: std::io::Result<()>,
    ) -> Result<(), auditlog::store::StoreError> {
        if !self.staged.lock().unwrap().contains(&batch.first_seq) {
            self.unstaged_publishes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if synced.is_ok() {
            self.publishes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner().publish(log, batch, synced)
    }
    fn seal(
        &self,
        log: &str,
        seal: &Seal,
        signed: &str,
    ) -> Result<(), auditlog::store::StoreError> {
        self.seals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.fail_seals {
            return self.inner().seal(log, seal, signed);
        }
        Err(auditlog::store::StoreError::Index(
            "disk refuses writes".into(),
        ))
    }
    fn entry(
        &self,
        log: &str,
        seq: u64,
    ) -> Result<Option<auditlog::store::StoredEntry>, auditlog::store::StoreError> {
        self.inner().entry(log, seq)
    }
    fn seq_by_idempotency_key(
        &self,
        log: &str,
        key: &str,
    ) -> Result<Option<u64>, auditlog::store::StoreError> {
        self.inner().seq_by_idempotency_key(log, key)
    }
    fn seqs_by_subject(
        &self,
        log: &str,
        subject: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<u64>, auditlog::store::StoreError> {
        self.inner().seqs_by_subject(log, subject, from, limit)
    }
    fn seqs_by_actor(
        &self,
        log: &str,
        actor: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<u64>, auditlog::store::StoreError> {
        self.inner().seqs_by_actor(log, actor, from, limit)
    }
    fn seq_range_by_time(
        &self,
        log: &str,
        since: i64,
        until: i64,
    ) -> Result<std::ops::Range<u64>, auditlog::store::StoreError> {
        self.inner().seq_range_by_time(log, since, until)
    }
    fn node(
        &self,
        log: &str,
        id: auditlog::core::merkle::NodeId,
    ) -> Result<auditlog::core::Hash, auditlog::core::merkle::NodeReadError> {
        self.inner().node(log, id)
    }
    fn checkpoint_at(
        &self,
        log: &str,
        size: u64,
    ) -> Result<Option<String>, auditlog::store::StoreError> {
        self.inner().checkpoint_at(log, size)
    }
    fn segments(
        &self,
        log: &str,
    ) -> Result<Vec<auditlog::store::SegmentInfo>, auditlog::store::StoreError> {
        self.inner().segments(log)
    }
    fn remove_payloads(
        &self,
        log: &str,
        seqs: &[u64],
        state: auditlog::store::PayloadState,
    ) -> Result<auditlog::store::Removal, auditlog::store::StoreError> {
        self.inner().remove_payloads(log, seqs, state)
    }
}

#[test]
fn a_timed_seal_that_keeps_failing_is_retried_not_spun_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Hooked {
        fail_seals: true,
        ..Hooked::over(dir.path())
    });
    store.open_gate(true);
    let mut cfg = orders();
    cfg.seal_after = Some(std::time::Duration::from_secs(1));
    let clock = ManualClock::at(1_000_000_000);
    let engine = auditlog::engine::Engine::start(
        store.clone(),
        signer(),
        vec![cfg],
        Limits::default(),
        clock.clone(),
    )
    .unwrap();
    engine
        .append_blocking("orders", vec![input("order:1", "p")])
        .unwrap();
    // The segment is due for sealing by age, and every seal fails.
    clock.set(60_000_000_000);
    engine
        .append_blocking("orders", vec![input("order:1", "q")])
        .unwrap();
    thread::sleep(std::time::Duration::from_millis(2500));
    let tries = store.seals.load(std::sync::atomic::Ordering::Relaxed);
    // One try when due, then about one a second (a loop would make
    // hundreds of thousands).
    assert!((1..=10).contains(&tries), "{tries} seal attempts in 2.5 s");
    // Appends still work meanwhile.
    engine
        .append_blocking("orders", vec![input("order:1", "r")])
        .unwrap();
    engine.shutdown();
}

/// An engine over a [`Hooked`] store whose syncs wait at the gate.
fn gated(dir: &std::path::Path) -> (Arc<Hooked>, Arc<auditlog::engine::Engine>) {
    let store = Arc::new(Hooked::over(dir));
    let engine = auditlog::engine::Engine::start(
        store.clone(),
        signer(),
        vec![orders()],
        Limits::default(),
        ManualClock::at(1_000),
    )
    .unwrap();
    (store, Arc::new(engine))
}

/// Appends on another thread (the call waits for its batch to be durable).
fn append_in_background(
    engine: &Arc<auditlog::engine::Engine>,
    entries: Vec<auditlog::engine::input::EntryInput>,
) -> thread::JoinHandle<Result<AppendOutcome, AppendError>> {
    let engine = engine.clone();
    thread::spawn(move || engine.append_blocking("orders", entries))
}

#[test]
fn the_next_batch_is_written_while_one_syncs_and_neither_is_seen_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    let a = append_in_background(&engine, vec![input("order:1", "a")]);
    store.wait_writes(1);
    // Written, not durable: not answered, not visible to readers.
    assert_eq!(engine.tree_size("orders"), 0);
    assert!(engine.checkpoint("orders").unwrap().is_none());
    assert!(engine.entry("orders", 0, 0).is_err());
    assert_eq!(store.inner().entry("orders", 0).unwrap(), None);
    // The next batch is sequenced and written behind it (the pipeline),
    // still with no sync done.
    let b = append_in_background(&engine, vec![input("order:2", "b")]);
    store.wait_writes(2);
    assert_eq!(store.syncs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(!a.is_finished() && !b.is_finished());
    assert_eq!(engine.tree_size("orders"), 0);
    store.open_gate(true);
    let (a, b) = (a.join().unwrap().unwrap(), b.join().unwrap().unwrap());
    assert_eq!((a.receipts[0].seq, b.receipts[0].seq), (0, 1));
    check_receipts(&a, "audit.example.com/orders");
    check_receipts(&b, "audit.example.com/orders");
    assert_eq!(engine.tree_size("orders"), 2);
    let (stored, _, _) = engine.entry("orders", 1, 0).unwrap();
    assert_eq!(stored.leaf_hash, b.receipts[0].leaf_hash);
    engine.shutdown();
    assert_verifies(dir.path());
}

#[test]
fn a_key_reused_while_its_batch_is_in_flight_is_a_duplicate_not_a_second_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    let first = append_in_background(&engine, vec![keyed("order:1", "a", "k1")]);
    store.wait_writes(1);
    // The store cannot see k1 yet: the retry must wait for the first
    // batch rather than append a second entry.
    let retry = append_in_background(&engine, vec![keyed("order:1", "a", "k1")]);
    let other = append_in_background(&engine, vec![keyed("order:1", "b", "k1")]);
    thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        store.writes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing written behind a batch whose key is reused"
    );
    store.open_gate(true);
    let first = first.join().unwrap().unwrap();
    let retry = retry.join().unwrap().unwrap();
    assert!(!first.receipts[0].duplicate);
    assert!(retry.receipts[0].duplicate);
    assert_eq!(retry.receipts[0].seq, first.receipts[0].seq);
    assert_eq!(retry.receipts[0].leaf_hash, first.receipts[0].leaf_hash);
    check_receipts(&retry, "audit.example.com/orders");
    assert!(matches!(
        other.join().unwrap(),
        Err(AppendError::IdempotencyConflict { seq: 0, .. })
    ));
    assert_eq!(engine.tree_size("orders"), 1);
    engine.shutdown();
}

/// Appends `kept` durably, then `a` and `b` as two pipelined batches
/// whose sync fails: both fail as unavailable. Returns `kept`'s answer.
fn fail_two_batches_behind(
    store: &Hooked,
    engine: &Arc<auditlog::engine::Engine>,
    kept: Vec<auditlog::engine::input::EntryInput>,
    a: Vec<auditlog::engine::input::EntryInput>,
    b: Vec<auditlog::engine::input::EntryInput>,
) -> AppendOutcome {
    store.open_gate(true);
    let kept = engine.append_blocking("orders", kept).unwrap();
    *store.gate.0.lock().unwrap() = None;
    let a = append_in_background(engine, a);
    store.wait_writes(2);
    let b = append_in_background(engine, b);
    store.wait_writes(3);
    store.open_gate(false);
    for r in [a.join().unwrap(), b.join().unwrap()] {
        assert!(matches!(r, Err(AppendError::Unavailable(_))), "{r:?}");
    }
    kept
}

#[test]
fn a_failed_sync_fails_its_batch_and_every_batch_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    let kept = fail_two_batches_behind(
        &store,
        &engine,
        vec![input("order:0", "kept")],
        vec![input("order:1", "a")],
        vec![input("order:2", "b")],
    );
    // Nothing of them is visible, and the log is refused until a restart.
    assert_eq!(engine.tree_size("orders"), 1);
    assert!(matches!(
        engine.append_blocking("orders", vec![input("order:3", "c")]),
        Err(AppendError::Unavailable(_))
    ));
    engine.shutdown();
    drop(engine);
    drop(store);
    // After a restart the acknowledged entry is there with its leaf hash,
    // the store verifies, and appends go on from a whole chain.
    let f = open(dir.path(), vec![orders()], ManualClock::at(2_000));
    let (stored, _, _) = f.engine.entry("orders", 0, 0).unwrap();
    assert_eq!(stored.leaf_hash, kept.receipts[0].leaf_hash);
    let next = f
        .engine
        .append_blocking("orders", vec![input("order:4", "d")])
        .unwrap();
    check_receipts(&next, "audit.example.com/orders");
    f.close();
    assert_verifies(dir.path());
}

/// `n` one-entry inputs for `subject`.
fn inputs(subject: &str, tag: &str, n: usize) -> Vec<auditlog::engine::input::EntryInput> {
    (0..n)
        .map(|i| input(subject, &format!("{tag}{i}")))
        .collect()
}

#[test]
fn large_and_small_batches_are_staged_in_order_and_before_they_publish() {
    // Large batches are staged and proven on the finisher thread, small
    // ones on the log thread when the finisher is idle: either way in the
    // order of their seqs, each before its publish.
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    // Slow enough that the small batches behind arrive while it goes on.
    store
        .slow_stages
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let sizes = [300, 1, 1, 200, 1, 150, 2];
    let mut waiting = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        waiting.push(append_in_background(
            &engine,
            inputs("order:1", &format!("b{i}-"), *n),
        ));
        store.wait_writes(i as u64 + 1);
    }
    store.open_gate(true);
    let (mut first, mut starts) = (0, Vec::new());
    for (w, n) in waiting.into_iter().zip(sizes) {
        let out = w.join().unwrap().unwrap();
        check_receipts(&out, "audit.example.com/orders");
        let seqs: Vec<u64> = out.receipts.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (first..first + n as u64).collect::<Vec<_>>());
        starts.push(first);
        first += n as u64;
    }
    assert_eq!(*store.staged.lock().unwrap(), starts);
    assert_eq!(
        store
            .unstaged_publishes
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // Every entry reads back as acknowledged, and so after a restart.
    let total = first;
    assert_eq!(engine.tree_size("orders"), total);
    engine.shutdown();
    drop(engine);
    drop(store);
    let f = open(dir.path(), vec![orders()], ManualClock::at(2_000));
    assert_eq!(f.engine.tree_size("orders"), total);
    f.close();
    assert_verifies(dir.path());
}

#[test]
fn a_finisher_that_dies_fails_its_batch_and_the_log_thread_finishes_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    store.open_gate(true);
    store
        .panic_next_large_stage
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The finisher panics while staging: the batch is synced and
    // published, but its proofs never come, so it is not acknowledged.
    match engine.append_blocking("orders", inputs("order:1", "a", 300)) {
        Err(AppendError::Unavailable(why)) => {
            assert!(
                why.contains("the thread proving the batch stopped"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Later batches, large and small, are finished on the log thread.
    let large = engine
        .append_blocking("orders", inputs("order:2", "b", 200))
        .unwrap();
    let small = engine
        .append_blocking("orders", inputs("order:3", "c", 1))
        .unwrap();
    for out in [&large, &small] {
        check_receipts(out, "audit.example.com/orders");
    }
    assert_eq!(large.receipts[0].seq, 300);
    assert_eq!(small.receipts[0].seq, 500);
    assert_eq!(
        store
            .unstaged_publishes
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the batch whose staging panicked"
    );
    engine.shutdown();
    assert_verifies(dir.path());
}

#[test]
fn a_failed_sync_of_large_batches_leaves_them_whole_or_not_at_all_and_indexed_as_read() {
    // Large batches are staged on the finisher thread, which may still
    // stage a failed batch when the log thread learns of the failure:
    // after a restart, nothing of it may be mixed with what follows.
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    let kept = fail_two_batches_behind(
        &store,
        &engine,
        inputs("order:0", "kept", 200),
        inputs("order:1", "a", 300),
        inputs("order:2", "b", 150),
    );
    assert_eq!(engine.tree_size("orders"), 200);
    assert_eq!(
        store
            .unstaged_publishes
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    engine.shutdown();
    drop(engine);
    drop(store);
    // After a restart the failed batches are there whole or not at all
    // (written, never acknowledged: as after a crash that kept them), and
    // the indexes say exactly what the entries say.
    let f = open(dir.path(), vec![orders()], ManualClock::at(2_000));
    for r in &kept.receipts {
        let (stored, _, _) = f.engine.entry("orders", r.seq, 0).unwrap();
        assert_eq!(stored.leaf_hash, r.leaf_hash);
    }
    let size = f.engine.tree_size("orders");
    assert!([200, 500, 650].contains(&size), "{size}");
    let next = f
        .engine
        .append_blocking("orders", inputs("order:4", "d", 250))
        .unwrap();
    check_receipts(&next, "audit.example.com/orders");
    assert_eq!(next.receipts[0].seq, size);
    let mut by_subject: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for seq in 0..size + 250 {
        let (stored, _, _) = f.engine.entry("orders", seq, 0).unwrap();
        by_subject
            .entry(stored.entry.subject)
            .or_default()
            .push(seq);
    }
    for subject in ["order:0", "order:1", "order:2", "order:4"] {
        let indexed = f
            .engine
            .store()
            .seqs_by_subject("orders", subject, 0, 10_000)
            .unwrap();
        let read = by_subject.remove(subject).unwrap_or_default();
        assert_eq!(indexed, read, "{subject}");
    }
    assert!(by_subject.is_empty(), "{by_subject:?}");
    f.close();
    assert_verifies(dir.path());
}

/// Batches written before a log thread whose syncs stall stops writing:
/// 8 handed over to the syncer and a ninth written.
const FULL_PIPELINE: u64 = 9;

/// Fills the pipeline of an engine over a closed gate with one-entry
/// requests, each its own batch, waiting for each write: the log thread
/// then waits, and whatever is submitted next queues.
fn fill_pipeline(
    store: &Hooked,
    engine: &Arc<auditlog::engine::Engine>,
) -> Vec<thread::JoinHandle<Result<AppendOutcome, AppendError>>> {
    (0..FULL_PIPELINE)
        .map(|i| {
            let w = append_in_background(engine, vec![input("order:1", &format!("p{i}"))]);
            store.wait_writes(i + 1);
            w
        })
        .collect()
}

#[test]
fn batches_in_flight_are_bounded_while_syncs_stall() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    // One request at a time, each its own batch, while no sync completes:
    // the log thread stops writing once 8 batches are handed over and a
    // ninth is written (memory held by unanswered batches is bounded).
    let mut waiting = fill_pipeline(&store, &engine);
    for i in FULL_PIPELINE..20 {
        waiting.push(append_in_background(
            &engine,
            vec![input("order:1", &format!("p{i}"))],
        ));
    }
    thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        store.writes.load(std::sync::atomic::Ordering::SeqCst),
        FULL_PIPELINE
    );
    assert!(waiting.iter().all(|w| !w.is_finished()));
    store.open_gate(true);
    let mut seqs: Vec<u64> = waiting
        .into_iter()
        .map(|w| w.join().unwrap().unwrap().receipts[0].seq)
        .collect();
    seqs.sort();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    assert_eq!(engine.tree_size("orders"), 20);
    engine.shutdown();
}

#[test]
fn a_group_commit_takes_at_most_its_bound_of_entries_and_bytes() {
    use auditlog::engine::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    // Everything submitted once the pipeline is full queues.
    let first = fill_pipeline(&store, &engine);
    let queued = 3 * MAX_BATCH_ENTRIES;
    let mut receivers: Vec<_> = (0..queued)
        .map(|i| {
            engine
                .submit("orders", vec![input("order:2", &format!("q{i}"))])
                .unwrap()
        })
        .collect();
    // Then four requests of one entry whose payload is over half the
    // bound of bytes: a batch takes requests until it reaches a bound, so
    // two of them make a batch.
    let big = MAX_BATCH_BYTES / 2 + 1;
    for _ in 0..4 {
        let mut e = input("order:3", "");
        e.payload = vec![7; big];
        receivers.push(engine.submit("orders", vec![e]).unwrap());
    }
    store.open_gate(true);
    for w in first {
        w.join().unwrap().unwrap();
    }
    for r in receivers {
        r.blocking_recv().unwrap().unwrap();
    }
    let f = FULL_PIPELINE;
    let total = f + queued as u64 + 4;
    assert_eq!(engine.tree_size("orders"), total);
    // One checkpoint per batch: the sizes they were signed at.
    let sizes: Vec<u64> = (1..=total)
        .filter(|&n| store.inner().checkpoint_at("orders", n).unwrap().is_some())
        .collect();
    let m = MAX_BATCH_ENTRIES as u64;
    let mut expected: Vec<u64> = (1..=f).collect();
    expected.extend([f + m, f + 2 * m, f + 3 * m]);
    expected.extend([total - 2, total]);
    assert_eq!(sizes, expected);
    engine.shutdown();
    assert_verifies(dir.path());
}

#[test]
fn one_sync_covers_every_batch_written_while_the_last_sync_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = gated(dir.path());
    let a = append_in_background(&engine, vec![input("order:1", "a")]);
    store.wait_writes(1);
    // A's sync waits at the gate; B and C are written behind it, each its
    // own batch, and queue for the syncer.
    let b = append_in_background(&engine, vec![input("order:2", "b")]);
    store.wait_writes(2);
    let c = append_in_background(&engine, vec![input("order:3", "c")]);
    store.wait_writes(3);
    thread::sleep(std::time::Duration::from_millis(200));
    store.open_gate(true);
    for w in [a, b, c] {
        w.join().unwrap().unwrap();
    }
    let count = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(count(&store.publishes), 3);
    assert_eq!(count(&store.syncs), 2, "A's sync, then one for B and C");
    engine.shutdown();
    assert_verifies(dir.path());
}

/// A batch of one entry after `seq`'s state, signed; and the state after it.
fn sequenced(
    seq: &auditlog::engine::sequencer::Sequencer,
    payload: &str,
) -> (
    auditlog::store::Batch,
    auditlog::engine::sequencer::Sequencer,
) {
    sequenced_inputs(seq, vec![input("order:1", payload)])
}

/// A batch of `inputs` after `seq`'s state, signed; and the state after it.
fn sequenced_inputs(
    seq: &auditlog::engine::sequencer::Sequencer,
    inputs: Vec<auditlog::engine::input::EntryInput>,
) -> (
    auditlog::store::Batch,
    auditlog::engine::sequencer::Sequencer,
) {
    let prepared =
        auditlog::engine::input::prepare(&Limits::default(), inputs, |s| *s = [7; 32]).unwrap();
    let (mut batch, cp, _, next) = seq.sequence(prepared, 1_000).into_parts();
    batch.checkpoint = cp.sign(&signer()).unwrap();
    let mut after = seq.clone();
    after.commit(next);
    (batch, after)
}

/// The embedded store in `dir` with the `orders` log opened, and the
/// sequencer at its durable head.
fn open_orders_store(
    dir: &std::path::Path,
) -> (
    auditlog::store::embedded::EmbeddedStore,
    auditlog::engine::sequencer::Sequencer,
) {
    let spec = auditlog::store::LogSpec {
        name: "orders".into(),
        origin: "audit.example.com/orders".into(),
    };
    let store = auditlog::store::embedded::EmbeddedStore::open(dir).unwrap();
    let head = store.open_log(&spec, 1_000).unwrap();
    let s0 = auditlog::engine::sequencer::Sequencer::from_head(&spec.origin, &head);
    (store, s0)
}

#[test]
fn the_store_publishes_written_batches_in_order_and_seals_nothing_unpublished() {
    let dir = tempfile::tempdir().unwrap();
    let (store, s0) = open_orders_store(dir.path());
    let (b1, s1) = sequenced(&s0, "a");
    let (b2, s2) = sequenced(&s1, "b");
    let p1 = store.write_unsynced("orders", &b1).unwrap().unwrap();
    // The next batch must follow the last one written, not the last one
    // published.
    assert!(matches!(
        store.write_unsynced("orders", &b1),
        Err(auditlog::store::StoreError::HeadMoved { actual: 1, .. })
    ));
    let p2 = store.write_unsynced("orders", &b2).unwrap().unwrap();
    assert_eq!(
        store.entry("orders", 0).unwrap(),
        None,
        "invisible until published"
    );
    p2.sync().unwrap();
    assert!(
        store.publish("orders", &b2, Ok(())).is_err(),
        "the newer batch cannot be published first"
    );
    drop(p1);
    store.publish("orders", &b1, Ok(())).unwrap();
    assert_eq!(
        store.entry("orders", 0).unwrap().unwrap().leaf_hash,
        b1.entries[0].leaf_hash
    );
    // A seal of what is published is refused while a batch is unpublished.
    let (seal, _) = s1.seal(2_000, SealReason::Request, None);
    let signed = seal.sign(&signer()).unwrap();
    assert!(store.seal("orders", &seal, &signed).is_err());
    store.publish("orders", &b2, Ok(())).unwrap();
    let (seal, _) = s2.seal(2_000, SealReason::Request, None);
    let signed = seal.sign(&signer()).unwrap();
    store.seal("orders", &seal, &signed).unwrap();
    drop(store);
    assert_verifies(dir.path());
}

/// Batches of 3 entries each: subjects, actors and idempotency keys that
/// repeat across batches, so lookups span several of them.
fn varied_batches(
    s0: &auditlog::engine::sequencer::Sequencer,
    n: usize,
    tag: &str,
) -> Vec<auditlog::store::Batch> {
    let mut state = s0.clone();
    (0..n)
        .map(|b| {
            let inputs = (0..3)
                .map(|i| auditlog::engine::input::EntryInput {
                    actor: format!("seller:{}", i % 2),
                    ..keyed(
                        &format!("order:{tag}{}", (b + i) % 4),
                        &format!("{tag} payload {b}.{i}"),
                        &format!("{tag}-key-{b}-{i}"),
                    )
                })
                .collect();
            let (batch, next) = sequenced_inputs(&state, inputs);
            state = next;
            batch
        })
        .collect()
}

/// Everything a reader can ask of `log` about `batches`' entries, keys,
/// subjects, actors and tree nodes.
fn reader_view(store: &dyn Store, batches: &[auditlog::store::Batch]) -> Vec<String> {
    let mut view = Vec::new();
    for b in batches {
        for e in &b.entries {
            let seq = e.entry.seq;
            view.push(format!("{seq}: {:?}", store.entry("orders", seq).unwrap()));
            let key = &e.entry.idempotency_key;
            view.push(format!(
                "{key}: {:?}",
                store.seq_by_idempotency_key("orders", key).unwrap()
            ));
            for s in [&e.entry.subject, &e.entry.actor] {
                view.push(format!(
                    "{s}: {:?} {:?}",
                    store.seqs_by_subject("orders", s, 0, 100).unwrap(),
                    store.seqs_by_actor("orders", s, 0, 100).unwrap()
                ));
            }
        }
        for (id, _) in &b.nodes {
            view.push(format!("{id:?}: {:?}", store.node("orders", *id)));
        }
        let end = b.first_seq + b.entries.len() as u64;
        view.push(format!(
            "{end}: {:?}",
            store.checkpoint_at("orders", end).unwrap()
        ));
    }
    view
}

#[test]
fn staged_batches_stay_invisible_and_publish_what_unstaged_ones_do() {
    let (staged_dir, plain_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (staged, s0) = open_orders_store(staged_dir.path());
    let (plain, _) = open_orders_store(plain_dir.path());
    let batches = varied_batches(&s0, 5, "x");
    let nothing_yet = reader_view(&plain, &batches);
    // Staged: every batch written and staged before any is published, as
    // the engine does while syncs run; staging twice changes nothing.
    let points: Vec<_> = batches
        .iter()
        .map(|b| {
            let point = staged.write_unsynced("orders", b).unwrap().unwrap();
            staged.stage("orders", b);
            staged.stage("orders", b);
            point
        })
        .collect();
    assert_eq!(
        reader_view(&staged, &batches),
        nothing_yet,
        "a staged batch is visible before it is published"
    );
    for (b, point) in batches.iter().zip(points) {
        point.sync().unwrap();
        staged.publish("orders", b, Ok(())).unwrap();
        let point = plain.write_unsynced("orders", b).unwrap().unwrap();
        point.sync().unwrap();
        plain.publish("orders", b, Ok(())).unwrap();
    }
    let published = reader_view(&plain, &batches);
    assert_ne!(published, nothing_yet);
    assert_eq!(reader_view(&staged, &batches), published);
    // Staged late: every batch once more after its publish, every other
    // one before it as well.
    let late_dir = tempfile::tempdir().unwrap();
    let (late, _) = open_orders_store(late_dir.path());
    for (i, b) in batches.iter().enumerate() {
        let point = late.write_unsynced("orders", b).unwrap().unwrap();
        if i % 2 == 1 {
            late.stage("orders", b);
        }
        point.sync().unwrap();
        late.publish("orders", b, Ok(())).unwrap();
        late.stage("orders", b);
    }
    assert_eq!(reader_view(&late, &batches), published);
    drop((staged, plain, late));
    assert_verifies(late_dir.path());
    assert_verifies(staged_dir.path());
    // And after a restart, from the indexes the staging wrote.
    let (staged, _) = open_orders_store(staged_dir.path());
    assert_eq!(reader_view(&staged, &batches), published);
}

#[test]
fn a_staged_batch_lost_in_a_crash_leaves_nothing_in_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, s0) = open_orders_store(dir.path());
    let first = varied_batches(&s0, 2, "a");
    for b in &first {
        store.append("orders", b).unwrap();
    }
    let durable = std::fs::metadata(
        store
            .log_dir("orders")
            .join(auditlog::store::segment::segment_file_name(0)),
    )
    .unwrap()
    .len();
    // The state after the durable batches, from the store.
    let log_dir = store.log_dir("orders");
    drop(store);
    let (store, s1) = open_orders_store(dir.path());
    // A batch written and staged (index records and nodes written beyond
    // the published size), then the process dies before its sync: the
    // disk kept none of its records.
    let lost = varied_batches(&s1, 1, "lost");
    let _point = store.write_unsynced("orders", &lost[0]).unwrap().unwrap();
    store.stage("orders", &lost[0]);
    drop(store);
    let segment = log_dir.join(auditlog::store::segment::segment_file_name(0));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(durable)
        .unwrap();
    // Another batch takes its seqs.
    let (store, _) = open_orders_store(dir.path());
    let again = varied_batches(&s1, 1, "again");
    store.append("orders", &again[0]).unwrap();
    let lost_entry = &lost[0].entries[0].entry;
    assert_eq!(
        store
            .seqs_by_subject("orders", &lost_entry.subject, 0, 100)
            .unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        store
            .seq_by_idempotency_key("orders", &lost_entry.idempotency_key)
            .unwrap(),
        None
    );
    let all: Vec<_> = first.iter().chain(&again).cloned().collect();
    let view = reader_view(&store, &all);
    drop(store);
    assert_verifies(dir.path());
    // The same answers from indexes rebuilt from the segments alone.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, _) = open_orders_store(dir.path());
    assert_eq!(reader_view(&store, &all), view);
}

#[test]
fn staging_while_the_same_batches_publish_changes_no_answer() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (racing_store, s0) = open_orders_store(dirs[0].path());
    let (plain_store, _) = open_orders_store(dirs[1].path());
    let batches = varied_batches(&s0, 200, "r");
    let (racing, plain) = (&racing_store, &plain_store);
    // Writes and publishes on one thread, stages the same batches on
    // another, as the log thread and the syncer do.
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    thread::scope(|scope| {
        scope.spawn(|| {
            for i in rx {
                racing.stage("orders", &batches[i]);
            }
        });
        let mut points = std::collections::VecDeque::new();
        for (i, b) in batches.iter().enumerate() {
            points.push_back((i, racing.write_unsynced("orders", b).unwrap().unwrap()));
            tx.send(i).unwrap();
            if i % 3 == 2 {
                while let Some((j, point)) = points.pop_front() {
                    point.sync().unwrap();
                    racing.publish("orders", &batches[j], Ok(())).unwrap();
                }
            }
        }
        for (j, point) in points {
            point.sync().unwrap();
            racing.publish("orders", &batches[j], Ok(())).unwrap();
        }
        drop(tx);
    });
    for b in &batches {
        plain.append("orders", b).unwrap();
    }
    assert_eq!(reader_view(racing, &batches), reader_view(plain, &batches));
    drop((racing_store, plain_store));
    assert_verifies(dirs[0].path());
}

/// Formats are forever: `tests/fixtures/store-v1/logs` holds the segment
/// files (the source of truth; indexes are derived and left out) of a
/// data directory written by version 1 through the CLI: `orders` with a
/// sealed segment whose three entries were then erased and an open one,
/// `chats` with an entry under a legal hold, and the `_system` and
/// `_access` logs that recorded it. Every later version must verify it
/// under the key that wrote it, rebuild its indexes, answer from it, and
/// append to it.
#[test]
fn a_data_dir_written_by_version_1_verifies_answers_and_grows() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let old_key = auditlog::keys::load_verifiers(&fixture.join("verifier.pub")).unwrap()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("logs"), &dir.path().join("logs"));

    let report = verify_data_dir(dir.path(), std::slice::from_ref(&old_key)).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    // 3 orders + 2 orders + 1 order, 1 chat, and the system and access
    // logs' records of the erasure and the hold.
    assert!(report.entries_checked >= 7, "{report:?}");
    assert_eq!(report.seals_checked, 1);
    let erased: Vec<u64> = report
        .findings
        .iter()
        .filter(|f| f.verdict == auditlog::verify::Verdict::Erased)
        .filter_map(|f| f.seq)
        .collect();
    assert_eq!(erased, vec![0, 1, 2], "{:?}", report.findings);

    let logs = vec![
        LogConfig::new("orders", "fixture.example.com/orders"),
        LogConfig::new("chats", "fixture.example.com/chats"),
    ];
    let f = open(dir.path(), logs, ManualClock::at(1_000));
    let e = &f.engine;
    let payload = |log: &str, seq: u64| e.entry(log, seq, 0).unwrap().0;
    assert_eq!(e.checkpoint("orders").unwrap().unwrap().0, 6);
    for seq in 0..3 {
        let stored = payload("orders", seq);
        assert_eq!(stored.state, auditlog::store::PayloadState::Erased);
        assert!(stored.payload.is_empty() && stored.salt.is_none());
        assert_eq!(stored.entry.subject, "order:1");
    }
    assert_eq!(payload("orders", 3).payload, b"output 1");
    assert_eq!(payload("orders", 5).payload, b"after the erasure");
    assert_eq!(payload("chats", 0).payload, b"hello");
    let holds = e.holds(Some("chats"));
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0].subject.as_deref(), Some("chat:7"));
    assert_eq!(holds[0].case_id, "case-1");
    // The idempotency keys of version 1's entries still answer: a retry
    // of the erased entry (same metadata and payload length: all that is
    // left to compare) gets the original receipt; one with another actor
    // is refused.
    let original = payload("orders", 1).entry;
    let retry = auditlog::engine::input::EntryInput {
        subject: original.subject.clone(),
        actor: original.actor.clone(),
        kind: original.kind.clone(),
        content_type: original.content_type.clone(),
        attributes: original.attributes.clone(),
        payload: b"prompt 2".to_vec(),
        idempotency_key: "o1-2".into(),
    };
    let again = e.append_blocking("orders", vec![retry.clone()]).unwrap();
    assert!(again.receipts[0].duplicate);
    assert_eq!(again.receipts[0].seq, 1);
    let other = auditlog::engine::input::EntryInput {
        actor: "buyer:2".into(),
        ..retry
    };
    assert!(matches!(
        e.append_blocking("orders", vec![other]),
        Err(AppendError::IdempotencyConflict { seq: 1, .. })
    ));
    // And the log grows on: a new entry chains on the old ones.
    let out = e
        .append_blocking("orders", vec![input("order:4", "appended later")])
        .unwrap();
    assert_eq!(out.receipts[0].seq, 6);
    let (stored, _, _) = e.entry("orders", 6, 0).unwrap();
    assert_eq!(stored.entry.prev_leaf_hash, payload("orders", 5).leaf_hash);
    f.engine.shutdown();
    drop(f);
    let report = verify_data_dir(dir.path(), &[old_key, signer().verifier()]).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
}
