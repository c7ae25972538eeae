//! Hostile input: whatever bytes reach a parser or verifier (from the
//! network or from a file given to `verify`), the answer is an error or a
//! finding, never a panic, and no length field makes it allocate without
//! bound. Random inputs, plus inputs built near the valid ones (the
//! interesting cases for a parser: valid prefixes, huge numbers, truncated
//! fields).

mod common;

use auditlog::bundle::verify_bundle;
use auditlog::core::checkpoint::Checkpoint;
use auditlog::core::entry::Entry;
use auditlog::core::hash::{Blake3, Hash};
use auditlog::core::merkle::{
    root_from_inclusion_proof, verify_consistency, verify_inclusion, InclusionVerifier,
};
use auditlog::core::note;
use auditlog::core::seal::Seal;
use proptest::prelude::*;

fn a_valid_entry() -> Vec<u8> {
    Entry {
        origin: "audit.example.com/orders".into(),
        seq: 7,
        timestamp_unix_nanos: 1_700_000_000_000_000_000,
        prev_leaf_hash: Hash([1; 32]),
        subject: "order:1".into(),
        actor: "buyer:1".into(),
        kind: "prompt".into(),
        content_type: "text/plain".into(),
        attributes: [("gig".to_string(), "g-1".to_string())]
            .into_iter()
            .collect(),
        idempotency_key: "k".into(),
        payload_len: 3,
        payload_commitment: Hash([2; 32]),
    }
    .encode()
    .unwrap()
}

fn text_like() -> impl Strategy<Value = String> {
    // Mostly the characters the text formats are made of.
    proptest::collection::vec(
        prop_oneof![
            Just('\n'),
            Just(' '),
            Just('\u{2014}'),
            Just('+'),
            Just('/'),
            Just('='),
            proptest::char::range('0', '9'),
            proptest::char::range('a', 'z'),
            any::<char>(),
        ],
        0..300,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn entry_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Entry::decode(&bytes);
    }

    /// Valid encodings cut, extended or with a byte replaced.
    #[test]
    fn entry_decoder_on_near_valid_input(cut in 0usize..400, at in 0usize..400, b in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
        let good = a_valid_entry();
        let mut bytes = good[..cut.min(good.len())].to_vec();
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        bytes.extend_from_slice(&tail);
        let _ = Entry::decode(&bytes);
    }

    #[test]
    fn text_parsers_never_panic(text in text_like()) {
        let _ = note::parse(&text);
        let _ = note::open(&text, &[common::signer().verifier()]);
        let _ = Checkpoint::from_text(&text);
        let _ = Seal::from_text(&text);
        let _ = note::VerifierKey::from_text(&text);
        let _ = Checkpoint::open(&text, &[common::signer().verifier()], None);
    }

    #[test]
    fn proof_verifiers_never_panic(
        index in any::<u64>(),
        size in any::<u64>(),
        size2 in any::<u64>(),
        len in 0usize..80,
        small in 0u64..40,
    ) {
        let proof = vec![Hash([3; 32]); len];
        let leaf = Hash([4; 32]);
        for (i, n) in [(index, size), (small, small + 1), (index % 64, 64), (u64::MAX - 1, u64::MAX)] {
            let _ = root_from_inclusion_proof::<Blake3>(i, n, &leaf, &proof);
            let _ = verify_inclusion::<Blake3>(i, n, &leaf, &proof, &leaf);
            let _ = InclusionVerifier::<Blake3>::new(n, leaf).verify(i, &leaf, &proof);
            let _ = verify_consistency::<Blake3>(i, n, &proof, &leaf, &leaf);
        }
        let _ = verify_consistency::<Blake3>(size, size2, &proof, &leaf, &leaf);
    }

    /// A bundle file of arbitrary lines (and lines that almost are bundle
    /// lines) yields a report, never a panic.
    #[test]
    fn bundle_verifier_never_panics(lines in proptest::collection::vec(
        prop_oneof![
            text_like(),
            Just(r#"{"type":"entry","encoding":"AAAA","payload_state":"present","salt":"AA==","payload":"","inclusion_proof":["AA=="]}"#.to_string()),
            Just(r#"{"type":"end","entries":18446744073709551615}"#.to_string()),
            Just(r#"{"type":"seal","seal":"x","consistency_proof":[]}"#.to_string()),
            Just(r#"{"format":"auditlog-bundle","version":1,"log":"l","origin":"o","query":{"seq_range":{"from_seq":0,"to_seq":18446744073709551615}},"checkpoint":"o\n1\nAAAA\n\n"}"#.to_string()),
        ],
        0..12,
    )) {
        let file = lines.join("\n");
        let (report, _) = verify_bundle(file.as_bytes(), &[common::signer().verifier()], None);
        prop_assert!(!report.is_valid() || lines.is_empty() || report.findings.is_empty());
    }
}

/// A line of a bundle longer than the limit is refused without reading it
/// whole into memory first.
#[test]
fn an_endless_line_is_refused() {
    struct Endless;
    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(b'x');
            Ok(buf.len())
        }
    }
    let (report, _) = verify_bundle(
        std::io::BufReader::new(Endless),
        &[common::signer().verifier()],
        None,
    );
    assert!(!report.is_valid());
    assert!(
        report.findings[0].detail.contains("longer than"),
        "{:?}",
        report.findings
    );
}
