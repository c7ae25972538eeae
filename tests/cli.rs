//! The command line as a user runs it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

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
