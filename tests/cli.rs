//! The command line as a user runs it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

mod common;

fn auditlog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn keygen_writes_a_private_and_a_public_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let out = out_dir.to_str().unwrap();
    let first = auditlog(&["keygen", "--name", "audit.example.com/orders", "--out", out]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let signer = out_dir.join("signer.key");
    let verifier = out_dir.join("verifier.pub");
    assert_eq!(
        std::fs::metadata(&signer).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = auditlog::keys::load_signer(&signer).unwrap();
    assert_eq!(key.name(), "audit.example.com/orders");
    assert_eq!(
        auditlog::keys::load_verifiers(&verifier).unwrap(),
        vec![key.verifier()]
    );
    let stdout = String::from_utf8(first.stdout).unwrap();
    assert!(stdout.contains(&key.verifier().to_text()), "{stdout}");

    let before = std::fs::read(&signer).unwrap();
    let second = auditlog(&["keygen", "--name", "other", "--out", out]);
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(&signer).unwrap(),
        before,
        "the first key is untouched"
    );

    let bad = auditlog(&[
        "keygen",
        "--name",
        "has space",
        "--out",
        dir.path().join("k2").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn serve_refuses_a_bad_config_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("auditlog.toml");
    std::fs::write(
        &cfg,
        "[[log]]\nname = \"orders\"\norigin = \"audit.example.com/orders\"\nretension = \"7y\"\n",
    )
    .unwrap();
    let out = auditlog(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retension") && err.contains("line 4"), "{err}");
}

#[test]
fn serve_refuses_a_signing_key_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let k = auditlog::keys::generate_signer("auditlog").unwrap();
    let (signer, _) = auditlog::keys::write_key_pair(&keys, &k).unwrap();
    std::fs::set_permissions(&signer, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = auditlog(&[
        "serve",
        "--key",
        signer.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
}

/// `auditlog bench` (the load generator whose figures the README quotes)
/// appends what it says it appended, durably and through the real server,
/// and measures its gRPC floor against the same server.
#[test]
fn bench_appends_what_it_reports_and_measures_the_grpc_floor() {
    let server = common::server::start(None);
    let url = format!("http://{}", server.addr);
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .current_dir(cwd.path())
        .args([
            "bench",
            "--server",
            &url,
            "--concurrency",
            "4",
            "--batch",
            "3",
        ])
        .args(["--seconds", "0.5", "--payload-bytes", "100"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number_before = |line: &str, unit: &str| -> f64 {
        let head = &line[..line
            .find(unit)
            .unwrap_or_else(|| panic!("{unit} in {line}"))];
        head.trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let load = text
        .lines()
        .find(|l| l.starts_with("unary x4 batch 3"))
        .expect(&text);
    assert!(load.contains("client on 1 thread(s)"), "{load}");
    let rate = number_before(load, " entries/s");
    assert!(rate > 0.0, "{load}");
    let floor = text
        .lines()
        .find(|l| l.starts_with("gRPC floor, x4"))
        .expect(&text);
    assert!(number_before(floor, " calls/s") > 0.0, "{floor}");
    assert!(
        text.lines().any(|l| l.starts_with("raw file append")),
        "{text}"
    );
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "the raw baseline's file is removed"
    );
    // What it counted is in the log: about rate x seconds entries, in
    // whole requests of 3 (requests still in flight when it stopped were
    // appended too, but not counted).
    let cp = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .args(["checkpoint", "--server", &url])
        .output()
        .unwrap();
    let cp = String::from_utf8_lossy(&cp.stdout).into_owned();
    let size: u64 = cp.lines().nth(1).expect(&cp).parse().expect(&cp);
    assert_eq!(size % 3, 0, "whole requests only: {size}");
    // It counted rate x (at least 0.5 s) entries, and no more than it
    // appended.
    assert!(
        size > 0 && rate * 0.5 <= size as f64,
        "{rate}/s, {size} appended"
    );
    server.stop();
}
