//! The client examples in `examples/` (TypeScript with @grpc/grpc-js, Python
//! with grpcio) against a real server: each appends an order's prompt and
//! output with idempotency keys, checks its receipts (inclusion, the entry
//! re-encoded from its fields per FORMAT §2.1, the payload commitment),
//! keeps the receipt, and later proves the log consistent with it. And the
//! attack they exist for: a receipt from one history checked against a
//! rewritten one (same key, same origin, other entries) must fail.
//!
//! Needs Node.js with `npm ci --prefix examples/typescript`, and a Python
//! with examples/python/requirements.txt (AUDITLOG_PYTHON names it; default
//! examples/python/.venv/bin/python, then python3). Skipped with a message
//! when missing, unless AUDITLOG_REQUIRE_EXAMPLES=1 (set by .ci/run, which
//! installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use auditlog::core::checkpoint::Checkpoint;
use auditlog::proto::{AppendRequest, EntryInput, GetEntryRequest};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// (program, args before the example's own) for each example, or None.
fn clients() -> Option<Vec<(&'static str, Vec<String>)>> {
    let ts = examples().join("typescript");
    let python = std::env::var("AUDITLOG_PYTHON").unwrap_or_else(|_| {
        let venv = examples().join("python/.venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let has_python = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, blake3, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !ts.join("node_modules/@grpc/grpc-js").exists() {
        Some("npm ci --prefix examples/typescript")
    } else if !has_python {
        Some("a Python with examples/python/requirements.txt (AUDITLOG_PYTHON)")
    } else {
        None
    };
    if let Some(what) = missing {
        common::skip_unless_required("AUDITLOG_REQUIRE_EXAMPLES", "client examples", what);
        return None;
    }
    // The TypeScript example is compiled with its own pinned tsc.
    let tsc = Command::new("node")
        .arg(ts.join("node_modules/typescript/bin/tsc"))
        .args(["-p"])
        .arg(&ts)
        .output()
        .unwrap();
    assert!(
        tsc.status.success(),
        "tsc: {}",
        String::from_utf8_lossy(&tsc.stdout)
    );
    Some(vec![
        (
            "typescript",
            vec![
                "node".into(),
                ts.join("dist/order_receipts.js").display().to_string(),
            ],
        ),
        (
            "python",
            vec![
                python,
                examples()
                    .join("python/order_receipts.py")
                    .display()
                    .to_string(),
            ],
        ),
    ])
}

/// Runs one step of an example: (success, its JSON line).
fn run(client: &[String], server: &str, key: &Path, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(&client[0])
        .args(&client[1..])
        .args(args)
        .args(["--server", server])
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "{client:?} printed nothing; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{client:?}: not JSON ({e}): {stdout}"));
    (out.status.success(), v)
}

fn filler(n: usize) -> AppendRequest {
    AppendRequest {
        log: "default".into(),
        entries: (0..n)
            .map(|i| EntryInput {
                subject: format!("order:other-{i}"),
                actor: "buyer:1".into(),
                kind: "prompt".into(),
                content_type: "text/plain".into(),
                payload: format!("other activity {i}").into_bytes(),
                ..Default::default()
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_examples_keep_receipts_that_later_prove_consistent() {
    let Some(clients) = clients() else { return };
    let server = common::server::start(None);
    let key = server.data.path().join("keys/verifier.pub");
    let mut c = server.client().await;
    c.append(filler(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, client) in &clients {
        let order = format!("{name}-8812");
        let receipt = dir.path().join(format!("{name}.receipt.json"));
        let receipt_arg = receipt.display().to_string();
        let (ok, out) = run(
            client,
            &server.addr,
            &key,
            &["append", "--order", &order, "--receipt", &receipt_arg],
        );
        assert!(ok && out["ok"] == true, "{name} append: {out}");
        assert_eq!(out["duplicate_on_retry"], true, "{name}: {out}");
        // What the example kept is a real receipt: the checkpoint opens
        // with the server's key, and its seqs are the order's entries.
        let kept: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
        let (cp, _) = Checkpoint::open(
            kept["checkpoint"].as_str().unwrap(),
            &[server.verifier()],
            Some("localhost/default"),
        )
        .unwrap();
        let seqs: Vec<u64> = kept["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["seq"]
                    .as_u64()
                    .or_else(|| r["seq"].as_str()?.parse().ok())
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs.len(), 2);
        for (seq, kind) in seqs.iter().zip(["prompt", "output"]) {
            assert!(*seq < cp.size);
            let e = c
                .get_entry(GetEntryRequest {
                    log: "default".into(),
                    seq: *seq,
                    tree_size: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .entry
                .unwrap();
            assert_eq!(
                (e.subject.as_str(), e.kind.as_str()),
                (format!("order:{order}").as_str(), kind)
            );
            assert_eq!(e.idempotency_key, format!("order-{order}-{kind}"));
        }
        // The log moves on; later, the receipt still proves consistent.
        c.append(filler(5)).await.unwrap();
        let (ok, out) = run(
            client,
            &server.addr,
            &key,
            &["check", "--receipt", &receipt_arg],
        );
        assert!(ok && out["ok"] == true, "{name} check: {out}");
        assert_eq!(out["consistent"], true);
        assert!(
            out["to_size"]
                .to_string()
                .trim_matches('"')
                .parse::<u64>()
                .unwrap()
                > cp.size
        );
    }
}

/// A server that rewrote history (same key, same origin, other entries)
/// cannot satisfy a receipt from the first history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_from_another_history_fails_the_check() {
    let Some(clients) = clients() else { return };
    let keys = tempfile::tempdir().unwrap();
    let keygen = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(["keygen", "--name", "auditlog", "--out"])
        .arg(keys.path())
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let signer = keys.path().join("signer.key");
    let key = keys.path().join("verifier.pub");
    let start = || {
        common::server::start_with(
            tempfile::tempdir().unwrap(),
            None,
            &[],
            &["--key", signer.to_str().unwrap()],
        )
    };
    let (honest, forked) = (start(), start());
    forked.client().await.append(filler(6)).await.unwrap();
    honest.client().await.append(filler(2)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, client) in &clients {
        let receipt = dir
            .path()
            .join(format!("{name}.json"))
            .display()
            .to_string();
        let order = format!("{name}-1");
        let (ok, out) = run(
            client,
            &honest.addr,
            &key,
            &["append", "--order", &order, "--receipt", &receipt],
        );
        assert!(ok, "{name}: {out}");
        forked.client().await.append(filler(4)).await.unwrap();
        let (ok, out) = run(
            client,
            &forked.addr,
            &key,
            &["check", "--receipt", &receipt],
        );
        assert!(
            !ok && out["ok"] == false,
            "{name} accepted a forked log: {out}"
        );
        let error = out["error"].as_str().unwrap();
        assert!(
            error.contains("history was rewritten") || error.contains("no longer in the log"),
            "{name}: {error}"
        );
        // And the honest server still satisfies it.
        let (ok, out) = run(
            client,
            &honest.addr,
            &key,
            &["check", "--receipt", &receipt],
        );
        assert!(ok, "{name}: {out}");
    }
}
