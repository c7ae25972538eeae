//! The gRPC service `auditlog.v1.AuditLog` over an [`Engine`].
//!
//! Owns: translation between the proto contract and the engine (messages,
//! and errors to gRPC codes), the stream plumbing of `AppendStream`, and the
//! server assembly with health checking and reflection.
//!
//! Invariants:
//! - No handler panics on client input: every error is a status with a code
//!   and a message naming the entry and field when there is one.
//! - Blocking store reads run on the blocking pool, never on the runtime's
//!   worker threads.
//! - `AppendStream` answers each request in order, with requests pipelined
//!   into group commits: at most [`STREAM_WINDOW`] requests and
//!   [`STREAM_WINDOW_BYTES`] of payload in flight per stream. A producer
//!   faster than the log is held back by HTTP/2 flow control, not buffered.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::{Action, Denied, Principal, Tokens};
use crate::core::hash::Hash;
use crate::core::seal::SealReason;
use crate::engine::admin::{AdminError, Hold, Target, ACCESS_LOG, SYSTEM_LOG};
use crate::engine::input::{AppendError, EntryInput};
use crate::engine::{AppendOutcome, Engine, ReadError};
use crate::proto;
use crate::proto::audit_log_server::{AuditLog, AuditLogServer};
use crate::rotation::{KeyRotator, RotateError};
use crate::store::{PayloadState, StoreError, StoredEntry};

/// Requests of one `AppendStream` that may be in flight at once.
pub const STREAM_WINDOW: usize = 256;

/// Payload bytes of one `AppendStream` that may be in flight at once: about
/// 50 ms of appends at 100,000 1 KiB entries/s, enough to keep group commit
/// fed without letting a producer queue seconds of work in server memory.
pub const STREAM_WINDOW_BYTES: usize = 8 << 20;

/// Largest gRPC message accepted (a 4 MiB request plus framing).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// The service.
pub struct Service {
    engine: Arc<Engine>,
    data_dir: Option<std::path::PathBuf>,
    rotator: Option<Arc<KeyRotator>>,
    store_url: Option<String>,
    tokens: Tokens,
    stream_idle: std::time::Duration,
}

/// How long an `AppendStream` may stay silent before it is closed.
pub const DEFAULT_STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

impl Service {
    /// A service over `engine`; `data_dir` enables the `Verify` RPC for the
    /// embedded store, checked against the keys the engine signed with.
    pub fn new(engine: Arc<Engine>, data_dir: Option<std::path::PathBuf>) -> Service {
        Service {
            engine,
            data_dir,
            rotator: None,
            store_url: None,
            tokens: Tokens::default(),
            stream_idle: DEFAULT_STREAM_IDLE,
        }
    }

    /// Enables the `Verify` RPC for a PostgreSQL store.
    #[must_use]
    pub fn with_store_url(mut self, url: String) -> Service {
        self.store_url = Some(url);
        self
    }

    /// Enables `RotateKey` for the key file the engine signs with.
    #[must_use]
    pub fn with_rotator(mut self, rotator: Arc<KeyRotator>) -> Service {
        self.rotator = Some(rotator);
        self
    }

    /// Closes an `AppendStream` after `idle` without a request.
    #[must_use]
    pub fn with_stream_idle(mut self, idle: std::time::Duration) -> Service {
        self.stream_idle = idle;
        self
    }

    /// Requires bearer tokens (none: an open server).
    #[must_use]
    pub fn with_tokens(mut self, tokens: Tokens) -> Service {
        self.tokens = tokens;
        self
    }

    /// Who sent `request`.
    fn who<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.tokens.authenticate(header).map_err(denied_status)
    }

    /// Checks `action` on `log` (and `subject`); a refusal is recorded in
    /// the access log like any other answer.
    async fn allow(
        &self,
        who: &Principal,
        rpc: &str,
        action: Action,
        log: &str,
        subject: Option<&str>,
    ) -> Result<(), Status> {
        match who.check(action, log, subject) {
            Ok(()) => Ok(()),
            Err(d) => {
                let status = denied_status(d);
                self.audit(who, rpc, log, subject, "", &Err::<(), _>(status.clone()))
                    .await?;
                Err(status)
            }
        }
    }

    /// Records an access (read, export, verify, administration) and its
    /// answer in `_access`, then passes the answer on. When the record
    /// cannot be written, the answer is withheld: nothing is read unseen.
    async fn audit<T>(
        &self,
        who: &Principal,
        rpc: &str,
        log: &str,
        subject: Option<&str>,
        detail: &str,
        result: &Result<T, Status>,
    ) -> Result<(), Status> {
        let code = match result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        let body = serde_json::json!({
            "rpc": rpc,
            "log": log,
            "subject": subject,
            "detail": detail,
            "token": who.name,
            "role": who.role.as_str(),
            "result": code,
        });
        let entry = EntryInput {
            subject: subject.map_or_else(|| format!("log:{log}"), str::to_owned),
            actor: format!("token:{}", who.name),
            kind: format!("access.{rpc}"),
            content_type: "application/json".into(),
            payload: body.to_string().into_bytes(),
            ..Default::default()
        };
        self.engine
            .append(ACCESS_LOG, vec![entry])
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("the access log cannot record this: {e}")))
    }

    /// Records the access, then answers.
    async fn audited<T>(
        &self,
        who: &Principal,
        rpc: &str,
        log: &str,
        subject: Option<&str>,
        detail: &str,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        self.audit(who, rpc, log, subject, detail, &result).await?;
        result
    }

    /// Who acts, for the system log: the token's name, or what an open
    /// server's client says.
    fn actor(who: &Principal, requested_by: String) -> String {
        if who.open && !requested_by.is_empty() {
            requested_by
        } else {
            who.name.clone()
        }
    }

    /// The tonic server of this service, with message size limits.
    pub fn into_server(self) -> AuditLogServer<Service> {
        AuditLogServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn log_name(log: &str) -> &str {
    if log.is_empty() {
        "default"
    } else {
        log
    }
}

/// gRPC status of an append error.
pub fn append_status(e: AppendError) -> Status {
    let msg = e.to_string();
    match e {
        AppendError::Invalid { .. } => Status::invalid_argument(msg),
        AppendError::TooLarge { .. } => Status::resource_exhausted(msg),
        AppendError::IdempotencyConflict { .. } => Status::already_exists(msg),
        AppendError::UnknownLog(_) => Status::not_found(msg),
        AppendError::Unavailable(_) => Status::unavailable(msg),
    }
}

/// gRPC status of a read error.
pub fn read_status(e: ReadError) -> Status {
    let msg = e.to_string();
    match e {
        ReadError::UnknownLog(_) | ReadError::NotFound(_) => Status::not_found(msg),
        ReadError::Invalid(_) => Status::invalid_argument(msg),
        ReadError::Store(StoreError::Corrupt { .. }) => Status::unavailable(msg),
        ReadError::Store(StoreError::UnknownLog(_)) => Status::not_found(msg),
        _ => Status::internal(msg),
    }
}

/// May `who` append every entry of `r`? (Appends are not access-logged:
/// they are in the log itself.)
fn check_append(who: &Principal, r: &proto::AppendRequest) -> Result<(), Status> {
    let log = log_name(&r.log);
    who.check(Action::Append, log, None)
        .map_err(denied_status)?;
    for (i, e) in r.entries.iter().enumerate() {
        who.check(Action::Append, log, Some(&e.subject))
            .map_err(|d| Status::permission_denied(format!("entry {i}: {d}")))?;
    }
    Ok(())
}

fn denied_status(d: Denied) -> Status {
    match d {
        Denied::Unauthenticated => Status::unauthenticated(d.to_string()),
        Denied::Forbidden(m) => Status::permission_denied(m),
    }
}

fn store_status(e: StoreError) -> Status {
    read_status(ReadError::Store(e))
}

/// gRPC status of an administrative error.
pub fn admin_status(e: AdminError) -> Status {
    match e {
        AdminError::Invalid(m) => Status::invalid_argument(m),
        AdminError::NotFound(m) => Status::not_found(m),
        AdminError::Record(a) => append_status(a),
        AdminError::Read(r) => read_status(r),
        AdminError::Store(s) => store_status(s),
    }
}

fn verify_response(report: crate::verify::Report) -> proto::VerifyResponse {
    proto::VerifyResponse {
        valid: report.is_valid(),
        entries_checked: report.entries_checked,
        findings: report
            .findings
            .into_iter()
            .map(|f| proto::Finding {
                code: f.verdict.code().to_owned(),
                log: f.log,
                seq: f.seq,
                field: f.field,
                detail: f.detail,
            })
            .collect(),
    }
}

fn to_hold(h: Hold) -> proto::Hold {
    proto::Hold {
        id: h.id,
        log: h.log.unwrap_or_default(),
        subject: h.subject.unwrap_or_default(),
        case_id: h.case_id,
        reason: h.reason,
        placed_unix_nanos: h.placed_unix_nanos,
        placed_by: h.placed_by,
        system_seq: h.system_seq,
    }
}

/// Exactly one of subject and actor.
fn target(subject: String, actor: String) -> Result<Target, Status> {
    match (subject.is_empty(), actor.is_empty()) {
        (false, true) => Ok(Target::Subject(subject)),
        (true, false) => Ok(Target::Actor(actor)),
        _ => Err(Status::invalid_argument(
            "give exactly one of subject and actor",
        )),
    }
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn to_input(e: proto::EntryInput) -> EntryInput {
    EntryInput {
        subject: e.subject,
        actor: e.actor,
        kind: e.kind,
        content_type: e.content_type,
        payload: e.payload,
        attributes: e.attributes.into_iter().collect::<BTreeMap<_, _>>(),
        idempotency_key: e.idempotency_key,
    }
}

fn proof_bytes(p: &[Hash]) -> Vec<Vec<u8>> {
    p.iter().map(|h| h.0.to_vec()).collect()
}

fn to_response(o: AppendOutcome) -> proto::AppendResponse {
    proto::AppendResponse {
        receipts: o
            .receipts
            .into_iter()
            .map(|r| proto::Receipt {
                seq: r.seq,
                leaf_hash: r.leaf_hash.0.to_vec(),
                timestamp_unix_nanos: r.timestamp_unix_nanos,
                duplicate: r.duplicate,
                inclusion_proof: proof_bytes(&r.inclusion_proof),
            })
            .collect(),
        checkpoint: o.checkpoint,
    }
}

/// The proto form of a stored entry.
pub fn to_entry(log: &str, s: StoredEntry) -> proto::Entry {
    let (state, reason) = match s.state {
        PayloadState::Present => (proto::PayloadState::Present, String::new()),
        PayloadState::Erased => (proto::PayloadState::Erased, "erased".to_owned()),
        PayloadState::Expired => (proto::PayloadState::Expired, "retention ended".to_owned()),
    };
    let e = s.entry;
    proto::Entry {
        log: log.to_owned(),
        origin: e.origin,
        seq: e.seq,
        timestamp_unix_nanos: e.timestamp_unix_nanos,
        subject: e.subject,
        actor: e.actor,
        kind: e.kind,
        content_type: e.content_type,
        attributes: e.attributes.into_iter().collect(),
        idempotency_key: e.idempotency_key,
        payload_length: e.payload_len,
        payload_digest: e.payload_commitment.0.to_vec(),
        prev_leaf_hash: e.prev_leaf_hash.0.to_vec(),
        leaf_hash: s.leaf_hash.0.to_vec(),
        salt: s.salt.map(|x| x.0.to_vec()).unwrap_or_default(),
        payload: s.payload,
        payload_state: state as i32,
        payload_removed_reason: reason,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

/// Size of the chunks an export is streamed in.
const CHUNK_BYTES: usize = 64 << 10;

/// Streams what is written to it as `ExportChunk`s (blocking side).
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<proto::ExportChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(proto::ExportChunk { data }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AuditLog for Service {
    async fn append(
        &self,
        request: Request<proto::AppendRequest>,
    ) -> Result<Response<proto::AppendResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        check_append(&who, &r)?;
        let entries = r.entries.into_iter().map(to_input).collect();
        let out = self
            .engine
            .append(log_name(&r.log), entries)
            .await
            .map_err(append_status)?;
        Ok(Response::new(to_response(out)))
    }

    type AppendStreamStream = ResponseStream<proto::AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<proto::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let who = self.who(&request)?;
        let mut inbound = request.into_inner();
        let engine = self.engine.clone();
        // Receivers travel in request order; the output side awaits them in
        // that order, so responses keep the order of requests while the
        // engine batches many of them into one group commit.
        let (pending_tx, mut pending_rx) = tokio::sync::mpsc::channel(STREAM_WINDOW);
        let budget = Arc::new(tokio::sync::Semaphore::new(STREAM_WINDOW_BYTES));
        let idle = self.stream_idle;
        tokio::spawn(async move {
            loop {
                // A stream that sends nothing for `idle` is closed: an idle
                // client cannot hold a slot (and its memory) forever.
                let msg = match tokio::time::timeout(idle, inbound.next()).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no request for {} s: stream closed",
                        idle.as_secs_f64()
                    ))),
                };
                let (item, permit) = match msg {
                    Ok(r) if let Err(denied) = check_append(&who, &r) => (Err(denied), None),
                    Ok(r) => {
                        // Wait for room before taking more work: the next
                        // message stays in the transport meanwhile.
                        let bytes: usize = r.entries.iter().map(|e| e.payload.len()).sum();
                        let cost = bytes.clamp(1, STREAM_WINDOW_BYTES) as u32;
                        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
                            break;
                        };
                        let entries = r.entries.into_iter().map(to_input).collect();
                        let item = engine
                            .submit(log_name(&r.log), entries)
                            .map_err(append_status);
                        (item, Some(permit))
                    }
                    Err(status) => (Err(status), None),
                };
                let stop = item.is_err();
                if pending_tx.send((item, permit)).await.is_err() || stop {
                    break;
                }
            }
        });
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some((item, permit)) = pending_rx.recv().await {
                let response = match item {
                    Ok(rx) => match rx.await {
                        Ok(Ok(out)) => Ok(to_response(out)),
                        Ok(Err(e)) => Err(append_status(e)),
                        Err(_) => Err(Status::unavailable("sequencer stopped")),
                    },
                    Err(status) => Err(status),
                };
                drop(permit);
                let stop = response.is_err();
                if out_tx.send(response).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get_entry(
        &self,
        request: Request<proto::GetEntryRequest>,
    ) -> Result<Response<proto::GetEntryResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let log = log_name(&r.log).to_owned();
        self.allow(&who, "GetEntry", Action::Read, &log, None)
            .await?;
        let engine = self.engine.clone();
        let scope = who.clone();
        let read_log = log.clone();
        let result = blocking(move || {
            let found = engine.entry(&read_log, r.seq, r.tree_size);
            // A subject-scoped token learns nothing about entries outside
            // its subjects, not even whether they exist.
            if scope.subject_scoped() {
                let inside = found.as_ref().is_ok_and(|(e, _, _)| {
                    scope
                        .check(Action::Read, &read_log, Some(&e.entry.subject))
                        .is_ok()
                });
                if !inside {
                    return Err(Status::permission_denied(scope.out_of_scope()));
                }
            }
            let (entry, proof, checkpoint) = found.map_err(read_status)?;
            Ok(Response::new(proto::GetEntryResponse {
                entry: Some(to_entry(&read_log, entry)),
                inclusion_proof: proof_bytes(&proof),
                checkpoint,
            }))
        })
        .await;
        let subject = result
            .as_ref()
            .ok()
            .and_then(|r| r.get_ref().entry.as_ref())
            .map(|e| e.subject.clone());
        let detail = format!("seq {}", r.seq);
        self.audited(&who, "GetEntry", &log, subject.as_deref(), &detail, result)
            .await
    }

    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::GetCheckpointResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let log = log_name(&r.log).to_owned();
        self.allow(&who, "GetCheckpoint", Action::Read, &log, None)
            .await?;
        let result = self
            .engine
            .checkpoint(&log)
            .map_err(read_status)
            .and_then(|c| c.ok_or_else(|| Status::not_found("the log is empty: no checkpoint yet")))
            .map(|(_, checkpoint)| Response::new(proto::GetCheckpointResponse { checkpoint }));
        self.audited(&who, "GetCheckpoint", &log, None, "", result)
            .await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::GetConsistencyProofResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let log = log_name(&r.log).to_owned();
        self.allow(&who, "GetConsistencyProof", Action::Read, &log, None)
            .await?;
        let engine = self.engine.clone();
        let read_log = log.clone();
        let (from, to) = (r.from_size, r.to_size);
        let result = blocking(move || {
            let (proof, checkpoint, _) = engine
                .consistency(&read_log, from, to)
                .map_err(read_status)?;
            Ok(Response::new(proto::GetConsistencyProofResponse {
                proof: proof_bytes(&proof),
                checkpoint,
            }))
        })
        .await;
        let detail = format!("sizes {from}..{to}");
        self.audited(&who, "GetConsistencyProof", &log, None, &detail, result)
            .await
    }

    type ExportStream = ResponseStream<proto::ExportChunk>;

    async fn export(
        &self,
        request: Request<proto::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        use crate::bundle::Query;
        let who = self.who(&request)?;
        let r = request.into_inner();
        let log = log_name(&r.log).to_owned();
        let query = match r.selector {
            Some(proto::export_request::Selector::SeqRange(x)) => Query::SeqRange {
                from_seq: x.from_seq,
                to_seq: x.to_seq,
            },
            Some(proto::export_request::Selector::TimeRange(x)) => Query::TimeRange {
                since_unix_nanos: x.since_unix_nanos,
                until_unix_nanos: x.until_unix_nanos,
            },
            Some(proto::export_request::Selector::Subject(subject)) if !subject.is_empty() => {
                Query::Subject { subject }
            }
            _ => {
                return Err(Status::invalid_argument(
                    "say what to export: seq_range, time_range or subject",
                ))
            }
        };
        let (subject, detail) = match &query {
            Query::Subject { subject } => (Some(subject.clone()), format!("subject {subject}")),
            Query::SeqRange { from_seq, to_seq } => (None, format!("seqs {from_seq}..{to_seq}")),
            Query::TimeRange {
                since_unix_nanos,
                until_unix_nanos,
            } => (None, format!("time {since_unix_nanos}..{until_unix_nanos}")),
        };
        self.allow(&who, "Export", Action::Read, &log, subject.as_deref())
            .await?;
        let ok = if subject.is_none() && who.subject_scoped() {
            Err(Status::permission_denied(format!(
                "{}: export by subject",
                who.out_of_scope()
            )))
        } else if self.engine.log_config(&log).is_none() {
            Err(Status::not_found(format!("unknown log {log:?}")))
        } else {
            Ok(())
        };
        self.audited(&who, "Export", &log, subject.as_deref(), &detail, ok)
            .await?;
        let since = (!r.since_checkpoint.is_empty()).then_some(r.since_checkpoint);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let writer = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
            };
            let result = engine.export(&log, query, since.as_deref(), writer);
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(read_status(e)));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let scope = if r.log.is_empty() {
            "*"
        } else {
            r.log.as_str()
        }
        .to_owned();
        self.allow(&who, "Verify", Action::Verify, &scope, None)
            .await?;
        let result = self.verify_inner(r).await;
        self.audited(&who, "Verify", &scope, None, "", result).await
    }

    async fn seal(
        &self,
        request: Request<proto::SealRequest>,
    ) -> Result<Response<proto::SealResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let log = log_name(&r.log).to_owned();
        self.allow(&who, "Seal", Action::Administer, &log, None)
            .await?;
        let result = self.seal_inner(&log).await;
        self.audited(&who, "Seal", &log, None, "", result).await
    }

    async fn list_segments(
        &self,
        request: Request<proto::ListSegmentsRequest>,
    ) -> Result<Response<proto::ListSegmentsResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let log = log_name(&r.log).to_owned();
        self.allow(&who, "ListSegments", Action::Read, &log, None)
            .await?;
        let result = self.list_segments_inner(log.clone()).await;
        self.audited(&who, "ListSegments", &log, None, "", result)
            .await
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::RotateKeyResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        // Scoped as the system log: the key signs every log, so a token
        // scoped to some logs may not rotate it.
        self.allow(&who, "RotateKey", Action::Administer, SYSTEM_LOG, None)
            .await?;
        let by = Self::actor(&who, r.requested_by);
        let engine = self.engine.clone();
        let result = match self.rotator.clone() {
            None => Err(Status::failed_precondition(
                "this server has no key file to rotate",
            )),
            Some(rotator) => {
                blocking(move || {
                    let rotated = rotator.rotate(&engine, &by).map_err(|e| match e {
                        RotateError::Record(a) => admin_status(a),
                        RotateError::Files(f) => Status::internal(f.to_string()),
                    })?;
                    Ok(Response::new(proto::RotateKeyResponse {
                        from_key: rotated.from.to_text(),
                        to_key: rotated.to.to_text(),
                        transition: rotated.transition,
                        system_seq: rotated.system_seq,
                    }))
                })
                .await
            }
        };
        self.audited(&who, "RotateKey", SYSTEM_LOG, None, "", result)
            .await
    }

    async fn place_hold(
        &self,
        request: Request<proto::PlaceHoldRequest>,
    ) -> Result<Response<proto::PlaceHoldResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let (log, subject) = (r.log.clone(), some(r.subject.clone()));
        self.allow(
            &who,
            "PlaceHold",
            Action::Administer,
            &log,
            subject.as_deref(),
        )
        .await?;
        let by = Self::actor(&who, r.requested_by.clone());
        let engine = self.engine.clone();
        let result = if r.whole_log != r.subject.is_empty() {
            Err(Status::invalid_argument(
                "give either a subject or whole_log, not both or neither",
            ))
        } else {
            blocking(move || {
                let hold = engine
                    .place_hold(
                        some(r.log).as_deref(),
                        some(r.subject).as_deref(),
                        &r.case_id,
                        &r.reason,
                        &by,
                    )
                    .map_err(admin_status)?;
                Ok(Response::new(proto::PlaceHoldResponse {
                    hold: Some(to_hold(hold)),
                }))
            })
            .await
        };
        self.audited(&who, "PlaceHold", &log, subject.as_deref(), "", result)
            .await
    }

    async fn release_hold(
        &self,
        request: Request<proto::ReleaseHoldRequest>,
    ) -> Result<Response<proto::ReleaseHoldResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        self.allow(&who, "ReleaseHold", Action::Administer, "", None)
            .await?;
        let by = Self::actor(&who, r.requested_by.clone());
        let detail = format!("hold {}", r.id);
        let engine = self.engine.clone();
        let result = blocking(move || {
            let hold = engine
                .release_hold(&r.id, &r.reason, &by)
                .map_err(admin_status)?;
            Ok(Response::new(proto::ReleaseHoldResponse {
                hold: Some(to_hold(hold)),
            }))
        })
        .await;
        self.audited(&who, "ReleaseHold", "", None, &detail, result)
            .await
    }

    async fn list_holds(
        &self,
        request: Request<proto::ListHoldsRequest>,
    ) -> Result<Response<proto::ListHoldsResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        // Holds name cases and subjects: auditors and admins only.
        self.allow(&who, "ListHolds", Action::Verify, &r.log, None)
            .await?;
        let result = Ok(Response::new(proto::ListHoldsResponse {
            holds: self
                .engine
                .holds(some(r.log.clone()).as_deref())
                .into_iter()
                .map(to_hold)
                .collect(),
        }));
        self.audited(&who, "ListHolds", &r.log, None, "", result)
            .await
    }

    async fn erase(
        &self,
        request: Request<proto::EraseRequest>,
    ) -> Result<Response<proto::EraseResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let subject = some(r.subject.clone());
        self.allow(
            &who,
            "Erase",
            Action::Administer,
            &r.log,
            subject.as_deref(),
        )
        .await?;
        let detail = if r.actor.is_empty() {
            String::new()
        } else {
            format!("actor {}", r.actor)
        };
        let log = r.log.clone();
        let by = Self::actor(&who, r.requested_by.clone());
        let engine = self.engine.clone();
        let result = match target(r.subject, r.actor) {
            Err(e) => Err(e),
            Ok(target) => {
                blocking(move || {
                    let answers = engine
                        .erase(some(r.log).as_deref(), &target, &by)
                        .map_err(admin_status)?;
                    Ok(Response::new(proto::EraseResponse {
                        logs: answers
                            .into_iter()
                            .map(|a| proto::LogErasure {
                                log: a.log,
                                matched: a.matched,
                                erased: a.erased,
                                already_removed: a.already_removed,
                                refused: a.refused,
                                refused_reason: a.refused_reason,
                                bytes_reclaimed: a.bytes,
                            })
                            .collect(),
                    }))
                })
                .await
            }
        };
        self.audited(&who, "Erase", &log, subject.as_deref(), &detail, result)
            .await
    }

    async fn apply_retention(
        &self,
        request: Request<proto::ApplyRetentionRequest>,
    ) -> Result<Response<proto::ApplyRetentionResponse>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        self.allow(&who, "ApplyRetention", Action::Administer, "", None)
            .await?;
        let by = Self::actor(&who, r.requested_by.clone());
        let detail = if r.dry_run { "dry run" } else { "" };
        let engine = self.engine.clone();
        let result = blocking(move || {
            let out = engine
                .apply_retention(engine.now(), r.dry_run, &by)
                .map_err(admin_status)?;
            Ok(Response::new(proto::ApplyRetentionResponse {
                logs: out
                    .into_iter()
                    .map(|e| proto::LogExpiry {
                        log: e.log,
                        segments: e.segments,
                        entries: e.entries,
                        bytes_reclaimed: e.bytes,
                        held: e.held,
                    })
                    .collect(),
            }))
        })
        .await;
        self.audited(&who, "ApplyRetention", "", None, detail, result)
            .await
    }

    type FindEntriesStream =
        Pin<Box<dyn Stream<Item = Result<proto::FindEntriesResponse, Status>> + Send>>;

    async fn find_entries(
        &self,
        request: Request<proto::FindEntriesRequest>,
    ) -> Result<Response<Self::FindEntriesStream>, Status> {
        let who = self.who(&request)?;
        let r = request.into_inner();
        let subject = some(r.subject.clone());
        let detail = if r.actor.is_empty() {
            String::new()
        } else {
            format!("actor {}", r.actor)
        };
        let scope = if r.log.is_empty() {
            "*"
        } else {
            r.log.as_str()
        }
        .to_owned();
        let mut ok = target(r.subject, r.actor);
        let logs: Vec<String> = match some(r.log) {
            Some(l) => {
                self.allow(&who, "FindEntries", Action::Read, &l, subject.as_deref())
                    .await?;
                if self.engine.log_config(&l).is_none() {
                    ok = Err(Status::not_found(format!("unknown log {l:?}")));
                }
                vec![l]
            }
            None if !who.may(Action::Read) => {
                self.allow(&who, "FindEntries", Action::Read, "*", None)
                    .await?;
                Vec::new()
            }
            // Every log this token may read (never the server's own).
            None => self
                .engine
                .logs()
                .into_iter()
                .map(|c| c.name.clone())
                .filter(|n| !n.starts_with('_'))
                .filter(|n| who.check(Action::Read, n, subject.as_deref()).is_ok())
                .collect(),
        };
        if subject.is_none() && who.subject_scoped() {
            ok = Err(Status::permission_denied(format!(
                "{}: find by subject",
                who.out_of_scope()
            )));
        }
        let target = self
            .audited(&who, "FindEntries", &scope, subject.as_deref(), &detail, ok)
            .await?;
        let engine = self.engine.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            for log in logs {
                let store = engine.store();
                let seqs = match &target {
                    Target::Subject(s) => store.seqs_by_subject(&log, s, 0, usize::MAX),
                    Target::Actor(a) => store.seqs_by_actor(&log, a, 0, usize::MAX),
                };
                let seqs = match seqs {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(store_status(e)));
                        return;
                    }
                };
                for seq in seqs {
                    let item = match store.entry(&log, seq) {
                        Ok(Some(e)) => Ok(proto::FindEntriesResponse {
                            entry: Some(to_entry(&log, e)),
                        }),
                        Ok(None) => continue,
                        Err(e) => Err(store_status(e)),
                    };
                    let stop = item.is_err();
                    if tx.blocking_send(item).is_err() || stop {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Service {
    async fn verify_inner(
        &self,
        r: proto::VerifyRequest,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let log = r.log.clone();
        let run = self.verify_run(r).await;
        crate::metrics::global().verified(run.as_ref().ok().map(|r| r.failures().count()));
        match &run {
            Ok(report) => match report.failures().next() {
                None => {
                    tracing::info!(log = %log, entries = report.entries_checked, "verify: valid")
                }
                Some(first) => {
                    let n = report.failures().count();
                    tracing::warn!(
                        log = %log,
                        entries = report.entries_checked,
                        failures = n,
                        first = first.verdict.code(),
                        "verify: INVALID, {n} problem(s)"
                    );
                }
            },
            Err(e) => tracing::warn!(log = %log, error = %e.message(), "verify could not run"),
        }
        run.map(|report| Response::new(verify_response(report)))
    }

    async fn verify_run(&self, r: proto::VerifyRequest) -> Result<crate::verify::Report, Status> {
        let keys = self.engine.signing_history();
        if !r.log.is_empty() && self.engine.log_config(&r.log).is_none() {
            return Err(Status::not_found(format!("unknown log {:?}", r.log)));
        }
        let dir = match (self.data_dir.clone(), self.store_url.clone()) {
            (Some(dir), _) => dir,
            (None, Some(url)) => {
                return blocking(move || {
                    let only = Some(r.log).filter(|l| !l.is_empty());
                    let report =
                        crate::verify::postgres::verify_postgres_logs(&url, &keys, only.as_deref())
                            .map_err(|e| Status::unavailable(e.to_string()));
                    report
                })
                .await;
            }
            (None, None) => return Err(Status::unimplemented("Verify needs a store to read")),
        };
        blocking(move || {
            let internal = |e: std::io::Error| Status::internal(e.to_string());
            let report = if r.log.is_empty() {
                crate::verify::store::verify_data_dir(&dir, &keys).map_err(internal)?
            } else {
                let mut report = crate::verify::Report::default();
                let trust = crate::verify::store::follow_transitions(&dir, &keys, &mut report)
                    .map_err(internal)?;
                crate::verify::store::verify_log_dir(
                    &dir.join("logs").join(&r.log),
                    &r.log,
                    &trust.keys,
                    &mut report,
                )
                .map_err(internal)?;
                report
            };
            Ok(report)
        })
        .await
    }

    async fn seal_inner(&self, log: &str) -> Result<Response<proto::SealResponse>, Status> {
        let rx = self
            .engine
            .submit_seal(log, SealReason::Request)
            .map_err(append_status)?;
        let sealed = rx
            .await
            .map_err(|_| Status::unavailable("sequencer stopped"))?
            .map_err(append_status)?
            .ok_or_else(|| Status::internal("nothing was sealed"))?;
        Ok(Response::new(proto::SealResponse {
            segment: Some(proto::Segment {
                index: sealed.seal.segment,
                first_seq: sealed.seal.first_seq,
                end_seq: sealed.seal.end_seq,
                sealed: true,
                seal: sealed.signed,
            }),
        }))
    }

    async fn list_segments_inner(
        &self,
        log: String,
    ) -> Result<Response<proto::ListSegmentsResponse>, Status> {
        let engine = self.engine.clone();
        blocking(move || {
            let log = log.as_str();
            if engine.log_config(log).is_none() {
                return Err(Status::not_found(format!("unknown log {log:?}")));
            }
            let segments = engine.store().segments(log).map_err(store_status)?;
            Ok(Response::new(proto::ListSegmentsResponse {
                segments: segments
                    .into_iter()
                    .map(|s| proto::Segment {
                        index: s.index,
                        first_seq: s.first_seq,
                        end_seq: s.end_seq,
                        sealed: s.seal.is_some(),
                        seal: s.seal.unwrap_or_default(),
                    })
                    .collect(),
            }))
        })
        .await
    }
}
