//! End to end over real gRPC: `auditlog serve` in a child process on a free
//! port, a tonic client appending, reading, proving, sealing, probing
//! health, sending bad input, and stopping the server with SIGTERM.

mod common;

use common::server::start;

use std::process::{Command, Stdio};

use auditlog::core::checkpoint::Checkpoint;
use auditlog::core::hash::{Blake3, Hash};
use auditlog::core::merkle::{proof_from_bytes, verify_consistency, verify_inclusion};
use auditlog::proto::audit_log_client::AuditLogClient;
use auditlog::proto::{
    AppendRequest, EntryInput, GetCheckpointRequest, GetConsistencyProofRequest, GetEntryRequest,
    ListSegmentsRequest, SealRequest, VerifyRequest,
};
use tonic::Code;

fn entry(subject: &str, kind: &str, payload: &str, key: &str) -> EntryInput {
    EntryInput {
        subject: subject.into(),
        actor: "buyer:42".into(),
        kind: kind.into(),
        content_type: "text/plain".into(),
        payload: payload.as_bytes().to_vec(),
        attributes: [("gig".to_string(), "g-1".to_string())]
            .into_iter()
            .collect(),
        idempotency_key: key.into(),
    }
}

const CONFIG: &str = r#"
[[log]]
name = "orders"
origin = "audit.example.com/orders"
[[log]]
name = "chats"
origin = "audit.example.com/chats"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_prove_seal_and_stop_over_grpc() {
    let server = start(Some(CONFIG));
    let key = server.verifier();
    let mut c = server.client().await;

    let first = c
        .append(AppendRequest {
            log: "orders".into(),
            entries: vec![
                entry("order:8812", "prompt", "Write a haiku", "o-1"),
                entry("order:8812", "output", "Escrow waits", "o-2"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let (cp1, _) = Checkpoint::open(
        &first.checkpoint,
        std::slice::from_ref(&key),
        Some("audit.example.com/orders"),
    )
    .unwrap();
    for r in &first.receipts {
        let proof = proof_from_bytes(&r.inclusion_proof).unwrap();
        verify_inclusion::<Blake3>(
            r.seq,
            cp1.size,
            &Hash::from_slice(&r.leaf_hash).unwrap(),
            &proof,
            &cp1.root,
        )
        .unwrap();
    }
    // A retry is a duplicate with the same receipt.
    let retry = c
        .append(AppendRequest {
            log: "orders".into(),
            entries: vec![entry("order:8812", "prompt", "Write a haiku", "o-1")],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(retry.receipts[0].duplicate);
    assert_eq!(retry.receipts[0].seq, 0);
    // Chats are a separate log.
    c.append(AppendRequest {
        log: "chats".into(),
        entries: vec![entry("conversation:77", "chat.message", "hi", "")],
    })
    .await
    .unwrap();
    for i in 0..5 {
        c.append(AppendRequest {
            log: "orders".into(),
            entries: vec![entry("order:9", "prompt", &format!("p{i}"), "")],
        })
        .await
        .unwrap();
    }
    // The receipt's checkpoint is consistent with the latest.
    let latest = c
        .get_checkpoint(GetCheckpointRequest {
            log: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint;
    let (cp2, _) = Checkpoint::open(
        &latest,
        std::slice::from_ref(&key),
        Some("audit.example.com/orders"),
    )
    .unwrap();
    assert_eq!(cp2.size, 7);
    let cons = c
        .get_consistency_proof(GetConsistencyProofRequest {
            log: "orders".into(),
            from_size: cp1.size,
            to_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    verify_consistency::<Blake3>(
        cp1.size,
        cp2.size,
        &proof_from_bytes(&cons.proof).unwrap(),
        &cp1.root,
        &cp2.root,
    )
    .unwrap();
    // GetEntry carries every field and a proof against a signed checkpoint.
    let got = c
        .get_entry(GetEntryRequest {
            log: "orders".into(),
            seq: 1,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let e = got.entry.unwrap();
    assert_eq!(
        (e.seq, e.kind.as_str(), e.payload.as_slice()),
        (1, "output", &b"Escrow waits"[..])
    );
    assert_eq!(e.attributes.get("gig").map(String::as_str), Some("g-1"));
    assert_eq!(e.salt.len(), 32);
    let (cp, _) = Checkpoint::open(&got.checkpoint, std::slice::from_ref(&key), None).unwrap();
    verify_inclusion::<Blake3>(
        1,
        cp.size,
        &Hash::from_slice(&e.leaf_hash).unwrap(),
        &proof_from_bytes(&got.inclusion_proof).unwrap(),
        &cp.root,
    )
    .unwrap();

    // Seal and list.
    let sealed = c
        .seal(SealRequest {
            log: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(
        (sealed.first_seq, sealed.end_seq, sealed.sealed),
        (0, 7, true)
    );
    let segs = c
        .list_segments(ListSegmentsRequest {
            log: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .segments;
    assert_eq!(segs.len(), 2);
    assert!(segs[0].sealed && !segs[1].sealed);

    // Server-side verification of the whole store.
    let v = c
        .verify(VerifyRequest { log: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "{:?}", v.findings);
    // Eight appended, the seal's record in the system log, and one access
    // record per read before the Verify (whose own record comes after it).
    let access = c
        .get_checkpoint(GetCheckpointRequest {
            log: "_access".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint;
    let access_size = Checkpoint::open(&access, &[server.verifier()], None)
        .unwrap()
        .0
        .size;
    assert_eq!(v.entries_checked, 8 + 1 + (access_size - 1));

    // Health and reflection are there for generic tools.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "auditlog.v1.AuditLog".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let data = server.stop();
    let report = auditlog::verify::store::verify_data_dir(data.path(), &[key]).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_codes_and_appends_nothing() {
    let server = start(None);
    let mut c = server.client().await;
    c.append(AppendRequest {
        log: String::new(),
        entries: vec![entry("order:1", "prompt", "ok", "k")],
    })
    .await
    .unwrap();

    let mut empty_actor = entry("order:1", "prompt", "x", "");
    empty_actor.actor.clear();
    let big = EntryInput {
        payload: vec![0; (1 << 20) + 1],
        ..entry("order:1", "prompt", "", "")
    };
    let mut long_subject = entry("order:1", "prompt", "x", "");
    long_subject.subject = "s".repeat(1000);
    let cases: Vec<(&str, AppendRequest, Code, &str)> = vec![
        (
            "empty actor",
            AppendRequest {
                log: "default".into(),
                entries: vec![entry("order:1", "prompt", "a", ""), empty_actor],
            },
            Code::InvalidArgument,
            "entry 1: field actor",
        ),
        (
            "oversized payload",
            AppendRequest {
                log: "default".into(),
                entries: vec![big],
            },
            Code::ResourceExhausted,
            "payload",
        ),
        (
            "huge metadata",
            AppendRequest {
                log: "default".into(),
                entries: vec![long_subject],
            },
            Code::ResourceExhausted,
            "subject",
        ),
        (
            "no entries",
            AppendRequest {
                log: "default".into(),
                entries: vec![],
            },
            Code::InvalidArgument,
            "at least one entry",
        ),
        (
            "unknown log",
            AppendRequest {
                log: "nope".into(),
                entries: vec![entry("order:1", "prompt", "a", "")],
            },
            Code::NotFound,
            "unknown log",
        ),
        (
            "key reused for other content",
            AppendRequest {
                log: "default".into(),
                entries: vec![entry("order:1", "prompt", "other", "k")],
            },
            Code::AlreadyExists,
            "idempotency key",
        ),
    ];
    for (name, req, code, text) in cases {
        let err = c.append(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(err.message().contains(text), "{name}: {}", err.message());
    }
    // Invalid UTF-8 in a string field is refused by the protocol layer.
    let mut raw = prost::Message::encode_to_vec(&AppendRequest {
        log: "default".into(),
        entries: vec![entry("order:1", "prompt", "a", "")],
    });
    let at = raw.windows(7).position(|w| w == b"order:1").unwrap();
    raw[at] = 0xff;
    assert!(<AppendRequest as prost::Message>::decode(raw.as_slice()).is_err());

    let cp = c
        .get_checkpoint(GetCheckpointRequest { log: String::new() })
        .await
        .unwrap()
        .into_inner()
        .checkpoint;
    let (cp, _) = Checkpoint::open(&cp, &[server.verifier()], None).unwrap();
    assert_eq!(cp.size, 1, "nothing of a refused request was appended");
    assert_eq!(
        c.get_entry(GetEntryRequest {
            log: String::new(),
            seq: 5,
            tree_size: 0
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.get_consistency_proof(GetConsistencyProofRequest {
            log: String::new(),
            from_size: 0,
            to_size: 0
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_verify_offline_with_the_cli() {
    let server = start(Some(CONFIG));
    let mut c = server.client().await;
    let receipt = c
        .append(AppendRequest {
            log: "orders".into(),
            entries: vec![entry("order:8812", "prompt", "Write a haiku", "")],
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..4 {
        c.append(AppendRequest {
            log: "orders".into(),
            entries: vec![
                entry("order:8812", "output", &format!("v{i}"), ""),
                entry("order:1", "prompt", "x", ""),
            ],
        })
        .await
        .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let receipt_file = work.path().join("receipt.checkpoint");
    std::fs::write(&receipt_file, &receipt.checkpoint).unwrap();
    let bundle = work.path().join("order-8812.bundle");
    let key = server.data.path().join("keys/verifier.pub");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_auditlog"))
            .args(args)
            .output()
            .unwrap()
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let url = format!("http://{}", server.addr);

    let out = run(&[
        &os("export"),
        &os("--server"),
        &os(&url),
        &os("--log"),
        &os("orders"),
        &os("--subject"),
        &os("order:8812"),
        &os("--since-checkpoint"),
        receipt_file.as_os_str(),
        &os("--out"),
        bundle.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let verify = |extra: &[&std::ffi::OsStr]| {
        let mut args = vec![
            os("verify").into_boxed_os_str(),
            bundle.clone().into_os_string().into_boxed_os_str(),
            os("--key").into_boxed_os_str(),
            key.clone().into_os_string().into_boxed_os_str(),
        ];
        args.extend(extra.iter().map(|a| a.to_os_string().into_boxed_os_str()));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        run(&refs)
    };
    let ok = verify(&[&os("--since-checkpoint"), receipt_file.as_os_str()]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("VALID:") && stdout.contains("5 entries"),
        "{stdout}"
    );

    // Tamper one payload byte: exit 1 and the exact entry named.
    let text = std::fs::read_to_string(&bundle).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let i = lines.iter().position(|l| l["type"] == "entry").unwrap();
    lines[i]["payload"] = serde_json::Value::String(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"Write a limerick",
    ));
    std::fs::write(
        &bundle,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let bad = verify(&[&os("--json")]);
    assert_eq!(bad.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(report["verdict"], "INVALID");
    let f = &report["findings"][0];
    assert_eq!(
        (f["code"].as_str(), f["seq"].as_u64(), f["field"].as_str()),
        (Some("HASH_MISMATCH"), Some(0), Some("payload"))
    );

    // Usage and I/O errors exit 2.
    let missing = run(&[
        &os("verify"),
        &os("/nonexistent.bundle"),
        &os("--key"),
        key.as_os_str(),
    ]);
    assert_eq!(missing.status.code(), Some(2));

    // The whole store verifies offline after a clean stop.
    let data = server.stop();
    let store = run(&[
        &os("verify"),
        &os("--data-dir"),
        data.path().as_os_str(),
        &os("--key"),
        key.as_os_str(),
    ]);
    assert_eq!(
        store.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&store.stdout)
    );
}

#[test]
fn client_verbs_of_the_cli() {
    let server = start(None);
    let url = format!("http://{}", server.addr);
    let cli = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditlog"))
            .args(args)
            .args(["--server", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let append = [
        "append",
        "--subject",
        "order:1",
        "--actor",
        "buyer:1",
        "--kind",
        "prompt",
        "--attr",
        "gig=g-9",
        "--idempotency-key",
        "k-1",
    ];
    let (code, out, err) = cli(&append, b"from stdin");
    assert_eq!(code, Some(0), "{err}");
    let receipt: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (receipt["seq"].as_u64(), receipt["duplicate"].as_bool()),
        (Some(0), Some(false))
    );
    let (_, out, _) = cli(&append, b"from stdin");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["duplicate"],
        true
    );
    let (code, _, err) = cli(&append, b"different");
    assert_eq!(code, Some(2));
    assert!(err.contains("AlreadyExists"), "{err}");

    let (_, out, _) = cli(&["get", "--seq", "0"], b"");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["payload"]["text"], "from stdin");
    assert_eq!(e["attributes"]["gig"], "g-9");
    assert_eq!(e["leaf_hash"], receipt["leaf_hash"]);

    let (_, cp, _) = cli(&["checkpoint"], b"");
    assert!(
        Checkpoint::open(&cp, &[server.verifier()], Some("localhost/default")).is_ok(),
        "{cp}"
    );
    let (_, sealed, _) = cli(&["seal"], b"");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&sealed).unwrap()["end_seq"],
        1
    );
    let (_, segs, _) = cli(&["segments"], b"");
    assert_eq!(segs.lines().count(), 2);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_append() {
    let server = start(None);
    let key = server.verifier();
    let addr = format!("http://{}", server.addr);
    // Many appends in flight when SIGTERM arrives: each one answered OK
    // must be in the store afterwards, with the same leaf hash.
    let mut tasks = Vec::new();
    for t in 0..32 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = AuditLogClient::connect(addr).await.unwrap();
            let mut acked = Vec::new();
            for i in 0..1000 {
                match c
                    .append(AppendRequest {
                        log: String::new(),
                        entries: vec![entry("order:1", "prompt", &format!("{t}/{i}"), "")],
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner().receipts.remove(0);
                        acked.push((r.seq, r.leaf_hash));
                    }
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let data = server.stop(); // SIGTERM, then waits for a clean exit
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() > 32, "the load ran: {} acks", acked.len());
    let store = auditlog::store::embedded::EmbeddedStore::open(data.path()).unwrap();
    let spec = auditlog::store::LogSpec {
        name: "default".into(),
        origin: "localhost/default".into(),
    };
    use auditlog::store::Store;
    let head = store.open_log(&spec, 0).unwrap();
    assert!(
        store.take_recoveries().is_empty(),
        "a clean stop leaves nothing to cut"
    );
    for (seq, leaf) in &acked {
        assert!(*seq < head.size, "acknowledged seq {seq} missing");
        assert_eq!(
            &store
                .entry("default", *seq)
                .unwrap()
                .unwrap()
                .leaf_hash
                .0
                .to_vec(),
            leaf
        );
    }
    drop(store);
    assert!(
        auditlog::verify::store::verify_data_dir(data.path(), &[key])
            .unwrap()
            .is_valid()
    );
}
