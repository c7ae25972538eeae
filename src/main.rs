//! The `auditlog` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use auditlog::keys;

/// auditlog: a tamper-evident audit-log store with offline-verifiable evidence.
#[derive(Parser)]
#[command(name = "auditlog", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
            key,
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
