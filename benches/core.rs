//! Core benchmarks: encoding + leaf hash, Merkle append, proofs at 1M
//! leaves, checkpoint signing and opening, what metrics add per request,
//! and preparing one 256-entry request.
//!
//! Run: `cargo bench --bench core`. Criterion reports throughput in
//! elements/s (= entries/s). The first group also measures a raw baseline,
//! plain BLAKE3 over the same 1 KiB payload bytes, so the cost of the
//! canonical encoding can be read as a ratio on any machine.

use std::collections::BTreeMap;
use std::hint::black_box;

use auditlog::core::checkpoint::Checkpoint;
use auditlog::core::commit::commit_payloads;
use auditlog::core::entry::{commit_payload, Entry, Salt};
use auditlog::core::hash::{Blake3, Hash, TreeHasher};
use auditlog::core::merkle::{
    consistency_proof, inclusion_proof, inclusion_proofs, root_at, verify_consistency,
    verify_inclusion, CompactRange, MemoryTree,
};
use auditlog::core::note::SignerKey;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const BATCH: u64 = 1024;

fn sample_entry(seq: u64, payload: &[u8]) -> Entry {
    let mut attributes = BTreeMap::new();
    attributes.insert("gig".to_string(), "g-77".to_string());
    Entry {
        origin: "audit.example.com/orders".into(),
        seq,
        timestamp_unix_nanos: 1_767_225_600_000_000_000 + seq as i64,
        subject: format!("order:{}", seq / 4),
        actor: "buyer:42".into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        attributes,
        idempotency_key: String::new(),
        payload_len: payload.len() as u64,
        payload_commitment: Hash::ZERO,
        prev_leaf_hash: Hash::ZERO,
    }
}

fn entry_hashing(c: &mut Criterion) {
    let payload = vec![0x5au8; 1024];
    let salt = Salt([9; 32]);
    let mut g = c.benchmark_group("entry_1KiB");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("baseline_raw_blake3_of_payload", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(blake3::hash(black_box(&payload)));
            }
        })
    });
    // The commitment does not depend on the position in the log, so the
    // service computes it on request threads, off the sequencer's path.
    g.bench_function("commitment_only", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(commit_payload(&salt, black_box(&payload)));
            }
        })
    });
    // What the sequencer does per entry: encode, leaf hash, tree append.
    g.bench_function("sequencer_encode_leaf_hash_tree_append", |b| {
        let mut e = sample_entry(0, &payload);
        e.payload_commitment = commit_payload(&salt, &payload);
        let mut buf = Vec::with_capacity(512);
        let mut range = CompactRange::<Blake3>::new();
        b.iter(|| {
            for seq in 0..BATCH {
                e.seq = seq;
                buf.clear();
                e.encode_into(&mut buf).unwrap();
                e.prev_leaf_hash = Blake3::hash_leaf(&buf);
                range.append(e.prev_leaf_hash, |_, _| {});
            }
            black_box(range.root())
        })
    });
    // Everything, as one core would do it alone.
    g.bench_function("commit_encode_leaf_hash_tree_append", |b| {
        let mut e = sample_entry(0, &payload);
        let mut buf = Vec::with_capacity(512);
        let mut range = CompactRange::<Blake3>::new();
        b.iter(|| {
            for seq in 0..BATCH {
                e.seq = seq;
                e.payload_commitment = commit_payload(&salt, &payload);
                buf.clear();
                e.encode_into(&mut buf).unwrap();
                e.prev_leaf_hash = Blake3::hash_leaf(&buf);
                range.append(e.prev_leaf_hash, |_, _| {});
            }
            black_box(range.root())
        })
    });
    g.finish();
}

fn merkle(c: &mut Criterion) {
    let mut g = c.benchmark_group("merkle");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("compact_range_append", |b| {
        let leaves: Vec<Hash> = (0..BATCH)
            .map(|i| Blake3::hash_leaf(&i.to_be_bytes()))
            .collect();
        b.iter_batched(
            CompactRange::<Blake3>::new,
            |mut r| {
                for l in &leaves {
                    r.append(*l, |_, _| {});
                }
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    const N: u64 = 1 << 20;
    let mut tree = MemoryTree::<Blake3>::new();
    let leaves: Vec<Hash> = (0..N)
        .map(|i| Blake3::hash_leaf(&i.to_be_bytes()))
        .collect();
    for l in &leaves {
        tree.push(*l);
    }
    let size = N - 3; // not a power of two: exercises the right edge
    let root = root_at::<Blake3>(&tree, size).unwrap();
    let old = 700_001;
    let old_root = root_at::<Blake3>(&tree, old).unwrap();

    let mut g = c.benchmark_group("proofs_1M");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            i = (i + 7919) % size;
            black_box(inclusion_proof::<Blake3>(&tree, i, size).unwrap())
        })
    });
    // What the finisher does for a 256-entry batch at the tree's end: its
    // receipts' proofs in one pass (per proof, next to `inclusion_proof`).
    g.throughput(Throughput::Elements(256));
    g.bench_function("inclusion_proofs_of_last_256", |b| {
        b.iter(|| {
            let proofs = inclusion_proofs::<Blake3>(&tree, size - 256..size, size).unwrap();
            black_box(proofs)
        })
    });
    g.throughput(Throughput::Elements(1));
    let proof = inclusion_proof::<Blake3>(&tree, 123_456, size).unwrap();
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            verify_inclusion::<Blake3>(123_456, size, &leaves[123_456], black_box(&proof), &root)
                .unwrap()
        })
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| black_box(consistency_proof::<Blake3>(&tree, old, size).unwrap()))
    });
    let cproof = consistency_proof::<Blake3>(&tree, old, size).unwrap();
    g.bench_function("verify_consistency", |b| {
        b.iter(|| {
            verify_consistency::<Blake3>(old, size, black_box(&cproof), &old_root, &root).unwrap()
        })
    });
    g.finish();
}

fn checkpoints(c: &mut Criterion) {
    let key = SignerKey::from_seed("audit.example.com/orders", &[1; 32]).unwrap();
    let cp = Checkpoint {
        origin: "audit.example.com/orders".into(),
        size: 1_000_000,
        root: Hash([3; 32]),
        extensions: vec![],
    };
    let signed = cp.sign(&key).unwrap();
    let trusted = [key.verifier()];
    let mut g = c.benchmark_group("checkpoint");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign", |b| b.iter(|| black_box(cp.sign(&key).unwrap())));
    g.bench_function("open", |b| {
        b.iter(|| black_box(Checkpoint::open(&signed, &trusted, Some(&cp.origin)).unwrap()))
    });
    g.finish();
}

/// What the metrics cost the append path per request (one entry answered
/// and counted in its batch), next to the raw baseline of hashing the
/// entry's 1 KiB payload once.
fn metrics(c: &mut Criterion) {
    let payload = vec![0x5au8; 1024];
    let log = auditlog::metrics::global().log("bench");
    let outcome = Ok(auditlog::engine::AppendOutcome {
        receipts: vec![auditlog::engine::Receipt {
            seq: 0,
            leaf_hash: Hash::ZERO,
            timestamp_unix_nanos: 0,
            duplicate: false,
            inclusion_proof: vec![],
        }],
        checkpoint: String::new(),
        tree_size: 1,
    });
    let mut g = c.benchmark_group("metrics_per_request");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("baseline_raw_blake3_of_payload", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(blake3::hash(black_box(&payload)));
            }
        })
    });
    g.bench_function("answered_and_batch_counted", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let queued = std::time::Instant::now();
                log.batch(1, 1024, queued.elapsed());
                log.answered(queued, black_box(&outcome));
            }
        })
    });
    g.finish();
}

/// One appender's request of 256 entries of 1 KiB.
fn request_256() -> Vec<auditlog::engine::input::EntryInput> {
    (0..256)
        .map(|i| auditlog::engine::input::EntryInput {
            subject: format!("order:{i}"),
            actor: "buyer:42".into(),
            kind: "prompt".into(),
            content_type: "text/plain".into(),
            payload: vec![i as u8; 1024],
            ..Default::default()
        })
        .collect()
}

/// A request of 256 entries of 1 KiB, as one appender's batch: `prepare`
/// (validation, salts, commitments) next to the commitments of the same
/// payloads one at a time (the baseline) and lined up for SIMD with
/// `commit_payloads`, which `prepare` uses. (Splitting the commitments of
/// a large request with a scoped helper thread was tried on 2026-12-03 and
/// again on 2026-12-06: 673 us against 364 us on the 2-core VM, so it was
/// not kept.)
fn prepare_request(c: &mut Criterion) {
    use auditlog::engine::input::{prepare, Limits};
    let request = request_256();
    let salt = Salt([9; 32]);
    let limits = Limits::default();
    let mut g = c.benchmark_group("prepare_256x1KiB");
    g.throughput(Throughput::Elements(256));
    g.bench_function("baseline_serial_commitments", |b| {
        b.iter(|| {
            for e in &request {
                black_box(commit_payload(&salt, black_box(&e.payload)));
            }
        })
    });
    g.bench_function("commit_payloads", |b| {
        let salts = vec![salt; request.len()];
        let payloads: Vec<&[u8]> = request.iter().map(|e| e.payload.as_slice()).collect();
        b.iter(|| black_box(commit_payloads(&salts, black_box(&payloads))))
    });
    g.bench_function("prepare", |b| {
        b.iter_batched(
            || request.clone(),
            |r| black_box(prepare(&limits, r, |s| *s = [9; 32]).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// `Sequencer::sequence` of one request of 256 prepared 1 KiB entries (the
/// log thread's share of an append: entries built, encoded, leaf-hashed and
/// chained, added to the log's tree and the segment's, nodes collected),
/// next to the least a hash-chained Merkle log must do per entry: encode,
/// leaf hash, one tree append (the baseline).
fn sequence_request(c: &mut Criterion) {
    use auditlog::engine::input::{prepare, Limits};
    use auditlog::engine::sequencer::Sequencer;
    use auditlog::store::{LogHead, OpenSegment};
    let prepared = prepare(&Limits::default(), request_256(), |s| *s = [9; 32]).unwrap();
    let head = LogHead {
        size: 0,
        prev_leaf: Hash::ZERO,
        last_timestamp: 0,
        frontier: Vec::new(),
        segment: OpenSegment {
            index: 0,
            first_seq: 0,
            span_from: 0,
            frontier: Vec::new(),
            first_timestamp: None,
        },
        prev_seal: Hash::ZERO,
        latest_checkpoint: None,
    };
    let sequencer = Sequencer::from_head("bench.example/log", &head);
    let mut g = c.benchmark_group("sequence_256x1KiB");
    g.throughput(Throughput::Elements(256));
    g.bench_function("baseline_encode_leaf_hash_one_tree", |b| {
        let mut e = sample_entry(0, &[0; 1024]);
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            let mut range = CompactRange::<Blake3>::new();
            for p in &prepared {
                e.payload_commitment = p.commitment;
                buf.clear();
                e.encode_into(&mut buf).unwrap();
                e.prev_leaf_hash = Blake3::hash_leaf(&buf);
                e.seq += 1;
                range.append(e.prev_leaf_hash, |_, _| {});
            }
            black_box(range.root())
        })
    });
    g.bench_function("sequence", |b| {
        b.iter_batched(
            || prepared.clone(),
            |p| black_box(sequencer.sequence(p, 1_000)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    entry_hashing,
    merkle,
    checkpoints,
    metrics,
    prepare_request,
    sequence_request
);
criterion_main!(benches);
