//! Prometheus metrics: what an operator graphs and alerts on, served as
//! OpenMetrics text at `/metrics` on `--metrics-listen` (its own port, so
//! the gRPC port never speaks HTTP/1 and scrapers need no gRPC).
//!
//! Owns: the metric names (part of the operator's contract: dashboards and
//! alerts name them; add, never rename), their labels, and the tiny HTTP
//! server that serves them.
//!
//! Invariants:
//! - Metrics are process-wide ([`global`]) and cost a few atomic operations
//!   per request or batch: nothing on the append path waits on a lock a
//!   scrape can hold for long (per-log handles are resolved once, at start).
//! - Labels carry log names, seal reasons and error kinds only: never a
//!   subject, actor, key or payload (they are personal data, and unbounded).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::engine::input::AppendError;
use crate::engine::AppendOutcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogLabel {
    log: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogKind {
    log: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogReason {
    log: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    // 50 us to about 13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

fn batch_buckets() -> Histogram {
    // 1 to 8192 entries (the most one group commit takes).
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Mutex<Registry>,
    appends: Family<LogLabel, Counter>,
    append_errors: Family<LogKind, Counter>,
    entries: Family<LogLabel, Counter>,
    duplicates: Family<LogLabel, Counter>,
    payload_bytes: Family<LogLabel, Counter>,
    batch_entries: Histograms<LogLabel>,
    append_latency: Histograms<LogLabel>,
    store_write: Histograms<LogLabel>,
    fsync: Histogram,
    seals: Family<LogReason, Counter>,
    seal_failures: Family<LogLabel, Counter>,
    expired_entries: Family<LogLabel, Counter>,
    expired_bytes: Family<LogLabel, Counter>,
    erased_entries: Family<LogLabel, Counter>,
    erased_bytes: Family<LogLabel, Counter>,
    verify_runs: Family<ResultLabel, Counter>,
    verification_failures: Counter,
    tree_size: Family<LogLabel, Gauge>,
    index_lag: Family<LogLabel, Gauge>,
    refused: Family<LogLabel, Gauge>,
    started: Instant,
    uptime: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("auditlog")),
            appends: Family::default(),
            append_errors: Family::default(),
            entries: Family::default(),
            duplicates: Family::default(),
            payload_bytes: Family::default(),
            batch_entries: Family::new_with_constructor(batch_buckets),
            append_latency: Family::new_with_constructor(latency_buckets),
            store_write: Family::new_with_constructor(latency_buckets),
            fsync: latency_buckets(),
            seals: Family::default(),
            seal_failures: Family::default(),
            expired_entries: Family::default(),
            expired_bytes: Family::default(),
            erased_entries: Family::default(),
            erased_bytes: Family::default(),
            verify_runs: Family::default(),
            verification_failures: Counter::default(),
            tree_size: Family::default(),
            index_lag: Family::default(),
            refused: Family::default(),
            started: Instant::now(),
            uptime: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().expect("registry lock");
            r.register(
                "appends",
                "Append requests answered with receipts",
                m.appends.clone(),
            );
            r.register(
                "append_errors",
                "Append requests refused, by kind (invalid, too_large, idempotency_conflict, unknown_log, unavailable)",
                m.append_errors.clone(),
            );
            r.register(
                "entries",
                "Entries appended (new, durable)",
                m.entries.clone(),
            );
            r.register(
                "duplicates",
                "Entries answered with their original receipt (idempotency key seen before)",
                m.duplicates.clone(),
            );
            r.register_with_unit(
                "payload",
                "Payload bytes appended",
                Unit::Bytes,
                m.payload_bytes.clone(),
            );
            r.register(
                "batch_entries",
                "Entries per group commit (one write, one fdatasync, one signed checkpoint)",
                m.batch_entries.clone(),
            );
            r.register_with_unit(
                "append_latency",
                "Time from an append request's arrival in the engine to its receipt (or refusal)",
                Unit::Seconds,
                m.append_latency.clone(),
            );
            r.register_with_unit(
                "store_write",
                "Time the store takes to make one batch durable (write and sync, or commit)",
                Unit::Seconds,
                m.store_write.clone(),
            );
            r.register_with_unit(
                "fsync",
                "Time of each fdatasync of a segment file (embedded store)",
                Unit::Seconds,
                m.fsync.clone(),
            );
            r.register("seals", "Segments sealed, by reason", m.seals.clone());
            r.register(
                "seal_failures",
                "Seals that failed (store refused or down); retried",
                m.seal_failures.clone(),
            );
            r.register(
                "expired_entries",
                "Payloads removed because their retention ended",
                m.expired_entries.clone(),
            );
            r.register_with_unit(
                "expired",
                "Bytes reclaimed by expiry",
                Unit::Bytes,
                m.expired_bytes.clone(),
            );
            r.register(
                "erased_entries",
                "Payloads removed by erasure requests",
                m.erased_entries.clone(),
            );
            r.register_with_unit(
                "erased",
                "Bytes reclaimed by erasure",
                Unit::Bytes,
                m.erased_bytes.clone(),
            );
            r.register(
                "verify_runs",
                "Verify RPC runs, by result (valid, invalid, error)",
                m.verify_runs.clone(),
            );
            r.register(
                "verification_failures",
                "Problems (failing findings) reported by Verify RPC runs",
                m.verification_failures.clone(),
            );
            r.register(
                "tree_size",
                "Entries in each log (its latest tree size)",
                m.tree_size.clone(),
            );
            r.register(
                "index_lag_entries",
                "Durable entries the derived keyed index has not caught up with yet",
                m.index_lag.clone(),
            );
            r.register(
                "log_refused",
                "1 while the store refuses a log for corruption (UNAVAILABLE until an operator acts)",
                m.refused.clone(),
            );
            r.register_with_unit(
                "uptime",
                "Seconds since the process started",
                Unit::Seconds,
                m.uptime.clone(),
            );
        }
        m
    }

    /// The append-path handles of one log, resolved once.
    pub fn log(&self, log: &str) -> Arc<LogMetrics> {
        let l = LogLabel {
            log: log.to_owned(),
        };
        Arc::new(LogMetrics {
            log: log.to_owned(),
            appends: self.appends.get_or_create(&l).clone(),
            entries: self.entries.get_or_create(&l).clone(),
            duplicates: self.duplicates.get_or_create(&l).clone(),
            payload_bytes: self.payload_bytes.get_or_create(&l).clone(),
            batch_entries: self.batch_entries.get_or_create(&l).clone(),
            append_latency: self.append_latency.get_or_create(&l).clone(),
            store_write: self.store_write.get_or_create(&l).clone(),
        })
    }

    /// One fdatasync of a segment file took `d`.
    pub fn fsync(&self, d: Duration) {
        self.fsync.observe(d.as_secs_f64());
    }

    /// A segment of `log` was sealed for `reason`.
    pub fn sealed(&self, log: &str, reason: &str) {
        self.seals
            .get_or_create(&LogReason {
                log: log.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A seal of `log` failed.
    pub fn seal_failed(&self, log: &str) {
        self.seal_failures
            .get_or_create(&LogLabel {
                log: log.to_owned(),
            })
            .inc();
    }

    /// Retention removed `entries` payloads (`bytes` reclaimed) of `log`.
    pub fn expired(&self, log: &str, entries: u64, bytes: u64) {
        let l = LogLabel {
            log: log.to_owned(),
        };
        self.expired_entries.get_or_create(&l).inc_by(entries);
        self.expired_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// An erasure removed `entries` payloads (`bytes` reclaimed) of `log`.
    pub fn erased(&self, log: &str, entries: u64, bytes: u64) {
        let l = LogLabel {
            log: log.to_owned(),
        };
        self.erased_entries.get_or_create(&l).inc_by(entries);
        self.erased_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// A Verify RPC ran: `failures` failing findings, or `None` when it
    /// could not run.
    pub fn verified(&self, failures: Option<usize>) {
        let result = match failures {
            None => "error",
            Some(0) => "valid",
            Some(_) => "invalid",
        };
        self.verify_runs
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.verification_failures
            .inc_by(failures.unwrap_or(0) as u64);
    }

    /// Sets the state gauges of one log (read at scrape time).
    pub fn log_state(&self, log: &str, tree_size: u64, index_lag: Option<u64>, refused: bool) {
        let l = LogLabel {
            log: log.to_owned(),
        };
        self.tree_size.get_or_create(&l).set(gauge(tree_size));
        if let Some(lag) = index_lag {
            self.index_lag.get_or_create(&l).set(gauge(lag));
        }
        self.refused.get_or_create(&l).set(i64::from(refused));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        self.uptime.set(gauge(self.started.elapsed().as_secs()));
        let mut out = String::new();
        let r = self.registry.lock().expect("registry lock");
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metric handles of one log's append path.
pub struct LogMetrics {
    log: String,
    appends: Counter,
    entries: Counter,
    duplicates: Counter,
    payload_bytes: Counter,
    batch_entries: Histogram,
    append_latency: Histogram,
    store_write: Histogram,
}

impl LogMetrics {
    /// A request that arrived at `queued` was answered with `r`.
    pub fn answered(&self, queued: Instant, r: &Result<AppendOutcome, AppendError>) {
        self.append_latency.observe(queued.elapsed().as_secs_f64());
        match r {
            Ok(o) => {
                self.appends.inc();
                let dups = o.receipts.iter().filter(|r| r.duplicate).count();
                self.duplicates.inc_by(dups as u64);
            }
            Err(e) => self.refused(e),
        }
    }

    /// A request was refused with `e` (before or after it was queued).
    pub fn refused(&self, e: &AppendError) {
        let kind = match e {
            AppendError::Invalid { .. } => "invalid",
            AppendError::TooLarge { .. } => "too_large",
            AppendError::IdempotencyConflict { .. } => "idempotency_conflict",
            AppendError::UnknownLog(_) => "unknown_log",
            AppendError::Unavailable(_) => "unavailable",
        };
        global()
            .append_errors
            .get_or_create(&LogKind {
                log: self.log.clone(),
                kind: kind.into(),
            })
            .inc();
    }

    /// A batch of `entries` new entries (`bytes` of payload) was made
    /// durable by the store in `write`.
    pub fn batch(&self, entries: usize, bytes: u64, write: Duration) {
        self.entries.inc_by(entries as u64);
        self.payload_bytes.inc_by(bytes);
        self.batch_entries.observe(entries as f64);
        self.store_write.observe(write.as_secs_f64());
    }
}

/// Serves `/metrics` on `addr` until the task is dropped; `refresh` is
/// called before each scrape to set the gauges read from the engine.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Request, Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let refresh = refresh.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let refresh = refresh.clone();
                        async move {
                            let response =
                                if req.uri().path() != "/metrics" {
                                    Response::builder().status(StatusCode::NOT_FOUND).body(
                                        Full::new(Bytes::from_static(b"not found: try /metrics\n")),
                                    )
                                } else if req.method() != hyper::Method::GET
                                    && req.method() != hyper::Method::HEAD
                                {
                                    Response::builder()
                                        .status(StatusCode::METHOD_NOT_ALLOWED)
                                        .body(Full::new(Bytes::from_static(b"GET only\n")))
                                } else {
                                    // Gauges read from the engine (sizes, index lag)
                                    // take store locks: off the async threads.
                                    let body = tokio::task::spawn_blocking(move || {
                                        refresh();
                                        global().encode()
                                    })
                                    .await
                                    .unwrap_or_default();
                                    Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(body)))
                                };
                            response
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A scraper that stalls is dropped with its connection.
                let conn = hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(io, service);
                let _ = conn.await;
            });
        }
    });
    Ok((local, task))
}
