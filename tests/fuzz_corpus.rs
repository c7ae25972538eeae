//! The fuzz corpora (`fuzz/corpus/<target>/`, grown by `cargo fuzz run`)
//! replayed through the fuzz targets' own code, so every input the fuzzer
//! ever kept is a regression test; and the fuzz crate built, so its
//! targets cannot rot.
//!
//! `AUDITLOG_WRITE_FUZZ_SEEDS=1` writes the hand-made seeds (real entries,
//! notes, bundles and proofs, so the fuzzer starts from valid inputs).

mod common;

use std::path::{Path, PathBuf};

use auditlog::fuzzing;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_input_passes_its_target() {
    if std::env::var_os("AUDITLOG_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    for target in fuzzing::TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 10,
            "{target}: only {} corpus inputs",
            files.len()
        );
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let outcome = std::panic::catch_unwind(|| fuzzing::run(target, &data));
            assert!(outcome.is_ok(), "{target} fails on {}", f.display());
        }
    }
}

/// The targets find what they should: a non-canonical encoding, a
/// non-canonical checkpoint, a wrong proof accepted would each panic. Each
/// target is run on an input that exercises its strictest path.
#[test]
fn targets_accept_genuine_inputs() {
    let e = common::input("order:1", "p");
    let prepared = auditlog::core::Entry {
        origin: "audit.example.com/orders".into(),
        seq: 3,
        timestamp_unix_nanos: 5,
        subject: e.subject,
        actor: e.actor,
        kind: e.kind,
        content_type: e.content_type,
        attributes: Default::default(),
        idempotency_key: String::new(),
        payload_len: 1,
        payload_commitment: auditlog::core::Hash([1; 32]),
        prev_leaf_hash: auditlog::core::Hash([2; 32]),
    };
    fuzzing::entry_decode(&prepared.encode().unwrap());
    for mode in 0u8..3 {
        for op in 0u8..6 {
            let mut data = vec![mode, 37];
            data.extend_from_slice(&20u64.to_le_bytes());
            data.extend_from_slice(&9u64.to_le_bytes());
            data.extend_from_slice(&[op, 3, 77]);
            data.extend_from_slice(&5u64.to_le_bytes());
            fuzzing::proofs(&data);
        }
    }
}

fn write_seeds() {
    use auditlog::bundle::Query;
    use auditlog::core::checkpoint::Checkpoint;
    use auditlog::core::transition::KeyTransition;
    use auditlog::engine::Engine;
    use auditlog::store::embedded::EmbeddedStore;
    use auditlog::store::Store;
    use std::sync::Arc;

    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let key = Arc::new(fuzzing::fuzz_key());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let engine = Engine::start(
        store.clone(),
        key.clone(),
        vec![common::orders()],
        Default::default(),
        common::ManualClock::at(1_767_225_600_000_000_000),
    )
    .unwrap();
    for i in 0..6 {
        let mut e = common::input(&format!("order:{}", i % 2), &format!("payload {i}"));
        e.attributes.insert("model".into(), "m-1".into());
        e.idempotency_key = format!("k{i}");
        engine.append_blocking("orders", vec![e]).unwrap();
        if i == 3 {
            engine
                .seal_blocking("orders", auditlog::core::SealReason::Request)
                .unwrap();
        }
    }
    for seq in 0..6 {
        let stored = store.entry("orders", seq).unwrap().unwrap();
        put(
            "entry_decode",
            &format!("entry-{seq}"),
            &stored.entry.encode().unwrap(),
        );
    }
    let (_, cp) = engine.checkpoint("orders").unwrap().unwrap();
    put("signed_note", "checkpoint", cp.as_bytes());
    let (opened, _) = Checkpoint::open(&cp, &[key.verifier()], None).unwrap();
    put(
        "signed_note",
        "checkpoint-body",
        opened.to_text().as_bytes(),
    );
    for s in store.segments("orders").unwrap() {
        if let Some(seal) = s.seal {
            put("signed_note", &format!("seal-{}", s.index), seal.as_bytes());
        }
    }
    let new = auditlog::core::SignerKey::from_seed("fuzz.example/log", &[9; 32]).unwrap();
    let t = KeyTransition {
        from: key.verifier(),
        to: new.verifier(),
        time_unix_nanos: 1_767_225_600_000_000_000,
    };
    put(
        "signed_note",
        "transition",
        t.sign(&key, &new).unwrap().as_bytes(),
    );
    put("signed_note", "transition-body", t.to_text().as_bytes());
    put(
        "signed_note",
        "verifier-key",
        key.verifier().to_text().as_bytes(),
    );
    for (name, query) in [
        (
            "range",
            Query::SeqRange {
                from_seq: 0,
                to_seq: 6,
            },
        ),
        (
            "subject",
            Query::Subject {
                subject: "order:1".into(),
            },
        ),
    ] {
        let mut out = Vec::new();
        engine.export("orders", query, Some(&cp), &mut out).unwrap();
        put("bundle_reader", name, &out);
    }
    engine.rotate_key(new, "seed").unwrap();
    engine
        .append_blocking("orders", vec![common::input("order:1", "after")])
        .unwrap();
    let mut out = Vec::new();
    engine
        .export(
            "orders",
            Query::Subject {
                subject: "order:1".into(),
            },
            None,
            &mut out,
        )
        .unwrap();
    put("bundle_reader", "rotated", &out);
    engine.shutdown();
    for (i, (mode, n, a, b)) in [
        (0u8, 1u8, 0u64, 0u64),
        (0, 200, 150, 77),
        (1, 64, 63, 31),
        (2, 100, 99, 17),
        (2, 7, 6, 6),
        (3, 0, u64::MAX, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let mut data = vec![mode, n];
        data.extend_from_slice(&a.to_le_bytes());
        data.extend_from_slice(&b.to_le_bytes());
        data.extend_from_slice(&[i as u8, 1, 2]);
        data.extend_from_slice(&(i as u64 * 13).to_le_bytes());
        put("proofs", &format!("{i}"), &data);
    }
}

/// Checks the fuzz crate (every target still compiles against the
/// library, with its locked dependencies). `cargo check` rather than a
/// build: linking libFuzzer is `cargo fuzz build -s none`'s job, and a full
/// second build of every dependency cost CI four minutes.
#[test]
fn the_fuzz_targets_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["check", "--locked", "--bins", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .env("CARGO_TARGET_DIR", root.join("target/fuzz-build"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
