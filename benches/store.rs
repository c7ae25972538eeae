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
//! case and measurement, default 3; `AUDITLOG_BENCH_ROUNDS` splits them into
//! rounds, default 3; `AUDITLOG_BENCH_CASE=256x4` runs one case). Figures
//! are printed as entries/s and as ratios to the baselines, because these
//! machines are shared and noisy: only ratios measured in one run are
//! comparable. The disk of a shared machine also changes speed over tens
//! of seconds, so the raw file baseline and the engine alternate in rounds
//! (raw, engine, raw at the engine's entries per sync, then again; for
//! many single-entry appenders, one appender too, between raw and engine):
//! each ratio pools the rounds, and `rounds` shows the lowest and highest
//! round's ratio against the raw file (and against one appender).
//!
//! Under each case a line splits the time per sync: the engine's mean
//! `fdatasync` (from its metrics) and the wall time outside it, next to the
//! raw file's at the engine's entries per sync (there, the time outside is
//! the `write`): the first pair says how much of the gap is the disk, the
//! second how much is the engine's own work between syncs.

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

fn rounds() -> u32 {
    std::env::var("AUDITLOG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// Entries made durable in some time by some `fdatasync`s: one run of the
/// raw file baseline or of the engine, or several pooled.
#[derive(Clone, Copy, Default)]
struct Totals {
    entries: f64,
    seconds: f64,
    syncs: f64,
    /// Seconds inside the `fdatasync`s.
    sync_seconds: f64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.entries += o.entries;
        self.seconds += o.seconds;
        self.syncs += o.syncs;
        self.sync_seconds += o.sync_seconds;
    }

    fn rate(&self) -> f64 {
        self.entries / self.seconds
    }

    /// Mean entries made durable by one `fdatasync`.
    fn per_sync(&self) -> f64 {
        self.entries / self.syncs.max(1.0)
    }

    /// Microseconds per sync inside the `fdatasync` and outside it.
    fn sync_split_us(&self) -> (f64, f64) {
        let syncs = self.syncs.max(1.0);
        (
            1e6 * self.sync_seconds / syncs,
            1e6 * (self.seconds - self.sync_seconds) / syncs,
        )
    }
}

/// Raw file appends + `fdatasync` of `batch` records for `time`.
fn raw_file_for(batch: usize, time: Duration) -> Totals {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let buf = vec![0x5au8; RECORD * batch];
    let start = Instant::now();
    let (mut n, mut syncs, mut in_sync) = (0u64, 0u64, Duration::ZERO);
    while start.elapsed() < time {
        f.write_all(&buf).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        in_sync += t.elapsed();
        n += batch as u64;
        syncs += 1;
    }
    Totals {
        entries: n as f64,
        seconds: start.elapsed().as_secs_f64(),
        syncs: syncs as f64,
        sync_seconds: in_sync.as_secs_f64(),
    }
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

/// One or more runs of the engine, pooled.
#[derive(Default)]
struct EngineRun {
    /// Its segment `fdatasync`s: the mean entries per sync is above the
    /// request's batch size when group commit merged requests.
    totals: Totals,
    /// Every request's latency.
    latencies_us: Vec<f64>,
}

impl EngineRun {
    fn add(&mut self, o: EngineRun) {
        self.totals.add(o.totals);
        self.latencies_us.extend(o.latencies_us);
    }

    fn rate(&self) -> f64 {
        self.totals.rate()
    }

    fn percentile(&mut self, p: f64) -> f64 {
        let lat = &mut self.latencies_us;
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
    }
}

/// Segment `fdatasync`s so far in this process and the seconds inside
/// them, from the engine's metrics.
fn segment_syncs() -> (f64, f64) {
    let metrics = auditlog::metrics::global().encode();
    let read = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        read("auditlog_fsync_seconds_count "),
        read("auditlog_fsync_seconds_sum "),
    )
}

fn engine(batch: usize, appenders: usize, time: Duration) -> EngineRun {
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
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let appended = count.load(Ordering::Relaxed) as f64;
    let seconds = start.elapsed().as_secs_f64();
    let (syncs, sync_seconds) = segment_syncs();
    let (syncs, sync_seconds) = (syncs - syncs_before.0, sync_seconds - syncs_before.1);
    let lat = latencies.lock().unwrap().clone();
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
        totals: Totals {
            entries: appended,
            seconds,
            syncs,
            sync_seconds,
        },
        latencies_us: lat,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: run a short smoke pass then.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "durable appends, 1 KiB payloads, {:?} per case and measurement, in {} rounds\n",
        secs(),
        rounds()
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "case",
        "entries/s",
        "raw file/s",
        "raw sled/s",
        "vs file",
        "per sync",
        "vs same",
        "p50 us",
        "p99 us",
        "rounds"
    );
    let round = secs() / rounds();
    for (batch, appenders) in bench_cases() {
        let sled = raw_sled(batch);
        let mut e = EngineRun::default();
        let (mut file, mut same) = (Totals::default(), Totals::default());
        let mut ratios = Vec::new();
        // Single-entry appenders are compared with one appender measured
        // in the same rounds: a fast disk speeds one appender up far more
        // than many (whose syncs are shared), so the two must be paired.
        let group = batch == 1 && appenders > 1;
        let (mut single, mut gains) = (EngineRun::default(), Vec::new());
        for _ in 0..rounds() {
            let f = raw_file_for(batch, round);
            let one = group.then(|| engine(1, 1, round));
            let r = engine(batch, appenders, round);
            if let Some(one) = one {
                gains.push(r.rate() / one.rate());
                single.add(one);
            }
            // The stricter comparison: raw writes of as many entries per
            // fdatasync as the engine's syncs made durable on average
            // (group commit merges concurrent requests into one sync).
            let per_sync = r.totals.per_sync().round().max(1.0) as usize;
            let s = if per_sync * 10 > batch * 11 {
                raw_file_for(per_sync, round)
            } else {
                f
            };
            ratios.push(r.rate() / f.rate());
            e.add(r);
            file.add(f);
            same.add(s);
        }
        let (lo, hi) = spread(&ratios);
        println!(
            "{:<28} {:>10.0} {:>10.0} {:>10.0} {:>7.0}% {:>9.0} {:>8.0}% {:>8.0} {:>8.0} {:>9}",
            format!("batch {batch} x {appenders} appenders"),
            e.rate(),
            file.rate(),
            sled,
            100.0 * e.rate() / file.rate(),
            e.totals.per_sync(),
            100.0 * e.rate() / same.rate(),
            e.percentile(0.50),
            e.percentile(0.99),
            format!("{:.0}-{:.0}%", 100.0 * lo, 100.0 * hi)
        );
        // How much of the gap is the disk: the engine's mean fdatasync
        // next to the raw file's at the engine's entries per sync.
        let ((sync, rest), (raw_sync, raw_rest)) = (e.totals.sync_split_us(), same.sync_split_us());
        println!(
            "{:<28} per sync: fdatasync {sync:.0} us and {rest:.0} us of wall time outside it \
             (raw file at the same entries per sync: {raw_sync:.0} us and {raw_rest:.0} us)",
            "",
        );
        if group {
            let (lo, hi) = spread(&gains);
            println!(
                "{:<28} {:>10.1}x one appender in the same rounds ({:.0}/s; rounds {lo:.1}-{hi:.1}x)",
                "",
                e.rate() / single.rate(),
                single.rate()
            );
        }
    }
    println!(
        "\nvs file: against raw file append + fdatasync of the same bytes at the \
         request's batch size; vs same: at the engine's mean entries per sync; \
         rounds: lowest and highest round's ratio against the raw file"
    );
}

/// The lowest and the highest of `ratios`.
fn spread(ratios: &[f64]) -> (f64, f64) {
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    (lo, hi)
}

fn bench_cases() -> Vec<(usize, usize)> {
    match std::env::var("AUDITLOG_BENCH_CASE") {
        Ok(c) => {
            let (b, a) = c.split_once('x').expect("CASE is BATCHxAPPENDERS");
            vec![(b.parse().unwrap(), a.parse().unwrap())]
        }
        Err(_) => vec![
            (1, 1),
            (16, 1),
            (256, 1),
            (256, 4),
            (256, 16),
            (1, 64),
            (16, 16),
        ],
    }
}
