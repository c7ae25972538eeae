//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), here so that
//! `cargo test` replays the checked-in corpora through the very same code
//! (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, must never panic on them, and
//! asserts the properties that hold for every input: canonical encodings
//! round-trip, a proof verifies only if it is the genuine one, the fast
//! verifier agrees with the reference. A failed assertion is a finding, as
//! a panic would be.

use crate::bundle::verify_bundle;
use crate::core::checkpoint::Checkpoint;
use crate::core::entry::Entry;
use crate::core::hash::{Blake3, Hash, TreeHasher};
use crate::core::merkle::{
    consistency_proof, inclusion_proof, root_at, verify_consistency, verify_inclusion,
    InclusionVerifier, MemoryTree,
};
use crate::core::note::{self, SignerKey, VerifierKey};
use crate::core::seal::Seal;
use crate::core::transition::KeyTransition;

/// The names of the fuzz targets, each a directory of `fuzz/corpus/`.
pub const TARGETS: [&str; 4] = ["entry_decode", "signed_note", "bundle_reader", "proofs"];

/// Runs target `name` on `data`.
///
/// # Panics
/// For an unknown name, and whenever the target finds a bug.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "entry_decode" => entry_decode(data),
        "signed_note" => signed_note(data),
        "bundle_reader" => bundle_reader(data),
        "proofs" => proofs(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// The key the note and bundle targets trust (its seed is public: tests
/// only).
pub fn fuzz_key() -> SignerKey {
    SignerKey::from_seed("fuzz.example/log", &[7; 32]).expect("valid name")
}

/// The entry decoder: whatever decodes re-encodes to the same bytes (one
/// entry, one encoding).
pub fn entry_decode(data: &[u8]) {
    if let Ok(e) = Entry::decode(data) {
        let again = e.encode().expect("a decoded entry encodes");
        assert_eq!(again, data, "decode accepted a non-canonical encoding");
        assert_eq!(e.encoded_len(), data.len());
    }
}

/// Signed notes, checkpoints, seals and key transitions: parsing never
/// panics; whatever parses prints back to the same text; a note signed by
/// the fuzz key opens with it.
pub fn signed_note(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = fuzz_key();
    let trusted: [VerifierKey; 1] = [key.verifier()];
    if let Ok((body, sigs)) = note::parse(text) {
        assert!(!sigs.is_empty());
        assert!(text.starts_with(&body));
    }
    let _ = note::open(text, &trusted);
    let _ = Checkpoint::open(text, &trusted, None);
    let _ = Seal::open(text, &trusted);
    let _ = KeyTransition::open(text);
    let _ = VerifierKey::from_text(text);
    let _ = SignerKey::from_text(text);
    if let Ok(cp) = Checkpoint::from_text(text) {
        assert_eq!(cp.to_text(), text, "checkpoint text is not canonical");
    }
    if let Ok(seal) = Seal::from_text(text) {
        assert_eq!(seal.to_text(), text, "seal text is not canonical");
    }
    if let Ok(t) = KeyTransition::from_text(text) {
        assert_eq!(t.to_text(), text, "transition text is not canonical");
    }
    // As the text of a note: signing then opening gives it back.
    if let Ok(signed) = note::sign(text, &[&key]) {
        let opened = note::open(&signed, &trusted).expect("own signature opens");
        assert_eq!(opened.text, text);
    }
}

/// The bundle verifier: any bytes give a report, never a panic; a bundle
/// valid under the fuzz key is invalid under any other key (validity comes
/// from the trusted key, never from the bundle itself).
pub fn bundle_reader(data: &[u8]) {
    let key = fuzz_key().verifier();
    let (report, _) = verify_bundle(data, std::slice::from_ref(&key), None);
    if report.is_valid() {
        let stranger = SignerKey::from_seed("fuzz.example/log", &[8; 32])
            .expect("valid name")
            .verifier();
        let (other, _) = verify_bundle(data, &[stranger], None);
        assert!(
            !other.is_valid(),
            "a bundle valid under the fuzz key is valid under another key too"
        );
    }
}

/// Reads `N` bytes (zero-padded past the end).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let n = self.0.len().min(8);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn hash(&mut self) -> Hash {
        let mut h = [0u8; 32];
        let n = self.0.len().min(32);
        h[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Hash(h)
    }
}

fn flip(h: &mut Hash, bit: u8) {
    h.0[usize::from(bit / 8)] ^= 1 << (bit % 8);
}

/// RFC 9162 §2.1.3.2, transcribed step by step: the reference the fast
/// verifiers are compared with.
fn rfc_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = Blake3::hash_children(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = Blake3::hash_children(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 §2.1.4.2, transcribed step by step (equal sizes: an empty
/// proof and equal roots; size 0 is refused, as auditlog refuses it).
fn rfc_consistency(size1: u64, size2: u64, proof: &[Hash], root1: &Hash, root2: &Hash) -> bool {
    if size1 == 0 || size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path = proof.to_vec();
    if size1.is_power_of_two() {
        path.insert(0, *root1);
    }
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = Blake3::hash_children(c, &fr);
            sr = Blake3::hash_children(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = Blake3::hash_children(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *root1 && sr == *root2 && s == 0
}

/// The proof verifiers, differentially: for a genuine proof (of a tree of
/// up to 200 leaves), the same proof changed as the bytes choose (an
/// element flipped, dropped or added; index or sizes moved), and arbitrary
/// sizes and proofs, `verify_inclusion`, `InclusionVerifier` and
/// `verify_consistency` answer exactly as RFC 9162's algorithms do, and a
/// genuine proof verifies. (A moved size can still verify: a proof binds
/// the path's shape, not the size, which the signed checkpoint binds.)
pub fn proofs(data: &[u8]) {
    let mut b = Bytes(data);
    let mode = b.u8();
    if mode % 4 == 3 {
        // Raw: any sizes, any index, any proof.
        let (i, n, m) = (b.u64(), b.u64(), b.u64());
        let count = usize::from(b.u8() % 70);
        let proof: Vec<Hash> = (0..count).map(|_| b.hash()).collect();
        let (leaf, root) = (b.hash(), b.hash());
        let reference = verify_inclusion::<Blake3>(i, n, &leaf, &proof, &root).is_ok();
        assert_eq!(reference, rfc_inclusion(i, n, &leaf, &proof, &root));
        let fast = InclusionVerifier::<Blake3>::new(n, root).verify(i, &leaf, &proof);
        assert_eq!(reference, fast.is_ok());
        assert_eq!(
            verify_consistency::<Blake3>(m, n, &proof, &leaf, &root).is_ok(),
            rfc_consistency(m, n, &proof, &leaf, &root)
        );
        return;
    }
    let n = 1 + u64::from(b.u8()) % 200;
    let mut tree = MemoryTree::<Blake3>::new();
    let leaves: Vec<Hash> = (0..n)
        .map(|i| Blake3::hash_leaf(&i.to_le_bytes()))
        .collect();
    for l in &leaves {
        tree.push(*l);
    }
    let size = 1 + b.u64() % n;
    let other = 1 + b.u64() % size;
    let root = root_at::<Blake3>(&tree, size).expect("size within tree");
    let (op, at, bit) = (b.u8(), b.u8(), b.u8());
    let mutate = |proof: &mut Vec<Hash>, a: &mut u64, s: &mut u64| match op % 6 {
        0 => {}
        1 if !proof.is_empty() => {
            let k = usize::from(at) % proof.len();
            flip(&mut proof[k], bit);
        }
        2 if !proof.is_empty() => {
            proof.remove(usize::from(at) % proof.len());
        }
        3 => proof.insert(usize::from(at) % (proof.len() + 1), leaves[0]),
        4 => *a = a.wrapping_add(1 + u64::from(bit)),
        _ => *s = s.wrapping_add(1 + u64::from(bit)),
    };
    if mode % 4 == 2 {
        // Consistency of `other` with `size`.
        let genuine = consistency_proof::<Blake3>(&tree, other, size).expect("sizes within tree");
        let root1 = root_at::<Blake3>(&tree, other).expect("size within tree");
        assert!(verify_consistency::<Blake3>(other, size, &genuine, &root1, &root).is_ok());
        let (mut proof, mut size1, mut size2) = (genuine, other, size);
        mutate(&mut proof, &mut size1, &mut size2);
        assert_eq!(
            verify_consistency::<Blake3>(size1, size2, &proof, &root1, &root).is_ok(),
            rfc_consistency(size1, size2, &proof, &root1, &root),
            "consistency {other}->{size} as {size1}->{size2}, op {op}"
        );
        return;
    }
    let index = b.u64() % size;
    let genuine = inclusion_proof::<Blake3>(&tree, index, size).expect("index within tree");
    let leaf = leaves[index as usize];
    assert!(verify_inclusion::<Blake3>(index, size, &leaf, &genuine, &root).is_ok());
    let (mut proof, mut i, mut s) = (genuine, index, size);
    mutate(&mut proof, &mut i, &mut s);
    let ok = verify_inclusion::<Blake3>(i, s, &leaf, &proof, &root).is_ok();
    assert_eq!(
        ok,
        rfc_inclusion(i, s, &leaf, &proof, &root),
        "inclusion {index}@{size} as {i}@{s}, op {op}"
    );
    // The fast verifier, warmed with a neighbour's genuine proof, agrees.
    let mut fast = InclusionVerifier::<Blake3>::new(s, root);
    let neighbour = (index + 1) % size;
    let _ = fast.verify(
        neighbour,
        &leaves[neighbour as usize],
        &inclusion_proof::<Blake3>(&tree, neighbour, size).expect("index within tree"),
    );
    assert_eq!(fast.verify(i, &leaf, &proof).is_ok(), ok);
}
