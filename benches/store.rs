//! Durable append throughput of the engine over the embedded store, next to
//! two raw baselines measured in the same run on the same disk:
//!
//! - raw file: the same bytes appended to one file, `fdatasync` per batch;
//! - raw sled: `batch` inserts of the same size applied, then `flush`.
//!
//! Cases are `batch x appenders` (requests of `batch` entries from that
//! many concurrent appenders). With several appenders, group commit makes
//! several requests durable with one `fdatasync`: the run prints the mean
//! entries per sync and, next to the ratio at the request's batch size,
//! the ratio to raw writes of that many entries per `fdatasync`.
//!
//! Run: `cargo bench --bench store` (`AUDITLOG_BENCH_SECS` sets seconds per
//! case, default 3). Figures are printed as entries/s and as ratios to the
//! baselines, because these machines are shared and noisy: only ratios
//! measured in one run are comparable.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditlog::core::note::SignerKey;
use auditlog::engine::input::{EntryInput, Limits};
use auditlog::engine::{Engine, LogConfig, SystemClock};
use auditlog::store::embedded::EmbeddedStore;

const PAYLOAD: usize = 1024;
/// Bytes of one framed entry record with a 1 KiB payload (measured once).
const RECORD: usize = 1024 + 300;

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("AUDITLOG_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

fn raw_file(batch: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let buf = vec![0x5au8; RECORD * batch];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs() {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        n += batch as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn raw_sled(batch: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let value = vec![0x5au8; PAYLOAD];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs() {
        let mut b = sled::Batch::default();
        for _ in 0..batch {
            b.insert(&n.to_be_bytes(), value.as_slice());
            n += 1;
        }
        db.apply_batch(b).unwrap();
        db.flush().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct EngineRun {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Mean entries made durable by one `fdatasync` of the segment: above
    /// the request's batch size when group commit merged requests.
    per_sync: f64,
}

/// Segment `fdatasync`s so far in this process, from the engine's metrics.
fn segment_syncs() -> f64 {
    auditlog::metrics::global()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("auditlog_fsync_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn engine(batch: usize, appenders: usize) -> EngineRun {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let signer = Arc::new(SignerKey::from_seed("bench", &[1; 32]).unwrap());
    let mut cfg = LogConfig::new("bench", "bench.example/log");
    cfg.seal_after = None;
    let engine = Arc::new(
        Engine::start(
            store,
            signer,
            vec![cfg],
            Limits::default(),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    // Appenders are tasks on a two-thread runtime, as requests are in the
    // gRPC server: 64 OS threads on 2 cores would measure the scheduler.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let syncs_before = segment_syncs();
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|t| {
            let (engine, stop, count, latencies) = (
                engine.clone(),
                stop.clone(),
                count.clone(),
                latencies.clone(),
            );
            rt.spawn(async move {
                let mut lat = Vec::new();
                let payload = vec![t as u8; PAYLOAD];
                let subject = format!("order:{t}");
                while !stop.load(Ordering::Relaxed) {
                    let entries = (0..batch)
                        .map(|_| EntryInput {
                            subject: subject.clone(),
                            actor: "buyer:1".into(),
                            kind: "prompt".into(),
                            content_type: "text/plain".into(),
                            payload: payload.clone(),
                            ..Default::default()
                        })
                        .collect();
                    let t0 = Instant::now();
                    engine.append("bench", entries).await.unwrap();
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    if std::env::var_os("AUDITLOG_BENCH_DEBUG").is_some()
                        && t0.elapsed() > Duration::from_millis(20)
                    {
                        eprintln!(
                            "slow request #{} at entry {}: {:?}",
                            lat.len(),
                            count.load(Ordering::Relaxed),
                            t0.elapsed()
                        );
                    }
                    count.fetch_add(batch as u64, Ordering::Relaxed);
                }
                latencies.lock().unwrap().extend(lat);
            })
        })
        .collect();
    std::thread::sleep(secs());
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let appended = count.load(Ordering::Relaxed) as f64;
    let rate = appended / start.elapsed().as_secs_f64();
    let per_sync = appended / (segment_syncs() - syncs_before).max(1.0);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    if std::env::var_os("AUDITLOG_BENCH_DEBUG").is_some() {
        let total: f64 = lat.iter().sum();
        eprintln!(
            "requests {} mean {:.0} us, top {:?}, time inside append {:.0}% of {:.2}s x {appenders}",
            lat.len(),
            total / lat.len() as f64,
            lat.iter().rev().take(8).map(|x| *x as u64).collect::<Vec<_>>(),
            100.0 * total / 1e6 / (start.elapsed().as_secs_f64() * appenders as f64),
            start.elapsed().as_secs_f64()
        );
    }
    if std::env::var_os("AUDITLOG_BENCH_DEBUG").is_some() {
        // Where the time went, from the engine's own metrics.
        for l in auditlog::metrics::global().encode().lines().filter(|l| {
            l.contains("log=\"bench\"") && (l.contains("_sum") || l.contains("_count"))
                || l.starts_with("auditlog_fsync_seconds_sum")
                || l.starts_with("auditlog_fsync_seconds_count")
        }) {
            eprintln!("  {l}");
        }
    }
    engine.shutdown();
    EngineRun {
        rate,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        per_sync,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: run a short smoke pass then.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("durable appends, 1 KiB payloads, {:?} per case\n", secs());
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "case",
        "entries/s",
        "raw file/s",
        "raw sled/s",
        "vs file",
        "per sync",
        "vs same",
        "p50 us",
        "p99 us"
    );
    let mut single = 0.0;
    for (batch, appenders) in bench_cases() {
        let file = raw_file(batch);
        let sled = raw_sled(batch);
        let e = engine(batch, appenders);
        if (batch, appenders) == (1, 1) {
            single = e.rate;
        }
        // The stricter comparison: raw writes of as many entries per
        // fdatasync as the engine's syncs made durable on average (group
        // commit merges concurrent requests into one sync).
        let per_sync = e.per_sync.round().max(1.0) as usize;
        let same = if per_sync * 10 > batch * 11 {
            raw_file(per_sync)
        } else {
            file
        };
        println!(
            "{:<28} {:>10.0} {:>10.0} {:>10.0} {:>7.0}% {:>9.0} {:>8.0}% {:>8.0} {:>8.0}",
            format!("batch {batch} x {appenders} appenders"),
            e.rate,
            file,
            sled,
            100.0 * e.rate / file,
            e.per_sync,
            100.0 * e.rate / same,
            e.p50_us,
            e.p99_us
        );
        if (batch, appenders) == (1, 64) {
            println!(
                "{:<28} {:>10.1}x one appender (group commit)",
                "",
                e.rate / single
            );
        }
    }
    println!(
        "\nvs file: against raw file append + fdatasync of the same bytes at the \
         request's batch size; vs same: at the engine's mean entries per sync"
    );
}

fn bench_cases() -> Vec<(usize, usize)> {
    match std::env::var("AUDITLOG_BENCH_CASE") {
        Ok(c) => {
            let (b, a) = c.split_once('x').expect("CASE is BATCHxAPPENDERS");
            vec![(b.parse().unwrap(), a.parse().unwrap())]
        }
        Err(_) => vec![(1, 1), (16, 1), (256, 1), (256, 4), (1, 64), (16, 16)],
    }
}
