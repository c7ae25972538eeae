//! What an operator sees: `/metrics` scraped over HTTP from a real server
//! (`--metrics-listen`), counters that match what was done, and the log
//! lines (`--log-format json` and text), which never carry payload content.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use auditlog::proto::audit_log_client::AuditLogClient;
use auditlog::proto::{
    AppendRequest, EntryInput, EraseRequest, GetEntryRequest, SealRequest, VerifyRequest,
};

/// A payload that must never show up in a log line.
const SECRET: &str = "SECRET-PAYLOAD-do-not-log-4242";

struct Running {
    child: Child,
    addr: String,
    metrics: Option<String>,
    stderr: std::path::PathBuf,
    _data: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Running {
    serve_with(args, &[])
}

fn serve_with(args: &[&str], env: &[(&str, &str)]) -> Running {
    let data = tempfile::tempdir().unwrap();
    let stderr = data.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path().join("d"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .env_remove("AUDITLOG_LOG_FORMAT")
        .env_remove("AUDITLOG_LOG_LEVEL")
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_owned();
    let metrics = args.contains(&"--metrics-listen").then(|| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("metrics on ")
            .expect(&line)
            .to_owned()
    });
    Running {
        child,
        addr,
        metrics,
        stderr,
        _data: data,
    }
}

impl Running {
    fn stop(&mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        assert!(self.child.wait().unwrap().success());
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

/// GET `path` from `addr` over HTTP/1.1: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The value of the sample `name{labels}` in a scrape.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{scrape}"))
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn entry(actor: &str, payload: &str, key: &str) -> EntryInput {
    EntryInput {
        subject: "order:8812".into(),
        actor: actor.into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        payload: payload.as_bytes().to_vec(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_done_and_json_logs_never_carry_payloads() {
    let mut server = serve(&["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]);
    let metrics = server.metrics.clone().unwrap();
    let mut c = AuditLogClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let append = |entries: Vec<EntryInput>| AppendRequest {
        log: "default".into(),
        entries,
    };
    let mut c2 = c.clone();
    c2.append(append(vec![
        entry("buyer:42", SECRET, "k-1"),
        entry("buyer:42", "abcd", "k-2"),
    ]))
    .await
    .unwrap();
    c.append(append(vec![entry("seller:7", "12345", "k-3")]))
        .await
        .unwrap();
    c.append(append(vec![entry("buyer:erase", "erase me", "k-4")]))
        .await
        .unwrap();
    // A retry: a duplicate, nothing appended.
    let dup = c
        .append(append(vec![entry("seller:7", "12345", "k-3")]))
        .await
        .unwrap()
        .into_inner();
    assert!(dup.receipts[0].duplicate);
    // Refused: an empty subject, and an idempotency key reused for other content.
    let mut bad = entry("buyer:42", "x", "");
    bad.subject.clear();
    assert!(c.append(append(vec![bad])).await.is_err());
    assert!(c
        .append(append(vec![entry("seller:7", "other", "k-3")]))
        .await
        .is_err());
    c.seal(SealRequest {
        log: "default".into(),
    })
    .await
    .unwrap();
    let erased = c
        .erase(EraseRequest {
            log: "default".into(),
            actor: "buyer:erase".into(),
            requested_by: "privacy-desk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.logs[0].erased, 1);
    assert!(
        c.verify(VerifyRequest {
            log: "default".into()
        })
        .await
        .unwrap()
        .into_inner()
        .valid
    );

    let (status, scrape) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    let d = "{log=\"default\"}";
    assert_eq!(sample(&scrape, &format!("auditlog_appends_total{d}")), 4.0);
    assert_eq!(sample(&scrape, &format!("auditlog_entries_total{d}")), 4.0);
    assert_eq!(
        sample(&scrape, &format!("auditlog_duplicates_total{d}")),
        1.0
    );
    let bytes = (SECRET.len() + 4 + 5 + 8) as f64;
    assert_eq!(
        sample(&scrape, &format!("auditlog_payload_bytes_total{d}")),
        bytes
    );
    assert_eq!(
        sample(
            &scrape,
            "auditlog_append_errors_total{log=\"default\",kind=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "auditlog_append_errors_total{log=\"default\",kind=\"idempotency_conflict\"}"
        ),
        1.0
    );
    // Every answered request was timed (4 receipts, 1 conflict found in the
    // sequencer; the empty subject was refused before it was queued).
    assert_eq!(
        sample(
            &scrape,
            &format!("auditlog_append_latency_seconds_count{d}")
        ),
        5.0
    );
    assert_eq!(
        sample(&scrape, &format!("auditlog_batch_entries_sum{d}")),
        4.0
    );
    assert!(sample(&scrape, &format!("auditlog_store_write_seconds_count{d}")) >= 3.0);
    assert!(sample(&scrape, "auditlog_fsync_seconds_count") >= 3.0);
    assert_eq!(
        sample(
            &scrape,
            "auditlog_seals_total{log=\"default\",reason=\"request\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, &format!("auditlog_erased_entries_total{d}")),
        1.0
    );
    assert!(sample(&scrape, &format!("auditlog_erased_bytes_total{d}")) >= 8.0);
    assert_eq!(
        sample(&scrape, "auditlog_verify_runs_total{result=\"valid\"}"),
        1.0
    );
    assert_eq!(sample(&scrape, "auditlog_verification_failures_total"), 0.0);
    assert_eq!(sample(&scrape, &format!("auditlog_tree_size{d}")), 4.0);
    assert_eq!(sample(&scrape, &format!("auditlog_log_refused{d}")), 0.0);
    assert!(sample(&scrape, &format!("auditlog_index_lag_entries{d}")) <= 4.0);
    // Labels are logs, reasons and kinds: never a subject, actor or payload.
    for personal in ["order:8812", "buyer:42", "buyer:erase", SECRET] {
        assert!(!scrape.contains(personal), "{personal} in the metrics");
    }
    assert!(scrape.ends_with("# EOF\n"));
    assert_eq!(http_get(&metrics, "/other").0, 404);

    let logs = server.stop();
    let mut messages = Vec::new();
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        messages.push(v["message"].as_str().unwrap().to_owned());
    }
    let has = |m: &str| messages.iter().any(|x| x.contains(m));
    assert!(has("serving 1 log(s)"), "{logs}");
    assert!(has("metrics at http://"), "{logs}");
    assert!(has("sealed segment 0 of default"), "{logs}");
    assert!(has("erasure: 1 of 1 entries erased"), "{logs}");
    assert!(has("verify: valid"), "{logs}");
    assert!(has("stopped cleanly"), "{logs}");
    for secret in [SECRET, "erase me", "12345"] {
        assert!(
            !logs.contains(secret),
            "payload content in the log:\n{logs}"
        );
    }
}

/// At the most verbose level too: the dependencies' trace events (HTTP/2
/// frames, gRPC calls) are capped at warn, and auditlog's own never carry
/// payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_logs_carry_no_payload_either() {
    let mut server = serve_with(
        &["--log-format", "json"],
        &[("AUDITLOG_LOG_LEVEL", "trace")],
    );
    let mut c = AuditLogClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    c.append(AppendRequest {
        log: "default".into(),
        entries: vec![entry("buyer:42", SECRET, "k-1")],
    })
    .await
    .unwrap();
    c.seal(SealRequest {
        log: "default".into(),
    })
    .await
    .unwrap();
    let logs = server.stop();
    assert!(logs.contains("sealed segment 0 of default"), "{logs}");
    assert!(
        !logs.contains(SECRET),
        "payload content in a trace log:\n{logs}"
    );
    // The secret's bytes in any encoding a frame dump might use.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET);
    for form in [b64.as_str(), &hex::encode(SECRET)] {
        assert!(!logs.contains(form), "payload bytes in a trace log");
    }
    // Other crates' events reach the log at warn at most.
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (level, target) = (v["level"].as_str().unwrap(), v["target"].as_str().unwrap());
        assert!(
            target.starts_with("auditlog") || level == "WARN" || level == "ERROR",
            "{line}"
        );
    }
}

/// Corruption found while serving: the log is refused (`log_refused` 1,
/// appends UNAVAILABLE and counted), and the failure is logged once, not
/// once per refused batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_refused_for_corruption_shows_in_metrics_and_is_logged_once() {
    let mut server = serve(&["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]);
    let metrics = server.metrics.clone().unwrap();
    let mut c = AuditLogClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let append = |key: &str| AppendRequest {
        log: "default".into(),
        entries: vec![entry("buyer:42", "PAYLOAD-TO-DAMAGE", key)],
    };
    c.append(append("k-1")).await.unwrap();
    c.seal(SealRequest {
        log: "default".into(),
    })
    .await
    .unwrap();
    // Damage the sealed segment on disk, under the running server.
    let seg = server
        ._data
        .path()
        .join("d/logs/default/00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(17)
        .position(|w| w == b"PAYLOAD-TO-DAMAGE")
        .unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let read = c
        .get_entry(GetEntryRequest {
            log: "default".into(),
            seq: 0,
            tree_size: 0,
        })
        .await;
    assert!(read.is_err(), "a damaged entry was served");
    for k in ["k-2", "k-3", "k-4"] {
        let e = c.append(append(k)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    }
    let (_, scrape) = http_get(&metrics, "/metrics");
    assert_eq!(
        sample(&scrape, "auditlog_log_refused{log=\"default\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "auditlog_append_errors_total{log=\"default\",kind=\"unavailable\"}"
        ),
        3.0
    );
    let logs = server.stop();
    let failing = logs
        .lines()
        .filter(|l| l.contains("appends failing"))
        .count();
    assert_eq!(failing, 1, "{logs}");
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused: corrupt record"))
        .collect();
    assert_eq!(refused.len(), 1, "{logs}");
    assert!(refused[0].contains("\"level\":\"ERROR\"") && !refused[0].contains("PAYLOAD"));
}

#[test]
fn text_logs_are_plain_lines_off_a_terminal_and_metrics_are_off_by_default() {
    let mut server = serve(&[]);
    assert!(server.metrics.is_none());
    let logs = server.stop();
    assert!(
        logs.contains(" INFO ") && logs.contains("stopped cleanly"),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes off a terminal:\n{logs}"
    );
    assert!(logs.lines().all(|l| !l.starts_with('{')), "{logs}");
}

#[test]
fn a_bad_log_format_or_metrics_address_is_refused() {
    for (args, want) in [
        (&["--log-format", "xml"][..], "log format \"xml\""),
        (&["--metrics-listen", "nowhere"][..], "--metrics-listen"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}
