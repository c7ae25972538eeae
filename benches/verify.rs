//! Offline bundle verification: `verify_bundle` on a synthetic bundle of
//! 1 KiB payloads (one seq range of one log, proofs against one signed
//! checkpoint, as `auditlog export --from-seq` writes them), next to a raw
//! baseline measured in the same run on the same bytes: read every line
//! and BLAKE3 it, on one thread. The ratio says what verifying costs over
//! touching the bytes once.
//!
//! Run: `cargo bench --bench verify`. Entries per bundle:
//! `AUDITLOG_BENCH_VERIFY_ENTRIES` (default 100,000; the #4 target is
//! stated for 1,000,000, which needs about 3 GB of memory here).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, Cursor};
use std::time::{Duration, Instant};

use auditlog::bundle::{verify_bundle, BundleEntry, BundleWriter, Query};
use auditlog::core::checkpoint::Checkpoint;
use auditlog::core::entry::{commit_payload, leaf_hash_of_encoding, Entry, Salt};
use auditlog::core::hash::{Blake3, Hash};
use auditlog::core::merkle::{inclusion_proofs, MemoryTree};
use auditlog::core::note::SignerKey;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ORIGIN: &str = "audit.example.com/orders";

/// A bundle of `n` entries (seqs `0..n`) and the key that verifies it.
fn bundle(n: u64) -> (Vec<u8>, SignerKey) {
    let key = SignerKey::from_seed(ORIGIN, &[7; 32]).expect("key");
    let mut tree = MemoryTree::<Blake3>::new();
    let mut rows = Vec::with_capacity(n as usize);
    let mut prev = Hash::ZERO;
    for seq in 0..n {
        let mut payload = vec![0u8; 1024];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (seq as usize * 31 + i) as u8;
        }
        let salt = Salt(*blake3::hash(&seq.to_be_bytes()).as_bytes());
        let mut attributes = BTreeMap::new();
        attributes.insert("gig".to_string(), format!("g-{}", seq % 97));
        let entry = Entry {
            origin: ORIGIN.into(),
            seq,
            timestamp_unix_nanos: 1_767_225_600_000_000_000 + seq as i64 * 1000,
            subject: format!("order:{}", seq / 4),
            actor: "buyer:42".into(),
            kind: "prompt".into(),
            content_type: "text/plain".into(),
            attributes,
            idempotency_key: format!("req-{seq}"),
            payload_len: payload.len() as u64,
            payload_commitment: commit_payload(&salt, &payload),
            prev_leaf_hash: prev,
        };
        let encoding = entry.encode().expect("encode");
        prev = leaf_hash_of_encoding(&encoding);
        tree.push(prev);
        rows.push((encoding, salt, payload));
    }
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size: n,
        root: tree.root(),
        extensions: vec![],
    };
    let signed = cp.sign(&key).expect("sign");
    let proofs = inclusion_proofs::<Blake3>(&tree, 0..n, n).expect("proofs");
    let mut w = BundleWriter::new(
        Vec::new(),
        "orders",
        ORIGIN,
        Query::SeqRange {
            from_seq: 0,
            to_seq: n,
        },
        &signed,
        &[],
    )
    .expect("header");
    for ((encoding, salt, payload), proof) in rows.into_iter().zip(proofs) {
        w.entry(&BundleEntry {
            encoding,
            state: "present",
            salt: Some(salt),
            payload,
            proof,
        })
        .expect("entry");
    }
    (w.finish().expect("end"), key)
}

/// Runs `f` `iters` times and returns the time taken, adding it and the
/// runs to `total`.
fn timed(total: &mut (Duration, u64), iters: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let d = t.elapsed();
    total.0 += d;
    total.1 += iters;
    d
}

fn verify(c: &mut Criterion) {
    let n: u64 = std::env::var("AUDITLOG_BENCH_VERIFY_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (bytes, key) = bundle(n);
    let keys = [key.verifier()];
    // The bundle must verify, or the figure means nothing.
    let (report, summary) = verify_bundle(Cursor::new(&bytes), &keys, None);
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(summary.entries, n);

    let mut g = c.benchmark_group(format!("verify_bundle_{n}"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n));
    // Total time and runs of each, for the ratio printed at the end.
    let mut raw = (Duration::ZERO, 0u64);
    g.bench_function("baseline_raw_lines_blake3", |b| {
        b.iter_custom(|iters| {
            timed(&mut raw, iters, || {
                let mut r = Cursor::new(&bytes);
                let mut line = Vec::with_capacity(4096);
                let mut h = blake3::Hasher::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).expect("read") == 0 {
                        break;
                    }
                    h.update(&line);
                }
                black_box(h.finalize());
            })
        })
    });
    let mut ver = (Duration::ZERO, 0u64);
    g.bench_function("verify_bundle", |b| {
        b.iter_custom(|iters| {
            timed(&mut ver, iters, || {
                let (report, _) = verify_bundle(Cursor::new(&bytes), &keys, None);
                assert!(report.is_valid());
            })
        })
    });
    g.finish();
    let per = |(d, runs): (Duration, u64)| d.as_secs_f64() / runs.max(1) as f64;
    let (r, v) = (per(raw), per(ver));
    println!(
        "verify of {n} entries ({:.0} MB): {:.0} entries/s; raw lines+BLAKE3 \
         {:.0} entries/s; verify = {:.2}x the raw baseline's time",
        bytes.len() as f64 / 1e6,
        n as f64 / v,
        n as f64 / r,
        v / r
    );
}

criterion_group!(benches, verify);
criterion_main!(benches);
