//! Retention expiry, legal holds, erasure and the system log, through the
//! engine over the embedded store, with a manual clock and short policies.

mod common;

use std::path::Path;
use std::time::Duration;

use auditlog::bundle::{verify_bundle, Query};
use auditlog::engine::admin::{Target, SYSTEM_LOG};
use auditlog::store::{PayloadState, Store};
use auditlog::verify::store::verify_data_dir;
use auditlog::verify::Verdict;
use common::*;

const S: i64 = 1_000_000_000;

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() {
            dir_bytes(&p)
        } else {
            std::fs::metadata(&p).unwrap().len()
        };
    }
    n
}

/// Verifies the store (it must be valid) and counts findings of `verdict`.
fn verifies_with(dir: &Path, verdict: Verdict) -> usize {
    let report = verify_data_dir(dir, &[signer().verifier()]).unwrap();
    assert!(report.is_valid(), "{:?}", report.findings);
    report
        .findings
        .iter()
        .filter(|f| f.verdict == verdict)
        .count()
}

fn short_policy(mut cfg: auditlog::engine::LogConfig) -> auditlog::engine::LogConfig {
    cfg.seal_after = None;
    cfg.retention = Some(Duration::from_secs(30));
    cfg.retention_window = Some(Duration::from_secs(10));
    cfg
}

fn secret(i: usize) -> String {
    format!("SECRET-PROMPT-{i:04}-{}", "x".repeat(2000))
}

fn states(f: &Fixture, log: &str) -> Vec<(String, PayloadState)> {
    let size = f.engine.checkpoint(log).unwrap().map_or(0, |c| c.0);
    (0..size)
        .map(|s| {
            let e = f.store.entry(log, s).unwrap().unwrap();
            (e.entry.subject, e.state)
        })
        .collect()
}

fn system_kinds(f: &Fixture) -> Vec<String> {
    let size = f.engine.checkpoint(SYSTEM_LOG).unwrap().map_or(0, |c| c.0);
    (0..size)
        .map(|s| f.store.entry(SYSTEM_LOG, s).unwrap().unwrap().entry.kind)
        .collect()
}

fn bundle_verdicts(f: &Fixture, log: &str, subject: &str) -> Vec<Verdict> {
    let mut out = Vec::new();
    f.engine
        .export(
            log,
            Query::Subject {
                subject: subject.into(),
            },
            None,
            &mut out,
        )
        .unwrap();
    let (report, _) = verify_bundle(&out[..], &[signer().verifier()], None);
    assert!(report.is_valid(), "{:?}", report.findings);
    report.findings.iter().map(|f| f.verdict).collect()
}

#[test]
fn expiry_removes_payload_bytes_on_time_and_holds_keep_theirs_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(
        dir.path(),
        vec![short_policy(orders())],
        ManualClock::at(100 * S),
    );
    for i in 0..6 {
        let subject = if i % 2 == 0 { "order:1" } else { "order:2" };
        f.engine
            .append_blocking("orders", vec![input(subject, &secret(i))])
            .unwrap();
    }
    let hold = f
        .engine
        .place_hold(
            Some("orders"),
            Some("order:2"),
            "CASE-7",
            "chargeback",
            "ops",
        )
        .unwrap();
    // The window [100 s, 110 s) closes; its retention ends at 140 s.
    f.clock.set(111 * S);
    f.engine.close_windows_blocking("orders").unwrap();

    // Not yet: nothing expires before the seal's retain-until.
    f.clock.set(139 * S);
    let early = f
        .engine
        .apply_retention(139 * S, false, "retention")
        .unwrap();
    assert!(early.iter().all(|e| e.entries == 0), "{early:?}");

    // A dry run says what would go and changes nothing.
    let dry = f
        .engine
        .apply_retention(141 * S, true, "retention")
        .unwrap();
    let orders_dry = dry.iter().find(|e| e.log == "orders").unwrap();
    assert_eq!(
        (orders_dry.segments, orders_dry.entries, orders_dry.held),
        (1, 3, 3)
    );
    assert_eq!(files_containing(dir.path(), b"SECRET-PROMPT-0000").len(), 1);

    // Empty windows that ended by now are sealed by the log's timer at any
    // moment (a seal record and a new segment file): seal them first, so
    // the sizes below measure only what expiry removes.
    f.engine.close_windows_blocking("orders").unwrap();
    let before = dir_bytes(&dir.path().join("logs").join("orders"));
    let done = f
        .engine
        .apply_retention(141 * S, false, "retention")
        .unwrap();
    let orders_done = done.iter().find(|e| e.log == "orders").unwrap();
    assert_eq!(
        (orders_done.segments, orders_done.entries, orders_done.held),
        (1, 3, 3)
    );
    let after = dir_bytes(&dir.path().join("logs").join("orders"));
    assert!(
        before - after >= 3 * 2000,
        "space reclaimed: {before} -> {after}, reported {}",
        orders_done.bytes
    );
    assert_eq!(orders_done.bytes, before - after);
    for i in [0, 2, 4] {
        let needle = format!("SECRET-PROMPT-{i:04}");
        assert_eq!(
            files_containing(dir.path(), needle.as_bytes()),
            Vec::<String>::new(),
            "expired payload {i} is gone from every file"
        );
    }
    for i in [1, 3, 5] {
        let needle = format!("SECRET-PROMPT-{i:04}");
        assert_eq!(files_containing(dir.path(), needle.as_bytes()).len(), 1);
    }
    assert_eq!(
        states(&f, "orders"),
        vec![
            ("order:1".into(), PayloadState::Expired),
            ("order:2".into(), PayloadState::Present),
            ("order:1".into(), PayloadState::Expired),
            ("order:2".into(), PayloadState::Present),
            ("order:1".into(), PayloadState::Expired),
            ("order:2".into(), PayloadState::Present),
        ]
    );
    // Bundles of expired entries still verify, saying EXPIRED.
    let v = bundle_verdicts(&f, "orders", "order:1");
    assert_eq!(v.iter().filter(|v| **v == Verdict::Expired).count(), 3);
    assert!(bundle_verdicts(&f, "orders", "order:2")
        .iter()
        .all(|v| *v != Verdict::Expired));

    // Running again changes nothing and records nothing.
    let system_before = system_kinds(&f).len();
    let again = f
        .engine
        .apply_retention(142 * S, false, "retention")
        .unwrap();
    assert!(again.iter().all(|e| e.entries == 0), "{again:?}");
    assert_eq!(system_kinds(&f).len(), system_before);

    // The hold survives a restart (rebuilt from the system log)...
    f.close();
    let f = open(
        dir.path(),
        vec![short_policy(orders())],
        ManualClock::at(150 * S),
    );
    assert_eq!(f.engine.holds(Some("orders")), vec![hold.clone()]);
    let held = f
        .engine
        .apply_retention(150 * S, false, "retention")
        .unwrap();
    assert_eq!(held.iter().map(|e| e.entries).sum::<u64>(), 0);
    // ...and once released, what it kept expires too.
    f.engine
        .release_hold(&hold.id, "case closed", "ops")
        .unwrap();
    assert!(f.engine.holds(None).is_empty());
    let released = f
        .engine
        .apply_retention(151 * S, false, "retention")
        .unwrap();
    assert_eq!(released.iter().map(|e| e.entries).sum::<u64>(), 3);
    assert!(files_containing(dir.path(), b"SECRET-PROMPT-").is_empty());

    let kinds = system_kinds(&f);
    for k in ["hold.place", "seal", "expire", "hold.release"] {
        assert!(kinds.iter().any(|x| x == k), "{k} recorded: {kinds:?}");
    }
    f.close();
    assert_eq!(verifies_with(dir.path(), Verdict::Expired), 6);
}

#[test]
fn erasure_respects_policy_and_holds_and_leaves_neighbours_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut kept = orders();
    kept.erasable = false;
    let f = open(dir.path(), vec![kept, chats()], ManualClock::at(100 * S));
    let by = |log: &str, subject: &str, i: usize| {
        let mut e = input(subject, &secret(i));
        e.actor = format!("user:{}", i % 3);
        f.engine.append_blocking(log, vec![e]).unwrap();
    };
    by("orders", "user:7", 0);
    by("chats", "user:7", 1);
    by("chats", "user:8", 2);
    by("chats", "user:7", 3);
    by("chats", "user:9", 4);
    f.engine
        .place_hold(None, Some("user:8"), "DISPUTE-1", "buyer dispute", "ops")
        .unwrap();

    let answers = f
        .engine
        .erase(None, &Target::Subject("user:7".into()), "privacy-desk")
        .unwrap();
    let orders = answers.iter().find(|a| a.log == "orders").unwrap();
    assert_eq!((orders.matched, orders.erased, orders.refused), (1, 0, 1));
    assert!(orders.refused_reason.contains("not erasable"), "{orders:?}");
    let chats = answers.iter().find(|a| a.log == "chats").unwrap();
    assert_eq!((chats.matched, chats.erased, chats.refused), (2, 2, 0));
    assert!(chats.bytes >= 2 * 2000);
    assert!(files_containing(dir.path(), b"SECRET-PROMPT-0001").is_empty());
    assert!(files_containing(dir.path(), b"SECRET-PROMPT-0003").is_empty());
    assert_eq!(files_containing(dir.path(), b"SECRET-PROMPT-0000").len(), 1);

    // Held: refused, with the case named.
    let held = f
        .engine
        .erase(
            Some("chats"),
            &Target::Subject("user:8".into()),
            "privacy-desk",
        )
        .unwrap();
    assert_eq!((held[0].erased, held[0].refused), (0, 1));
    assert!(held[0].refused_reason.contains("DISPUTE-1"), "{held:?}");
    assert_eq!(files_containing(dir.path(), b"SECRET-PROMPT-0002").len(), 1);

    // By actor: user:1 wrote entry 1 (already erased) and 4.
    let by_actor = f
        .engine
        .erase(
            Some("chats"),
            &Target::Actor("user:1".into()),
            "privacy-desk",
        )
        .unwrap();
    assert_eq!(
        (
            by_actor[0].matched,
            by_actor[0].erased,
            by_actor[0].already_removed
        ),
        (2, 1, 1)
    );
    // The system log is never erased.
    assert!(f
        .engine
        .erase(Some(SYSTEM_LOG), &Target::Subject("x".into()), "ops")
        .is_err());

    // Appends go on after the open segment was sealed for erasure.
    by("chats", "user:7", 5);
    assert_eq!(
        states(&f, "chats"),
        vec![
            ("user:7".into(), PayloadState::Erased),
            ("user:8".into(), PayloadState::Present),
            ("user:7".into(), PayloadState::Erased),
            ("user:9".into(), PayloadState::Erased),
            ("user:7".into(), PayloadState::Present),
        ]
    );
    let v = bundle_verdicts(&f, "chats", "user:7");
    assert_eq!(v.iter().filter(|v| **v == Verdict::Erased).count(), 2);
    // Neighbours in the rewritten segment are untouched and prove.
    let (e, proof, cp) = f.engine.entry("chats", 1, 0).unwrap();
    assert_eq!(e.state, PayloadState::Present);
    assert!(!proof.is_empty() && !cp.is_empty());

    assert!(system_kinds(&f).iter().filter(|k| *k == "erase").count() == 3);
    f.close();
    assert_eq!(verifies_with(dir.path(), Verdict::Erased), 3);
}

#[test]
fn deleting_an_empty_window_segment_or_its_seal_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(
        dir.path(),
        vec![short_policy(orders())],
        ManualClock::at(100 * S),
    );
    f.engine
        .append_blocking("orders", vec![input("order:1", "a")])
        .unwrap();
    // Windows [110, 120) and [120, 130) pass empty.
    f.clock.set(131 * S);
    f.engine
        .append_blocking("orders", vec![input("order:1", "b")])
        .unwrap();
    let segs = f.store.segments("orders").unwrap();
    assert_eq!(
        segs.iter()
            .map(|s| (s.first_seq, s.end_seq, s.seal.is_some()))
            .collect::<Vec<_>>(),
        vec![(0, 1, true), (1, 1, true), (1, 1, true), (1, 2, false)]
    );
    f.close();
    let seg = |n: u64| {
        dir.path()
            .join("logs/orders")
            .join(auditlog::store::segment::segment_file_name(n))
    };
    let pristine = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    };
    copy(&dir.path().join("logs/orders"), pristine.path());
    type Tamper<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Tamper<'_>)> = vec![
        (
            "empty window segment deleted",
            Box::new(|| std::fs::remove_file(seg(1)).unwrap()),
        ),
        (
            "seal of an empty window cut off",
            Box::new(|| {
                let bytes = std::fs::read(seg(2)).unwrap();
                // The header record is all an empty segment has besides
                // its seal: keep only the header.
                let header_len =
                    4 + 1 + 4 + u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize + 32;
                std::fs::write(seg(2), &bytes[..header_len]).unwrap();
            }),
        ),
    ];
    for (name, tamper) in cases {
        copy(pristine.path(), &dir.path().join("logs/orders"));
        tamper();
        let report = verify_data_dir(dir.path(), &[signer().verifier()]).unwrap();
        let failures: Vec<_> = report.failures().collect();
        assert!(
            failures
                .iter()
                .any(|f| matches!(f.verdict, Verdict::MissingEntry | Verdict::Truncated)),
            "{name}: {failures:?}"
        );
    }
}
