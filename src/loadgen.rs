//! `auditlog bench`: a load generator against a running server.
//!
//! Measures durable appends over real gRPC (unary or streamed, any
//! concurrency, batch and payload size), and, in the same run, a raw
//! baseline: the same bytes appended to a file in the current directory
//! with `fdatasync` per batch. Prints entries/s, MB/s, latency percentiles
//! and the ratio to the baseline: on shared machines only ratios measured in
//! one run compare.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use auditlog::proto;
use auditlog::proto::audit_log_client::AuditLogClient;

/// Options of `auditlog bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server and log.
    #[command(flatten)]
    pub at: crate::cli_client::ServerArgs,
    /// `unary` (Append) or `stream` (AppendStream).
    #[arg(long, default_value = "unary")]
    pub mode: String,
    /// Concurrent appenders (unary) or streams.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Entries per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Skip the raw file baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Send entries without idempotency keys (by default each entry has a
    /// unique one, as a marketplace backend would send).
    #[arg(long)]
    pub no_idempotency_keys: bool,
    /// HTTP/2 connections to each server, the appenders spread over them
    /// round robin (a fleet of backends holds one or more each; one
    /// connection is one task on the server, which frames every request
    /// on it in turn).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Worker threads of the load generator's own runtime. One drives 64
    /// unary appenders at 20,000 requests/s and spends about a fifth less
    /// CPU per request than two (fewer cross-thread wake-ups), CPU that the
    /// server it measures shares when both run on one machine.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// More servers (of the same PostgreSQL store) to spread the
    /// appenders over, round robin with --server; repeat for each.
    #[arg(long)]
    pub also_server: Vec<String>,
    /// Also measure, in this PostgreSQL database, the audit table users
    /// build by hand: one row per insert, a trigger that locks a head row
    /// (SELECT ... FOR UPDATE) and chains SHA-256 of the previous hash and
    /// the row, synchronous_commit on; same payloads and concurrency (at
    /// most 64 connections). Its tables are named bench_audit*.
    #[arg(long)]
    pub baseline_postgres: Option<String>,
}

/// The next request of appender `t`: entries about orders of four entries
/// each (prompt, output, ...), from one of 1,000 actors.
fn request(a: &BenchArgs, payload: &[u8], t: usize, run: u32, n: &mut u64) -> proto::AppendRequest {
    proto::AppendRequest {
        log: a.at.log.clone(),
        entries: (0..a.batch)
            .map(|_| {
                *n += 1;
                proto::EntryInput {
                    subject: format!("order:{t}-{}", *n / 4),
                    actor: format!("user:{}", *n % 1000),
                    kind: "prompt".into(),
                    content_type: "application/octet-stream".into(),
                    payload: payload.to_vec(),
                    idempotency_key: if a.no_idempotency_keys {
                        String::new()
                    } else {
                        format!("bench-{run:08x}-{t}-{n}")
                    },
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// Raw baseline: the same payload bytes appended and `fdatasync`ed per
/// batch, in a temporary file of the current directory.
fn raw_baseline(batch: usize, payload_bytes: usize, seconds: f64) -> std::io::Result<f64> {
    let path = std::env::current_dir()?.join(format!(".auditlog-bench-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let buf = vec![0x5au8; (payload_bytes + 300) * batch];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        f.write_all(&buf)?;
        f.sync_data()?;
        n += batch as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// The hand-built pattern: a table whose hash chain a trigger keeps.
const TRIGGER_TABLE: &str = r"
CREATE TABLE IF NOT EXISTS bench_audit_head (id integer PRIMARY KEY, last_hash bytea NOT NULL);
INSERT INTO bench_audit_head VALUES (1, '\x00') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bench_audit (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    actor text NOT NULL,
    payload bytea NOT NULL,
    prev_hash bytea,
    hash bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION bench_audit_chain() RETURNS trigger AS $$
DECLARE prev bytea;
BEGIN
    SELECT last_hash INTO prev FROM bench_audit_head WHERE id = 1 FOR UPDATE;
    NEW.prev_hash := prev;
    NEW.hash := sha256(prev || convert_to(NEW.subject, 'UTF8') || convert_to(NEW.actor, 'UTF8')
                       || NEW.payload);
    UPDATE bench_audit_head SET last_hash = NEW.hash WHERE id = 1;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS bench_audit_chain ON bench_audit;
CREATE TRIGGER bench_audit_chain BEFORE INSERT ON bench_audit
    FOR EACH ROW EXECUTE FUNCTION bench_audit_chain();
";

/// The trigger-chained table baseline: entries/s.
async fn postgres_baseline(
    url: &str,
    concurrency: usize,
    payload_bytes: usize,
    seconds: f64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute("SET synchronous_commit = on").await?;
        Ok::<_, tokio_postgres::Error>(client)
    };
    connect().await?.batch_execute(TRIGGER_TABLE).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for t in 0..concurrency.clamp(1, 64) {
        let client = connect().await?;
        let (stop, count) = (stop.clone(), count.clone());
        let payload = vec![0xabu8; payload_bytes];
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO bench_audit (subject, actor, payload) VALUES ($1, $2, $3)")
                .await?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let subject = format!("order:{t}-{}", n / 4);
                let actor = format!("user:{}", n % 1000);
                client
                    .execute(&insert, &[&subject, &actor, &payload])
                    .await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), tokio_postgres::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let done = count.load(Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done as f64 / elapsed)
}

/// Runs the load and prints the report.
///
/// # Errors
/// Connection failures, or a request that fails.
pub fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let (count, lat, elapsed) = runtime.block_on(load(&args))?;
    let rate = count as f64 / elapsed;
    let mut lat = lat;
    lat.sort_unstable();
    let pct = |p: f64| percentile_ms(&lat, p);
    println!(
        "{} x{} batch {} payload {} B on {} server(s), {} connection(s) each, client on {} thread(s): {:.0} entries/s, {:.1} MB/s, latency p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms",
        args.mode,
        args.concurrency,
        args.batch,
        args.payload_bytes,
        1 + args.also_server.len(),
        args.connections.max(1),
        args.client_threads.max(1),
        rate,
        rate * args.payload_bytes as f64 / 1e6,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    if let Some(url) = &args.baseline_postgres {
        let base = runtime.block_on(postgres_baseline(
            url,
            args.concurrency,
            args.payload_bytes,
            args.seconds,
        ))?;
        println!(
            "PostgreSQL table chained by a trigger, x{} one row per insert: {:.0} entries/s; \
             auditlog / trigger table = {:.1}",
            args.concurrency.clamp(1, 64),
            base,
            rate / base
        );
    }
    if !args.no_baseline && args.mode != "stream" {
        let (floor, lat) = runtime.block_on(grpc_floor(&args))?;
        println!(
            "gRPC floor, x{} unary grpc.health.v1 Check on the same server and connections (no payload, no engine): {:.0} calls/s, p99 {:.2} ms; auditlog requests / floor = {:.2}",
            args.concurrency,
            floor,
            lat,
            rate / args.batch.max(1) as f64 / floor
        );
    }
    if !args.no_baseline {
        let raw = raw_baseline(args.batch, args.payload_bytes, args.seconds.min(5.0))?;
        println!(
            "raw file append + fdatasync, batch {}: {:.0} entries/s; auditlog / raw = {:.2}",
            args.batch,
            raw,
            rate / raw
        );
    }
    Ok(())
}

type LoadResult = (u64, Vec<u64>, f64);

/// The `p` quantile of sorted latencies in microseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

/// `--connections` channels to each server, round robin over the servers.
async fn connect_all(
    args: &BenchArgs,
) -> Result<Vec<tonic::transport::Channel>, Box<dyn std::error::Error>> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        for server in std::iter::once(&args.at.server).chain(&args.also_server) {
            channels.push(crate::cli_conn::endpoint(server.clone())?.connect().await?);
        }
    }
    Ok(channels)
}

/// What the gRPC stack alone allows on this machine, measured in the same
/// run: the same number of concurrent unary callers sending the standard
/// health check (tiny messages, answered without touching the engine) to
/// the same server over as many connections. Calls/s and p99 in ms.
async fn grpc_floor(args: &BenchArgs) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    use tonic_health::pb::health_client::HealthClient;
    let channels = connect_all(args).await?;
    let seconds = args.seconds.min(5.0);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let mut client = HealthClient::with_interceptor(
            channels[t % channels.len()].clone(),
            crate::cli_conn::bearer()?,
        );
        let (stop, count, lat) = (stop.clone(), count.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                mine.push(t0.elapsed().as_micros() as u64);
                count.fetch_add(1, Ordering::Relaxed);
            }
            lat.lock().expect("lat lock").extend(mine);
            Ok::<(), tonic::Status>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    // Calls that end after the stop are not counted, as in the load itself.
    let done = count.load(Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let mut lat = std::mem::take(&mut *lat.lock().expect("lat lock"));
    lat.sort_unstable();
    Ok((done as f64 / elapsed, percentile_ms(&lat, 0.99)))
}

async fn load(args: &BenchArgs) -> Result<LoadResult, Box<dyn std::error::Error>> {
    let channels = connect_all(args).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let payload = vec![0xabu8; args.payload_bytes];
    // Idempotency keys differ between runs against the same server.
    let run = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let channel = channels[t % channels.len()].clone();
        let client = AuditLogClient::with_interceptor(channel, crate::cli_conn::bearer()?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (stop, count, lat, payload, a) = (
            stop.clone(),
            count.clone(),
            lat.clone(),
            payload.clone(),
            args.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut mine = Vec::new();
            if a.mode == "stream" {
                // Keep a few requests queued on one stream; the server's
                // window and HTTP/2 flow control bound the rest.
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let sent = Arc::new(Mutex::new(std::collections::VecDeque::new()));
                let producer = {
                    let (stop, sent, payload, a) =
                        (stop.clone(), sent.clone(), payload.clone(), a.clone());
                    tokio::spawn(async move {
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            sent.lock().expect("sent lock").push_back(Instant::now());
                            if tx
                                .send(request(&a, &payload, t, run, &mut n))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    })
                };
                let mut responses = client
                    .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                while let Some(r) = responses.message().await? {
                    let t0 = sent.lock().expect("sent lock").pop_front();
                    if let Some(t0) = t0 {
                        mine.push(t0.elapsed().as_micros() as u64);
                    }
                    count.fetch_add(r.receipts.len() as u64, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) && sent.lock().expect("sent lock").is_empty() {
                        break;
                    }
                }
                producer.abort();
            } else {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = client
                        .append(request(&a, &payload, t, run, &mut n))
                        .await?
                        .into_inner();
                    mine.push(t0.elapsed().as_micros() as u64);
                    count.fetch_add(r.receipts.len() as u64, Ordering::Relaxed);
                }
            }
            lat.lock().expect("lat lock").extend(mine);
            Ok::<(), tonic::Status>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let done = count.load(Ordering::Relaxed);
    for t in tasks {
        // A stream cut at shutdown is not a failure of the measurement.
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let lat = std::mem::take(&mut *lat.lock().expect("lat lock"));
    Ok((done, lat, elapsed))
}
