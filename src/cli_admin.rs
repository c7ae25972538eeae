//! The CLI's administrative verbs: legal holds, erasure, retention, and
//! access/portability exports (JSON or CSV).
//!
//! Each verb talks to a server over gRPC, except `retention apply
//! --data-dir`, which opens a stopped server's data directory itself.
//! Output is JSON on stdout so scripts can keep it.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;

use auditlog::proto;

/// Where the server is, for verbs that work across logs.
#[derive(Args, Clone, Debug)]
pub struct AdminServer {
    /// Server URL.
    #[arg(
        long,
        env = "AUDITLOG_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Who is acting (recorded in the system log).
    #[arg(long, env = "USER", default_value = "operator")]
    pub requested_by: String,
}

/// `auditlog hold ...`.
#[derive(Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold: held entries are neither expired nor erased.
    ///
    /// Example: auditlog hold place --log orders --subject order:8812
    ///          --case CASE-2026-114 --reason "chargeback dispute"
    Place {
        #[command(flatten)]
        at: AdminServer,
        /// The log (default: every log).
        #[arg(long)]
        log: Option<String>,
        /// Hold the entries about this subject.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        subject: Option<String>,
        /// Hold every entry of the log (or of every log).
        #[arg(long)]
        all: bool,
        /// Case the hold is for.
        #[arg(long = "case")]
        case_id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Release a hold by id (see `hold list`).
    Release {
        #[command(flatten)]
        at: AdminServer,
        /// Hold id (hold-...).
        #[arg(long)]
        id: String,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the holds in force (JSON lines).
    List {
        #[command(flatten)]
        at: AdminServer,
        /// Only holds that touch this log.
        #[arg(long)]
        log: Option<String>,
    },
}

/// Where an administrative verb acts: a running server over gRPC, or the
/// data directory of a stopped one (opened as `serve` opens it).
#[derive(clap::Args)]
pub struct AdminTarget {
    /// Server URL (or use --data-dir on a stopped server).
    #[arg(long, env = "AUDITLOG_SERVER", conflicts_with = "data_dir")]
    server: Option<String>,
    /// Data directory of a stopped server.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's configuration (logs, policies, store), with --data-dir.
    #[arg(long, requires = "data_dir")]
    config: Option<PathBuf>,
    /// Signer key file, with --data-dir (default DATA/keys/signer.key).
    #[arg(long, requires = "data_dir")]
    key: Option<PathBuf>,
}

/// `auditlog retention ...`.
#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Expire the payloads of sealed segments whose retention ended,
    /// except entries under a legal hold. Leaf hashes, commitments,
    /// metadata and seals stay: every proof still verifies.
    ///
    /// Example: auditlog retention apply --server http://127.0.0.1:50051 --dry-run
    ///          auditlog retention apply --data-dir /var/lib/auditlog --config auditlog.toml
    Apply {
        /// A running server, or a stopped server's data directory.
        #[command(flatten)]
        at: AdminTarget,
        /// Say what would be expired, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who is acting (recorded in the system log).
        #[arg(long, env = "USER", default_value = "operator")]
        requested_by: String,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn hold_json(h: &proto::Hold) -> serde_json::Value {
    json!({
        "id": h.id,
        "log": if h.log.is_empty() { None } else { Some(&h.log) },
        "subject": if h.subject.is_empty() { None } else { Some(&h.subject) },
        "case": h.case_id,
        "reason": h.reason,
        "placed_unix_nanos": h.placed_unix_nanos,
        "placed_by": h.placed_by,
        "system_seq": h.system_seq,
    })
}

/// Runs `auditlog hold ...`.
///
/// # Errors
/// Connection failures and gRPC statuses.
pub fn hold(cmd: HoldCommand) -> Result<(), Box<dyn std::error::Error>> {
    runtime()?.block_on(async move {
        match cmd {
            HoldCommand::Place {
                at,
                log,
                subject,
                all,
                case_id,
                reason,
            } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let h = c
                    .place_hold(proto::PlaceHoldRequest {
                        log: log.unwrap_or_default(),
                        subject: subject.unwrap_or_default(),
                        whole_log: all,
                        case_id,
                        reason,
                        requested_by: at.requested_by,
                    })
                    .await?
                    .into_inner()
                    .hold
                    .ok_or("the server returned no hold")?;
                println!("{}", serde_json::to_string_pretty(&hold_json(&h))?);
            }
            HoldCommand::Release { at, id, reason } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let h = c
                    .release_hold(proto::ReleaseHoldRequest {
                        id,
                        reason,
                        requested_by: at.requested_by,
                    })
                    .await?
                    .into_inner()
                    .hold
                    .ok_or("the server returned no hold")?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "released": hold_json(&h) }))?
                );
            }
            HoldCommand::List { at, log } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let r = c
                    .list_holds(proto::ListHoldsRequest {
                        log: log.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                for h in &r.holds {
                    println!("{}", hold_json(h));
                }
            }
        }
        Ok(())
    })
}

/// Runs `auditlog erase`; prints the per-log answer.
///
/// # Errors
/// Connection failures and gRPC statuses.
pub fn erase(
    at: AdminServer,
    log: Option<String>,
    subject: Option<String>,
    actor: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    runtime()?.block_on(async move {
        let mut c = crate::cli_conn::connect(at.server).await?;
        let r = c
            .erase(proto::EraseRequest {
                log: log.unwrap_or_default(),
                subject: subject.unwrap_or_default(),
                actor: actor.unwrap_or_default(),
                requested_by: at.requested_by,
            })
            .await?
            .into_inner();
        let logs: Vec<_> = r
            .logs
            .iter()
            .map(|l| {
                json!({
                    "log": l.log, "matched": l.matched, "erased": l.erased,
                    "already_removed": l.already_removed, "refused": l.refused,
                    "refused_reason": l.refused_reason, "bytes_reclaimed": l.bytes_reclaimed,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "logs": logs }))?
        );
        Ok(())
    })
}

fn expiry_json(logs: &[(String, u64, u64, u64, u64)], dry_run: bool) -> serde_json::Value {
    json!({
        "dry_run": dry_run,
        "logs": logs.iter().map(|(log, segments, entries, bytes, held)| json!({
            "log": log, "segments": segments, "entries": entries,
            "bytes": bytes, "held": held,
        })).collect::<Vec<_>>(),
        "segments": logs.iter().map(|l| l.1).sum::<u64>(),
        "entries": logs.iter().map(|l| l.2).sum::<u64>(),
        "bytes": logs.iter().map(|l| l.3).sum::<u64>(),
    })
}

/// Runs `auditlog retention apply`.
///
/// # Errors
/// Connection, configuration, key and store failures.
pub fn retention(cmd: RetentionCommand) -> Result<(), Box<dyn std::error::Error>> {
    let RetentionCommand::Apply {
        at:
            AdminTarget {
                server,
                data_dir,
                config,
                key,
            },
        dry_run,
        requested_by,
    } = cmd;
    let bar = auditlog::progress::spinner(if dry_run {
        "planning retention"
    } else {
        "applying retention"
    });
    let rows = match (server, data_dir) {
        (_, Some(dir)) => retention_offline(&dir, config.as_deref(), key, dry_run, &requested_by)?,
        (server, None) => runtime()?.block_on(async move {
            let server = server.unwrap_or_else(|| "http://127.0.0.1:50051".into());
            let mut c = crate::cli_conn::connect(server).await?;
            let r = c
                .apply_retention(proto::ApplyRetentionRequest {
                    dry_run,
                    requested_by,
                })
                .await?
                .into_inner();
            Ok::<_, Box<dyn std::error::Error>>(
                r.logs
                    .into_iter()
                    .map(|l| (l.log, l.segments, l.entries, l.bytes_reclaimed, l.held))
                    .collect(),
            )
        })?,
    };
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::to_string_pretty(&expiry_json(&rows, dry_run))?
    );
    Ok(())
}

type ExpiryRow = (String, u64, u64, u64, u64);

/// The engine of a stopped server's data directory, opened as `serve`
/// opens it (an interrupted key rotation finished or undone).
fn open_offline(
    dir: &Path,
    config: Option<&Path>,
    key: Option<PathBuf>,
) -> Result<auditlog::serve::Opened, Box<dyn std::error::Error>> {
    let file = match config {
        Some(p) => auditlog::config::FileConfig::load(p)?,
        None => auditlog::config::FileConfig::default(),
    };
    let mut cfg = file.resolve()?;
    cfg.data_dir = dir.to_owned();
    if key.is_some() {
        cfg.key = key;
    }
    auditlog::serve::open(&cfg, false).map_err(|e| e.to_string().into())
}

fn retention_offline(
    dir: &Path,
    config: Option<&Path>,
    key: Option<PathBuf>,
    dry_run: bool,
    by: &str,
) -> Result<Vec<ExpiryRow>, Box<dyn std::error::Error>> {
    let engine = open_offline(dir, config, key)?.engine;
    let out = engine.apply_retention(engine.now(), dry_run, by);
    engine.shutdown();
    Ok(out?
        .into_iter()
        .map(|e| (e.log, e.segments, e.entries, e.bytes, e.held))
        .collect())
}

/// `auditlog keys ...`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Rotate the server's signing key.
    ///
    /// Creates a new key; the old key and the new one sign a transition
    /// statement, recorded in the system log `_system`; every checkpoint
    /// and seal after it is signed by the new key. The old private key is
    /// kept as signer.key.retired-<id> beside the new one and may be
    /// destroyed: evidence bundles carry the transition, so `auditlog
    /// verify --key OLD.pub` follows it, and verifier.pub lists both public
    /// keys. Needs an admin token (against a server).
    ///
    /// Example: auditlog keys rotate --server https://audit.example.com:50051
    ///          auditlog keys rotate --data-dir /var/lib/auditlog (server stopped)
    Rotate {
        /// A running server, or a stopped server's data directory.
        #[command(flatten)]
        at: AdminTarget,
        /// Who is acting (recorded in the system log).
        #[arg(long, env = "USER", default_value = "operator")]
        requested_by: String,
    },
}

/// Runs `auditlog keys ...`.
///
/// # Errors
/// Connection failures, gRPC statuses, key file or store errors.
pub fn keys(cmd: KeysCommand) -> Result<(), Box<dyn std::error::Error>> {
    let KeysCommand::Rotate {
        at:
            AdminTarget {
                server,
                data_dir,
                config,
                key,
            },
        requested_by,
    } = cmd;
    let (from, to, seq) = match (server, data_dir) {
        (_, Some(dir)) => {
            let opened = open_offline(&dir, config.as_deref(), key)?;
            let r = opened.rotator.rotate(&opened.engine, &requested_by);
            opened.engine.shutdown();
            let r = r?;
            (r.from.to_text(), r.to.to_text(), r.system_seq)
        }
        (server, None) => runtime()?.block_on(async move {
            let server = server.unwrap_or_else(|| "http://127.0.0.1:50051".into());
            let mut c = crate::cli_conn::connect(server).await?;
            let r = c
                .rotate_key(proto::RotateKeyRequest { requested_by })
                .await?
                .into_inner();
            Ok::<_, Box<dyn std::error::Error>>((r.from_key, r.to_key, r.system_seq))
        })?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "retired_key": from,
            "signing_key": to,
            "system_seq": seq,
        }))?
    );
    eprintln!(
        "rotated: checkpoints and seals are now signed by {to}. Publish it next to the old \
         public key (verifier.pub beside the key file lists both). The old private key \
         (signer.key.retired-*) is no longer needed to verify anything: back it up or destroy it."
    );
    Ok(())
}

/// The payload as text (when the content type is textual and the bytes
/// are UTF-8) or base64: (encoding, value).
fn payload_text(content_type: &str, b: &[u8]) -> (&'static str, String) {
    let ct = content_type.to_ascii_lowercase();
    let textual = ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.starts_with("application/x-www-form-urlencoded");
    match (textual, std::str::from_utf8(b)) {
        (true, Ok(s)) => ("text", s.to_owned()),
        _ => ("base64", B64.encode(b)),
    }
}

fn state_name(state: i32) -> String {
    proto::PayloadState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("PAYLOAD_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// Columns of a CSV export, in order.
pub const CSV_COLUMNS: [&str; 18] = [
    "log",
    "origin",
    "seq",
    "timestamp_unix_nanos",
    "subject",
    "actor",
    "kind",
    "content_type",
    "attributes",
    "idempotency_key",
    "payload_state",
    "payload_removed_reason",
    "payload_encoding",
    "payload",
    "payload_length",
    "payload_digest",
    "prev_leaf_hash",
    "leaf_hash",
];

fn record_json(e: &proto::Entry) -> serde_json::Value {
    let (encoding, payload) = payload_text(&e.content_type, &e.payload);
    let attributes: std::collections::BTreeMap<_, _> = e.attributes.iter().collect();
    json!({
        "log": e.log, "origin": e.origin, "seq": e.seq,
        "timestamp_unix_nanos": e.timestamp_unix_nanos,
        "subject": e.subject, "actor": e.actor, "kind": e.kind,
        "content_type": e.content_type, "attributes": attributes,
        "idempotency_key": e.idempotency_key,
        "payload_state": state_name(e.payload_state),
        "payload_removed_reason": e.payload_removed_reason,
        "payload_encoding": encoding, "payload": payload,
        "payload_length": e.payload_length,
        "payload_digest": hex::encode(&e.payload_digest),
        "prev_leaf_hash": hex::encode(&e.prev_leaf_hash),
        "leaf_hash": hex::encode(&e.leaf_hash),
    })
}

/// Runs `auditlog export --format json|csv`: every entry about a subject
/// or by an actor, in one log or all, for an access or portability
/// request. Returns the number of entries written.
///
/// # Errors
/// Connection failures, gRPC statuses, I/O.
pub fn export_records(
    server: String,
    log: Option<String>,
    subject: Option<String>,
    actor: Option<String>,
    format: &str,
    out: &Path,
) -> Result<u64, Box<dyn std::error::Error>> {
    let (by, value) = match (&subject, &actor) {
        (Some(s), None) => ("subject", s.clone()),
        (None, Some(a)) => ("actor", a.clone()),
        _ => return Err("give exactly one of --subject and --actor".into()),
    };
    let entries = runtime()?.block_on(async move {
        let mut c = crate::cli_conn::connect(server).await?;
        let mut stream = c
            .find_entries(proto::FindEntriesRequest {
                log: log.unwrap_or_default(),
                subject: subject.unwrap_or_default(),
                actor: actor.unwrap_or_default(),
            })
            .await?
            .into_inner();
        let mut entries = Vec::new();
        let bar = auditlog::progress::spinner("entries found: 0");
        while let Some(r) = stream.message().await? {
            if let Some(e) = r.entry {
                entries.push(record_json(&e));
                bar.set_message(format!("entries found: {}", entries.len()));
            }
        }
        bar.finish_and_clear();
        Ok::<_, Box<dyn std::error::Error>>(entries)
    })?;
    let n = entries.len() as u64;
    let tmp = out.with_extension("partial");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        match format {
            "json" => {
                let doc = json!({
                    "format": "auditlog-records/v1",
                    by: value,
                    "entries": entries,
                });
                serde_json::to_writer_pretty(&mut w, &doc)?;
                w.write_all(b"\n")?;
            }
            "csv" => {
                let mut c = csv::Writer::from_writer(&mut w);
                c.write_record(CSV_COLUMNS)?;
                for e in &entries {
                    let row = CSV_COLUMNS.iter().map(|k| match &e[*k] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                    c.write_record(row)?;
                }
                c.flush()?;
            }
            other => return Err(format!("unknown format {other:?} (json or csv)").into()),
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(n)
}
