//! Administration of the logs: legal holds, erasure, retention expiry, and
//! the system log `_system` that records each of them.
//!
//! Every administrative act is appended to `_system`, durably and before
//! it takes effect (for erasure and expiry: what is planned), so a crash
//! can leave a record of an act not yet done, never an act nobody
//! recorded; the log audits its own administration with the same hash
//! chain, tree and signatures as any other log. Holds live in memory and
//! are rebuilt from `_system` on start: the system log is their only
//! source of truth.
//!
//! Invariants:
//! - A held entry (its log held whole, or its subject held in its log or in
//!   every log) is neither expired nor erased.
//! - A log with `erasable = false` (and `_system`) never has a payload
//!   erased; retention expiry still applies to it.
//! - Payload removal goes through [`Store::remove_payloads`]: leaf hashes,
//!   commitments, metadata and seals stay, so every proof still verifies.
//! - Administrative acts run one at a time (a hold placed while an expiry
//!   runs takes effect before or after it, never halfway).
//! - A key rotation is durable in `_system` (signed by the old key, the
//!   transition note inside signed by both) before any checkpoint or seal
//!   is signed with the new key.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::core::note::{self, SignerKey, VerifierKey};
use crate::core::seal::{RetainUntil, Seal, SealReason};
use crate::core::transition::KeyTransition;
use crate::store::{PayloadState, Removal, StoreError};

use super::input::{AppendError, EntryInput};
use super::{Engine, LogConfig, ReadError};

/// Name of the system log.
pub const SYSTEM_LOG: &str = "_system";

/// Name of the access log: who read, exported, verified or administered
/// what (written by the service).
pub const ACCESS_LOG: &str = "_access";

/// Actor recorded for acts of the retention job.
pub const RETENTION_ACTOR: &str = "retention";

/// Origin of the system log: the host part of the first configured log's
/// origin, then `/_system`.
#[must_use]
pub fn system_origin(configs: &[LogConfig]) -> String {
    own_origin(configs, SYSTEM_LOG)
}

/// Origin of one of the server's own logs (`_system`, `_access`): the host
/// part of the first configured log's origin, then `/` and its name.
#[must_use]
pub fn own_origin(configs: &[LogConfig], name: &str) -> String {
    let host = configs
        .iter()
        .find(|c| !c.name.starts_with('_'))
        .and_then(|c| c.origin.split('/').next())
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    format!("{host}/{name}")
}

/// A legal hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Identifier (`hold-` and 12 hex digits).
    pub id: String,
    /// The log held, or every log.
    pub log: Option<String>,
    /// The subject held, or every entry of the log(s).
    pub subject: Option<String>,
    /// Case the hold is for.
    pub case_id: String,
    /// Why.
    pub reason: String,
    /// When it was placed (Unix nanoseconds).
    pub placed_unix_nanos: i64,
    /// Who placed it.
    pub placed_by: String,
    /// Seq of the `hold.place` entry in `_system`.
    #[serde(default)]
    pub system_seq: u64,
}

impl Hold {
    /// Whether the hold keeps an entry about `subject` in `log`.
    #[must_use]
    pub fn covers(&self, log: &str, subject: &str) -> bool {
        self.log.as_deref().is_none_or(|l| l == log)
            && self.subject.as_deref().is_none_or(|s| s == subject)
    }

    /// Whether the hold keeps every entry of `log`.
    #[must_use]
    pub fn covers_log(&self, log: &str) -> bool {
        self.subject.is_none() && self.log.as_deref().is_none_or(|l| l == log)
    }
}

/// What to erase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every entry about a subject.
    Subject(String),
    /// Every entry by an actor.
    Actor(String),
}

/// The answer of an erasure for one log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogErasure {
    /// Log.
    pub log: String,
    /// Entries matching the request.
    pub matched: u64,
    /// Entries whose payload was removed now.
    pub erased: u64,
    /// Entries whose payload was already gone (erased or expired before).
    pub already_removed: u64,
    /// Entries kept.
    pub refused: u64,
    /// Why entries were kept (empty when none were).
    pub refused_reason: String,
    /// Bytes reclaimed on disk.
    pub bytes: u64,
}

/// What retention did (or would do) in one log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogExpiry {
    /// Log.
    pub log: String,
    /// Segments rewritten (or that would be).
    pub segments: u64,
    /// Entries whose payload was removed (or would be).
    pub entries: u64,
    /// Bytes reclaimed (or payload bytes that would be).
    pub bytes: u64,
    /// Entries past retention kept by a legal hold.
    pub held: u64,
}

/// Errors of administrative acts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such log or hold.
    #[error("{0}")]
    NotFound(String),
    /// Recording the act in `_system` failed.
    #[error("recording in {SYSTEM_LOG}: {0}")]
    Record(#[from] AppendError),
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store failed or refused a log.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Administrative state of an engine.
#[derive(Default)]
pub(super) struct AdminState {
    holds: RwLock<BTreeMap<String, Hold>>,
    /// One act at a time.
    acting: Mutex<()>,
    /// Expired segments with nothing left to remove: (log, segment).
    done: Mutex<HashSet<(String, u64)>>,
    /// Key transitions recorded in `_system`, oldest first, with their
    /// signed notes.
    transitions: RwLock<Vec<(KeyTransition, String)>>,
}

/// What a key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// The retired key.
    pub from: VerifierKey,
    /// The key that signs from now on.
    pub to: VerifierKey,
    /// The transition note, signed by both keys.
    pub transition: String,
    /// Seq of the `key.rotate` entry in `_system`.
    pub system_seq: u64,
}

/// Kind of the `_system` entry that records a seal.
pub const SEAL_KIND: &str = "seal";

/// The system entry that records a seal.
pub(super) fn seal_entry(log: &str, seal: &Seal) -> EntryInput {
    system_entry(
        &format!("log:{log}"),
        "sequencer",
        SEAL_KIND,
        &json!({
            "log": log,
            "segment": seal.segment,
            "first_seq": seal.first_seq,
            "end_seq": seal.end_seq,
            "span_from": seal.span_from,
            "span_to": seal.span_to,
            "reason": seal.reason.as_str(),
            "retain_until": match seal.retain_until {
                RetainUntil::Forever => json!("forever"),
                RetainUntil::At(t) => json!(t),
            },
            "seal_hash": seal.hash().to_hex(),
        }),
    )
}

fn system_entry(subject: &str, actor: &str, kind: &str, body: &serde_json::Value) -> EntryInput {
    EntryInput {
        subject: subject.to_owned(),
        actor: if actor.is_empty() { "operator" } else { actor }.to_owned(),
        kind: kind.to_owned(),
        content_type: "application/json".into(),
        payload: body.to_string().into_bytes(),
        ..Default::default()
    }
}

/// Kind of the `_system` entry that records a key rotation.
pub const ROTATE_KIND: &str = "key.rotate";

/// The transition a `key.rotate` payload carries, if it opens.
pub fn transition_of(payload: &[u8]) -> Option<(KeyTransition, String)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let note = v.get("transition")?.as_str()?.to_owned();
    let t = KeyTransition::open(&note).ok()?;
    Some((t, note))
}

fn parse_seal_text(signed: &str) -> Option<Seal> {
    let (text, _) = note::parse(signed).ok()?;
    Seal::from_text(&text).ok()
}

fn new_hold_id() -> Result<String, AdminError> {
    let mut b = [0u8; 6];
    crate::keys::fill_random(&mut b).map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(format!("hold-{}", hex::encode(b)))
}

impl Engine {
    /// Appends a system entry and waits until it is durable: its seq.
    fn record(&self, entry: EntryInput) -> Result<u64, AdminError> {
        let out = self.append_blocking(SYSTEM_LOG, vec![entry])?;
        Ok(out.receipts[0].seq)
    }

    /// Rebuilds the holds and the key transitions from `_system`.
    pub(super) fn load_admin_state(&self) -> Result<(), StoreError> {
        let Some((size, _)) = self.checkpoint(SYSTEM_LOG).ok().flatten() else {
            return Ok(());
        };
        let mut holds = BTreeMap::new();
        let mut transitions = Vec::new();
        for seq in 0..size {
            let Some(stored) = self.store.entry(SYSTEM_LOG, seq)? else {
                continue;
            };
            let e = &stored.entry;
            match e.kind.as_str() {
                "hold.place" => {
                    if let Ok(mut h) = serde_json::from_slice::<Hold>(&stored.payload) {
                        h.system_seq = seq;
                        holds.insert(h.id.clone(), h);
                    }
                }
                "hold.release" => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&stored.payload) {
                        if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
                            holds.remove(id);
                        }
                    }
                }
                ROTATE_KIND => {
                    if let Some((t, note)) = transition_of(&stored.payload) {
                        transitions.push((t, note));
                    }
                }
                _ => {}
            }
        }
        *self.admin.holds.write().expect("holds lock") = holds;
        *self.admin.transitions.write().expect("transitions lock") = transitions;
        Ok(())
    }

    /// The verifier key of the key signing now.
    pub fn verifier(&self) -> VerifierKey {
        self.signer.read().expect("signer lock").verifier()
    }

    /// Every key this server is known to have signed with: the current one
    /// and, going back along recorded transitions, each key it replaced.
    pub fn signing_history(&self) -> Vec<VerifierKey> {
        let transitions = self.admin.transitions.read().expect("transitions lock");
        let mut keys = vec![self.verifier()];
        while let Some((t, _)) = transitions
            .iter()
            .find(|(t, _)| keys.last() == Some(&t.to) && !keys.contains(&t.from))
        {
            keys.push(t.from.clone());
        }
        keys.reverse();
        keys
    }

    /// The signed key transition notes recorded in `_system`, oldest first
    /// (what an evidence bundle carries so old-key holders can follow).
    pub fn key_transitions(&self) -> Vec<String> {
        let transitions = self.admin.transitions.read().expect("transitions lock");
        transitions.iter().map(|(_, n)| n.clone()).collect()
    }

    /// Rotates the signing key: records in `_system` a transition from the
    /// current key to `new`, signed by both, and only once it is durable
    /// signs everything after with `new`.
    ///
    /// # Errors
    /// `new` is the current key; recording failed (the old key stays).
    pub fn rotate_key(&self, new: SignerKey, by: &str) -> Result<RotatedKey, AdminError> {
        let _one = self.admin.acting.lock().expect("admin lock");
        let old = self.signer.read().expect("signer lock").clone();
        let t = KeyTransition {
            from: old.verifier(),
            to: new.verifier(),
            time_unix_nanos: self.now(),
        };
        if t.from == t.to {
            return Err(AdminError::Invalid(
                "the new key is the key signing now".into(),
            ));
        }
        let signed = t
            .sign(&old, &new)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        let system_seq = self.record(system_entry(
            &format!("key:{}", t.to.to_text()),
            by,
            ROTATE_KIND,
            &json!({
                "from": t.from.to_text(),
                "to": t.to.to_text(),
                "time_unix_nanos": t.time_unix_nanos,
                "transition": signed,
            }),
        ))?;
        *self.signer.write().expect("signer lock") = Arc::new(new);
        self.admin
            .transitions
            .write()
            .expect("transitions lock")
            .push((t.clone(), signed.clone()));
        tracing::warn!(
            from = %t.from.to_text(),
            to = %t.to.to_text(),
            by,
            system_seq,
            "signing key rotated"
        );
        Ok(RotatedKey {
            from: t.from,
            to: t.to,
            transition: signed,
            system_seq,
        })
    }

    /// Signs with `key` from now on, if `_system` records a transition from
    /// the current key to it (finishing a rotation interrupted after it was
    /// recorded). Returns whether it did.
    pub fn adopt_rotated_key(&self, key: SignerKey) -> bool {
        let current = self.verifier();
        let recorded = self
            .admin
            .transitions
            .read()
            .expect("transitions lock")
            .iter()
            .any(|(t, _)| t.from == current && t.to == key.verifier());
        if recorded {
            *self.signer.write().expect("signer lock") = Arc::new(key);
        }
        recorded
    }

    fn check_log(&self, log: &str) -> Result<(), AdminError> {
        if self.logs.contains_key(log) {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!("unknown log {log:?}")))
        }
    }

    /// Places a legal hold on a subject (or, with `subject: None`, on every
    /// entry) of one log (or, with `log: None`, of every log). Recorded in
    /// `_system` before it takes effect.
    ///
    /// # Errors
    /// Missing case or reason, unknown log, recording failure.
    pub fn place_hold(
        &self,
        log: Option<&str>,
        subject: Option<&str>,
        case_id: &str,
        reason: &str,
        by: &str,
    ) -> Result<Hold, AdminError> {
        if case_id.trim().is_empty() || reason.trim().is_empty() {
            return Err(AdminError::Invalid(
                "a hold needs a case id and a reason".into(),
            ));
        }
        if subject.is_some_and(str::is_empty) {
            return Err(AdminError::Invalid(
                "subject is empty (hold a whole log instead?)".into(),
            ));
        }
        if let Some(l) = log {
            self.check_log(l)?;
        }
        let _acting = self.admin.acting.lock().expect("acting lock");
        let mut hold = Hold {
            id: new_hold_id()?,
            log: log.map(str::to_owned),
            subject: subject.map(str::to_owned),
            case_id: case_id.to_owned(),
            reason: reason.to_owned(),
            placed_unix_nanos: self.clock.now(),
            placed_by: by.to_owned(),
            system_seq: 0,
        };
        let body = serde_json::to_value(&hold).map_err(|e| AdminError::Invalid(e.to_string()))?;
        hold.system_seq = self.record(system_entry(
            &format!("hold:{}", hold.id),
            by,
            "hold.place",
            &body,
        ))?;
        self.admin
            .holds
            .write()
            .expect("holds lock")
            .insert(hold.id.clone(), hold.clone());
        tracing::info!(
            id = %hold.id,
            log = hold.log.as_deref().unwrap_or("*"),
            subject = hold.subject.as_deref().unwrap_or("*"),
            case = %hold.case_id,
            by,
            "legal hold placed"
        );
        Ok(hold)
    }

    /// Releases a hold. Recorded in `_system`.
    ///
    /// # Errors
    /// Unknown hold, recording failure.
    pub fn release_hold(&self, id: &str, reason: &str, by: &str) -> Result<Hold, AdminError> {
        let _acting = self.admin.acting.lock().expect("acting lock");
        let hold = self
            .admin
            .holds
            .read()
            .expect("holds lock")
            .get(id)
            .cloned()
            .ok_or_else(|| AdminError::NotFound(format!("no hold {id:?}")))?;
        self.record(system_entry(
            &format!("hold:{id}"),
            by,
            "hold.release",
            &json!({ "id": id, "case_id": hold.case_id, "reason": reason }),
        ))?;
        self.admin.holds.write().expect("holds lock").remove(id);
        tracing::info!(id, case = %hold.case_id, by, "legal hold released");
        Ok(hold)
    }

    /// Holds in force, for one log (those that can touch it) or all.
    #[must_use]
    pub fn holds(&self, log: Option<&str>) -> Vec<Hold> {
        self.admin
            .holds
            .read()
            .expect("holds lock")
            .values()
            .filter(|h| log.is_none_or(|l| h.log.as_deref().is_none_or(|hl| hl == l)))
            .cloned()
            .collect()
    }

    fn held<'a>(holds: &'a [Hold], log: &str, subject: &str) -> Option<&'a Hold> {
        holds.iter().find(|h| h.covers(log, subject))
    }

    /// Erases the payloads of every entry about a subject or by an actor,
    /// in one log or every log (the system log excepted), except where a
    /// hold or the log's policy refuses it. The open segment is sealed
    /// first when it holds a target. The request and its outcome are
    /// recorded in `_system`.
    ///
    /// # Errors
    /// Unknown log, store failure, recording failure.
    pub fn erase(
        &self,
        log: Option<&str>,
        target: &Target,
        by: &str,
    ) -> Result<Vec<LogErasure>, AdminError> {
        let (what, value) = match target {
            Target::Subject(s) => ("subject", s),
            Target::Actor(a) => ("actor", a),
        };
        if value.is_empty() {
            return Err(AdminError::Invalid(format!("{what} is empty")));
        }
        let logs: Vec<String> = match log {
            Some(l) => {
                self.check_log(l)?;
                if l.starts_with('_') {
                    return Err(AdminError::Invalid(format!(
                        "{l} is one of the server's own records ({SYSTEM_LOG}, {ACCESS_LOG}) \
                         and is never erased"
                    )));
                }
                vec![l.to_owned()]
            }
            None => self
                .logs()
                .into_iter()
                .map(|c| c.name.clone())
                .filter(|n| !n.starts_with('_'))
                .collect(),
        };
        let _acting = self.admin.acting.lock().expect("acting lock");
        let holds = self.holds(None);
        let mut plans = Vec::new();
        for log in logs {
            plans.push(self.plan_erasure(&log, target, &holds)?);
        }
        // Recorded before anything is removed: a crash midway leaves a
        // record of what was asked, never a removal nobody recorded.
        let planned: Vec<&LogErasure> = plans.iter().map(|p| &p.0).collect();
        self.record(system_entry(
            &format!("{what}:{value}"),
            by,
            "erase",
            &json!({ "log": log, what: value, "plan": planned }),
        ))?;
        let mut answers = Vec::new();
        for (mut answer, targets) in plans {
            if !targets.is_empty() {
                // Only sealed segments are rewritten: seal the open one if
                // it holds a target.
                let open_first = self
                    .store
                    .segments(&answer.log)?
                    .last()
                    .filter(|s| s.seal.is_none())
                    .map_or(u64::MAX, |s| s.first_seq);
                if targets.iter().any(|&s| s >= open_first) {
                    self.seal_blocking(&answer.log, SealReason::Request)?;
                }
                let removal =
                    self.store
                        .remove_payloads(&answer.log, &targets, PayloadState::Erased)?;
                answer.erased = removal.entries;
                answer.bytes = removal.bytes;
                crate::metrics::global().erased(&answer.log, removal.entries, removal.bytes);
            }
            tracing::info!(
                log = %answer.log,
                what,
                matched = answer.matched,
                erased = answer.erased,
                refused = answer.refused,
                bytes = answer.bytes,
                by,
                "erasure: {} of {} entries erased",
                answer.erased,
                answer.matched
            );
            answers.push(answer);
        }
        Ok(answers)
    }

    /// What an erasure would do in one log: the answer so far (matched,
    /// already removed, refused and why) and the seqs to erase.
    fn plan_erasure(
        &self,
        log: &str,
        target: &Target,
        holds: &[Hold],
    ) -> Result<(LogErasure, Vec<u64>), AdminError> {
        let seqs = match target {
            Target::Subject(s) => self.store.seqs_by_subject(log, s, 0, usize::MAX)?,
            Target::Actor(a) => self.store.seqs_by_actor(log, a, 0, usize::MAX)?,
        };
        let mut answer = LogErasure {
            log: log.to_owned(),
            matched: seqs.len() as u64,
            ..LogErasure::default()
        };
        let erasable = self.log_config(log).is_some_and(|c| c.erasable);
        let mut targets = Vec::new();
        let mut cases = Vec::new();
        for seq in seqs {
            let Some(stored) = self.store.entry(log, seq)? else {
                continue;
            };
            if stored.state != PayloadState::Present {
                answer.already_removed += 1;
            } else if !erasable {
                answer.refused += 1;
            } else if let Some(h) = Self::held(holds, log, &stored.entry.subject) {
                answer.refused += 1;
                if !cases.contains(&h.case_id) {
                    cases.push(h.case_id.clone());
                }
            } else {
                targets.push(seq);
            }
        }
        if !erasable && answer.refused > 0 {
            answer.refused_reason = format!(
                "log {log} is not erasable (erasable = false): its entries are kept for legal \
                 obligations"
            );
        } else if answer.refused > 0 {
            answer.refused_reason = format!("under legal hold (case {})", cases.join(", "));
        }
        Ok((answer, targets))
    }

    /// Expires the payloads of sealed segments whose retention ended by
    /// `now` (their seal says when), except entries under hold; with
    /// `dry_run`, only says what it would do. Unless it is a dry run or
    /// nothing was removed, the outcome is recorded in `_system`.
    ///
    /// # Errors
    /// Store failure, recording failure.
    pub fn apply_retention(
        &self,
        now: i64,
        dry_run: bool,
        by: &str,
    ) -> Result<Vec<LogExpiry>, AdminError> {
        let _acting = self.admin.acting.lock().expect("acting lock");
        let holds = self.holds(None);
        let mut out = Vec::new();
        // (log, segment, seqs) to expire once the plan is recorded.
        let mut work: Vec<(usize, u64, Vec<u64>, bool)> = Vec::new();
        for config in self.logs() {
            let log = config.name.clone();
            let mut expiry = LogExpiry {
                log: log.clone(),
                ..LogExpiry::default()
            };
            for seg in self.store.segments(&log)? {
                let Some(seal) = seg.seal.as_deref().and_then(parse_seal_text) else {
                    continue;
                };
                let RetainUntil::At(until) = seal.retain_until else {
                    continue;
                };
                if until > now || seg.first_seq == seg.end_seq {
                    continue;
                }
                if self
                    .admin
                    .done
                    .lock()
                    .expect("done lock")
                    .contains(&(log.clone(), seg.index))
                {
                    continue;
                }
                let mut targets = Vec::new();
                let mut held = 0u64;
                for seq in seg.first_seq..seg.end_seq {
                    let Some(stored) = self.store.entry(&log, seq)? else {
                        continue;
                    };
                    if stored.state != PayloadState::Present {
                        continue;
                    }
                    if Self::held(&holds, &log, &stored.entry.subject).is_some() {
                        held += 1;
                    } else {
                        targets.push(seq);
                        expiry.bytes += stored.payload.len() as u64 + 32;
                    }
                }
                expiry.held += held;
                expiry.segments += u64::from(!targets.is_empty());
                expiry.entries += targets.len() as u64;
                work.push((out.len(), seg.index, targets, held == 0));
            }
            out.push(expiry);
        }
        if dry_run {
            return Ok(out);
        }
        let planned: Vec<&LogExpiry> = out.iter().filter(|e| e.entries > 0).collect();
        if !planned.is_empty() {
            // Recorded before anything is removed (see `erase`).
            self.record(system_entry(
                "retention",
                by,
                "expire",
                &json!({ "now": now, "plan": planned }),
            ))?;
        }
        // The answer is what was done: recount from the removals.
        for e in &mut out {
            (e.segments, e.entries, e.bytes) = (0, 0, 0);
        }
        for (i, seg, targets, complete) in work {
            let log = out[i].log.clone();
            if !targets.is_empty() {
                let removal: Removal =
                    self.store
                        .remove_payloads(&log, &targets, PayloadState::Expired)?;
                out[i].segments += removal.segments;
                out[i].entries += removal.entries;
                out[i].bytes += removal.bytes;
                crate::metrics::global().expired(&log, removal.entries, removal.bytes);
            }
            if complete {
                self.admin
                    .done
                    .lock()
                    .expect("done lock")
                    .insert((log, seg));
            }
        }
        Ok(out)
    }
}
