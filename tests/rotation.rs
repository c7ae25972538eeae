//! Signing key rotation: evidence that spans a rotation verifies with the
//! old key (following the signed transition) or both keys, and not with the
//! new key alone; the old private key can be destroyed; a rotation cut
//! short at any step is finished or undone on the next start.

mod common;

use std::path::Path;
use std::process::Command;

use auditlog::config::{Config, FileConfig};
use auditlog::core::checkpoint::Checkpoint;
use auditlog::keys;
use auditlog::proto::{AppendRequest, EntryInput, GetCheckpointRequest, SealRequest};
use auditlog::rotation::Recovery;
use auditlog::serve;
use auditlog::verify::store::verify_data_dir;
use common::server::{start, start_in};

fn entry(subject: &str, payload: &str) -> EntryInput {
    EntryInput {
        subject: subject.into(),
        actor: "buyer:1".into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// `auditlog verify ARGS`: (exit code, stdout).
fn verify(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_spanning_a_rotation_follows_the_transition_from_the_old_key() {
    let server = start(None);
    let mut c = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let old = server.verifier();
    std::fs::write(p("old.pub"), format!("{}\n", old.to_text())).unwrap();

    let first = c
        .append(AppendRequest {
            log: "default".into(),
            entries: vec![entry("order:1", "prompt"), entry("order:1", "output")],
        })
        .await
        .unwrap()
        .into_inner();
    // The buyer keeps the receipt's checkpoint, signed by the old key.
    std::fs::write(p("receipt.txt"), &first.checkpoint).unwrap();
    c.seal(SealRequest {
        log: "default".into(),
    })
    .await
    .unwrap();

    let (code, out, err) = server.cli(&["keys", "rotate"]);
    assert_eq!(code, Some(0), "{err}");
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["retired_key"], old.to_text());
    let new_text = rotated["signing_key"].as_str().unwrap().to_owned();
    assert_ne!(new_text, old.to_text());
    std::fs::write(p("new.pub"), format!("{new_text}\n")).unwrap();
    let new = keys::load_verifiers(Path::new(&p("new.pub"))).unwrap();

    // The key files: the new key signs, the old one is kept aside (0600),
    // and verifier.pub lists both.
    let key_dir = server.data.path().join("keys");
    assert_eq!(
        keys::load_signer(&key_dir.join("signer.key"))
            .unwrap()
            .verifier(),
        new[0]
    );
    let retired = keys::retired_path(&key_dir.join("signer.key"), &old);
    assert_eq!(keys::load_signer(&retired).unwrap().verifier(), old);
    assert_eq!(
        keys::load_verifiers(&key_dir.join("verifier.pub")).unwrap(),
        vec![old.clone(), new[0].clone()]
    );

    c.append(AppendRequest {
        log: "default".into(),
        entries: vec![entry("order:1", "dispute"), entry("order:2", "other")],
    })
    .await
    .unwrap();
    // The current checkpoint is signed by the new key only.
    let cp = c
        .get_checkpoint(GetCheckpointRequest {
            log: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint;
    assert!(Checkpoint::open(&cp, &new, None).is_ok());
    assert!(Checkpoint::open(&cp, std::slice::from_ref(&old), None).is_err());

    // One order's evidence: entries and a seal from before the rotation,
    // a checkpoint from after it, and the buyer's old receipt.
    let (code, _, err) = server.cli(&[
        "export",
        "--log",
        "default",
        "--subject",
        "order:1",
        "--since-checkpoint",
        &p("receipt.txt"),
        "--out",
        &p("order-1.bundle"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let bundle = p("order-1.bundle");

    // The old key alone: the transition is followed, everything verifies.
    let (code, out) = verify(&[&bundle, "--key", &p("old.pub")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("VALID"), "{out}");
    assert!(
        out.contains(&format!("KEY_ROTATION: trusting {new_text}")),
        "{out}"
    );
    // Both keys.
    let (code, out) = verify(&[&bundle, "--key", &p("old.pub"), "--key", &p("new.pub")]);
    assert_eq!(code, 0, "{out}");
    // The new key alone: what the old key signed (the seal, the receipt)
    // fails, saying why and what to do.
    let (code, out) = verify(&[&bundle, "--key", &p("new.pub")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("INVALID"), "{out}");
    let seal_line = out
        .lines()
        .find(|l| l.starts_with("UNKNOWN_KEY") && l.contains("field=seal"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(seal_line.contains("retired in favour of"), "{seal_line}");
    assert!(seal_line.contains("pass the older key too"), "{seal_line}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("UNKNOWN_KEY") && l.contains("field=since")),
        "{out}"
    );
    // The entries themselves are still proven against the new checkpoint.
    assert!(!out.contains("BAD_PROOF"), "{out}");
    assert!(
        out.contains("not following the rotation"),
        "the untrusted transition is reported: {out}"
    );

    // A forged transition (to an attacker's key) in the bundle is refused.
    let text = std::fs::read_to_string(&bundle).unwrap();
    let mut header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let t = header["key_transitions"][0].as_str().unwrap().to_owned();
    let attacker = keys::generate_signer("auditlog").unwrap().verifier();
    header["key_transitions"][0] = t.replace(&new_text, &attacker.to_text()).into();
    let forged = format!("{header}\n{}", text.split_once('\n').unwrap().1);
    std::fs::write(p("forged.bundle"), forged).unwrap();
    let (code, out) = verify(&[&p("forged.bundle"), "--key", &p("old.pub")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("BAD_SIGNATURE") && l.contains("field=key_transitions")),
        "{out}"
    );

    // The old private key destroyed: the server restarts with the new one
    // and the whole store still verifies from the old public key.
    let data = server.stop();
    std::fs::remove_file(&retired).unwrap();
    let server = start_in(data, None, &[]);
    let mut c = server.client().await;
    c.append(AppendRequest {
        log: "default".into(),
        entries: vec![entry("order:3", "after restart")],
    })
    .await
    .unwrap();
    let data = server.stop();
    let report = verify_data_dir(data.path(), std::slice::from_ref(&old)).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(report.transitions.len(), 1);
    assert!(report.transitions[0].1, "followed");
    // With the new key alone, the seal and checkpoints of before fail, and
    // say so; everything after the rotation is accepted.
    let report = verify_data_dir(data.path(), &new).unwrap();
    assert!(!report.is_valid());
    assert!(report
        .failures()
        .all(|f| f.verdict == auditlog::verify::Verdict::UnknownKey
            && f.detail.contains("retired in favour of")));
    let (code, out) = verify(&[
        "--data-dir",
        data.path().to_str().unwrap(),
        "--key",
        &p("old.pub"),
    ]);
    assert_eq!(code, 0, "{out}");
}

fn config(dir: &Path) -> Config {
    let mut c = FileConfig::default().resolve().unwrap();
    c.data_dir = dir.to_owned();
    c
}

/// Stops the engine and releases the data directory.
fn close(opened: serve::Opened) {
    opened.engine.shutdown();
    drop(opened);
}

fn append(engine: &auditlog::engine::Engine, payload: &str) {
    engine
        .append_blocking("default", vec![common::input("order:1", payload)])
        .unwrap();
}

#[test]
fn a_rotation_cut_short_is_undone_before_recording_and_finished_after() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let key_path = serve::key_path(&cfg);

    let opened = serve::open(&cfg, true).unwrap();
    let old = opened.engine.verifier();
    append(&opened.engine, "a");
    close(opened);

    // Killed after staging, before the transition was recorded: the next
    // start removes the staged key and keeps signing with the old one.
    let current = keys::load_signer(&key_path).unwrap();
    let staged = keys::generate_signer("auditlog").unwrap();
    keys::stage_rotation(&key_path, &current, &staged).unwrap();
    let opened = serve::open(&cfg, false).unwrap();
    assert_eq!(opened.recovery, Recovery::Abandoned(staged.verifier()));
    assert_eq!(opened.engine.verifier(), old);
    assert!(!keys::next_path(&key_path).exists());
    assert!(!keys::retired_path(&key_path, &old).exists());
    assert!(opened.engine.key_transitions().is_empty());
    append(&opened.engine, "b");

    // Killed after the transition was recorded, before the key file was
    // promoted: the next start signs with the new key and finishes.
    let new = keys::generate_signer("auditlog").unwrap();
    keys::stage_rotation(&key_path, &current, &new).unwrap();
    opened.engine.rotate_key(new.clone(), "test").unwrap();
    append(&opened.engine, "c");
    close(opened);
    assert_eq!(keys::load_signer(&key_path).unwrap().verifier(), old);

    let opened = serve::open(&cfg, false).unwrap();
    assert_eq!(opened.recovery, Recovery::Finished(new.verifier()));
    assert_eq!(opened.engine.verifier(), new.verifier());
    assert_eq!(
        keys::load_signer(&key_path).unwrap().verifier(),
        new.verifier()
    );
    assert_eq!(
        opened.engine.signing_history(),
        vec![old.clone(), new.verifier()]
    );
    append(&opened.engine, "d");
    // A start with nothing pending changes nothing.
    close(opened);
    let opened = serve::open(&cfg, false).unwrap();
    assert_eq!(opened.recovery, Recovery::None);
    // And a second rotation chains from the first.
    let second = opened.rotator.rotate(&opened.engine, "test").unwrap();
    assert_eq!(second.from, new.verifier());
    append(&opened.engine, "e");
    close(opened);

    let report = verify_data_dir(dir.path(), std::slice::from_ref(&old)).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(report.transitions.len(), 2);
    assert!(report.transitions.iter().all(|(_, followed)| *followed));
}

#[test]
fn a_half_written_staged_key_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let key_path = serve::key_path(&cfg);
    let opened = serve::open(&cfg, true).unwrap();
    close(opened);
    std::fs::write(keys::next_path(&key_path), "PRIVATE+KEY+aud").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            keys::next_path(&key_path),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let opened = serve::open(&cfg, false).unwrap();
    assert_eq!(opened.recovery, Recovery::None);
    assert!(!keys::next_path(&key_path).exists());
    close(opened);
}

/// A bundle spanning a rotation, written once and checked in
/// (`AUDITLOG_WRITE_FIXTURES=1` rewrites it): entries and a seal signed by
/// the old key, a checkpoint by the new one, the transition in the header.
fn rotated_bundle() -> Vec<u8> {
    use auditlog::bundle::Query;
    use common::{input, open, orders, other_signer, ManualClock};
    let dir = tempfile::tempdir().unwrap();
    let f = open(
        dir.path(),
        vec![orders()],
        ManualClock::at(1_767_225_600_000_000_000),
    );
    f.engine
        .append_blocking(
            "orders",
            vec![input("order:7", "prompt"), input("order:7", "output")],
        )
        .unwrap();
    f.engine
        .seal_blocking("orders", auditlog::core::SealReason::Request)
        .unwrap();
    f.clock.set(1_767_225_660_000_000_000);
    f.engine.rotate_key(other_signer(), "test").unwrap();
    f.engine
        .append_blocking("orders", vec![input("order:7", "dispute")])
        .unwrap();
    let mut out = Vec::new();
    f.engine
        .export(
            "orders",
            Query::Subject {
                subject: "order:7".into(),
            },
            None,
            &mut out,
        )
        .unwrap();
    f.close();
    out
}

#[test]
fn the_checked_in_rotated_bundle_verifies_with_the_old_key() {
    use auditlog::bundle::verify_bundle;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if std::env::var_os("AUDITLOG_WRITE_FIXTURES").is_some() {
        std::fs::write(dir.join("bundle-v1-rotated.jsonl"), rotated_bundle()).unwrap();
        for (file, key) in [
            ("bundle-v1-rotated-old.pub", common::signer().verifier()),
            (
                "bundle-v1-rotated-new.pub",
                common::other_signer().verifier(),
            ),
        ] {
            std::fs::write(dir.join(file), format!("{}\n", key.to_text())).unwrap();
        }
    }
    let bundle = std::fs::read(dir.join("bundle-v1-rotated.jsonl")).unwrap();
    let old = keys::load_verifiers(&dir.join("bundle-v1-rotated-old.pub")).unwrap();
    let new = keys::load_verifiers(&dir.join("bundle-v1-rotated-new.pub")).unwrap();
    // This version still writes bundles of the fixture's shape.
    let fresh = rotated_bundle();
    assert_eq!(
        String::from_utf8_lossy(&fresh).lines().count(),
        String::from_utf8_lossy(&bundle).lines().count()
    );
    assert!(verify_bundle(fresh.as_slice(), &old, None).0.is_valid());

    let (report, summary) = verify_bundle(bundle.as_slice(), &old, None);
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!((summary.entries, report.seals_checked), (3, 1));
    assert_eq!(report.transitions.len(), 1);
    let both = [old.clone(), new.clone()].concat();
    assert!(verify_bundle(bundle.as_slice(), &both, None).0.is_valid());
    let (report, _) = verify_bundle(bundle.as_slice(), &new, None);
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].verdict, auditlog::verify::Verdict::UnknownKey);
    assert_eq!(failures[0].field, "seal");
    assert!(
        failures[0]
            .detail
            .contains("key rotation of 2026-01-01T00:01:00Z"),
        "{}",
        failures[0].detail
    );
}
