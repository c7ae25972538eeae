//! Crash safety: a child process appends continuously and is killed with
//! SIGKILL at random moments; after each kill every acknowledged entry must
//! be present with the same leaf hash, nothing half-written may remain, and
//! the whole store must verify.
//!
//! `AUDITLOG_CRASH_ROUNDS` sets the number of kills (default 20).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use auditlog::core::hash::Hash;
use auditlog::store::embedded::EmbeddedStore;
use auditlog::store::{LogSpec, Store};
use auditlog::verify::store::verify_data_dir;

#[test]
fn kill_dash_nine_under_load_loses_no_acknowledged_entry() {
    let rounds: u64 = std::env::var("AUDITLOG_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let data = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let signer = common::signer();
    let (key_path, _) = auditlog::keys::write_key_pair(keys.path(), &signer).unwrap();
    let spec = LogSpec {
        name: "orders".into(),
        origin: "audit.example.com/orders".into(),
    };
    let mut acked: Vec<(u64, Hash)> = Vec::new();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut total_cut = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditlog"))
            .args(["debug-append-loop", "--data-dir"])
            .arg(data.path())
            .arg("--key")
            .arg(&key_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split(' ');
                if parts.next() == Some("ACK") {
                    let seq: u64 = parts.next().unwrap().parse().unwrap();
                    let leaf = Hash::from_hex(parts.next().unwrap()).unwrap();
                    got.push((seq, leaf));
                }
            }
            got
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 350));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(got);

        let store = Arc::new(EmbeddedStore::open(data.path()).unwrap());
        let head = store.open_log(&spec, 0).unwrap();
        total_cut += store
            .take_recoveries()
            .iter()
            .map(|r| r.entries_cut)
            .sum::<u64>();
        for (seq, leaf) in &acked {
            assert!(
                *seq < head.size,
                "round {round}: acked seq {seq} lost (size {})",
                head.size
            );
            let e = store.entry("orders", *seq).unwrap().unwrap();
            assert_eq!(e.leaf_hash, *leaf, "round {round}: seq {seq} changed");
        }
        drop(store);
        let report = verify_data_dir(data.path(), &[signer.verifier()]).unwrap();
        assert!(report.is_valid(), "round {round}: {:?}", report.findings);
        let mut orders = auditlog::verify::Report::default();
        auditlog::verify::store::verify_log_dir(
            &data.path().join("logs").join("orders"),
            "orders",
            &[signer.verifier()],
            &mut orders,
        )
        .unwrap();
        assert_eq!(
            orders.entries_checked, head.size,
            "every entry is covered by a checkpoint"
        );
    }
    let mut seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), acked.len(), "no seq acknowledged twice");
    assert!(
        acked.len() as u64 > rounds * 10,
        "the child made progress: {} acks",
        acked.len()
    );
    eprintln!(
        "{rounds} kills, {} acknowledged entries all present, {total_cut} unacknowledged entries cut",
        acked.len()
    );
}
