//! Key transitions: the signed statement that retires one signing key in
//! favour of another, and the rule a verifier follows them by.
//!
//! Owns: the transition note's text (FORMAT.md §4.1), its two-signature
//! rule, and [`follow`], which extends a verifier's trusted keys along
//! transitions signed by keys it already trusts.
//!
//! Invariants:
//! - A transition opens only if it is signed by both its `from` key and its
//!   `to` key (the old key vouches for the new one; the new key proves it
//!   exists and accepts the statement).
//! - Trust only flows forward: a transition extends trust from a trusted
//!   `from` key to its `to` key, never from `to` back to `from`. A verifier
//!   given only the newer key does not accept what the older key signed.
//! - Nothing here trusts a key because evidence carries it: only keys the
//!   caller passes, and keys they introduce by signed transitions, are
//!   trusted.

use super::note::{self, NoteError, SignerKey, VerifierKey};

/// First line of a transition note's text.
pub const TRANSITION_HEADER: &str = "auditlog/key-transition/v1";

/// A statement that the signing key `from` was replaced by `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTransition {
    /// The retired key.
    pub from: VerifierKey,
    /// The key that signs from now on.
    pub to: VerifierKey,
    /// When the rotation happened (Unix nanoseconds, informational).
    pub time_unix_nanos: i64,
}

/// Errors opening or making a transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The note does not parse as a signed note.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The text is not a transition statement.
    #[error("not a key transition: {0}")]
    Malformed(String),
    /// One of the two required signatures is missing or does not verify.
    #[error("key transition is not signed by its {role} key {key}: {source}")]
    Unsigned {
        /// `from` or `to`.
        role: &'static str,
        /// The key's text.
        key: String,
        /// Why it failed.
        source: NoteError,
    },
}

impl KeyTransition {
    /// The note text: header, `from`, `to` and `time` lines.
    pub fn to_text(&self) -> String {
        format!(
            "{TRANSITION_HEADER}\nfrom {}\nto {}\ntime {}\n",
            self.from.to_text(),
            self.to.to_text(),
            self.time_unix_nanos
        )
    }

    /// Parses a transition's text (no signature is checked).
    ///
    /// # Errors
    /// When the text is not exactly the four lines of §4.1.
    pub fn from_text(text: &str) -> Result<KeyTransition, TransitionError> {
        let bad = |why: &str| TransitionError::Malformed(why.to_owned());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("text does not end in a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [header, from, to, time] = lines[..] else {
            return Err(bad("expected four lines"));
        };
        if header != TRANSITION_HEADER {
            return Err(bad("first line is not auditlog/key-transition/v1"));
        }
        let key = |line: &str, label: &str| -> Result<VerifierKey, TransitionError> {
            let v = line
                .strip_prefix(label)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or_else(|| bad(&format!("expected a {label:?} line")))?;
            VerifierKey::from_text(v).map_err(|e| bad(&format!("{label} key: {e}")))
        };
        let from = key(from, "from")?;
        let to = key(to, "to")?;
        let time = time
            .strip_prefix("time ")
            .filter(|t| {
                let digits = t.strip_prefix('-').unwrap_or(t);
                !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !(digits.len() > 1 && digits.starts_with('0'))
            })
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| bad("expected a decimal \"time\" line"))?;
        if from == to {
            return Err(bad("from and to are the same key"));
        }
        let t = KeyTransition {
            from,
            to,
            time_unix_nanos: time,
        };
        if t.to_text() != text {
            return Err(bad("not in canonical form"));
        }
        Ok(t)
    }

    /// Signs the statement with the old and the new key.
    ///
    /// # Errors
    /// When the signers are not the statement's keys.
    pub fn sign(&self, old: &SignerKey, new: &SignerKey) -> Result<String, TransitionError> {
        if old.verifier() != self.from || new.verifier() != self.to {
            return Err(TransitionError::Malformed(
                "signers are not the transition's keys".into(),
            ));
        }
        Ok(note::sign(&self.to_text(), &[old, new])?)
    }

    /// Opens a transition note: it must parse and carry valid signatures by
    /// both keys it names. Says nothing about whether `from` is trusted:
    /// that is [`follow`]'s business.
    ///
    /// # Errors
    /// Malformed note or text, or a missing or failing signature.
    pub fn open(signed: &str) -> Result<KeyTransition, TransitionError> {
        let (text, _) = note::parse(signed)?;
        let t = KeyTransition::from_text(&text)?;
        for (role, key) in [("from", &t.from), ("to", &t.to)] {
            note::open(signed, std::slice::from_ref(key)).map_err(|source| {
                TransitionError::Unsigned {
                    role,
                    key: key.to_text(),
                    source,
                }
            })?;
        }
        Ok(t)
    }
}

/// The keys a verifier trusts after following transitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// The caller's keys, then every key introduced by a followed
    /// transition, in the order they were reached.
    pub keys: Vec<VerifierKey>,
    /// Indexes (into the transitions given) of those followed.
    pub followed: Vec<usize>,
}

/// Extends `trusted` along `transitions` (already opened): a transition
/// whose `from` key is trusted makes its `to` key trusted, repeatedly, in
/// any order of the list.
pub fn follow(trusted: &[VerifierKey], transitions: &[KeyTransition]) -> Trust {
    let mut keys = trusted.to_vec();
    let mut followed = Vec::new();
    loop {
        let before = followed.len();
        for (i, t) in transitions.iter().enumerate() {
            if !followed.contains(&i) && keys.contains(&t.from) {
                followed.push(i);
                if !keys.contains(&t.to) {
                    keys.push(t.to.clone());
                }
            }
        }
        if followed.len() == before {
            return Trust { keys, followed };
        }
    }
}

/// Why a note signed by none of `trusted` might still be genuine: when one
/// of its signatures is by a key a transition names, a sentence that tells
/// the verifier which key to add. `None` when no transition names a signer.
pub fn explain_untrusted(
    signed: &str,
    trusted: &[VerifierKey],
    transitions: &[KeyTransition],
) -> Option<String> {
    let (_, sigs) = note::parse(signed).ok()?;
    let named = |k: &VerifierKey| {
        sigs.iter()
            .any(|s| s.name == k.name() && s.key_id == k.key_id())
    };
    for t in transitions {
        if named(&t.from) && !trusted.contains(&t.from) {
            return Some(format!(
                "signed by {}, which the key rotation of {} retired in favour of {}; \
                 trusting only the newer key does not cover what the older one signed: \
                 pass the older key too (--key) to verify evidence signed before the rotation",
                t.from.to_text(),
                format_time(t.time_unix_nanos),
                t.to.to_text()
            ));
        }
        if named(&t.to) && !trusted.contains(&t.to) {
            return Some(format!(
                "signed by {}, introduced by the key rotation of {} from {}, which is not \
                 among the trusted keys",
                t.to.to_text(),
                format_time(t.time_unix_nanos),
                t.from.to_text()
            ));
        }
    }
    None
}

/// A Unix-nanosecond time as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn format_time(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SignerKey {
        SignerKey::from_seed("auditlog", &[n; 32]).unwrap()
    }

    fn transition(a: &SignerKey, b: &SignerKey) -> KeyTransition {
        KeyTransition {
            from: a.verifier(),
            to: b.verifier(),
            time_unix_nanos: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_open() {
        let (a, b) = (key(1), key(2));
        let t = transition(&a, &b);
        let signed = t.sign(&a, &b).unwrap();
        assert_eq!(KeyTransition::open(&signed).unwrap(), t);
        assert_eq!(KeyTransition::from_text(&t.to_text()).unwrap(), t);
    }

    #[test]
    fn both_signatures_are_required() {
        let (a, b, c) = (key(1), key(2), key(3));
        let t = transition(&a, &b);
        let text = t.to_text();
        for signers in [vec![&a], vec![&b], vec![&a, &c], vec![&c, &b]] {
            let signed = note::sign(&text, &signers).unwrap();
            assert!(
                matches!(
                    KeyTransition::open(&signed),
                    Err(TransitionError::Unsigned { .. })
                ),
                "opened with {} signature(s)",
                signers.len()
            );
        }
        // A signature by the right key over other text fails.
        let signed = t.sign(&a, &b).unwrap();
        let forged = signed.replacen("time 1700", "time 1800", 1);
        assert!(KeyTransition::open(&forged).is_err());
        assert!(t.sign(&a, &c).is_err());
    }

    #[test]
    fn malformed_texts_are_refused() {
        let (a, b) = (key(1), key(2));
        let good = transition(&a, &b).to_text();
        for bad in [
            good.replace("v1", "v2"),
            good.replace("\ntime ", "\ntime  "),
            good.replace("time 1", "time 01"),
            good.replace("time 1700000000000000000", "time x"),
            good.replace("time 1700000000000000000", "time 99999999999999999999"),
            good.trim_end().to_owned(),
            format!("{good}extra\n"),
            transition(&a, &a).to_text(),
        ] {
            assert!(KeyTransition::from_text(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trust_flows_forward_only_and_in_any_order() {
        let (a, b, c) = (key(1), key(2), key(3));
        let ab = transition(&a, &b);
        let bc = transition(&b, &c);
        // Listed out of order: still followed to the end.
        let t = follow(&[a.verifier()], &[bc.clone(), ab.clone()]);
        assert_eq!(t.keys, vec![a.verifier(), b.verifier(), c.verifier()]);
        assert_eq!(t.followed, vec![1, 0]);
        // From the middle: only later keys.
        let t = follow(&[b.verifier()], &[ab.clone(), bc.clone()]);
        assert_eq!(t.keys, vec![b.verifier(), c.verifier()]);
        // The newest key alone trusts nothing older.
        let t = follow(&[c.verifier()], &[ab, bc]);
        assert_eq!(t.keys, vec![c.verifier()]);
        assert!(t.followed.is_empty());
    }

    #[test]
    fn untrusted_signers_are_explained() {
        let (a, b) = (key(1), key(2));
        let ab = transition(&a, &b);
        let by_a = note::sign("x\n", &[&a]).unwrap();
        let why = explain_untrusted(&by_a, &[b.verifier()], std::slice::from_ref(&ab)).unwrap();
        assert!(
            why.contains("retired") && why.contains("2023-11-14T22:13:20Z"),
            "{why}"
        );
        let by_b = note::sign("x\n", &[&b]).unwrap();
        let why = explain_untrusted(&by_b, &[key(9).verifier()], &[ab]).unwrap();
        assert!(why.contains("introduced"), "{why}");
        assert_eq!(explain_untrusted(&by_b, &[], &[]), None);
    }

    #[test]
    fn times_format_as_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
    }
}
