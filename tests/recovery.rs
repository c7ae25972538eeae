//! Durability and tampering on disk: torn writes at every offset of the
//! last batch, garbage tails, mid-file corruption, and a catalogue of
//! tamperings that store verification must name.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use auditlog::core::note;
use auditlog::core::seal::{Seal, SealReason};
use auditlog::engine::input::AppendError;
use auditlog::engine::LogConfig;
use auditlog::store::segment::{
    encode_other_record, list_segments, segment_file_name, Record, RecordKind, SegmentReader,
};
use auditlog::store::Store;
use auditlog::verify::store::verify_data_dir;
use auditlog::verify::{Report, Verdict};
use common::*;

/// Record kinds and offsets of a segment file, plus its length.
fn records(path: &Path) -> (Vec<(u64, Record)>, u64) {
    let mut r = SegmentReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(x) = r.next_record().unwrap().unwrap() {
        out.push(x);
    }
    (out, r.file_len())
}

fn seg_path(data: &Path, log: &str, seg: u64) -> PathBuf {
    data.join("logs").join(log).join(segment_file_name(seg))
}

fn verify(data: &Path) -> Report {
    verify_data_dir(data, &[signer().verifier()]).unwrap()
}

#[test]
fn a_torn_last_batch_is_cut_at_every_offset() {
    let base = tempfile::tempdir().unwrap();
    let f = open(base.path(), vec![orders()], ManualClock::at(10));
    for i in 0..3 {
        f.engine
            .append_blocking("orders", vec![input("order:1", &format!("entry {i}"))])
            .unwrap();
    }
    let before_last = f.engine.checkpoint("orders").unwrap().unwrap();
    f.engine
        .append_blocking("orders", vec![input("order:2", "last")])
        .unwrap();
    f.close();

    let path = seg_path(base.path(), "orders", 0);
    let (recs, len) = records(&path);
    // The last batch is the last entry record and its checkpoint record.
    let last_entry_at = recs
        .iter()
        .rev()
        .find(|(_, r)| matches!(r, Record::Entry(_)))
        .unwrap()
        .0;
    assert!(matches!(recs.last().unwrap().1, Record::Checkpoint(_)));
    let mut index_kept = 0;
    for cut in last_entry_at..len {
        let work = tempfile::tempdir().unwrap();
        // Half the cases keep an index that is now ahead of the segments.
        if cut % 2 == 0 {
            copy_dir(base.path(), work.path());
            index_kept += 1;
        } else {
            copy_dir(&base.path().join("logs"), &work.path().join("logs"));
        }
        let p = seg_path(work.path(), "orders", 0);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(cut)
            .unwrap();

        let f = open(work.path(), vec![orders()], ManualClock::at(20));
        let rec = f.store.take_recoveries();
        if cut > last_entry_at {
            assert_eq!(rec.len(), 1, "cut at {cut}");
            assert_eq!(rec[0].cut_at, last_entry_at);
            assert_eq!(rec[0].bytes_cut, cut - last_entry_at);
        }
        assert_eq!(
            f.engine.checkpoint("orders").unwrap().unwrap(),
            before_last,
            "cut at {cut}: exactly the committed batches remain"
        );
        assert_eq!(fs::metadata(&p).unwrap().len(), last_entry_at);
        let out = f
            .engine
            .append_blocking("orders", vec![input("order:3", "again")])
            .unwrap();
        assert_eq!(out.receipts[0].seq, 3);
        f.close();
        let report = verify(work.path());
        assert!(report.is_valid(), "cut at {cut}: {:?}", report.findings);
    }
    assert!(index_kept > 10);
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(10));
    f.engine
        .append_blocking("orders", vec![input("order:1", "a"), input("order:1", "b")])
        .unwrap();
    let cp = f.engine.checkpoint("orders").unwrap().unwrap();
    f.close();
    let path = seg_path(dir.path(), "orders", 0);
    let len = fs::metadata(&path).unwrap().len();
    let mut garbage = b"ALR\x01".to_vec(); // even a plausible magic
    garbage.extend((0..500u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    let f = open(dir.path(), vec![orders()], ManualClock::at(20));
    let rec = f.store.take_recoveries();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].cut_at, rec[0].bytes_cut, rec[0].entries_cut),
        (len, garbage.len() as u64, 0)
    );
    assert!(rec[0].reason.is_some());
    assert_eq!(f.engine.checkpoint("orders").unwrap().unwrap(), cp);
    f.close();
    assert!(verify(dir.path()).is_valid());
}

#[test]
fn corruption_in_the_middle_refuses_the_log_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders(), chats()], ManualClock::at(10));
    for i in 0..4 {
        f.engine
            .append_blocking("orders", vec![input("order:1", &format!("entry {i}"))])
            .unwrap();
    }
    f.engine
        .append_blocking("chats", vec![input("conversation:1", "hi")])
        .unwrap();
    f.close();
    let path = seg_path(dir.path(), "orders", 0);
    let (recs, _) = records(&path);
    let second_entry = recs
        .iter()
        .filter(|(_, r)| matches!(r, Record::Entry(_)))
        .nth(1)
        .unwrap()
        .0;
    let mut bytes = fs::read(&path).unwrap();
    bytes[second_entry as usize + 40] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let store =
        std::sync::Arc::new(auditlog::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
    let spec = auditlog::store::LogSpec {
        name: "orders".into(),
        origin: "audit.example.com/orders".into(),
    };
    let err = store.open_log(&spec, 30).unwrap_err().to_string();
    assert!(
        err.contains("refused") && err.contains(&format!("at byte {second_entry}")),
        "{err}"
    );
    assert!(err.contains("a valid record follows"), "{err}");
    // The file was not cut: an operator can still inspect it.
    assert_eq!(fs::read(&path).unwrap(), bytes);
    // Other logs of the same store are served.
    let chats = auditlog::store::LogSpec {
        name: "chats".into(),
        origin: "audit.example.com/chats".into(),
    };
    assert_eq!(store.open_log(&chats, 30).unwrap().size, 1);
}

#[test]
fn corruption_found_on_read_in_a_sealed_segment_refuses_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(10));
    for i in 0..3 {
        f.engine
            .append_blocking("orders", vec![input("order:1", &format!("entry {i}"))])
            .unwrap();
    }
    f.engine
        .seal_blocking("orders", SealReason::Request)
        .unwrap();
    f.close();
    let path = seg_path(dir.path(), "orders", 0);
    let (recs, _) = records(&path);
    let first_entry = recs
        .iter()
        .find(|(_, r)| matches!(r, Record::Entry(_)))
        .unwrap()
        .0;
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[first_entry as usize + 60] ^= 0x80;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(fs::read(&path).unwrap().len(), n);

    // Start-up reads only the open segment: it starts. The first read of the
    // damaged entry refuses the log.
    let f = open(dir.path(), vec![orders()], ManualClock::at(20));
    let err = f.store.entry("orders", 0).unwrap_err().to_string();
    assert!(
        err.contains("refused") && err.contains(&segment_file_name(0)),
        "{err}"
    );
    let append = f
        .engine
        .append_blocking("orders", vec![input("order:1", "more")])
        .unwrap_err();
    assert!(
        matches!(append, AppendError::Unavailable(ref m) if m.contains("refused")),
        "{append}"
    );
    f.close();
    let report = verify(dir.path());
    assert!(report.has(Verdict::HashMismatch), "{:?}", report.findings);
}

/// A log of two sealed segments and an open one, for tampering.
fn sealed_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path(), vec![orders()], ManualClock::at(10));
    for i in 0..4 {
        f.clock.set(10 + i);
        f.engine
            .append_blocking(
                "orders",
                vec![
                    input("order:1", &format!("entry {i}")),
                    input("order:2", "x"),
                ],
            )
            .unwrap();
        if i % 2 == 1 {
            f.engine
                .seal_blocking("orders", SealReason::Request)
                .unwrap();
        }
    }
    f.engine
        .append_blocking("orders", vec![input("order:3", "open")])
        .unwrap();
    f.close();
    assert!(verify(dir.path()).is_valid());
    dir
}

fn entry_offsets(path: &Path) -> Vec<(u64, u64)> {
    let (recs, _) = records(path);
    let mut v: Vec<u64> = recs.iter().map(|(o, _)| *o).collect();
    v.push(fs::metadata(path).unwrap().len());
    recs.iter()
        .enumerate()
        .filter(|(_, (_, r))| matches!(r, Record::Entry(_)))
        .map(|(i, (o, _))| (*o, v[i + 1]))
        .collect()
}

fn expect(report: &Report, verdict: Verdict, seq: Option<u64>, segment: Option<u64>, field: &str) {
    assert!(
        report.findings.iter().any(|f| f.verdict == verdict
            && (seq.is_none() || f.seq == seq)
            && (segment.is_none() || f.segment == segment)
            && f.field == field),
        "expected {verdict} seq={seq:?} segment={segment:?} field={field}, got:\n{}",
        report
            .findings
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!report.is_valid());
}

#[test]
fn tampering_catalogue() {
    type Tamper = fn(&Path);
    /// (name, tampering, expected verdict, seq, segment, field)
    type Case = (
        &'static str,
        Tamper,
        Verdict,
        Option<u64>,
        Option<u64>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "payload byte in a sealed segment",
            |d| {
                let p = seg_path(d, "orders", 0);
                let (start, end) = entry_offsets(&p)[1];
                let mut b = fs::read(&p).unwrap();
                b[end as usize - 33] ^= 1; // last payload byte, before the check
                let _ = start;
                fs::write(&p, b).unwrap();
            },
            Verdict::HashMismatch,
            Some(1),
            Some(0),
            "payload",
        ),
        (
            "metadata byte (subject) in a sealed segment",
            |d| {
                let p = seg_path(d, "orders", 1);
                let (start, _) = entry_offsets(&p)[0];
                let mut b = fs::read(&p).unwrap();
                // Subject "order:1" sits after the frame, lengths, domain, origin, seq, time.
                let body = fs::read(&p).unwrap();
                let at = (start as usize..body.len())
                    .find(|&i| body[i..].starts_with(b"order:1"))
                    .unwrap();
                b[at + 6] = b'9';
                fs::write(&p, b).unwrap();
            },
            Verdict::HashMismatch,
            Some(4),
            Some(1),
            "entry",
        ),
        (
            "record deleted",
            |d| {
                let p = seg_path(d, "orders", 0);
                let (start, end) = entry_offsets(&p)[2];
                let mut b = fs::read(&p).unwrap();
                b.drain(start as usize..end as usize);
                fs::write(&p, b).unwrap();
            },
            Verdict::MissingEntry,
            Some(2),
            Some(0),
            "seq",
        ),
        (
            "two records swapped",
            |d| {
                let p = seg_path(d, "orders", 0);
                let offs = entry_offsets(&p);
                let (a0, a1) = offs[2];
                let (b0, b1) = offs[3];
                assert_eq!(a1, b0, "adjacent records");
                let b = fs::read(&p).unwrap();
                let mut out = b[..a0 as usize].to_vec();
                out.extend_from_slice(&b[b0 as usize..b1 as usize]);
                out.extend_from_slice(&b[a0 as usize..a1 as usize]);
                out.extend_from_slice(&b[b1 as usize..]);
                fs::write(&p, out).unwrap();
            },
            Verdict::ChainBroken,
            Some(2),
            Some(0),
            "seq",
        ),
        (
            "seal replaced by one signed with another key",
            |d| {
                replace_seal(d, 0, |text| note::sign(text, &[&other_signer()]).unwrap());
            },
            Verdict::UnknownKey,
            None,
            Some(0),
            "seal",
        ),
        (
            "seal text altered, record check recomputed",
            |d| {
                replace_seal(d, 1, |text| {
                    let signed = note::sign(text, &[&signer()]).unwrap();
                    signed.replace("reason request", "reason age")
                });
            },
            Verdict::BadSignature,
            None,
            Some(1),
            "seal",
        ),
        (
            "sealed segment file deleted",
            |d| {
                fs::remove_file(seg_path(d, "orders", 1)).unwrap();
            },
            Verdict::MissingEntry,
            None,
            Some(1),
            "segment",
        ),
        (
            "seal removed from a sealed segment",
            |d| {
                let p = seg_path(d, "orders", 0);
                let (recs, _) = records(&p);
                let at = recs.last().unwrap().0;
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(at)
                    .unwrap();
            },
            Verdict::Truncated,
            None,
            Some(0),
            "seal",
        ),
        (
            "entry rewritten with a recomputed hash",
            |d| {
                // An attacker without the key rewrites entry 1 consistently:
                // new payload, commitment, leaf hash and record check.
                rewrite_entry(d, 0, 1, b"forged!");
            },
            Verdict::ChainBroken,
            Some(2),
            Some(0),
            "prev_leaf_hash",
        ),
    ];
    for (name, tamper, verdict, seq, segment, field) in cases {
        let dir = sealed_log();
        tamper(dir.path());
        let report = verify(dir.path());
        eprintln!("{name}");
        expect(&report, verdict, seq, segment, field);
    }
}

fn replace_seal(d: &Path, seg: u64, make: impl Fn(&str) -> String) {
    let p = seg_path(d, "orders", seg);
    let (recs, _) = records(&p);
    let (at, rec) = recs.last().unwrap();
    let Record::Seal(signed) = rec else {
        panic!("no seal")
    };
    let (text, _) = note::parse(signed).unwrap();
    Seal::from_text(&text).unwrap();
    let mut b = fs::read(&p).unwrap();
    b.truncate(*at as usize);
    encode_other_record(&mut b, RecordKind::Seal, make(&text).as_bytes());
    fs::write(&p, b).unwrap();
}

fn rewrite_entry(d: &Path, seg: u64, which: usize, payload: &[u8]) {
    use auditlog::core::entry::{commit_payload, Salt};
    use auditlog::store::segment::{encode_entry_record, PayloadState};
    let p = seg_path(d, "orders", seg);
    let (recs, _) = records(&p);
    let offs = entry_offsets(&p);
    let (start, end) = offs[which];
    let rec = recs.iter().find(|(o, _)| *o == start).unwrap();
    let Record::Entry(er) = &rec.1 else { panic!() };
    let mut e = er.entry().unwrap();
    let salt = Salt([9; 32]);
    e.payload_len = payload.len() as u64;
    e.payload_commitment = commit_payload(&salt, payload);
    let enc = e.encode().unwrap();
    let leaf = e.leaf_hash().unwrap();
    let mut framed = Vec::new();
    encode_entry_record(
        &mut framed,
        &enc,
        &leaf,
        PayloadState::Present,
        Some(&salt),
        payload,
    );
    let b = fs::read(&p).unwrap();
    let mut out = b[..start as usize].to_vec();
    out.extend_from_slice(&framed);
    out.extend_from_slice(&b[end as usize..]);
    fs::write(&p, out).unwrap();
    assert_eq!(list_segments(&d.join("logs/orders")).unwrap().len(), 3);
}

/// A log cut at its end, segments and checkpoints together, looks like a
/// shorter log: only a checkpoint held outside the store (a buyer's
/// receipt, an auditor's copy) shows it, through `--since-checkpoint`.
/// Attacks: the last two segment files deleted; the same history signed
/// again with another payload (a rewrite by whoever holds the key); and
/// the held checkpoint itself forged or of a log that is not there.
#[test]
fn a_log_cut_at_its_end_is_found_against_a_checkpoint_held_outside() {
    use auditlog::verify::store::verify_data_dir_since;
    let history = |payload: &str| {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path(), vec![orders(), chats()], ManualClock::at(10));
        let mut kept = Vec::new();
        for i in 0..6 {
            let p = if i == 3 { payload } else { "x" };
            let out = f
                .engine
                .append_blocking("orders", vec![input("order:1", p)])
                .unwrap();
            kept.push(out.checkpoint);
            if i == 1 || i == 3 {
                f.engine
                    .seal_blocking("orders", SealReason::Request)
                    .unwrap();
            }
        }
        f.close();
        (dir, kept)
    };
    let (dir, kept) = history("refund approved");
    let (early, last) = (&kept[1], &kept[5]);
    let check = |d: &Path, since: &str| {
        verify_data_dir_since(d, &[signer().verifier()], Some(since)).unwrap()
    };
    assert!(check(dir.path(), last).is_valid());
    assert!(check(dir.path(), early).is_valid());

    // The open segment cut (entries 4-5 and their checkpoints): the rest
    // verifies alone, and only the held checkpoint shows the cut.
    let cut = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), cut.path());
    fs::remove_file(seg_path(cut.path(), "orders", 2)).unwrap();
    assert!(verify(cut.path()).is_valid(), "the cut is invisible alone");
    let report = check(cut.path(), last);
    expect(&report, Verdict::Truncated, Some(4), None, "since");
    assert!(check(cut.path(), &kept[3]).is_valid());

    // Cut further, through a sealed segment (entries 2-5): the system log
    // still records segment 1's seal, so this shows even alone.
    fs::remove_file(seg_path(cut.path(), "orders", 1)).unwrap();
    expect(
        &verify(cut.path()),
        Verdict::Truncated,
        Some(4),
        Some(1),
        "seal",
    );
    let report = check(cut.path(), last);
    expect(&report, Verdict::Truncated, Some(2), None, "since");

    // A rewrite signed with the genuine key: valid alone, not against the
    // checkpoint held from the genuine history.
    let (rewritten, _) = history("refund denied");
    assert!(verify(rewritten.path()).is_valid());
    let report = check(rewritten.path(), last);
    expect(&report, Verdict::HashMismatch, Some(6), None, "since");
    // (Each entry's payload commitment is salted at random, so even the
    // entries the rewrite left alone hash differently: it fails against
    // any checkpoint held from the genuine history.)
    expect(
        &check(rewritten.path(), early),
        Verdict::HashMismatch,
        Some(2),
        None,
        "since",
    );

    // A seal that no longer opens is reported as such, not as a cut: the
    // system log's record of it finds its segment there.
    let resigned = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), resigned.path());
    replace_seal(resigned.path(), 1, |text| {
        note::sign(text, &[&other_signer()]).unwrap()
    });
    let report = verify(resigned.path());
    expect(&report, Verdict::UnknownKey, None, Some(1), "seal");
    assert!(!report.has(Verdict::Truncated), "{:?}", report.findings);

    // A seal signed again by the genuine key with other contents opens,
    // and is not the seal the system log recorded.
    replace_seal(resigned.path(), 1, |text| {
        note::sign(&text.replace("reason request", "reason age"), &[&signer()]).unwrap()
    });
    expect(
        &verify(resigned.path()),
        Verdict::HashMismatch,
        None,
        Some(1),
        "seal",
    );
    // A whole log gone: the system log's records of its seals name it.
    let gone = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), gone.path());
    fs::remove_dir_all(gone.path().join("logs").join("orders")).unwrap();
    let report = verify(gone.path());
    expect(&report, Verdict::MissingEntry, None, Some(0), "seal");
    expect(&report, Verdict::MissingEntry, None, Some(1), "seal");

    // The held checkpoint must open under a trusted key, and be of a log
    // the store has.
    let forged = note::sign(&last[..last.find("\n\n").unwrap() + 1], &[&other_signer()]).unwrap();
    let report = check(dir.path(), &forged);
    expect(&report, Verdict::UnknownKey, None, None, "since");
    let elsewhere = {
        let d = tempfile::tempdir().unwrap();
        let f = open(
            d.path(),
            vec![LogConfig::new("gone", "audit.example.com/gone")],
            ManualClock::at(10),
        );
        let cp = f
            .engine
            .append_blocking("gone", vec![input("order:1", "x")])
            .unwrap()
            .checkpoint;
        f.close();
        cp
    };
    let report = check(dir.path(), &elsewhere);
    expect(&report, Verdict::MissingEntry, Some(1), None, "since");

    // The command line takes it too, with exit code 1.
    let key = cut.path().join("verifier.pub");
    fs::write(&key, format!("{}\n", signer().verifier().to_text())).unwrap();
    let held = cut.path().join("held.checkpoint");
    fs::write(&held, last).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlog"))
        .arg("verify")
        .arg("--data-dir")
        .arg(cut.path())
        .arg("--key")
        .arg(&key)
        .arg("--since-checkpoint")
        .arg(&held)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("TRUNCATED") && stdout.contains("field=since"),
        "{stdout}"
    );
}
