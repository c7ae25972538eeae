//! The CLI's gRPC client verbs: append, get, checkpoint, seal, segments.
//!
//! Each prints JSON on stdout (one object), so a shell script can keep a
//! receipt with `> receipt.json` and a person can read it.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;

use auditlog::proto;

/// Where the server is.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(
        long,
        env = "AUDITLOG_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Log name.
    #[arg(long, default_value = "default")]
    pub log: String,
}

/// Client verbs.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Append one entry and print its receipt (JSON).
    ///
    /// The payload comes from --payload, --payload-file, or standard input.
    /// Keep the printed checkpoint: it is what later proves the entry was
    /// never altered or dropped.
    ///
    /// Example: auditlog append --log orders --subject order:8812
    ///          --actor buyer:42 --kind prompt --payload "Write a haiku"
    ///          --idempotency-key order-8812-prompt > receipt.json
    Append {
        #[command(flatten)]
        at: ServerArgs,
        /// What the entry is about (order:8812).
        #[arg(long)]
        subject: String,
        /// Who caused it (buyer:42).
        #[arg(long)]
        actor: String,
        /// What kind of record (prompt, output, chat.message).
        #[arg(long)]
        kind: String,
        /// Media type of the payload.
        #[arg(long, default_value = "text/plain; charset=utf-8")]
        content_type: String,
        /// Payload text.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// File holding the payload.
        #[arg(long)]
        payload_file: Option<PathBuf>,
        /// Attribute, as key=value (repeatable).
        #[arg(long = "attr", value_parser = parse_attr)]
        attributes: Vec<(String, String)>,
        /// Retry token: a retry with the same key returns the first receipt.
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// Print one entry (JSON) with its inclusion proof and checkpoint.
    Get {
        #[command(flatten)]
        at: ServerArgs,
        /// Seq of the entry.
        #[arg(long)]
        seq: u64,
        /// Prove against this tree size (default: the latest).
        #[arg(long, default_value_t = 0)]
        tree_size: u64,
    },
    /// Print the latest signed checkpoint of a log.
    Checkpoint {
        #[command(flatten)]
        at: ServerArgs,
    },
    /// Seal the open segment of a log now and print the seal.
    Seal {
        #[command(flatten)]
        at: ServerArgs,
    },
    /// List the segments of a log (JSON lines).
    Segments {
        #[command(flatten)]
        at: ServerArgs,
    },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn text_or_b64(content_type: &str, b: &[u8]) -> serde_json::Value {
    let textual = content_type.starts_with("text/") || content_type.contains("json");
    match (textual, std::str::from_utf8(b)) {
        (true, Ok(s)) => json!({ "text": s }),
        _ => json!({ "base64": B64.encode(b) }),
    }
}

/// Runs a client verb; prints its JSON.
///
/// # Errors
/// Connection failures and gRPC statuses, with their messages.
pub fn run(cmd: ClientCommand) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let out = match cmd {
            ClientCommand::Append {
                at,
                subject,
                actor,
                kind,
                content_type,
                payload,
                payload_file,
                attributes,
                idempotency_key,
            } => {
                let payload = match (payload, payload_file) {
                    (Some(p), _) => p.into_bytes(),
                    (None, Some(f)) => std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?,
                    (None, None) => {
                        let mut b = Vec::new();
                        std::io::stdin().read_to_end(&mut b)?;
                        b
                    }
                };
                let mut c = crate::cli_conn::connect(at.server).await?;
                let r = c
                    .append(proto::AppendRequest {
                        log: at.log,
                        entries: vec![proto::EntryInput {
                            subject,
                            actor,
                            kind,
                            content_type,
                            payload,
                            attributes: attributes.into_iter().collect::<HashMap<_, _>>(),
                            idempotency_key,
                        }],
                    })
                    .await?
                    .into_inner();
                let rec = r.receipts.first().ok_or("the server returned no receipt")?;
                json!({
                    "seq": rec.seq,
                    "leaf_hash": hex(&rec.leaf_hash),
                    "timestamp_unix_nanos": rec.timestamp_unix_nanos,
                    "duplicate": rec.duplicate,
                    "inclusion_proof": rec.inclusion_proof.iter().map(|h| hex(h)).collect::<Vec<_>>(),
                    "checkpoint": r.checkpoint,
                })
            }
            ClientCommand::Get { at, seq, tree_size } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let r = c
                    .get_entry(proto::GetEntryRequest {
                        log: at.log,
                        seq,
                        tree_size,
                    })
                    .await?
                    .into_inner();
                let e = r.entry.ok_or("the server returned no entry")?;
                let state = proto::PayloadState::try_from(e.payload_state)
                    .map(|s| s.as_str_name().trim_start_matches("PAYLOAD_STATE_").to_lowercase())
                    .unwrap_or_default();
                json!({
                    "log": e.log, "origin": e.origin, "seq": e.seq,
                    "timestamp_unix_nanos": e.timestamp_unix_nanos,
                    "subject": e.subject, "actor": e.actor, "kind": e.kind,
                    "content_type": e.content_type, "attributes": e.attributes,
                    "idempotency_key": e.idempotency_key,
                    "payload_length": e.payload_length,
                    "payload_digest": hex(&e.payload_digest),
                    "prev_leaf_hash": hex(&e.prev_leaf_hash),
                    "leaf_hash": hex(&e.leaf_hash),
                    "salt": hex(&e.salt),
                    "payload": text_or_b64(&e.content_type, &e.payload),
                    "payload_state": state,
                    "payload_removed_reason": e.payload_removed_reason,
                    "inclusion_proof": r.inclusion_proof.iter().map(|h| hex(h)).collect::<Vec<_>>(),
                    "checkpoint": r.checkpoint,
                })
            }
            ClientCommand::Checkpoint { at } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let r = c
                    .get_checkpoint(proto::GetCheckpointRequest { log: at.log })
                    .await?
                    .into_inner();
                print!("{}", r.checkpoint);
                return Ok(());
            }
            ClientCommand::Seal { at } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let s = c
                    .seal(proto::SealRequest { log: at.log })
                    .await?
                    .into_inner()
                    .segment
                    .ok_or("the server returned no segment")?;
                json!({ "segment": s.index, "first_seq": s.first_seq, "end_seq": s.end_seq, "seal": s.seal })
            }
            ClientCommand::Segments { at } => {
                let mut c = crate::cli_conn::connect(at.server).await?;
                let r = c
                    .list_segments(proto::ListSegmentsRequest { log: at.log })
                    .await?
                    .into_inner();
                for s in r.segments {
                    println!(
                        "{}",
                        json!({ "segment": s.index, "first_seq": s.first_seq, "end_seq": s.end_seq, "sealed": s.sealed })
                    );
                }
                return Ok(());
            }
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    })
}
