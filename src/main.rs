//! The `auditlog` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use auditlog::keys;

/// jemalloc rather than the system allocator: with glibc's per-thread
/// arenas, the server's resident memory after streamed appends settled near
/// 300 MiB of freed-but-kept pages; jemalloc returns them (measured: same
/// throughput, about a third of the memory).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cli_admin;
mod cli_client;
mod cli_conn;
mod loadgen;

/// auditlog: a tamper-evident audit-log store with offline-verifiable evidence.
#[derive(Parser)]
#[command(name = "auditlog", version, about, long_about = None)]
struct Cli {
    /// Bearer token for the server (client verbs).
    #[arg(long, global = true, env = "AUDITLOG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// server (client verbs).
    #[arg(long, global = true, env = "AUDITLOG_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Client(cli_client::ClientCommand),
    /// Run the gRPC service.
    ///
    /// With no options: data in ./auditlog-data, one log named "default",
    /// listening on 127.0.0.1:50051; a signing key is created in
    /// DATA/keys/ on first start and its public key printed. A TOML file
    /// (--config) declares logs, limits and policies; flags and AUDITLOG_*
    /// environment variables override it. SIGTERM drains queued appends,
    /// syncs and exits.
    ///
    /// Example: auditlog serve --config auditlog.toml --listen 0.0.0.0:50051
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "AUDITLOG_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (default ./auditlog-data).
        #[arg(long, env = "AUDITLOG_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:50051; port 0 picks one).
        #[arg(long, env = "AUDITLOG_LISTEN")]
        listen: Option<String>,
        /// Signer key file (default DATA/keys/signer.key, created if missing).
        #[arg(long, env = "AUDITLOG_KEY")]
        key: Option<PathBuf>,
        /// Where logs are stored: "embedded" (segment files in the data
        /// directory, the default) or a postgres:// URL, which any number of
        /// servers may share (they must all use the same --key).
        #[arg(long, env = "AUDITLOG_STORE", value_parser = auditlog::config::StoreKind::parse)]
        store: Option<auditlog::config::StoreKind>,
        /// Serve with no [[token]] on a non-loopback address: anyone who
        /// can connect may read and administer everything. For tests behind
        /// another gate only.
        #[arg(long)]
        insecure_no_auth: bool,
        /// TLS certificate chain (PEM); with --tls-key, serves TLS only.
        #[arg(long, requires = "tls_key", env = "AUDITLOG_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert", env = "AUDITLOG_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this CA (PEM): mutual TLS.
        #[arg(long, requires = "tls_cert", env = "AUDITLOG_TLS_CLIENT_CA")]
        tls_client_ca: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
        /// 127.0.0.1:9100; port 0 picks one). Off unless given here or as
        /// metrics_listen in the config.
        #[arg(long, env = "AUDITLOG_METRICS_LISTEN", value_name = "ADDR")]
        metrics_listen: Option<String>,
        /// Log lines as human-readable text (default) or one JSON object
        /// per line (json). The level comes from AUDITLOG_LOG_LEVEL.
        #[arg(long, env = "AUDITLOG_LOG_FORMAT", value_parser = auditlog::logging::LogFormat::parse)]
        log_format: Option<auditlog::logging::LogFormat>,
    },
    /// Signing keys: rotate the server's key.
    Keys {
        #[command(subcommand)]
        cmd: cli_admin::KeysCommand,
    },
    /// Copy every log between stores: a data directory and a PostgreSQL
    /// database, either way.
    ///
    /// Entries, checkpoints and seals are copied exactly as signed (no key
    /// is needed); removed payloads stay removed. The destination must be
    /// empty (a log it already holds identically is skipped). Stop the
    /// servers of the source first. Afterwards both verify alike: check with
    /// `auditlog verify --data-dir` / `--store`.
    ///
    /// Example: auditlog copy --from ./auditlog-data --to postgres://auditlog@db.internal/auditlog
    Copy {
        /// Source: a data directory or a postgres:// URL.
        #[arg(long)]
        from: String,
        /// Destination: a data directory or a postgres:// URL.
        #[arg(long)]
        to: String,
    },
    /// Create or upgrade the PostgreSQL schema (servers also do it on
    /// start). Migrations only go forward; a database newer than this
    /// auditlog is refused.
    ///
    /// Example: auditlog migrate --store postgres://auditlog@db.internal/auditlog
    Migrate {
        /// The database URL.
        #[arg(long, env = "AUDITLOG_STORE")]
        store: String,
    },
    /// Bearer tokens: create one.
    Token {
        #[command(subcommand)]
        cmd: TokenCommand,
    },
    /// Create an Ed25519 signing key for a log.
    ///
    /// Writes DIR/signer.key (the private key, mode 0600: keep it secret and
    /// backed up) and DIR/verifier.pub (the public key: give it to anyone who
    /// must verify evidence). Refuses to overwrite existing files.
    ///
    /// Example: auditlog keygen --name audit.example.com/orders --out keys/
    Keygen {
        /// Key name; by convention the log origin, e.g. audit.example.com/orders.
        /// No spaces and no '+'.
        #[arg(long)]
        name: String,
        /// Directory to write signer.key and verifier.pub into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify evidence offline: a bundle file, or a whole data directory.
    ///
    /// Trusts nothing but the public keys given with --key (verifier.pub
    /// files). Prints a one-line verdict, then one line per finding: its code
    /// (HASH_MISMATCH, CHAIN_BROKEN, BAD_SIGNATURE, UNKNOWN_KEY, BAD_PROOF,
    /// MISSING_ENTRY, TRUNCATED, MALFORMED; ERASED and EXPIRED are reported
    /// but are not failures), log, seq and field.
    ///
    /// Exit status: 0 valid, 1 tampered, malformed or unverifiable evidence,
    /// 2 usage or I/O error.
    ///
    /// Examples: auditlog verify order-8812.bundle --key verifier.pub
    ///           auditlog verify --data-dir ./auditlog-data --key verifier.pub
    Verify {
        /// The bundle file (JSON Lines, from `auditlog export`).
        file: Option<PathBuf>,
        /// Trusted verifier key file(s); repeat for several keys.
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        /// Verify every log of an embedded data directory instead of a bundle.
        #[arg(long, conflicts_with = "file")]
        data_dir: Option<PathBuf>,
        /// Verify every log of a PostgreSQL store (a postgres:// URL)
        /// instead of a bundle.
        #[arg(long, conflicts_with_all = ["file", "data_dir"])]
        store: Option<String>,
        /// A signed checkpoint you hold (a receipt's): the bundle must prove
        /// it is a prefix of its own checkpoint. With --data-dir or --store,
        /// the log of its origin must still extend it: entries removed from
        /// the end of a log (with their checkpoints) and a history rewritten
        /// and signed again are found only so.
        #[arg(long)]
        since_checkpoint: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML report of a bundle for a
        /// reviewer: the verdict in plain words, the entries as a timeline
        /// with each one's status, and how to check it again.
        #[arg(long, value_name = "FILE", requires = "file")]
        report: Option<PathBuf>,
    },
    /// Export an evidence bundle, or a subject's records as JSON or CSV.
    ///
    /// Evidence bundle (default, --format bundle): select entries of one
    /// log by subject, by seq range [from, to), or by time range [since,
    /// until) in Unix nanoseconds. With --since-checkpoint (a receipt's
    /// signed checkpoint) the bundle also proves that checkpoint is a
    /// prefix of the current one.
    ///
    /// Access and portability requests (--format json or csv): every entry
    /// about --subject or by --actor, across all logs unless --log is
    /// given; payloads as text when their content type is textual, base64
    /// otherwise.
    ///
    /// Example: auditlog export --server http://127.0.0.1:50051 --log orders
    ///          --subject order:8812 --out order-8812.bundle
    ///          auditlog export --subject user:42 --format csv --out user-42.csv
    Export {
        /// Server URL.
        #[arg(
            long,
            env = "AUDITLOG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// Log name (bundles: default "default"; json/csv: every log).
        #[arg(long)]
        log: Option<String>,
        /// bundle, json or csv.
        #[arg(long, default_value = "bundle", value_parser = ["bundle", "json", "csv"])]
        format: String,
        /// Entries by this actor (json/csv only).
        #[arg(long, conflicts_with_all = ["subject", "from_seq", "since"])]
        actor: Option<String>,
        /// Entries about this subject.
        #[arg(long, conflicts_with_all = ["from_seq", "since"])]
        subject: Option<String>,
        /// First seq of a range.
        #[arg(long, requires = "to_seq")]
        from_seq: Option<u64>,
        /// End of a seq range (exclusive).
        #[arg(long)]
        to_seq: Option<u64>,
        /// Start of a time range, Unix nanoseconds.
        #[arg(long, requires = "until")]
        since: Option<i64>,
        /// End of a time range (exclusive), Unix nanoseconds.
        #[arg(long)]
        until: Option<i64>,
        /// File holding a signed checkpoint you kept.
        #[arg(long)]
        since_checkpoint: Option<PathBuf>,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
    },
    /// Legal holds: place, release, list.
    Hold {
        #[command(subcommand)]
        cmd: cli_admin::HoldCommand,
    },
    /// Erase the payloads of every entry about a subject or by an actor.
    ///
    /// In one log or, without --log, every log. Refused for entries under
    /// a legal hold and in logs with erasable = false; the answer says, per
    /// log, what was erased and what was refused and why. Leaf hashes,
    /// commitments and metadata stay: proofs still verify, and verification
    /// reports the entries as ERASED. The request is recorded in the system
    /// log.
    ///
    /// Example: auditlog erase --subject user:42
    Erase {
        #[command(flatten)]
        at: cli_admin::AdminServer,
        /// The log (default: every log).
        #[arg(long)]
        log: Option<String>,
        /// Entries about this subject.
        #[arg(long, conflicts_with = "actor", required_unless_present = "actor")]
        subject: Option<String>,
        /// Entries by this actor.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Retention: expire payloads whose retention ended.
    Retention {
        #[command(subcommand)]
        cmd: cli_admin::RetentionCommand,
    },
    /// Load generator: durable appends over gRPC against a running server,
    /// with a raw file + fdatasync baseline measured in the same run.
    ///
    /// Example: auditlog bench --concurrency 64 --batch 1 --seconds 10
    ///          auditlog bench --mode stream --concurrency 4 --batch 64
    Bench(loadgen::BenchArgs),
    /// Test harness: appends to log "orders" from several threads forever,
    /// printing "ACK <seq> <leaf hash hex>" once each entry is durable. The
    /// crash tests kill it with SIGKILL and check every ACK survived.
    #[command(hide = true)]
    DebugAppendLoop {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Signer key file.
        #[arg(long)]
        key: PathBuf,
        /// Appending threads.
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Seal after this many entries (exercises sealing under crashes).
        #[arg(long, default_value_t = 40)]
        seal_max_entries: u64,
    },
}

/// Exit code and message of an administrative verb.
fn admin_exit(verb: &str, r: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("auditlog {verb}: {:?}: {}", s.code(), s.message()),
                None => eprintln!("auditlog {verb}: {e}"),
            }
            ExitCode::from(2)
        }
    }
}

/// `auditlog token ...`.
#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bearer token: prints the secret (once: it is stored
    /// nowhere) and the [[token]] block to paste into the server config,
    /// which holds only its SHA-256.
    ///
    /// Example: auditlog token create --name marketplace-backend --role writer
    ///          --log orders --log chats
    Create {
        /// Name, recorded in the access log.
        #[arg(long)]
        name: String,
        /// writer (append), reader (read within scope), auditor (read,
        /// export and verify everything), admin (seal, holds, erasure).
        #[arg(long, value_parser = ["writer", "reader", "auditor", "admin"])]
        role: String,
        /// A log it may touch (repeat; all logs when absent).
        #[arg(long = "log")]
        logs: Vec<String>,
        /// A subject prefix it may touch, like "order:" (repeat; all when absent).
        #[arg(long = "subject-prefix")]
        subjects: Vec<String>,
    },
}

fn token_create(
    name: &str,
    role: &str,
    logs: &[String],
    subjects: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let secret = auditlog::auth::new_secret()?;
    let digest = hex::encode(auditlog::auth::digest(&secret));
    let list = |v: &[String]| {
        let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    println!("secret (shown once; give it to the client as AUDITLOG_TOKEN): {secret}");
    println!();
    println!("[[token]]");
    println!("name = {name:?}");
    println!("sha256 = \"{digest}\"");
    println!("role = {role:?}");
    if !logs.is_empty() {
        println!("logs = {}", list(logs));
    }
    if !subjects.is_empty() {
        println!("subjects = {}", list(subjects));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(t) = &cli.token {
        // The client verbs read it from there (see cli_conn).
        std::env::set_var(cli_conn::TOKEN_ENV, t);
    }
    if let Some(ca) = &cli.ca {
        std::env::set_var(cli_conn::CA_ENV, ca);
    }
    match cli.command {
        Command::Bench(args) => match loadgen::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("auditlog bench: {e}");
                ExitCode::from(2)
            }
        },
        Command::Client(c) => match cli_client::run(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                match e.downcast_ref::<tonic::Status>() {
                    Some(s) => eprintln!("auditlog: {:?}: {}", s.code(), s.message()),
                    None => eprintln!("auditlog: {e}"),
                }
                ExitCode::from(2)
            }
        },
        Command::Verify {
            file,
            key,
            data_dir,
            store,
            since_checkpoint,
            json,
            report,
        } => verify_command(file, &key, data_dir, store, since_checkpoint, json, report),
        Command::Hold { cmd } => admin_exit("hold", cli_admin::hold(cmd)),
        Command::Erase {
            at,
            log,
            subject,
            actor,
        } => admin_exit("erase", cli_admin::erase(at, log, subject, actor)),
        Command::Retention { cmd } => admin_exit("retention", cli_admin::retention(cmd)),
        Command::Keys { cmd } => admin_exit("keys rotate", cli_admin::keys(cmd)),
        Command::Copy { from, to } => copy_command(&from, &to),
        Command::Migrate { store } => match auditlog::store::postgres::migrate(&store) {
            Ok((from, to)) if from == to => {
                println!("schema version {to}: up to date");
                ExitCode::SUCCESS
            }
            Ok((from, to)) => {
                println!("schema version {from} -> {to}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("auditlog migrate: {e}");
                ExitCode::from(2)
            }
        },
        Command::Export {
            format,
            server,
            log,
            subject,
            actor,
            out,
            ..
        } if format != "bundle" => {
            match cli_admin::export_records(server, log, subject, actor, &format, &out) {
                Ok(n) => {
                    eprintln!("wrote {n} entries to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => admin_exit("export", Err(e)),
            }
        }
        Command::Export {
            format: _,
            server,
            log,
            subject,
            actor,
            from_seq,
            to_seq,
            since,
            until,
            since_checkpoint,
            out,
        } => {
            use auditlog::proto::export_request::Selector;
            let selector = match (subject, from_seq, to_seq, since, until) {
                (Some(s), ..) => Selector::Subject(s),
                (None, Some(a), Some(b), ..) => Selector::SeqRange(auditlog::proto::SeqRange {
                    from_seq: a,
                    to_seq: b,
                }),
                (None, None, None, Some(a), Some(b)) => {
                    Selector::TimeRange(auditlog::proto::TimeRange {
                        since_unix_nanos: a,
                        until_unix_nanos: b,
                    })
                }
                _ => {
                    eprintln!(
                        "auditlog export: give --subject, --from-seq/--to-seq, or --since/--until"
                    );
                    return ExitCode::from(2);
                }
            };
            if actor.is_some() {
                eprintln!("auditlog export: --actor needs --format json or csv");
                return ExitCode::from(2);
            }
            let log = log.unwrap_or_else(|| "default".into());
            match export_command(server, log, selector, since_checkpoint, out) {
                Ok(n) => {
                    eprintln!("wrote {n} bytes");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("auditlog export: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Token {
            cmd:
                TokenCommand::Create {
                    name,
                    role,
                    logs,
                    subjects,
                },
        } => match token_create(&name, &role, &logs, &subjects) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("auditlog token create: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            config,
            data_dir,
            listen,
            key,
            store,
            insecure_no_auth,
            tls_cert,
            tls_key,
            tls_client_ca,
            metrics_listen,
            log_format,
        } => {
            let file = match config {
                Some(path) => match auditlog::config::FileConfig::load(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("auditlog serve: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => auditlog::config::FileConfig::default(),
            };
            let mut cfg = match file.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("auditlog serve: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if key.is_some() {
                cfg.key = key;
            }
            if let Some(store) = store {
                cfg.store = store;
            }
            cfg.insecure_no_auth = insecure_no_auth;
            cfg.tls = tls_cert.zip(tls_key);
            cfg.tls_client_ca = tls_client_ca;
            if metrics_listen.is_some() {
                cfg.metrics_listen = metrics_listen;
            }
            if let Some(f) = log_format {
                cfg.log_format = f;
            }
            auditlog::logging::init(cfg.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("auditlog serve: {e}");
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(auditlog::serve::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("auditlog serve: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::DebugAppendLoop {
            data_dir,
            key,
            threads,
            seal_max_entries,
        } => match debug_append_loop(&data_dir, &key, threads, seal_max_entries) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("auditlog debug-append-loop: {e}");
                ExitCode::from(2)
            }
        },
        Command::Keygen { name, out } => {
            let result = keys::generate_signer(&name)
                .and_then(|s| keys::write_key_pair(&out, &s).map(|p| (s, p)));
            match result {
                Ok((signer, (sp, vp))) => {
                    println!("wrote {} (private, mode 0600)", sp.display());
                    println!("wrote {} (public)", vp.display());
                    println!("verifier key: {}", signer.verifier().to_text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("auditlog keygen: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn debug_append_loop(
    data_dir: &std::path::Path,
    key: &std::path::Path,
    threads: usize,
    seal_max_entries: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use auditlog::engine::input::{EntryInput, Limits};
    use auditlog::engine::{Engine, LogConfig, SystemClock};
    use auditlog::store::embedded::EmbeddedStore;

    let signer = Arc::new(keys::load_signer(key)?);
    let store = Arc::new(EmbeddedStore::open(data_dir)?);
    let mut cfg = LogConfig::new("orders", "audit.example.com/orders");
    cfg.seal_max_entries = seal_max_entries;
    cfg.seal_after = None;
    let engine = Arc::new(Engine::start(
        store,
        signer,
        vec![cfg],
        Limits::default(),
        Arc::new(SystemClock),
    )?);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let n = (i % 3 + 1) as usize;
                    let entries = (0..n)
                        .map(|j| EntryInput {
                            subject: format!("order:{t}"),
                            actor: format!("writer:{t}"),
                            kind: "prompt".into(),
                            content_type: "text/plain".into(),
                            payload: format!("thread {t} request {i} entry {j}").into_bytes(),
                            ..Default::default()
                        })
                        .collect();
                    let Ok(o) = engine.append_blocking("orders", entries) else {
                        return;
                    };
                    let mut w = out.lock().expect("stdout lock");
                    for r in &o.receipts {
                        let _ = writeln!(w, "ACK {} {}", r.seq, r.leaf_hash.to_hex());
                    }
                    let _ = w.flush();
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn verify_command(
    file: Option<PathBuf>,
    key_files: &[PathBuf],
    data_dir: Option<PathBuf>,
    store: Option<String>,
    since_checkpoint: Option<PathBuf>,
    json: bool,
    html_report: Option<PathBuf>,
) -> ExitCode {
    let usage = |m: String| {
        eprintln!("auditlog verify: {m}");
        ExitCode::from(2)
    };
    let mut keys = Vec::new();
    for k in key_files {
        match auditlog::keys::load_verifiers(k) {
            Ok(v) => keys.extend(v),
            Err(e) => return usage(e.to_string()),
        }
    }
    let since = match since_checkpoint.map(std::fs::read_to_string).transpose() {
        Ok(s) => s,
        Err(e) => return usage(format!("--since-checkpoint: {e}")),
    };
    if let Some(url) = store {
        let bar = auditlog::progress::spinner("verifying the PostgreSQL store");
        let r = auditlog::verify::postgres::verify_postgres_since(&url, &keys, since.as_deref());
        bar.finish_and_clear();
        return match r {
            Ok(r) => print_verdict(
                &r,
                &format!("PostgreSQL store {}", auditlog::serve::redact(&url)),
                json,
            ),
            Err(e) => usage(format!("{}: {e}", auditlog::serve::redact(&url))),
        };
    }
    let (report, what) = match (file, data_dir) {
        (Some(f), None) => {
            let file = match std::fs::File::open(&f) {
                Ok(x) => x,
                Err(e) => return usage(format!("{}: {e}", f.display())),
            };
            let len = file.metadata().map_or(0, |m| m.len());
            let bar = auditlog::progress::bytes(len, "verifying");
            // With --report, the bytes verified are hashed as they are read:
            // the page names them and is rendered from the same bytes.
            let mut input = std::io::BufReader::with_capacity(
                1 << 20,
                Hashing::new(bar.wrap_read(file), html_report.is_some()),
            );
            let (report, summary) =
                auditlog::bundle::verify_bundle(&mut input, &keys, since.as_deref());
            bar.finish_and_clear();
            if let Some(out) = &html_report {
                let verified = match input.into_inner().finish() {
                    Ok(sha) => sha,
                    Err(e) => return usage(format!("{}: {e}", f.display())),
                };
                if let Err(e) = write_report(&f, &verified, key_files, &report, &summary, out) {
                    print_verdict(&report, "bundle", json);
                    return usage(format!("--report {}: {e}", out.display()));
                }
            }
            let size = summary.checkpoint.map(|c| c.size).unwrap_or(0);
            (
                report,
                format!(
                    "bundle of log {:?} ({}), tree size {size}",
                    summary.log, summary.origin
                ),
            )
        }
        (None, Some(d)) => {
            let bar = auditlog::progress::spinner("verifying the data directory");
            let verified =
                auditlog::verify::store::verify_data_dir_since(&d, &keys, since.as_deref());
            bar.finish_and_clear();
            match verified {
                Ok(r) => (r, format!("data directory {}", d.display())),
                Err(e) => return usage(format!("{}: {e}", d.display())),
            }
        }
        _ => return usage("give a bundle file, --data-dir or --store".into()),
    };
    print_verdict(&report, &what, json)
}

/// A reader that hashes (SHA-256) what passes through it, when asked to.
struct Hashing<R> {
    inner: R,
    sha: Option<sha2::Sha256>,
}

impl<R: std::io::Read> Hashing<R> {
    fn new(inner: R, on: bool) -> Self {
        use sha2::Digest as _;
        Hashing {
            inner,
            sha: on.then(sha2::Sha256::new),
        }
    }

    /// Reads what is left, and returns the hex SHA-256 of every byte.
    fn finish(mut self) -> std::io::Result<String> {
        use sha2::Digest as _;
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(self
            .sha
            .map(|s| hex::encode(s.finalize()))
            .unwrap_or_default())
    }
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        if let Some(s) = &mut self.sha {
            s.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Writes the HTML report of a verified bundle (through a temporary file,
/// so a failed write leaves no half page under the name asked for).
fn write_report(
    bundle: &std::path::Path,
    sha: &str,
    key_files: &[PathBuf],
    report: &auditlog::verify::Report,
    summary: &auditlog::bundle::BundleSummary,
    out: &std::path::Path,
) -> std::io::Result<()> {
    // Never write the page (or its temporary file) over the evidence or a
    // key it describes.
    let same = |a: &std::path::Path, b: &std::path::Path| {
        a.canonicalize()
            .is_ok_and(|a| b.canonicalize().is_ok_and(|b| a == b))
    };
    let tmp = out.with_extension("partial");
    let inputs: Vec<&std::path::Path> = std::iter::once(bundle)
        .chain(key_files.iter().map(PathBuf::as_path))
        .collect();
    if inputs.iter().any(|i| same(i, out) || same(i, &tmp)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the report would overwrite the bundle or a key file: choose another name",
        ));
    }
    let key_files: Vec<String> = key_files.iter().map(|k| k.display().to_string()).collect();
    let name = bundle.display().to_string();
    let ctx = auditlog::report::ReportContext {
        bundle_name: &name,
        bundle_sha256: sha,
        key_files: &key_files,
        trusted: &summary.trusted,
        report,
        summary,
        now_unix_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
    };
    let mut input = std::io::BufReader::new(Hashing::new(std::fs::File::open(bundle)?, true));
    auditlog::report::write_html(&mut input, &ctx, std::fs::File::create(&tmp)?)?;
    if input.into_inner().finish()? != sha {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::other(
            "the bundle changed while the report was written: verify it again",
        ));
    }
    std::fs::rename(&tmp, out)?;
    eprintln!("auditlog verify: report written to {}", out.display());
    Ok(())
}

/// Prints a verification report (one-line verdict, then findings) and
/// returns the exit status: 0 valid, 1 invalid.
fn print_verdict(report: &auditlog::verify::Report, what: &str, json: bool) -> ExitCode {
    let valid = report.is_valid();
    let transitions: Vec<serde_json::Value> = report
        .transitions
        .iter()
        .map(|(t, followed)| {
            serde_json::json!({
                "from": t.from.to_text(), "to": t.to.to_text(),
                "time_unix_nanos": t.time_unix_nanos, "followed": followed,
            })
        })
        .collect();
    if json {
        let findings: Vec<serde_json::Value> = report
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "code": f.verdict.code(), "log": f.log, "seq": f.seq,
                    "segment": f.segment, "field": f.field, "detail": f.detail,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "valid": valid,
                "verdict": if valid { "VALID" } else { "INVALID" },
                "entries_checked": report.entries_checked,
                "checkpoints_checked": report.checkpoints_checked,
                "seals_checked": report.seals_checked,
                "findings": findings,
                "key_transitions": transitions,
            })
        );
    } else {
        let failures = report.failures().count();
        if valid {
            println!(
                "VALID: {what}: {} entries, {} checkpoints, {} seals verified",
                report.entries_checked, report.checkpoints_checked, report.seals_checked
            );
        } else {
            println!("INVALID: {what}: {failures} problem(s) found");
        }
        for (t, followed) in &report.transitions {
            let when = auditlog::core::transition::format_time(t.time_unix_nanos);
            if *followed {
                println!(
                    "KEY_ROTATION: trusting {} through the rotation of {when} signed by {}",
                    t.to.to_text(),
                    t.from.to_text()
                );
            } else {
                println!(
                    "KEY_ROTATION: not following the rotation of {when} from {} (not a trusted key) to {}",
                    t.from.to_text(),
                    t.to.to_text()
                );
            }
        }
        for f in &report.findings {
            println!("{f}");
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn copy_command(from: &str, to: &str) -> ExitCode {
    let run = || -> Result<Vec<auditlog::copy::CopiedLog>, auditlog::copy::CopyError> {
        let src = auditlog::copy::open_location(from, true)?;
        let dst = auditlog::copy::open_location(to, false)?;
        let mut bar: Option<(String, indicatif::ProgressBar)> = None;
        let copied = auditlog::copy::copy_store(src.as_ref(), dst.as_ref(), |log, done, total| {
            if bar.as_ref().is_none_or(|(l, _)| l != log) {
                if let Some((_, b)) = bar.take() {
                    b.finish_and_clear();
                }
                bar = Some((log.to_owned(), auditlog::progress::count(total, log)));
            }
            if let Some((_, b)) = &bar {
                b.set_position(done);
            }
        });
        if let Some((_, b)) = bar {
            b.finish_and_clear();
        }
        copied
    };
    match run() {
        Ok(logs) => {
            for l in &logs {
                if l.already_there {
                    println!("{}: already there, skipped", l.log);
                } else {
                    println!(
                        "{}: {} entries, {} checkpoints, {} seals",
                        l.log, l.entries, l.checkpoints, l.seals
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auditlog copy: {e}");
            ExitCode::from(2)
        }
    }
}

fn export_command(
    server: String,
    log: String,
    selector: auditlog::proto::export_request::Selector,
    since_checkpoint: Option<PathBuf>,
    out: PathBuf,
) -> Result<u64, Box<dyn std::error::Error>> {
    use std::io::Write;
    let since = since_checkpoint.map(std::fs::read_to_string).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = cli_conn::connect(server).await?;
        let mut stream = client
            .export(auditlog::proto::ExportRequest {
                log,
                selector: Some(selector),
                since_checkpoint: since.unwrap_or_default(),
            })
            .await?
            .into_inner();
        // Write to a temporary file and rename: a failed export leaves no
        // half bundle behind under the requested name.
        let tmp = out.with_extension("partial");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut n = 0u64;
        let bar = auditlog::progress::stream("exporting");
        while let Some(chunk) = stream.message().await? {
            n += chunk.data.len() as u64;
            bar.set_position(n);
            f.write_all(&chunk.data)?;
        }
        bar.finish_and_clear();
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp, &out)?;
        Ok(n)
    })
}
