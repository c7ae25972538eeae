//! Evidence bundles: export, offline verification, and a catalogue of
//! tamperings each detected with the right verdict.

mod common;

use auditlog::bundle::{verify_bundle, Query};
use auditlog::core::note;
use auditlog::core::seal::SealReason;
use auditlog::verify::{Report, Verdict};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use serde_json::Value;

struct Exported {
    lines: Vec<Value>,
    /// A checkpoint from early in the log (a receipt a buyer kept).
    receipt: String,
    other_log: Vec<Value>,
}

fn export() -> Exported {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders(), chats()], ManualClock::at(1_000));
    let first = f
        .engine
        .append_blocking(
            "orders",
            vec![
                input("order:8812", "Write a haiku about escrow"),
                input("order:1", "other order"),
            ],
        )
        .unwrap();
    for i in 0..3 {
        f.engine
            .append_blocking("orders", vec![input("order:8812", &format!("output {i}"))])
            .unwrap();
    }
    f.engine
        .seal_blocking("orders", SealReason::Request)
        .unwrap();
    f.engine
        .append_blocking("orders", vec![input("order:8812", "review: 5 stars")])
        .unwrap();
    f.engine
        .append_blocking("chats", vec![input("order:8812", "chat about it")])
        .unwrap();
    let mut out = Vec::new();
    f.engine
        .export(
            "orders",
            Query::Subject {
                subject: "order:8812".into(),
            },
            Some(&first.checkpoint),
            &mut out,
        )
        .unwrap();
    let mut other = Vec::new();
    f.engine
        .export(
            "chats",
            Query::SeqRange {
                from_seq: 0,
                to_seq: 1,
            },
            None,
            &mut other,
        )
        .unwrap();
    let parse = |b: &[u8]| -> Vec<Value> {
        String::from_utf8(b.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Exported {
        lines: parse(&out),
        receipt: first.checkpoint,
        other_log: parse(&other),
    }
}

fn text(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{}\n", l)).collect()
}

fn check(lines: &[Value], since: Option<&str>) -> Report {
    verify_bundle(text(lines).as_bytes(), &[signer().verifier()], since).0
}

fn entries(lines: &[Value]) -> Vec<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l["type"] == "entry")
        .map(|(i, _)| i)
        .collect()
}

fn flip_b64(v: &mut Value, at: usize) {
    let mut raw = B64.decode(v.as_str().unwrap()).unwrap();
    let i = at % raw.len();
    raw[i] ^= 0x01;
    *v = Value::String(B64.encode(raw));
}

#[test]
fn an_exported_bundle_verifies() {
    let e = export();
    let report = check(&e.lines, Some(&e.receipt));
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(report.entries_checked, 5);
    assert_eq!(report.seals_checked, 1);
    assert_eq!(e.lines.first().unwrap()["format"], "auditlog-bundle");
    assert_eq!(e.lines.last().unwrap()["type"], "end");
}

#[test]
fn tampering_catalogue() {
    let e = export();
    type Tamper = Box<dyn Fn(&mut Vec<Value>, &Exported)>;
    let first = |l: &Vec<Value>| entries(l)[0];
    let cases: Vec<(&str, Tamper, Verdict, &str)> = vec![
        (
            "payload byte",
            Box::new(move |l, _| {
                let i = first(l);
                flip_b64(&mut l[i]["payload"], 3)
            }),
            Verdict::HashMismatch,
            "payload",
        ),
        (
            "salt byte",
            Box::new(move |l, _| {
                let i = first(l);
                flip_b64(&mut l[i]["salt"], 0)
            }),
            Verdict::HashMismatch,
            "payload",
        ),
        (
            "metadata field (subject)",
            Box::new(move |l, _| {
                let i = first(l);
                let mut raw = B64.decode(l[i]["encoding"].as_str().unwrap()).unwrap();
                let at = raw.windows(10).position(|w| w == b"order:8812").unwrap();
                raw[at + 9] = b'3';
                l[i]["encoding"] = Value::String(B64.encode(raw));
            }),
            Verdict::BadProof,
            "inclusion_proof",
        ),
        (
            "proof element",
            Box::new(move |l, _| {
                let i = first(l);
                flip_b64(&mut l[i]["inclusion_proof"][0], 7)
            }),
            Verdict::BadProof,
            "inclusion_proof",
        ),
        (
            "checkpoint size",
            Box::new(|l, _| {
                let cp = l[0]["checkpoint"].as_str().unwrap().to_owned();
                let mut lines: Vec<String> = cp.split('\n').map(str::to_owned).collect();
                let size: u64 = lines[1].parse().unwrap();
                lines[1] = (size + 1).to_string();
                l[0]["checkpoint"] = Value::String(lines.join("\n"));
            }),
            Verdict::BadSignature,
            "checkpoint",
        ),
        (
            "checkpoint re-signed by another key",
            Box::new(|l, _| {
                let (body, _) = note::parse(l[0]["checkpoint"].as_str().unwrap()).unwrap();
                l[0]["checkpoint"] = Value::String(note::sign(&body, &[&other_signer()]).unwrap());
            }),
            Verdict::UnknownKey,
            "checkpoint",
        ),
        (
            "seal altered",
            Box::new(|l, _| {
                let i = l.iter().position(|x| x["type"] == "seal").unwrap();
                let s = l[i]["seal"]
                    .as_str()
                    .unwrap()
                    .replace("reason request", "reason age");
                l[i]["seal"] = Value::String(s);
            }),
            Verdict::BadSignature,
            "seal",
        ),
        (
            "dropped entry",
            Box::new(move |l, _| {
                let i = entries(l)[2];
                l.remove(i);
            }),
            Verdict::MissingEntry,
            "end",
        ),
        (
            "reordered entries",
            Box::new(move |l, _| {
                let es = entries(l);
                l.swap(es[1], es[2]);
            }),
            Verdict::ChainBroken,
            "seq",
        ),
        (
            "entry from another log",
            Box::new(move |l, ex| {
                let foreign = ex.other_log[entries(&ex.other_log)[0]].clone();
                let i = first(l);
                l[i] = foreign;
            }),
            Verdict::ChainBroken,
            "origin",
        ),
        (
            "truncated bundle",
            Box::new(|l, _| {
                l.pop();
            }),
            Verdict::Truncated,
            "end",
        ),
        (
            "receipt not a prefix",
            Box::new(|l, _| {
                let i = l.iter().position(|x| x["type"] == "since").unwrap();
                flip_b64(&mut l[i]["consistency_proof"][0], 1);
            }),
            Verdict::BadProof,
            "since",
        ),
    ];
    for (name, tamper, verdict, field) in cases {
        let mut lines = e.lines.clone();
        tamper(&mut lines, &e);
        let report = check(&lines, Some(&e.receipt));
        assert!(
            !report.is_valid()
                && report
                    .findings
                    .iter()
                    .any(|f| f.verdict == verdict && f.field == field),
            "{name}: expected {verdict} on {field}, got {:#?}",
            report.findings
        );
    }
}

#[test]
fn verify_trusts_only_the_keys_given() {
    let e = export();
    let report = verify_bundle(
        text(&e.lines).as_bytes(),
        &[other_signer().verifier()],
        None,
    )
    .0;
    assert!(report.has(Verdict::UnknownKey), "{:?}", report.findings);
    assert!(!report.is_valid());
}

/// The values hashes and signatures cover, as parsed from a bundle.
fn covered(bundle: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(bundle).ok()?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).ok()?;
        for k in [
            "checkpoint",
            "encoding",
            "payload",
            "salt",
            "inclusion_proof",
            "seal",
            "consistency_proof",
            "payload_state",
            "entries",
            "type",
        ] {
            out.push(format!("{k}={}", v[k]));
        }
    }
    Some(out)
}

#[test]
fn no_bit_flip_of_covered_bytes_passes() {
    let e = export();
    // A small bundle: the one of the other log (one entry, no seal).
    let original = text(&e.other_log).into_bytes();
    let keys = [signer().verifier()];
    assert!(verify_bundle(original.as_slice(), &keys, None).0.is_valid());
    let want = covered(&original).unwrap();
    let mut passed_uncovered = 0;
    for i in 0..original.len() {
        for bit in [0x01u8, 0x02, 0x20, 0x80] {
            let mut b = original.clone();
            b[i] ^= bit;
            if verify_bundle(b.as_slice(), &keys, None).0.is_valid() {
                // Only flips that leave every covered value as it was (the
                // header's log name or query, say) may pass.
                assert_eq!(
                    covered(&b).as_ref(),
                    Some(&want),
                    "flip of bit {bit:#x} at byte {i} passed"
                );
                passed_uncovered += 1;
            }
        }
    }
    assert!(passed_uncovered < original.len(), "{passed_uncovered}");
}

#[test]
fn fixture_from_version_1_still_verifies() {
    // A bundle written by this version, checked in: every later version
    // must verify it (formats are forever).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bundle = std::fs::read(dir.join("bundle-v1.jsonl")).unwrap();
    let keys = auditlog::keys::load_verifiers(&dir.join("bundle-v1.pub")).unwrap();
    let (report, summary) = verify_bundle(bundle.as_slice(), &keys, None);
    assert!(report.is_valid(), "{:?}", report.findings);
    assert_eq!(summary.entries, 5);
    assert_eq!(report.seals_checked, 1);
}

/// Writes the fixture (run once with AUDITLOG_WRITE_FIXTURES=1).
#[test]
fn write_fixture_when_asked() {
    if std::env::var_os("AUDITLOG_WRITE_FIXTURES").is_none() {
        return;
    }
    let e = export();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = e.lines.clone();
    lines.retain(|l| l["type"] != "since");
    std::fs::write(dir.join("bundle-v1.jsonl"), text(&lines)).unwrap();
    std::fs::write(
        dir.join("bundle-v1.pub"),
        format!("{}\n", signer().verifier().to_text()),
    )
    .unwrap();
}

#[test]
fn large_bundles_are_checked_in_parallel_with_the_same_findings() {
    // More lines than one parallel round, so several chunks and threads.
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(1));
    for i in 0..50 {
        let batch = (0..100)
            .map(|j| input("order:7", &format!("entry {i}/{j}")))
            .collect();
        f.engine.append_blocking("orders", batch).unwrap();
    }
    let mut out = Vec::new();
    f.engine
        .export(
            "orders",
            Query::SeqRange {
                from_seq: 0,
                to_seq: 5000,
            },
            None,
            &mut out,
        )
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ok = check(&lines, None);
    assert!(ok.is_valid(), "{:?}", ok.findings);
    assert_eq!(ok.entries_checked, 5000);

    let mut bad = lines.clone();
    let es = entries(&bad);
    flip_b64(&mut bad[es[3001]]["payload"], 2);
    bad.swap(es[4500], es[4501]);
    let r = check(&bad, None);
    let got: Vec<(Verdict, Option<u64>, &str)> = r
        .failures()
        .map(|f| (f.verdict, f.seq, f.field.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Verdict::HashMismatch, Some(3001), "payload"),
            (Verdict::ChainBroken, Some(4500), "seq"),
        ],
        "{:#?}",
        r.findings
    );
}

/// The operator holds the signing key, so it can rewrite history and sign
/// the rewrite: a bundle of the rewritten log is valid on its own. The
/// buyer's receipt is what catches it. Attack: the same key and origin
/// sign a second history that agrees on the first entry and differs from
/// the second on (the payload the buyer's receipt covers, then the same
/// entries again); its export for the buyer's order verifies alone, and
/// fails against the receipt whether the operator leaves the proof from
/// the receipt out or builds it from its own tree; asked for that proof,
/// an honest server on the rewritten store refuses.
#[test]
fn a_history_rewritten_with_the_genuine_key_fails_against_a_kept_receipt() {
    let history = |second: &str| {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path(), vec![orders()], ManualClock::at(1_000));
        f.engine
            .append_blocking("orders", vec![input("order:8812", "Write a haiku")])
            .unwrap();
        let receipt = f
            .engine
            .append_blocking("orders", vec![input("order:8812", second)])
            .unwrap();
        for i in 0..3 {
            f.engine
                .append_blocking("orders", vec![input("order:8812", &format!("output {i}"))])
                .unwrap();
        }
        (dir, f, receipt)
    };
    let (_d1, genuine, receipt) = history("refund approved");
    let (_d2, rewritten, forged) = history("refund denied");
    // Same key, same origin, same size: only the roots differ.
    let size_of = |cp: &str| open_cp(cp, "audit.example.com/orders").size;
    assert_eq!(size_of(&receipt.checkpoint), size_of(&forged.checkpoint));
    assert_ne!(receipt.checkpoint, forged.checkpoint);

    let export = |f: &Fixture, since: Option<&str>| {
        let mut out = Vec::new();
        let r = f.engine.export(
            "orders",
            Query::Subject {
                subject: "order:8812".into(),
            },
            since,
            &mut out,
        );
        (r, out)
    };
    // The genuine log proves it extends the receipt.
    let (r, good) = export(&genuine, Some(&receipt.checkpoint));
    r.unwrap();
    let good = verify_bundle(&good[..], &[signer().verifier()], Some(&receipt.checkpoint)).0;
    assert!(good.is_valid(), "{:?}", good.findings);

    // The rewrite, exported plainly: valid alone, invalid against the
    // receipt (it proves nothing about it).
    let (r, plain) = export(&rewritten, None);
    r.unwrap();
    let alone = verify_bundle(&plain[..], &[signer().verifier()], None).0;
    assert!(alone.is_valid(), "{:?}", alone.findings);
    let caught = verify_bundle(
        &plain[..],
        &[signer().verifier()],
        Some(&receipt.checkpoint),
    )
    .0;
    assert!(!caught.is_valid(), "a rewrite passed against the receipt");
    assert!(
        caught.findings.iter().any(|f| f.field == "since"),
        "{:?}",
        caught.findings
    );

    // Asked to prove the receipt, the rewritten store refuses before it
    // writes anything: its tree at the receipt's size has another root.
    let (r, asked) = export(&rewritten, Some(&receipt.checkpoint));
    let err = r.unwrap_err().to_string();
    assert!(err.contains("not of this log's history"), "{err}");
    assert!(asked.is_empty(), "a bundle was written before the refusal");
    // A dishonest server could still write a proof from its own tree: it
    // fails against the receipt.
    let mut tree = auditlog::core::merkle::MemoryTree::<auditlog::core::hash::Blake3>::new();
    for seq in 0..5 {
        tree.push(
            rewritten
                .engine
                .entry("orders", seq, 0)
                .unwrap()
                .0
                .leaf_hash,
        );
    }
    let proof =
        auditlog::core::merkle::consistency_proof::<auditlog::core::hash::Blake3>(&tree, 2, 5)
            .unwrap();
    let mut lines: Vec<Value> = String::from_utf8(plain.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let end = lines.pop().unwrap();
    lines.push(serde_json::json!({
        "type": "since",
        "checkpoint": receipt.checkpoint,
        "consistency_proof": proof.iter().map(|h| B64.encode(h.0)).collect::<Vec<_>>(),
    }));
    lines.push(end);
    let caught = check(&lines, Some(&receipt.checkpoint));
    assert!(
        caught
            .findings
            .iter()
            .any(|f| f.field == "since" && f.verdict == Verdict::BadProof),
        "{:?}",
        caught.findings
    );
    // And the receipt's own proof does not hold in the rewritten tree.
    let entry = rewritten.engine.entry("orders", 1, 0).unwrap().0;
    assert_ne!(entry.leaf_hash, receipt.receipts[0].leaf_hash);
}
