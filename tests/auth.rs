//! Access control over real gRPC: a table of (token, RPC, log, subject) and
//! the code each must get, the access log written for every read path with
//! the right token name, and the refusal to serve open on a public address.

mod common;

use auditlog::auth::digest;
use auditlog::proto::audit_log_client::AuditLogClient;
use auditlog::proto::export_request::Selector;
use auditlog::proto::{
    AppendRequest, EntryInput, EraseRequest, ExportRequest, FindEntriesRequest,
    GetCheckpointRequest, GetConsistencyProofRequest, GetEntryRequest, ListHoldsRequest,
    ListSegmentsRequest, PlaceHoldRequest, RotateKeyRequest, SealRequest, SeqRange, VerifyRequest,
};
use common::server::start;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn config() -> String {
    let token = |name: &str, role: &str, extra: &str| {
        format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{extra}\n",
            hex::encode(digest(&format!("secret-{name}")))
        )
    };
    [
        "[[log]]\nname = \"orders\"\norigin = \"audit.example.com/orders\"\n".to_string(),
        "[[log]]\nname = \"chats\"\norigin = \"audit.example.com/chats\"\n".to_string(),
        token("backend", "writer", "logs = [\"orders\", \"chats\"]"),
        token(
            "order-writer",
            "writer",
            "logs = [\"orders\"]\nsubjects = [\"order:\"]",
        ),
        token(
            "support",
            "reader",
            "logs = [\"orders\"]\nsubjects = [\"order:\"]",
        ),
        token("auditor", "auditor", ""),
        token("ops", "admin", ""),
    ]
    .join("\n")
}

fn with<T>(token: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer secret-{t}").parse().unwrap(),
        );
    }
    r
}

fn entry(subject: &str) -> EntryInput {
    EntryInput {
        subject: subject.into(),
        actor: "buyer:1".into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        payload: b"p".to_vec(),
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    GetEntry(u64),
    GetCheckpoint,
    Consistency,
    ExportSubject,
    ExportRange,
    Find,
    Segments,
    Verify,
    Seal,
    Hold,
    Holds,
    Erase,
    RotateKey,
}

/// The code a streaming call ends with (reading it to the end).
async fn drain<T>(r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> Code {
    match r {
        Err(s) => s.code(),
        Ok(stream) => {
            let mut s = stream.into_inner();
            loop {
                match s.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break Code::Ok,
                    Err(e) => break e.code(),
                }
            }
        }
    }
}

async fn call(
    c: &mut AuditLogClient<Channel>,
    token: Option<&str>,
    rpc: Rpc,
    log: &str,
    subject: &str,
) -> Code {
    let log = log.to_string();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    match rpc {
        Rpc::Append => code(
            c.append(with(
                token,
                AppendRequest {
                    log,
                    entries: vec![entry(subject)],
                },
            ))
            .await
            .map(|_| ()),
        ),
        Rpc::GetEntry(seq) => code(
            c.get_entry(with(
                token,
                GetEntryRequest {
                    log,
                    seq,
                    tree_size: 0,
                },
            ))
            .await
            .map(|_| ()),
        ),
        Rpc::GetCheckpoint => code(
            c.get_checkpoint(with(token, GetCheckpointRequest { log }))
                .await
                .map(|_| ()),
        ),
        Rpc::Consistency => code(
            c.get_consistency_proof(with(
                token,
                GetConsistencyProofRequest {
                    log,
                    from_size: 1,
                    to_size: 2,
                },
            ))
            .await
            .map(|_| ()),
        ),
        Rpc::ExportSubject | Rpc::ExportRange => {
            let selector = match rpc {
                Rpc::ExportSubject => Selector::Subject(subject.into()),
                _ => Selector::SeqRange(SeqRange {
                    from_seq: 0,
                    to_seq: 1,
                }),
            };
            let r = c
                .export(with(
                    token,
                    ExportRequest {
                        log,
                        selector: Some(selector),
                        since_checkpoint: String::new(),
                    },
                ))
                .await;
            drain(r).await
        }
        Rpc::Find => {
            drain(
                c.find_entries(with(
                    token,
                    FindEntriesRequest {
                        log,
                        subject: subject.into(),
                        actor: String::new(),
                    },
                ))
                .await,
            )
            .await
        }
        Rpc::Segments => code(
            c.list_segments(with(token, ListSegmentsRequest { log }))
                .await
                .map(|_| ()),
        ),
        Rpc::Verify => code(
            c.verify(with(token, VerifyRequest { log }))
                .await
                .map(|_| ()),
        ),
        Rpc::Seal => code(c.seal(with(token, SealRequest { log })).await.map(|_| ())),
        Rpc::Hold => code(
            c.place_hold(with(
                token,
                PlaceHoldRequest {
                    log,
                    subject: subject.into(),
                    whole_log: false,
                    case_id: "C-1".into(),
                    reason: "test".into(),
                    requested_by: String::new(),
                },
            ))
            .await
            .map(|_| ()),
        ),
        Rpc::Holds => code(
            c.list_holds(with(token, ListHoldsRequest { log }))
                .await
                .map(|_| ()),
        ),
        Rpc::Erase => code(
            c.erase(with(
                token,
                EraseRequest {
                    log,
                    subject: subject.into(),
                    actor: String::new(),
                    requested_by: String::new(),
                },
            ))
            .await
            .map(|_| ()),
        ),
        Rpc::RotateKey => code(
            c.rotate_key(with(token, RotateKeyRequest::default()))
                .await
                .map(|_| ()),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_and_scope_gets_the_right_code() {
    let server = start(Some(&config()));
    let mut c = server.client().await;
    // orders: seq 0 order:1, seq 1 user:9; chats: seq 0 chat:1.
    for (log, subject) in [
        ("orders", "order:1"),
        ("orders", "user:9"),
        ("chats", "chat:1"),
    ] {
        assert_eq!(
            call(&mut c, Some("backend"), Rpc::Append, log, subject).await,
            Code::Ok
        );
    }
    use Code::{InvalidArgument, Ok, PermissionDenied as Denied, Unauthenticated};
    use Rpc::*;
    let table: &[(Option<&str>, Rpc, &str, &str, Code)] = &[
        // No token, or a wrong one.
        (None, GetCheckpoint, "orders", "", Unauthenticated),
        (Some("nobody"), GetCheckpoint, "orders", "", Unauthenticated),
        (None, Append, "orders", "order:2", Unauthenticated),
        // Writers append within their logs and subject prefixes, nothing else.
        (Some("order-writer"), Append, "orders", "order:2", Ok),
        (Some("order-writer"), Append, "orders", "user:2", Denied),
        (Some("order-writer"), Append, "chats", "order:2", Denied),
        (Some("backend"), GetEntry(0), "orders", "", Denied),
        (Some("backend"), GetCheckpoint, "orders", "", Denied),
        (Some("backend"), Find, "", "order:1", Denied),
        (Some("backend"), Seal, "orders", "", Denied),
        // A subject-scoped reader: its subjects, in its logs.
        (Some("support"), GetEntry(0), "orders", "", Ok),
        (Some("support"), GetEntry(1), "orders", "", Denied),
        // Out of range answers exactly as out of scope: no existence hint.
        (Some("support"), GetEntry(999), "orders", "", Denied),
        (Some("support"), GetEntry(0), "chats", "", Denied),
        (Some("support"), GetCheckpoint, "orders", "", Ok),
        (Some("support"), Consistency, "orders", "", Ok),
        (Some("support"), Segments, "orders", "", Ok),
        (Some("support"), ExportSubject, "orders", "order:1", Ok),
        (Some("support"), ExportSubject, "orders", "user:9", Denied),
        (Some("support"), ExportRange, "orders", "", Denied),
        (Some("support"), Find, "", "order:1", Ok),
        (Some("support"), Find, "orders", "user:9", Denied),
        (Some("support"), GetCheckpoint, "_access", "", Denied),
        (Some("support"), GetEntry(0), "_system", "", Denied),
        (Some("support"), Verify, "", "", Denied),
        (Some("support"), Holds, "", "", Denied),
        (Some("support"), Append, "orders", "order:3", Denied),
        // Auditors read, export and verify everything; administer nothing.
        (Some("auditor"), GetEntry(0), "chats", "", Ok),
        (Some("auditor"), GetEntry(1), "orders", "", Ok),
        (Some("auditor"), GetEntry(0), "_access", "", Ok),
        (Some("auditor"), ExportRange, "orders", "", Ok),
        (Some("auditor"), Find, "", "user:9", Ok),
        (Some("auditor"), Verify, "", "", Ok),
        (Some("auditor"), Holds, "", "", Ok),
        (Some("auditor"), Seal, "orders", "", Denied),
        (Some("auditor"), Hold, "orders", "order:1", Denied),
        (Some("auditor"), Erase, "chats", "chat:1", Denied),
        (Some("auditor"), Append, "orders", "order:4", Denied),
        // Admins administer (and read); they do not append.
        (Some("ops"), Hold, "orders", "order:1", Ok),
        (Some("ops"), Holds, "", "", Ok),
        (Some("ops"), Seal, "chats", "", Ok),
        (Some("ops"), Erase, "chats", "chat:1", Ok),
        (Some("ops"), Erase, "_access", "x", InvalidArgument),
        (Some("ops"), GetEntry(0), "_system", "", Ok),
        (Some("ops"), Append, "orders", "order:5", Denied),
        // Only admins rotate the signing key (last: it changes the key).
        (Some("auditor"), RotateKey, "", "", Denied),
        (Some("support"), RotateKey, "", "", Denied),
        (Some("backend"), RotateKey, "", "", Denied),
        (None, RotateKey, "", "", Unauthenticated),
        (Some("ops"), RotateKey, "", "", Ok),
    ];
    let mut failures = Vec::new();
    for (token, rpc, log, subject, want) in table {
        let got = call(&mut c, *token, *rpc, log, subject).await;
        if got != *want {
            failures.push(format!(
                "{token:?} {rpc:?} log={log} subject={subject}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_is_in_the_access_log_with_its_token() {
    let server = start(Some(&config()));
    let mut c = server.client().await;
    call(&mut c, Some("backend"), Rpc::Append, "orders", "order:1").await;
    call(&mut c, Some("backend"), Rpc::Append, "orders", "order:2").await;
    let reads: &[(&str, Rpc, &str, &str, &str)] = &[
        ("support", Rpc::GetEntry(0), "orders", "", "access.GetEntry"),
        ("support", Rpc::GetEntry(1), "chats", "", "access.GetEntry"),
        (
            "support",
            Rpc::GetCheckpoint,
            "orders",
            "",
            "access.GetCheckpoint",
        ),
        (
            "support",
            Rpc::Consistency,
            "orders",
            "",
            "access.GetConsistencyProof",
        ),
        (
            "support",
            Rpc::ExportSubject,
            "orders",
            "order:1",
            "access.Export",
        ),
        ("support", Rpc::Find, "", "order:2", "access.FindEntries"),
        (
            "support",
            Rpc::Segments,
            "orders",
            "",
            "access.ListSegments",
        ),
        ("auditor", Rpc::Verify, "", "", "access.Verify"),
        ("auditor", Rpc::Holds, "", "", "access.ListHolds"),
        ("ops", Rpc::Seal, "orders", "", "access.Seal"),
        ("ops", Rpc::Hold, "orders", "order:1", "access.PlaceHold"),
        ("ops", Rpc::Erase, "orders", "order:2", "access.Erase"),
    ];
    for (token, rpc, log, subject, _) in reads {
        call(&mut c, Some(token), *rpc, log, subject).await;
    }
    // Read the access log back as the auditor: one entry per call above,
    // in order, naming the token, then the auditor's own reads of it.
    let mut got = Vec::new();
    for seq in 0.. {
        let r = c
            .get_entry(with(
                Some("auditor"),
                GetEntryRequest {
                    log: "_access".into(),
                    seq,
                    tree_size: 0,
                },
            ))
            .await;
        let Ok(r) = r else { break };
        let e = r.into_inner().entry.unwrap();
        got.push((e.actor, e.kind, e.payload));
        if got.len() > 40 {
            break;
        }
    }
    for (i, (token, _, _, _, kind)) in reads.iter().enumerate() {
        assert_eq!(
            (got[i].0.as_str(), got[i].1.as_str()),
            (format!("token:{token}").as_str(), *kind),
            "access entry {i}"
        );
    }
    // The denied read is recorded with its result.
    let denied: serde_json::Value = serde_json::from_slice(&got[1].2).unwrap();
    assert_eq!(denied["result"], "PermissionDenied");
    assert_eq!(denied["token"], "support");
    // Reading the access log is itself recorded.
    let reads_of_access = got[reads.len()..]
        .iter()
        .filter(|(a, k, _)| a == "token:auditor" && k == "access.GetEntry")
        .count();
    assert!(reads_of_access >= 1, "{got:?}");
    server.stop();
}

#[test]
fn an_open_server_refuses_a_public_address() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication"), "{err}");
}

#[test]
fn token_create_prints_a_secret_that_the_printed_block_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args([
            "token",
            "create",
            "--name",
            "support",
            "--role",
            "reader",
            "--log",
            "orders",
            "--subject-prefix",
            "order:",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let block = &text[text.find("[[token]]").unwrap()..];
    assert!(!block.contains(&secret), "the config holds only the digest");
    let cfg = format!("[[log]]\nname = \"orders\"\norigin = \"x/orders\"\n{block}");
    let c = auditlog::config::FileConfig::parse(&cfg)
        .unwrap()
        .resolve()
        .unwrap();
    let tokens = auditlog::auth::Tokens::new(c.tokens);
    let p = tokens
        .authenticate(Some(&format!("Bearer {secret}")))
        .unwrap();
    assert_eq!(
        (p.name.as_str(), p.role),
        ("support", auditlog::auth::Role::Reader)
    );
    assert_eq!(p.subjects, Some(vec!["order:".to_string()]));
}

/// A CA, a server certificate for localhost, and a client certificate, as
/// PEM files in `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client.example".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    })
}

async fn tls_client(
    port: &str,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<AuditLogClient<Channel>, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(AuditLogClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    let [ca, cert, key, client_cert, client_key] = certificates(certs.path());
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    // TLS: a client trusting the CA gets in (and still needs its token); a
    // plaintext client does not.
    let server = common::server::start_with(
        tempfile::tempdir().unwrap(),
        Some(&config()),
        &[],
        &["--tls-cert", &arg(&cert), "--tls-key", &arg(&key)],
    );
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let mut c = tls_client(&port, &ca, None).await.unwrap();
    assert_eq!(
        call(&mut c, Some("backend"), Rpc::Append, "orders", "order:1").await,
        Code::Ok
    );
    assert_eq!(
        call(&mut c, None, Rpc::GetCheckpoint, "orders", "").await,
        Code::Unauthenticated
    );
    let mut plain = AuditLogClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    assert_ne!(
        call(
            &mut plain,
            Some("auditor"),
            Rpc::GetCheckpoint,
            "orders",
            ""
        )
        .await,
        Code::Ok
    );
    // The CLI trusts the CA given with --ca.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(["checkpoint", "--log", "orders", "--server"])
        .arg(format!("https://localhost:{port}"))
        .args(["--ca", &arg(&ca), "--token", "secret-auditor"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("audit.example.com/orders\n"));
    server.stop();

    // Mutual TLS: without a client certificate from the CA, no call
    // succeeds; with one, calls go through.
    let server = common::server::start_with(
        tempfile::tempdir().unwrap(),
        Some(&config()),
        &[],
        &[
            "--tls-cert",
            &arg(&cert),
            "--tls-key",
            &arg(&key),
            "--tls-client-ca",
            &arg(&ca),
        ],
    );
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    match tls_client(&port, &ca, None).await {
        Err(_) => {}
        Ok(mut c) => assert_ne!(
            call(&mut c, Some("backend"), Rpc::Append, "orders", "order:1").await,
            Code::Ok
        ),
    }
    let mut c = tls_client(&port, &ca, Some((&client_cert, &client_key)))
        .await
        .unwrap();
    assert_eq!(
        call(&mut c, Some("backend"), Rpc::Append, "orders", "order:1").await,
        Code::Ok
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_append_stream_is_closed_with_deadline_exceeded() {
    let server = start(Some("stream_idle_timeout = \"1s\"\n"));
    let mut c = server.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AppendRequest {
        log: String::new(),
        entries: vec![entry("order:1")],
    })
    .await
    .unwrap();
    let mut responses = c
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.receipts.len(), 1);
    // Say nothing more, keep the stream open: the server closes it.
    let started = std::time::Instant::now();
    let end = responses.message().await;
    assert_eq!(end.unwrap_err().code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(tx);
    server.stop();
}
