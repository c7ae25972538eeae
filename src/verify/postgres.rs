//! Verification of a PostgreSQL store from its rows alone (what `auditlog
//! verify --store postgres://... --key K` runs).
//!
//! The rows of each log are read in seq order and fed, segment by segment,
//! to the same per-record checks as segment files ([`super::store`]): the
//! chain, time order, every checkpoint's signature and root, every seal's
//! signature, chain, range, span and roots. What only a database can get
//! wrong is checked here: a row's leaf hash column against its encoding,
//! its payload against the commitment, its seq column against the entry's,
//! the derived columns (subject, actor, key, time, segment) against the
//! entry, the head row against the entries, and every stored tree node
//! against the nodes recomputed from the leaves.
//!
//! Invariant: trusts nothing in the database but what the keys passed in
//! (and transitions they signed) vouch for; every discrepancy is a finding
//! naming log, seq or segment, and field.

use tokio_postgres::Client;

use super::store::{check_recorded_seals, follow_keys, FoundSeals, LogCheck, RecordedSeal};
use super::{Anchor, Report, Verdict};
use crate::core::entry::{commit_payload, leaf_hash_of_encoding, Entry, Salt};
use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::CompactRange;
use crate::core::note::VerifierKey;
use crate::engine::admin::{transition_of, ROTATE_KIND, SYSTEM_LOG};
use crate::store::postgres::with_connection;
use crate::store::segment::{EntryRecord, PayloadState, Record, SegmentHeader};
use crate::store::StoreError;

/// Rows read per query.
const PAGE: i64 = 5000;
/// Node findings reported per log before the rest are only counted.
const MAX_NODE_FINDINGS: usize = 20;

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Verifies every log of the database at `url`.
///
/// # Errors
/// Connection or query failures (problems with contents are findings).
pub fn verify_postgres(url: &str, keys: &[VerifierKey]) -> Result<Report, StoreError> {
    verify_postgres_logs(url, keys, None)
}

/// [`verify_postgres`], and with `since` (a signed checkpoint held outside
/// the store: see [`Anchor`]) also that the log of its origin extends it.
///
/// # Errors
/// Connection or query failures (problems with contents are findings).
pub fn verify_postgres_since(
    url: &str,
    keys: &[VerifierKey],
    since: Option<&str>,
) -> Result<Report, StoreError> {
    run(url, keys, None, since)
}

/// Verifies one log (`only`) or every log of the database at `url`.
///
/// # Errors
/// Connection or query failures (problems with contents are findings).
pub fn verify_postgres_logs(
    url: &str,
    keys: &[VerifierKey],
    only: Option<&str>,
) -> Result<Report, StoreError> {
    run(url, keys, only, None)
}

fn run(
    url: &str,
    keys: &[VerifierKey],
    only: Option<&str>,
    since: Option<&str>,
) -> Result<Report, StoreError> {
    let (keys, only, since) = (
        keys.to_vec(),
        only.map(str::to_owned),
        since.map(str::to_owned),
    );
    with_connection(url, move |client| async move {
        verify_client(&client, &keys, only.as_deref(), since.as_deref()).await
    })
}

async fn verify_client(
    client: &Client,
    keys: &[VerifierKey],
    only: Option<&str>,
    since: Option<&str>,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    // Keys: the caller's, extended along the key transitions in _system.
    let mut transitions = Vec::new();
    let mut recorded = Vec::new();
    let rows = client
        .query(
            "SELECT seq, encoding, payload FROM auditlog_entries WHERE log = $1 \
             AND payload_state = 0 ORDER BY seq",
            &[&SYSTEM_LOG],
        )
        .await
        .map_err(db)?;
    for r in rows {
        let Ok(e) = Entry::decode(r.get::<_, &[u8]>(1)) else {
            continue;
        };
        let payload: Option<Vec<u8>> = r.get(2);
        if let Some(s) = payload
            .as_deref()
            .and_then(|p| RecordedSeal::of(e.seq, &e.kind, p))
        {
            recorded.push(s);
        }
        if e.kind != ROTATE_KIND {
            continue;
        }
        match payload.as_deref().and_then(transition_of) {
            Some((t, _)) => transitions.push(t),
            None => report.add(
                Verdict::BadSignature,
                SYSTEM_LOG,
                Some(e.seq),
                None,
                "transition",
                "a key.rotate entry whose transition does not open",
            ),
        }
    }
    let trust = follow_keys(keys, &transitions, &mut report);
    let anchor = since.and_then(|text| Anchor::open(text, &trust.keys, &mut report));
    let mut anchored = false;
    let mut seals = std::collections::HashMap::new();

    let logs = client
        .query(
            "SELECT name, origin, size, prev_leaf, frontier, latest_checkpoint \
             FROM auditlog_logs ORDER BY name",
            &[],
        )
        .await
        .map_err(db)?;
    for l in logs {
        let name: String = l.get(0);
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let head = Head {
            origin: l.get(1),
            size: u64::try_from(l.get::<_, i64>(2)).unwrap_or(u64::MAX),
            prev_leaf: l.get(3),
            frontier: l.get(4),
            latest_checkpoint: l.get(5),
        };
        let (with_anchor, found) = verify_log(
            client,
            &name,
            &head,
            LogCheck::new(&name, &trust.keys).anchored(anchor.as_ref()),
            &mut report,
        )
        .await?;
        anchored |= with_anchor;
        seals.insert(name, found);
    }
    if let (Some(a), false) = (&anchor, anchored) {
        a.no_log(&mut report);
    }
    // With one log asked for, only its seals are looked for.
    recorded.retain(|r| only.is_none_or(|o| o == r.log));
    check_recorded_seals(&recorded, &seals, &mut report);
    Ok(report)
}

/// The head row of a log, as stored.
struct Head {
    origin: String,
    size: u64,
    prev_leaf: Vec<u8>,
    frontier: Vec<u8>,
    latest_checkpoint: Option<String>,
}

struct Segment {
    index: u64,
    first_seq: u64,
    span_from: i64,
    end_seq: Option<u64>,
    seal: Option<String>,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Verifies one log with `check`; returns whether it is of `check`'s
/// anchor's origin, and the seals found.
async fn verify_log(
    client: &Client,
    log: &str,
    head: &Head,
    mut check: LogCheck<'_>,
    report: &mut Report,
) -> Result<(bool, FoundSeals), StoreError> {
    let segments: Vec<Segment> = client
        .query(
            "SELECT segment, first_seq, span_from, end_seq, seal FROM auditlog_segments \
             WHERE log = $1 ORDER BY segment",
            &[&log],
        )
        .await
        .map_err(db)?
        .into_iter()
        .map(|r| Segment {
            index: u(r.get(0)),
            first_seq: u(r.get(1)),
            span_from: r.get(2),
            end_seq: r.get::<_, Option<i64>>(3).map(u),
            seal: r.get(4),
        })
        .collect();
    let checkpoints: Vec<(u64, String)> = client
        .query(
            "SELECT size, note FROM auditlog_checkpoints WHERE log = $1 ORDER BY size",
            &[&log],
        )
        .await
        .map_err(db)?
        .into_iter()
        .map(|r| (u(r.get(0)), r.get(1)))
        .collect();
    let mut cps = checkpoints.iter().peekable();
    // Every perfect node the leaves make, to compare with the stored ones.
    let mut nodes_tree = CompactRange::<Blake3>::new();
    let mut expected_nodes: Vec<(i16, i64, Hash)> = Vec::new();
    let mut rows = RowPager::new(log);
    let mut pending_row = rows.next(client).await?;
    let mut last_cp_note: Option<String> = None;
    let mut emit_checkpoints_upto =
        |check: &mut LogCheck<'_>,
         seg: &mut super::store::SegState,
         upto: u64,
         report: &mut Report,
         last: &mut Option<String>| {
            while let Some((size, note)) = cps.peek() {
                if *size > upto {
                    break;
                }
                check.record(
                    seg,
                    &format!("checkpoint row of size {size}"),
                    Record::Checkpoint(note.clone()),
                    report,
                );
                *last = Some(note.clone());
                cps.next();
            }
        };
    let mut expected_segment = 0u64;
    for (i, s) in segments.iter().enumerate() {
        if s.index != expected_segment {
            report.add(
                Verdict::MissingEntry,
                log,
                None,
                Some(expected_segment),
                "segment",
                format!(
                    "segment rows {expected_segment} to {} are missing",
                    s.index.saturating_sub(1)
                ),
            );
        }
        expected_segment = s.index + 1;
        let last = i + 1 == segments.len();
        let end = s.end_seq.unwrap_or(head.size);
        let mut seg = check.start_segment(s.index);
        check.record(
            &mut seg,
            "segment row",
            Record::Header(SegmentHeader {
                segment: s.index,
                first_seq: s.first_seq,
                span_from: s.span_from,
                origin: head.origin.clone(),
            }),
            report,
        );
        while let Some(row) = pending_row.take() {
            if row.seq >= end && !last {
                pending_row = Some(row);
                break;
            }
            emit_checkpoints_upto(&mut check, &mut seg, row.seq, report, &mut last_cp_note);
            let row_seq = row.seq;
            if let Some(record) = row.check(log, s.index, report) {
                if let Record::Entry(e) = &record {
                    nodes_tree.append(e.leaf_hash, |id, h| {
                        if id.level > 0 {
                            expected_nodes.push((
                                i16::from(id.level),
                                i64::try_from(id.index).unwrap_or(i64::MAX),
                                h,
                            ));
                        }
                    });
                }
                check.record(&mut seg, &format!("row of seq {row_seq}"), record, report);
            }
            pending_row = rows.next(client).await?;
        }
        emit_checkpoints_upto(&mut check, &mut seg, end, report, &mut last_cp_note);
        if let Some(text) = &s.seal {
            check.record(&mut seg, "seal", Record::Seal(text.clone()), report);
        }
        // In a database every batch commits with its checkpoint: entries
        // no checkpoint covers are a finding even in the last segment.
        let sealed = check.end_segment(seg, false, report);
        if !sealed && !last {
            report.add(
                Verdict::Truncated,
                log,
                None,
                Some(s.index),
                "seal",
                format!(
                    "segment {} has no seal, yet segment {} exists",
                    s.index,
                    s.index + 1
                ),
            );
        }
    }
    for (size, _) in cps {
        report.add(
            Verdict::Malformed,
            log,
            Some(*size),
            None,
            "checkpoint",
            format!("checkpoint row of size {size} beyond the log's entries"),
        );
    }
    // The head row: what the next append extends.
    let size = check.size();
    let mut head_bad = |detail: String| {
        report.add(Verdict::Malformed, log, Some(size), None, "head", detail);
    };
    if head.size != size {
        head_bad(format!(
            "the head row says {} entries, the table holds {size}",
            head.size
        ));
    }
    if head.frontier != check.frontier_bytes() {
        head_bad("the head row's tree frontier is not the entries' tree".into());
    }
    if head.prev_leaf != check.prev_leaf_bytes() {
        head_bad("the head row's previous leaf is not the last entry's".into());
    }
    if head.latest_checkpoint != last_cp_note {
        head_bad("the head row's latest checkpoint is not the last checkpoint row".into());
    }
    check_nodes(client, log, expected_nodes, report).await?;
    Ok((check.finish_anchor(report), check.seals))
}

/// Compares the stored tree nodes with those recomputed from the leaves.
async fn check_nodes(
    client: &Client,
    log: &str,
    mut expected: Vec<(i16, i64, Hash)>,
    report: &mut Report,
) -> Result<(), StoreError> {
    expected.sort_unstable_by_key(|(l, i, _)| (*l, *i));
    let stored = client
        .query(
            "SELECT level, index, hash FROM auditlog_nodes WHERE log = $1 ORDER BY level, index",
            &[&log],
        )
        .await
        .map_err(db)?;
    let mut findings = 0usize;
    let mut add = |report: &mut Report, v: Verdict, detail: String| {
        findings += 1;
        if findings <= MAX_NODE_FINDINGS {
            report.add(v, log, None, None, "node", detail);
        }
    };
    let mut want = expected.iter().peekable();
    for r in &stored {
        let (level, index, hash): (i16, i64, &[u8]) = (r.get(0), r.get(1), r.get(2));
        while let Some((l, i, _)) = want.peek() {
            if (*l, *i) < (level, index) {
                add(
                    report,
                    Verdict::MissingEntry,
                    format!("tree node level {l} index {i} is missing"),
                );
                want.next();
            } else {
                break;
            }
        }
        match want.peek() {
            Some((l, i, h)) if (*l, *i) == (level, index) => {
                if hash != h.0.as_slice() {
                    add(
                        report,
                        Verdict::HashMismatch,
                        format!("tree node level {level} index {index} differs from the hash of its leaves"),
                    );
                }
                want.next();
            }
            _ => add(
                report,
                Verdict::Malformed,
                format!("tree node level {level} index {index} is not a node of the log's tree"),
            ),
        }
    }
    for (l, i, _) in want {
        add(
            report,
            Verdict::MissingEntry,
            format!("tree node level {l} index {i} is missing"),
        );
    }
    if findings > MAX_NODE_FINDINGS {
        report.add(
            Verdict::HashMismatch,
            log,
            None,
            None,
            "node",
            format!("{} more tree node findings", findings - MAX_NODE_FINDINGS),
        );
    }
    Ok(())
}

/// One entry row as stored.
struct Row {
    seq: u64,
    encoding: Vec<u8>,
    leaf_hash: Vec<u8>,
    state: i16,
    salt: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    subject: String,
    actor: String,
    key: Option<String>,
    timestamp: i64,
    segment: i64,
}

impl Row {
    /// Checks what only a row can get wrong; returns the record to feed to
    /// the log checks (with the leaf hash of the encoding as stored).
    fn check(self, log: &str, segment: u64, report: &mut Report) -> Option<Record> {
        let seq = Some(self.seq);
        let seg = Some(segment);
        let leaf = leaf_hash_of_encoding(&self.encoding);
        if self.leaf_hash.as_slice() != leaf.0.as_slice() {
            report.add(
                Verdict::HashMismatch,
                log,
                seq,
                seg,
                "entry",
                "the leaf hash column is not the hash of the stored encoding",
            );
        }
        let entry = match Entry::decode(&self.encoding) {
            Ok(e) => e,
            Err(e) => {
                report.add(Verdict::Malformed, log, seq, seg, "entry", e.to_string());
                return None;
            }
        };
        if entry.seq != self.seq {
            report.add(
                Verdict::ChainBroken,
                log,
                seq,
                seg,
                "seq",
                format!(
                    "the row of seq {} holds entry {} (reordered)",
                    self.seq, entry.seq
                ),
            );
        }
        let derived: [(&str, bool); 5] = [
            ("subject", self.subject != entry.subject),
            ("actor", self.actor != entry.actor),
            (
                "idempotency_key",
                self.key.as_deref().unwrap_or("") != entry.idempotency_key,
            ),
            ("timestamp", self.timestamp != entry.timestamp_unix_nanos),
            ("segment", u64::try_from(self.segment).ok() != Some(segment)),
        ];
        for (field, differs) in derived {
            if differs {
                report.add(
                    Verdict::Malformed,
                    log,
                    seq,
                    seg,
                    field,
                    format!(
                        "the {field} column differs from the entry (look-ups by it would be wrong)"
                    ),
                );
            }
        }
        let Some(state) = u8::try_from(self.state)
            .ok()
            .and_then(PayloadState::from_u8)
        else {
            report.add(
                Verdict::Malformed,
                log,
                seq,
                seg,
                "payload_state",
                format!("unknown payload state {}", self.state),
            );
            return None;
        };
        let (salt, payload) = match state {
            PayloadState::Present => {
                let salt = self
                    .salt
                    .as_deref()
                    .and_then(|s| <[u8; 32]>::try_from(s).ok())
                    .map(Salt);
                let payload = self.payload.unwrap_or_default();
                let ok = salt.is_some_and(|s| {
                    payload.len() as u64 == entry.payload_len
                        && commit_payload(&s, &payload) == entry.payload_commitment
                });
                if !ok {
                    report.add(
                        Verdict::HashMismatch,
                        log,
                        seq,
                        seg,
                        "payload",
                        "payload does not match its commitment",
                    );
                }
                (salt, payload)
            }
            _ => {
                if self.salt.is_some() || self.payload.is_some_and(|p| !p.is_empty()) {
                    report.add(
                        Verdict::Malformed,
                        log,
                        seq,
                        seg,
                        "payload",
                        "a removed payload still has bytes",
                    );
                }
                (None, Vec::new())
            }
        };
        Some(Record::Entry(EntryRecord {
            encoding: self.encoding,
            leaf_hash: leaf,
            state,
            salt,
            payload,
        }))
    }
}

/// Reads a log's entry rows in seq order, a page at a time.
struct RowPager {
    log: String,
    after: Option<i64>,
    page: std::vec::IntoIter<Row>,
    done: bool,
}

impl RowPager {
    fn new(log: &str) -> RowPager {
        RowPager {
            log: log.to_owned(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    async fn next(&mut self, client: &Client) -> Result<Option<Row>, StoreError> {
        if let Some(r) = self.page.next() {
            return Ok(Some(r));
        }
        if self.done {
            return Ok(None);
        }
        let after = self.after.unwrap_or(i64::MIN);
        let rows = client
            .query(
                "SELECT seq, encoding, leaf_hash, payload_state, salt, payload, subject, actor, \
                 idempotency_key, timestamp_unix_nanos, segment FROM auditlog_entries \
                 WHERE log = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&self.log, &after, &PAGE],
            )
            .await
            .map_err(db)?;
        if (rows.len() as i64) < PAGE {
            self.done = true;
        }
        let page: Vec<Row> = rows
            .into_iter()
            .map(|r| Row {
                seq: u(r.get(0)),
                encoding: r.get(1),
                leaf_hash: r.get(2),
                state: r.get(3),
                salt: r.get(4),
                payload: r.get(5),
                subject: r.get(6),
                actor: r.get(7),
                key: r.get(8),
                timestamp: r.get(9),
                segment: r.get(10),
            })
            .collect();
        if let Some(last) = page.last() {
            self.after = Some(i64::try_from(last.seq).unwrap_or(i64::MAX));
        }
        self.page = page.into_iter();
        Ok(self.page.next())
    }
}
