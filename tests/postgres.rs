//! The PostgreSQL store as operators run it: `auditlog migrate`, schema
//! upgrades from every earlier version, and several `auditlog serve`
//! processes on one database with one of them killed mid-load.
//!
//! Each test starts its own throwaway PostgreSQL (see `common/pg.rs`), or
//! says it is skipped when PostgreSQL is not installed (a failure with
//! `AUDITLOG_REQUIRE_POSTGRES=1`).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use auditlog::bundle::verify_bundle;
use auditlog::core::checkpoint::Checkpoint;
use auditlog::core::hash::{Blake3, Hash};
use auditlog::core::merkle::{proof_from_bytes, verify_inclusion};
use auditlog::proto::export_request::Selector;
use auditlog::proto::{AppendRequest, EntryInput, ExportRequest, GetEntryRequest, SeqRange};
use auditlog::store::postgres::{migrate, migrate_to, SCHEMA_VERSION};
use common::pg::Pg;
use common::server::{start_with, Server};

fn auditlog(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The schema as the catalog describes it: tables, columns, types,
/// nullability and indexes, for comparing databases.
fn schema(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "SELECT table_name || '.' || column_name || ':' || data_type || ':' || is_nullable \
         || ':' || coalesce(collation_name, '-') \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name LIKE 'auditlog%' AND table_name <> 'auditlog_schema' \
         ORDER BY 1; \
         SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
         AND tablename LIKE 'auditlog%' ORDER BY 1",
    )
}

#[test]
fn migrations_go_forward_from_every_earlier_version() {
    let Some(pg) = Pg::start("migrations_go_forward_from_every_earlier_version") else {
        return;
    };
    // The command: a fresh database goes to the latest version, then stays.
    let url = pg.create_db("cli");
    let (code, out, err) = auditlog(&["migrate", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("schema version 0 -> {SCHEMA_VERSION}"));
    let (code, out, _) = auditlog(&["migrate", "--store", &url]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("schema version {SCHEMA_VERSION}: up to date")
    );
    let fresh = schema(&pg, "cli");
    assert!(
        fresh.contains("auditlog_entries.payload:bytea:YES:-"),
        "{fresh}"
    );
    // Every text key and index column compares bytes, whatever the
    // database's default collation (version 2).
    for column in [
        "auditlog_logs.name",
        "auditlog_entries.log",
        "auditlog_entries.subject",
        "auditlog_entries.actor",
        "auditlog_entries.idempotency_key",
        "auditlog_nodes.log",
        "auditlog_checkpoints.log",
        "auditlog_segments.log",
    ] {
        assert!(
            fresh
                .lines()
                .any(|l| l.starts_with(&format!("{column}:text:")) && l.ends_with(":C")),
            "{column} in {fresh}"
        );
    }

    // An idempotency key is used once per log, enforced by the database
    // (version 3).
    assert!(
        fresh.contains(
            "CREATE UNIQUE INDEX auditlog_entries_key ON public.auditlog_entries \
             USING btree (log, idempotency_key) WHERE (idempotency_key IS NOT NULL)"
        ),
        "{fresh}"
    );

    // From every earlier version (0 = an empty database) to the latest:
    // the same schema as a fresh one.
    for from in 0..SCHEMA_VERSION {
        let db = format!("from{from}");
        let url = pg.create_db(&db);
        assert_eq!(migrate_to(&url, from).unwrap(), (0, from));
        assert_eq!(migrate(&url).unwrap(), (from, SCHEMA_VERSION));
        assert_eq!(schema(&pg, &db), fresh, "upgraded from version {from}");
    }

    // A database newer than this code is refused, not touched.
    pg.psql("cli", "INSERT INTO auditlog_schema (version) VALUES (999)");
    let (code, _, err) = auditlog(&["migrate", "--store", &url]);
    assert_eq!(code, 2);
    assert!(err.contains("newer than this auditlog"), "{err}");
}

/// A digest of every row of the `auditlog_*` tables, in key order.
fn rows_digest(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "SELECT md5(string_agg(t, '|' ORDER BY t COLLATE \"C\")) FROM ( \
         SELECT 'l' || r::text AS t FROM auditlog_logs r UNION ALL \
         SELECT 'e' || r::text FROM auditlog_entries r UNION ALL \
         SELECT 'n' || r::text FROM auditlog_nodes r UNION ALL \
         SELECT 'c' || r::text FROM auditlog_checkpoints r UNION ALL \
         SELECT 's' || r::text FROM auditlog_segments r) x",
    )
    .trim()
    .to_owned()
}

/// Migrations keep the data: rows written by this version (sealed and
/// open segments, erased and keyed entries, subjects outside ASCII, whose
/// order the version-2 collation change touches) are put into a database
/// at every earlier schema version, which is then migrated: the rows come
/// out unchanged, the log verifies, reads and key look-ups answer through
/// the rebuilt indexes, and appends go on.
#[test]
fn migrations_keep_the_data_of_every_earlier_version() {
    use auditlog::engine::input::Limits;
    use auditlog::engine::{Engine, LogConfig, SystemClock};
    use auditlog::store::postgres::PgStore;
    let Some(pg) = Pg::start("migrations_keep_the_data_of_every_earlier_version") else {
        return;
    };
    let logs = || {
        vec![
            LogConfig::new("orders", "audit.example.com/orders"),
            LogConfig::new("chats", "audit.example.com/chats"),
        ]
    };
    let start = |url: &str| {
        let store = Arc::new(PgStore::connect(url).unwrap());
        Engine::start(
            store,
            common::signer(),
            logs(),
            Limits::default(),
            Arc::new(SystemClock),
        )
        .unwrap()
    };
    let source = pg.create_db("source");
    let engine = start(&source);
    for (i, subject) in ["order:1", "order:Ärger", "order:żółw", "order:1"]
        .iter()
        .enumerate()
    {
        let key = format!("k-{i}");
        engine
            .append_blocking(
                "orders",
                vec![common::keyed(subject, &format!("p{i}"), &key)],
            )
            .unwrap();
        if i == 1 {
            engine
                .seal_blocking("orders", auditlog::core::seal::SealReason::Request)
                .unwrap();
        }
    }
    engine
        .append_blocking("chats", vec![common::input("chat:☕", "hello")])
        .unwrap();
    let erased = engine
        .erase(
            Some("orders"),
            &auditlog::engine::admin::Target::Subject("order:Ärger".into()),
            "dpo@example.com",
        )
        .unwrap();
    assert!(erased.iter().any(|l| l.erased == 1), "{erased:?}");
    engine.shutdown();
    drop(engine);
    let rows = pg.dump_rows("source");
    let digest = rows_digest(&pg, "source");

    for from in 1..SCHEMA_VERSION {
        let db = format!("data{from}");
        let url = pg.create_db(&db);
        assert_eq!(migrate_to(&url, from).unwrap(), (0, from));
        pg.psql(&db, &rows);
        assert_eq!(migrate(&url).unwrap(), (from, SCHEMA_VERSION));
        assert_eq!(
            rows_digest(&pg, &db),
            digest,
            "rows after migrating from {from}"
        );
        let report =
            auditlog::verify::postgres::verify_postgres(&url, &[common::signer().verifier()])
                .unwrap();
        assert!(report.is_valid(), "from {from}: {:?}", report.findings);
        let engine = start(&url);
        let seqs = engine
            .store()
            .seqs_by_subject("orders", "order:żółw", 0, 10)
            .unwrap();
        assert_eq!(seqs, vec![2], "from {from}");
        let retry = engine
            .append_blocking("orders", vec![common::keyed("order:1", "p3", "k-3")])
            .unwrap();
        assert!(retry.receipts[0].duplicate, "from {from}");
        assert_eq!(retry.receipts[0].seq, 3);
        let more = engine
            .append_blocking("orders", vec![common::input("order:2", "later")])
            .unwrap();
        assert_eq!(more.receipts[0].seq, 4, "from {from}");
        engine.shutdown();
    }
}

#[test]
fn serve_refuses_a_shared_database_without_a_shared_key() {
    let Some(pg) = Pg::start("serve_refuses_a_shared_database_without_a_shared_key") else {
        return;
    };
    let url = pg.create_db("nokey");
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sign with one key"), "{err}");
}

fn entry(subject: &str, payload: String) -> EntryInput {
    EntryInput {
        subject: subject.into(),
        actor: "buyer:1".into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        payload: payload.into_bytes(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_on_one_database_one_killed_mid_load() {
    let Some(pg) = Pg::start("three_servers_on_one_database_one_killed_mid_load") else {
        return;
    };
    let url = pg.create_db("shared");
    let keys = tempfile::tempdir().unwrap();
    let (code, _, err) = auditlog(&[
        "keygen",
        "--name",
        "audit.example.com",
        "--out",
        keys.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let key = keys.path().join("signer.key");
    let verifier = auditlog::keys::load_verifiers(&keys.path().join("verifier.pub")).unwrap();
    let servers: Vec<Server> = (0..3)
        .map(|_| {
            start_with(
                tempfile::tempdir().unwrap(),
                None,
                &[],
                &["--store", &url, "--key", key.to_str().unwrap()],
            )
        })
        .collect();

    // Appenders on every server; the first server is killed mid-load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        for t in 0..3 {
            let mut c = s.client().await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked: Vec<(u64, Vec<u8>, String)> = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = c
                        .append(AppendRequest {
                            log: "default".into(),
                            entries: vec![entry(&format!("s{i}t{t}"), format!("{i}/{t}/{n}"))],
                        })
                        .await;
                    match r {
                        Ok(r) => {
                            let r = r.into_inner();
                            let rec = &r.receipts[0];
                            acked.push((rec.seq, rec.leaf_hash.clone(), r.checkpoint.clone()));
                        }
                        // The killed server: its clients stop.
                        Err(_) if i == 0 => break,
                        Err(e) => panic!("server {i}: {e}"),
                    }
                }
                acked
            }));
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut servers = servers;
    let mut killed = servers.remove(0);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "only {} appends acknowledged",
        acked.len()
    );

    // Every acknowledged entry is there once, with its leaf hash, and its
    // receipt's proof holds against its checkpoint.
    let mut c = servers[0].client().await;
    let mut by_seq: HashMap<u64, Vec<u8>> = HashMap::new();
    for (seq, leaf, cp) in &acked {
        assert!(
            by_seq.insert(*seq, leaf.clone()).is_none(),
            "seq {seq} acknowledged twice"
        );
        let cp = Checkpoint::open(cp, &verifier, None).unwrap().0;
        assert!(*seq < cp.size);
    }
    // Seqs are dense: the latest size holds exactly 0..size, each linking
    // to the one before, and every acknowledged leaf is the stored one.
    let last = c
        .get_entry(GetEntryRequest {
            log: "default".into(),
            seq: 0,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let cp = Checkpoint::open(&last.checkpoint, &verifier, None)
        .unwrap()
        .0;
    assert!(cp.size as usize >= acked.len());
    let mut prev = Hash::ZERO;
    for seq in 0..cp.size {
        let r = c
            .get_entry(GetEntryRequest {
                log: "default".into(),
                seq,
                tree_size: cp.size,
            })
            .await
            .unwrap()
            .into_inner();
        let e = r.entry.unwrap();
        assert_eq!(e.seq, seq);
        assert_eq!(e.prev_leaf_hash, prev.0.to_vec(), "seq {seq} links");
        let leaf = Hash(e.leaf_hash.clone().try_into().unwrap());
        if let Some(acked_leaf) = by_seq.get(&seq) {
            assert_eq!(acked_leaf, &e.leaf_hash, "seq {seq}");
        }
        let proof = proof_from_bytes(&r.inclusion_proof).unwrap();
        verify_inclusion::<Blake3>(seq, cp.size, &leaf, &proof, &cp.root).unwrap();
        prev = leaf;
    }
    // The whole log as one bundle verifies offline.
    let mut stream = c
        .export(ExportRequest {
            log: "default".into(),
            selector: Some(Selector::SeqRange(SeqRange {
                from_seq: 0,
                to_seq: cp.size,
            })),
            since_checkpoint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bundle = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bundle.extend_from_slice(&chunk.data);
    }
    let (report, _) = verify_bundle(bundle.as_slice(), &verifier, None);
    assert!(report.is_valid(), "{:?}", report.findings);
    // And the whole database, through a server and offline.
    let verified = c
        .verify(auditlog::proto::VerifyRequest { log: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid, "{:?}", verified.findings);
    assert!(verified.entries_checked >= cp.size);
    let pubkey = keys.path().join("verifier.pub");
    let (code, out, _) = auditlog(&["verify", "--store", &url, "--key", pubkey.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    for s in servers {
        s.stop();
    }
}

/// A small log in database `db`: 8 entries in batches of 2, segment 0
/// sealed after 4.
fn pristine(pg: &Pg, db: &str) -> String {
    use auditlog::core::seal::SealReason;
    use auditlog::engine::Engine;
    use auditlog::store::postgres::PgStore;
    let url = pg.create_db(db);
    let store = Arc::new(PgStore::connect(&url).unwrap());
    let engine = Engine::start(
        store,
        common::signer(),
        vec![common::orders()],
        Default::default(),
        common::ManualClock::at(1_000),
    )
    .unwrap();
    for b in 0..4 {
        let batch = (0..2)
            .map(|i| common::input(&format!("order:{}", b % 2), &format!("payload {b}/{i}")))
            .collect();
        engine.append_blocking("orders", batch).unwrap();
        if b == 1 {
            engine.seal_blocking("orders", SealReason::Request).unwrap();
        }
    }
    engine.shutdown();
    url
}

#[test]
fn sql_tampering_is_detected_and_named() {
    use auditlog::verify::postgres::verify_postgres;
    use auditlog::verify::Verdict::*;
    let Some(pg) = Pg::start("sql_tampering_is_detected_and_named") else {
        return;
    };
    let keys = [common::signer().verifier()];
    let url = pristine(&pg, "pristine");
    let report = verify_postgres(&url, &keys).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(
        report.entries_checked,
        8 + 1,
        "orders and the _system seal entry"
    );
    assert_eq!(report.seals_checked, 1);
    // The command line says the same.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pub");
    std::fs::write(&key, format!("{}\n", keys[0].to_text())).unwrap();
    let (code, out, _) = auditlog(&["verify", "--store", &url, "--key", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("VALID: PostgreSQL store"), "{out}");

    let e = "auditlog_entries WHERE log = 'orders'";
    let catalogue: &[(&str, String, auditlog::verify::Verdict, &str, Option<u64>)] = &[
        (
            "payload rewritten",
            "UPDATE auditlog_entries SET payload = 'forged' WHERE log = 'orders' AND seq = 2"
                .into(),
            HashMismatch,
            "payload",
            Some(2),
        ),
        (
            "entry deleted",
            format!("DELETE FROM {e} AND seq = 5"),
            MissingEntry,
            "seq",
            Some(5),
        ),
        (
            "two entries swapped",
            ["1 SET seq = -1", "2 SET seq = 1", "-1 SET seq = 2"]
                .map(|w| {
                    let (at, set) = w.split_once(" SET ").unwrap();
                    format!(
                        "UPDATE auditlog_entries SET {set} WHERE log = 'orders' AND seq = {at};"
                    )
                })
                .join(" "),
            ChainBroken,
            "seq",
            Some(1),
        ),
        (
            "encoding altered",
            "UPDATE auditlog_entries SET encoding = overlay(encoding placing '\\x7a'::bytea \
             from 40 for 1) WHERE log = 'orders' AND seq = 3"
                .into(),
            HashMismatch,
            "entry",
            Some(3),
        ),
        (
            "payload removed without a record",
            "UPDATE auditlog_entries SET payload = NULL, salt = NULL \
             WHERE log = 'orders' AND seq = 1"
                .into(),
            HashMismatch,
            "payload",
            Some(1),
        ),
        (
            "seal text altered",
            "UPDATE auditlog_segments SET seal = overlay(seal placing 'X' from 30 for 1) \
             WHERE log = 'orders' AND segment = 0"
                .into(),
            BadSignature,
            "seal",
            None,
        ),
        (
            "seal dropped",
            "UPDATE auditlog_segments SET seal = NULL, end_seq = NULL \
             WHERE log = 'orders' AND segment = 0"
                .into(),
            Truncated,
            "seal",
            None,
        ),
        (
            "checkpoint altered",
            "UPDATE auditlog_checkpoints SET note = overlay(note placing 'X' from 3 for 1) \
             WHERE log = 'orders' AND size = 6"
                .into(),
            BadSignature,
            "checkpoint",
            None,
        ),
        (
            "subject column changed",
            "UPDATE auditlog_entries SET subject = 'order:999' WHERE log = 'orders' AND seq = 0"
                .into(),
            Malformed,
            "subject",
            Some(0),
        ),
        (
            "tree node changed",
            "UPDATE auditlog_nodes SET hash = decode(repeat('00', 32), 'hex') \
             WHERE log = 'orders' AND level = 1 AND index = 0"
                .into(),
            HashMismatch,
            "node",
            None,
        ),
        (
            "head moved back",
            "UPDATE auditlog_logs SET size = 3 WHERE name = 'orders'".into(),
            Malformed,
            "head",
            None,
        ),
    ];
    for (i, (what, sql, verdict, field, seq)) in catalogue.iter().enumerate() {
        let db = format!("tampered{i}");
        let url = pristine(&pg, &db);
        pg.psql(&db, sql);
        let report = verify_postgres(&url, &keys).unwrap();
        assert!(!report.is_valid(), "{what}: not detected");
        assert!(
            report.findings.iter().any(|f| f.verdict == *verdict
                && f.log == "orders"
                && f.field == *field
                && (seq.is_none() || f.seq == *seq)),
            "{what}: want {verdict:?} field {field} seq {seq:?}, got {:#?}",
            report.findings
        );
    }
    // The store itself refuses to serve a tampered row (the first case
    // rewrote the payload of seq 2), and serves its neighbours.
    {
        use auditlog::store::postgres::PgStore;
        use auditlog::store::{LogSpec, Store, StoreError};
        let store = PgStore::connect(&pg.url("tampered0")).unwrap();
        let spec = LogSpec {
            name: "orders".into(),
            origin: "audit.example.com/orders".into(),
        };
        store.open_log(&spec, 0).unwrap();
        assert!(matches!(
            store.entry("orders", 2),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(store.entry("orders", 3).unwrap().is_some());
    }
    // A payload removed as the store removes it (state erased) is reported
    // and is not a failure.
    let url = pristine(&pg, "erased");
    pg.psql(
        "erased",
        "UPDATE auditlog_entries SET payload = NULL, salt = NULL, payload_state = 1 \
         WHERE log = 'orders' AND seq = 1",
    );
    let report = verify_postgres(&url, &keys).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    assert!(report.has(Erased));
}

/// (code, log, seq) of a finding.
type FindingKey = (String, String, Option<u64>);

/// The findings that do not depend on where the log is stored.
fn summary(r: &auditlog::verify::Report) -> (u64, u64, u64, Vec<FindingKey>) {
    let mut f: Vec<_> = r
        .findings
        .iter()
        .map(|f| (f.verdict.code().to_owned(), f.log.clone(), f.seq))
        .collect();
    f.sort();
    (r.entries_checked, r.checkpoints_checked, r.seals_checked, f)
}

#[test]
fn copy_there_and_back_verifies_identically() {
    use auditlog::core::seal::SealReason;
    use auditlog::engine::admin::Target;
    use auditlog::store::embedded::EmbeddedStore;
    use auditlog::verify::postgres::verify_postgres;
    use auditlog::verify::store::verify_data_dir;
    let Some(pg) = Pg::start("copy_there_and_back_verifies_identically") else {
        return;
    };
    // A history worth copying: two logs, batches, seals (one of an empty
    // segment), an erasure and a key rotation.
    let dir = tempfile::tempdir().unwrap();
    let clock = common::ManualClock::at(1_000);
    let f = common::open(
        dir.path(),
        vec![common::orders(), common::chats()],
        clock.clone(),
    );
    for b in 0..6u64 {
        let batch = (0..=b % 3)
            .map(|i| common::input(&format!("order:{}", b % 2), &format!("{b}/{i}")))
            .collect();
        f.engine.append_blocking("orders", batch).unwrap();
        f.engine
            .append_blocking("chats", vec![common::input("chat:1", &format!("m{b}"))])
            .unwrap();
        if b % 2 == 1 {
            clock.set(1_000 + b as i64 * 10);
            f.engine
                .seal_blocking("orders", SealReason::Request)
                .unwrap();
        }
        if b == 3 {
            f.engine.rotate_key(common::other_signer(), "test").unwrap();
        }
    }
    f.engine
        .seal_blocking("chats", SealReason::Request)
        .unwrap();
    f.engine
        .seal_blocking("chats", SealReason::Request)
        .unwrap(); // empty segment
    f.engine
        .erase(Some("orders"), &Target::Subject("order:1".into()), "test")
        .unwrap();
    f.close();
    let old = [common::signer().verifier()];
    let source = verify_data_dir(dir.path(), &old).unwrap();
    assert!(source.is_valid(), "{:?}", source.findings);
    assert!(source.has(auditlog::verify::Verdict::Erased));

    let url = pg.create_db("copy");
    let (code, out, err) =
        auditlog(&["copy", "--from", dir.path().to_str().unwrap(), "--to", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("orders: "), "{out}");
    let there = verify_postgres(&url, &old).unwrap();
    assert!(there.is_valid(), "{:?}", there.findings);
    assert_eq!(summary(&there), summary(&source));
    // Again: nothing to do.
    let (code, out, _) = auditlog(&["copy", "--from", dir.path().to_str().unwrap(), "--to", &url]);
    assert_eq!(code, 0);
    assert!(out.contains("orders: already there, skipped"), "{out}");

    let back = tempfile::tempdir().unwrap();
    let (code, _, err) = auditlog(&[
        "copy",
        "--from",
        &url,
        "--to",
        back.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let again = verify_data_dir(back.path(), &old).unwrap();
    assert_eq!(summary(&again), summary(&source));

    // The copies serve the same entries, and go on from the same head.
    let a = EmbeddedStore::open(dir.path()).unwrap();
    let b = EmbeddedStore::open(back.path()).unwrap();
    use auditlog::store::Store;
    for spec in a.stored_logs().unwrap() {
        let (ha, hb) = (a.open_log(&spec, 0).unwrap(), b.open_log(&spec, 0).unwrap());
        assert_eq!(ha, hb, "{}", spec.name);
        for seq in 0..ha.size {
            assert_eq!(
                a.entry(&spec.name, seq).unwrap(),
                b.entry(&spec.name, seq).unwrap()
            );
        }
    }
    drop((a, b));
    // Into a non-empty destination with another history: refused.
    let (code, _, err) = auditlog(&[
        "copy",
        "--from",
        back.path().to_str().unwrap(),
        "--to",
        &pristine(&pg, "other"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("another history"), "{err}");
}

/// Restoring an older backup of the database drops every entry appended
/// since, consistently: the log just looks shorter, and verifies. Only a
/// checkpoint held outside (`verify --store URL --since-checkpoint F`)
/// shows it. Restoring one log's rows only is seen even alone: the system
/// log still records the seal the log lost.
#[test]
fn a_database_rolled_back_to_an_old_backup_is_found_against_a_held_checkpoint() {
    use auditlog::engine::input::Limits;
    use auditlog::engine::{Engine, LogConfig, SystemClock};
    use auditlog::store::postgres::PgStore;
    use auditlog::verify::postgres::{verify_postgres, verify_postgres_since};
    use auditlog::verify::Verdict;
    let Some(pg) = Pg::start("a_database_rolled_back_to_an_old_backup") else {
        return;
    };
    let url = pg.create_db("rollback");
    let engine = Engine::start(
        Arc::new(PgStore::connect(&url).unwrap()),
        common::signer(),
        vec![LogConfig::new("orders", "audit.example.com/orders")],
        Limits::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let append = |p: &str| {
        engine
            .append_blocking("orders", vec![common::input("order:1", p)])
            .unwrap()
            .checkpoint
    };
    let early = [append("a"), append("b")];
    let backup = pg.dump_rows("rollback");
    engine
        .seal_blocking("orders", auditlog::core::seal::SealReason::Request)
        .unwrap();
    let last = ["c", "d", "e"].map(append);
    engine.shutdown();
    drop(engine);

    let keys = [common::signer().verifier()];
    let report = verify_postgres_since(&url, &keys, Some(&last[2])).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);

    // The orders rows alone rolled back (the system log left as it is).
    let tables = [
        "auditlog_entries",
        "auditlog_nodes",
        "auditlog_checkpoints",
        "auditlog_segments",
        "auditlog_logs",
    ];
    for t in tables {
        let column = if t == "auditlog_logs" { "name" } else { "log" };
        pg.psql(
            "rollback",
            &format!("DELETE FROM {t} WHERE {column} = 'orders'"),
        );
    }
    // (Statements end with ";\n", some after a comment block; a
    // checkpoint's text spans lines.)
    let orders_rows: String = backup
        .split(";\n")
        .map(|st| {
            st.lines()
                .skip_while(|l| l.is_empty() || l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|st| st.starts_with("INSERT") && st.contains("VALUES ('orders'"))
        .map(|st| format!("{st};\n"))
        .collect();
    assert_eq!(
        orders_rows
            .matches("INSERT INTO public.auditlog_entries")
            .count(),
        2,
        "{orders_rows}"
    );
    pg.psql("rollback", &orders_rows);
    let report = verify_postgres(&url, &keys).unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.verdict == Verdict::Truncated
                && f.log == "orders"
                && f.field == "seal"
                && f.segment == Some(0)),
        "{:?}",
        report.findings
    );

    // The whole database rolled back: consistent, so valid alone.
    pg.psql("rollback", &format!("TRUNCATE {}", tables.join(", ")));
    pg.psql("rollback", &backup);
    let alone = verify_postgres(&url, &keys).unwrap();
    assert!(
        alone.is_valid(),
        "the rollback is invisible alone: {:?}",
        alone.findings
    );
    let report = verify_postgres_since(&url, &keys, Some(&last[2])).unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.verdict == Verdict::Truncated && f.field == "since" && f.seq == Some(2)),
        "{:?}",
        report.findings
    );
    assert!(!report.is_valid());
    let report = verify_postgres_since(&url, &keys, Some(&early[1])).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);

    // The command line: exit 1, the finding named.
    let dir = tempfile::tempdir().unwrap();
    let (key, held) = (dir.path().join("verifier.pub"), dir.path().join("held"));
    std::fs::write(&key, format!("{}\n", keys[0].to_text())).unwrap();
    std::fs::write(&held, &last[2]).unwrap();
    let (code, out, err) = auditlog(&[
        "verify",
        "--store",
        &url,
        "--key",
        key.to_str().unwrap(),
        "--since-checkpoint",
        held.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("TRUNCATED") && out.contains("field=since"),
        "{out}"
    );
}
