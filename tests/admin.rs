//! Retention, holds, erasure and access exports end to end: a real server
//! with short policies, driven by the CLI and gRPC, with the background
//! retention job doing the expiry.

mod common;

use std::time::{Duration, Instant};

use auditlog::proto::{AppendRequest, EntryInput, GetEntryRequest, PayloadState};
use common::server::start;

const CONFIG: &str = r#"
retention_check_every = "200ms"

[[log]]
name = "orders"
origin = "audit.example.com/orders"
retention = "2s"
retention_window = "1s"
erasable = false

[[log]]
name = "chats"
origin = "audit.example.com/chats"
"#;

fn entry(subject: &str, actor: &str, content_type: &str, payload: &[u8]) -> EntryInput {
    EntryInput {
        subject: subject.into(),
        actor: actor.into(),
        kind: "chat.message".into(),
        content_type: content_type.into(),
        payload: payload.to_vec(),
        attributes: [("gig".to_string(), "g-1, \"quoted\"".to_string())]
            .into_iter()
            .collect(),
        idempotency_key: String::new(),
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_job_expires_on_time_and_holds_keep_what_they_hold() {
    let server = start(Some(CONFIG));
    let mut c = server.client().await;
    for (subject, text) in [("order:1", "prompt one"), ("order:2", "prompt two")] {
        c.append(AppendRequest {
            log: "orders".into(),
            entries: vec![entry(subject, "buyer:1", "text/plain", text.as_bytes())],
        })
        .await
        .unwrap();
    }
    let (code, out, err) = server.cli(&[
        "hold",
        "place",
        "--log",
        "orders",
        "--subject",
        "order:2",
        "--case",
        "CASE-9",
        "--reason",
        "dispute",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let hold = json(&out);
    assert_eq!(hold["case"], "CASE-9");
    let (_, listed, _) = server.cli(&["hold", "list"]);
    assert_eq!(json(listed.trim())["id"], hold["id"]);

    // Window of 1 s, retention of 2 s, a check every 200 ms: within a few
    // seconds the job expires order:1 and keeps order:2.
    let state = |c: &mut auditlog::proto::audit_log_client::AuditLogClient<_>, seq| {
        let mut c = c.clone();
        async move {
            c.get_entry(GetEntryRequest {
                log: "orders".into(),
                seq,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = state(&mut c, 0).await;
        if e.payload_state == PayloadState::Expired as i32 {
            assert!(e.payload.is_empty() && e.salt.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "order:1 never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = state(&mut c, 1).await;
    assert_eq!(held.payload_state, PayloadState::Present as i32);
    assert_eq!(held.payload, b"prompt two");

    // Released, the next run expires it.
    let id = hold["id"].as_str().unwrap();
    let (code, _, err) = server.cli(&["hold", "release", "--id", id, "--reason", "closed"]);
    assert_eq!(code, Some(0), "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&mut c, 1).await.payload_state != PayloadState::Expired as i32 {
        assert!(Instant::now() < deadline, "order:2 never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, _) = server.cli(&["retention", "apply", "--dry-run"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["entries"], 0);

    // The whole store verifies offline, with EXPIRED reported, not failed.
    let data = server.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(["verify", "--data-dir"])
        .arg(data.path())
        .arg("--key")
        .arg(data.path().join("keys/verifier.pub"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("EXPIRED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_and_access_exports_over_the_cli() {
    let server = start(Some(CONFIG));
    let mut c = server.client().await;
    let png = [0x89u8, b'P', b'N', b'G', 0, 1, 2, 255];
    for (log, subject, actor, ct, payload) in [
        (
            "orders",
            "order:5",
            "user:42",
            "text/plain",
            &b"buy, \"now\"\nplease"[..],
        ),
        ("chats", "chat:7", "user:42", "image/png", &png[..]),
        (
            "chats",
            "chat:7",
            "builder:3",
            "text/markdown; charset=utf-8",
            &b"**ok**"[..],
        ),
        ("chats", "chat:8", "user:43", "text/plain", &b"not mine"[..]),
    ] {
        c.append(AppendRequest {
            log: log.into(),
            entries: vec![entry(subject, actor, ct, payload)],
        })
        .await
        .unwrap();
    }

    // Access request: everything by user:42, across logs, JSON and CSV.
    let dir = tempfile::tempdir().unwrap();
    let jpath = dir.path().join("user-42.json");
    let cpath = dir.path().join("user-42.csv");
    let (code, _, err) = server.cli(&[
        "export",
        "--actor",
        "user:42",
        "--format",
        "json",
        "--out",
        jpath.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = server.cli(&[
        "export",
        "--actor",
        "user:42",
        "--format",
        "csv",
        "--out",
        cpath.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let doc = json(&std::fs::read_to_string(&jpath).unwrap());
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let mut csv = csv::Reader::from_path(&cpath).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<Vec<String>> = csv
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 2);
    // Every field of every entry round-trips, in both formats, against
    // what GetEntry says.
    for (e, row) in entries.iter().zip(&rows) {
        let log = e["log"].as_str().unwrap();
        let seq = e["seq"].as_u64().unwrap();
        let got = c
            .get_entry(GetEntryRequest {
                log: log.into(),
                seq,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap();
        let payload = match e["payload_encoding"].as_str().unwrap() {
            "text" => e["payload"].as_str().unwrap().as_bytes().to_vec(),
            "base64" => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(e["payload"].as_str().unwrap())
                    .unwrap()
            }
            other => panic!("{other}"),
        };
        assert_eq!(payload, got.payload);
        assert_eq!(e["subject"], got.subject);
        assert_eq!(e["actor"], got.actor);
        assert_eq!(e["kind"], got.kind);
        assert_eq!(e["content_type"], got.content_type);
        assert_eq!(e["timestamp_unix_nanos"], got.timestamp_unix_nanos);
        assert_eq!(e["attributes"]["gig"], got.attributes["gig"]);
        assert_eq!(e["leaf_hash"], hex::encode(&got.leaf_hash));
        assert_eq!(e["payload_digest"], hex::encode(&got.payload_digest));
        assert_eq!(e["origin"], got.origin);
        for (i, col) in header.iter().enumerate() {
            let want = match &e[col.as_str()] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(row[i], want, "column {col}");
        }
    }
    let encoding =
        |log: &str| entries.iter().find(|e| e["log"] == log).unwrap()["payload_encoding"].clone();
    assert_eq!(encoding("chats"), "base64");
    assert_eq!(encoding("orders"), "text");

    // Erasure across logs: orders refuses by policy, chats erases.
    let (code, out, err) = server.cli(&["erase", "--actor", "user:42"]);
    assert_eq!(code, Some(0), "{err}");
    let answer = json(&out);
    let by_log = |name: &str| {
        answer["logs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["log"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_log("orders")["refused"], 1);
    assert!(by_log("orders")["refused_reason"]
        .as_str()
        .unwrap()
        .contains("not erasable"));
    assert_eq!(by_log("chats")["erased"], 1);
    let (_, out, _) = server.cli(&["get", "--log", "chats", "--seq", "0"]);
    assert_eq!(json(&out)["payload_state"], "erased");
    let (_, out, _) = server.cli(&["get", "--log", "chats", "--seq", "1"]);
    assert_eq!(json(&out)["payload"]["text"], "**ok**");

    // A hold on a subject refuses its erasure, naming the case.
    let (code, _, err) = server.cli(&[
        "hold",
        "place",
        "--subject",
        "chat:8",
        "--case",
        "C-1",
        "--reason",
        "safety review",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = server.cli(&["erase", "--log", "chats", "--subject", "chat:8"]);
    let answer = json(&out);
    assert_eq!(answer["logs"][0]["refused"], 1);
    assert!(answer["logs"][0]["refused_reason"]
        .as_str()
        .unwrap()
        .contains("C-1"));
    // Bad requests get precise codes.
    let (code, _, err) = server.cli(&["erase", "--log", "nope", "--subject", "x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("NotFound"), "{err}");
    let (code, _, err) = server.cli(&["hold", "release", "--id", "hold-000000000000"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("NotFound"), "{err}");
    server.stop();
}
