//! A process killed at every step of a payload removal (expiry here; erasure
//! goes through the same segment rewrite): on restart no entry is half
//! removed, every read works, the store verifies, and running again
//! finishes the job.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use auditlog::store::{PayloadState, Store};
use auditlog::verify::store::verify_data_dir;
use common::server::start_in;
use common::*;

const S: i64 = 1_000_000_000;
const STEPS: [&str; 4] = [
    "rewrite:marker",
    "rewrite:written",
    "rewrite:renamed",
    "rewrite:relocated",
];

const CONFIG: &str = r#"
[[log]]
name = "orders"
origin = "audit.example.com/orders"
retention = "60s"
retention_window = "10s"
"#;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn payload(i: u64) -> String {
    format!("SECRET-{i:03}-{}", "p".repeat(500))
}

fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn log_config() -> auditlog::engine::LogConfig {
    let mut cfg = orders();
    cfg.retention = Some(Duration::from_secs(60));
    cfg.retention_window = Some(Duration::from_secs(10));
    cfg
}

/// (state, payload) of every entry of `orders`, read through a fresh store.
fn read_all(dir: &Path) -> Vec<(PayloadState, Vec<u8>)> {
    let f = open(dir, vec![log_config()], ManualClock::at(real_now()));
    let size = f.engine.checkpoint("orders").unwrap().unwrap().0;
    let all = (0..size)
        .map(|s| {
            let e = f.store.entry("orders", s).unwrap().unwrap();
            (e.state, e.payload)
        })
        .collect();
    f.close();
    all
}

fn apply(dir: &Path, keys: &Path, failpoint: Option<&str>) -> std::process::ExitStatus {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditlog"));
    cmd.args(["retention", "apply", "--data-dir"])
        .arg(dir)
        .arg("--config")
        .arg(keys.join("auditlog.toml"))
        .arg("--key")
        .arg(keys.join("signer.key"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(f) = failpoint {
        cmd.env("AUDITLOG_FAILPOINT", f);
    }
    cmd.status().unwrap()
}

#[test]
fn a_kill_at_any_step_of_a_rewrite_leaves_no_half_removed_entry() {
    // A log whose first window closed an hour ago: its retention (60 s) is
    // long over by the real clock the CLI uses.
    let base = tempfile::tempdir().unwrap();
    let seed = base.path().join("seed");
    let keys = base.path().join("keys");
    auditlog::keys::write_key_pair(&keys, &signer()).unwrap();
    std::fs::write(keys.join("auditlog.toml"), CONFIG).unwrap();
    let start = (real_now() / S - 3600) / 10 * 10 * S;
    let f = open(&seed, vec![log_config()], ManualClock::at(start));
    for i in 0..12 {
        f.engine
            .append_blocking("orders", vec![input(&format!("order:{i}"), &payload(i))])
            .unwrap();
    }
    f.clock.set(start + 15 * S);
    f.engine.close_windows_blocking("orders").unwrap();
    f.close();

    for step in STEPS {
        let dir = base.path().join(step.replace(':', "-"));
        copy_dir(&seed, &dir);
        let status = apply(&dir, &keys, Some(step));
        assert!(!status.success(), "{step}: the failpoint did not fire");

        let after = read_all(&dir);
        assert_eq!(after.len(), 12);
        let expired = after
            .iter()
            .filter(|(s, _)| *s == PayloadState::Expired)
            .count();
        // The segment is rewritten whole or not at all.
        assert!(expired == 0 || expired == 12, "{step}: {expired} expired");
        for (i, (state, p)) in after.iter().enumerate() {
            match state {
                PayloadState::Present => assert_eq!(p, payload(i as u64).as_bytes(), "{step}"),
                _ => assert!(p.is_empty(), "{step}"),
            }
        }
        let report = verify_data_dir(&dir, &[signer().verifier()]).unwrap();
        assert!(report.is_valid(), "{step}: {:?}", report.findings);
        assert!(
            !dir.join("logs/orders").read_dir().unwrap().any(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.ends_with(".rewrite") || n.ends_with(".relocate")
            }),
            "{step}: leftovers cleaned on open"
        );

        // Running again finishes the job.
        assert!(apply(&dir, &keys, None).success(), "{step}");
        let done = read_all(&dir);
        assert!(
            done.iter().all(|(s, _)| *s == PayloadState::Expired),
            "{step}"
        );
        let report = verify_data_dir(&dir, &[signer().verifier()]).unwrap();
        assert!(report.is_valid(), "{step}: {:?}", report.findings);
        let seg = std::fs::read(dir.join("logs/orders/00000000000000000000.seg")).unwrap();
        assert!(
            !seg.windows(7).any(|w| w == b"SECRET-"),
            "{step}: payload bytes remain"
        );
    }
}

const CHATS: &str = r#"
[[log]]
name = "chats"
origin = "audit.example.com/chats"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_at_any_step_of_an_erasure_restarts_whole() {
    use auditlog::proto::{AppendRequest, EntryInput, GetEntryRequest, PayloadState as P};
    let seed = tempfile::tempdir().unwrap();
    let server = start_in(tempfile::tempdir().unwrap(), Some(CHATS), &[]);
    let mut c = server.client().await;
    for i in 0..6u64 {
        c.append(AppendRequest {
            log: "chats".into(),
            entries: vec![EntryInput {
                subject: format!("user:{}", i % 2),
                actor: "user:0".into(),
                kind: "chat.message".into(),
                content_type: "text/plain".into(),
                payload: payload(i).into_bytes(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    }
    copy_dir(server.stop().path(), seed.path());

    for step in STEPS {
        let data = tempfile::tempdir().unwrap();
        copy_dir(seed.path(), data.path());
        let mut server = start_in(data, Some(CHATS), &[("AUDITLOG_FAILPOINT", step)]);
        let (code, _, _) = server.cli(&["erase", "--log", "chats", "--subject", "user:1"]);
        assert_eq!(code, Some(2), "{step}: the server should have died");
        let status = server.child.wait().unwrap();
        assert!(!status.success(), "{step}: {status:?}");

        let server = start_in(server.into_data(), Some(CHATS), &[]);
        let mut c = server.client().await;
        let mut states = Vec::new();
        for seq in 0..6u64 {
            let e = c
                .get_entry(GetEntryRequest {
                    log: "chats".into(),
                    seq,
                    tree_size: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .entry
                .unwrap();
            if e.payload_state == P::Present as i32 {
                assert_eq!(e.payload, payload(seq).as_bytes(), "{step}");
            } else {
                assert!(e.payload.is_empty() && e.salt.is_empty(), "{step}");
            }
            states.push(e.payload_state);
        }
        let erased: Vec<u64> = (0..6)
            .filter(|&s| states[s as usize] == P::Erased as i32)
            .collect();
        assert!(
            erased.is_empty() || erased == vec![1, 3, 5],
            "{step}: half an erasure: {erased:?}"
        );
        // The erasure was recorded before anything was removed.
        let (_, out, _) = server.cli(&["get", "--log", "_system", "--seq", "0"]);
        assert!(out.contains("\"kind\": \"erase\""), "{step}: {out}");
        // Asking again finishes it.
        let (code, out, err) = server.cli(&["erase", "--log", "chats", "--subject", "user:1"]);
        assert_eq!(code, Some(0), "{step}: {err}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            answer["logs"][0]["erased"].as_u64().unwrap()
                + answer["logs"][0]["already_removed"].as_u64().unwrap(),
            3,
            "{step}"
        );
        let data = server.stop();
        let keys = auditlog::keys::load_verifiers(&data.path().join("keys/verifier.pub")).unwrap();
        let report = verify_data_dir(data.path(), &keys).unwrap();
        assert!(report.is_valid(), "{step}: {:?}", report.findings);
    }
}
