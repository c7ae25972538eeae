//! Property tests of the core: Merkle proofs at random sizes, and the
//! canonical entry encoding.

use std::collections::BTreeMap;

use auditlog::core::entry::{commit_payload, leaf_hash_of_encoding, Entry, Salt};
use auditlog::core::hash::{Blake3, Hash, TreeHasher};
use auditlog::core::merkle::{
    consistency_proof, inclusion_proof, root_at, verify_consistency, verify_inclusion,
    InclusionVerifier, MemoryTree,
};
use proptest::prelude::*;

fn tree_of(n: u64) -> (MemoryTree<Blake3>, Vec<Hash>) {
    let mut t = MemoryTree::new();
    let leaves: Vec<Hash> = (0..n)
        .map(|i| Blake3::hash_leaf(&i.to_le_bytes()))
        .collect();
    for l in &leaves {
        t.push(*l);
    }
    (t, leaves)
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut x = *h;
    x.0[bit / 8 % 32] ^= 1 << (bit % 8);
    x
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// An inclusion proof verifies at every size that contains the leaf and
    /// fails for any other leaf, index or root.
    #[test]
    fn inclusion_proofs(n in 1u64..3000, seed in any::<u64>(), bit in 0usize..256) {
        let (tree, leaves) = tree_of(n);
        let index = seed % n;
        // A few sizes that contain the leaf, including the smallest and n.
        let sizes = [index + 1, n, index + 1 + (seed >> 20) % (n - index)];
        for size in sizes {
            let root = root_at::<Blake3>(&tree, size).unwrap();
            let proof = inclusion_proof::<Blake3>(&tree, index, size).unwrap();
            prop_assert!(verify_inclusion::<Blake3>(index, size, &leaves[index as usize], &proof, &root).is_ok());

            let other_leaf = flip(&leaves[index as usize], bit);
            prop_assert!(verify_inclusion::<Blake3>(index, size, &other_leaf, &proof, &root).is_err());
            prop_assert!(verify_inclusion::<Blake3>(index, size, &leaves[index as usize], &proof, &flip(&root, bit)).is_err());
            for other_index in [index.wrapping_sub(1), index + 1, index ^ 2, size] {
                if other_index != index {
                    prop_assert!(verify_inclusion::<Blake3>(other_index, size, &leaves[index as usize], &proof, &root).is_err(),
                        "index {} accepted for leaf {} at size {}", other_index, index, size);
                }
            }
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = (seed as usize) % bad.len();
                bad[k] = flip(&bad[k], bit);
                prop_assert!(verify_inclusion::<Blake3>(index, size, &leaves[index as usize], &bad, &root).is_err());
            }
            // The proof of another leaf does not prove this one.
            if size > 1 {
                let j = (index + 1) % size;
                prop_assert!(verify_inclusion::<Blake3>(index, size, &leaves[j as usize], &proof, &root).is_err());
            }
        }
    }

    /// Consistency proofs verify between any two sizes and fail when either
    /// root is altered or the proof is.
    #[test]
    fn consistency_proofs(n in 1u64..3000, a in any::<u64>(), b in any::<u64>(), bit in 0usize..256) {
        let (tree, _) = tree_of(n);
        let size2 = 1 + a % n;
        let size1 = 1 + b % size2;
        let root1 = root_at::<Blake3>(&tree, size1).unwrap();
        let root2 = root_at::<Blake3>(&tree, size2).unwrap();
        let proof = consistency_proof::<Blake3>(&tree, size1, size2).unwrap();
        prop_assert!(verify_consistency::<Blake3>(size1, size2, &proof, &root1, &root2).is_ok());
        prop_assert!(verify_consistency::<Blake3>(size1, size2, &proof, &flip(&root1, bit), &root2).is_err());
        prop_assert!(verify_consistency::<Blake3>(size1, size2, &proof, &root1, &flip(&root2, bit)).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = (a as usize) % bad.len();
            bad[k] = flip(&bad[k], bit);
            prop_assert!(verify_consistency::<Blake3>(size1, size2, &bad, &root1, &root2).is_err());
            let mut short = proof.clone();
            short.pop();
            prop_assert!(verify_consistency::<Blake3>(size1, size2, &short, &root1, &root2).is_err());
        }
        let mut long = proof.clone();
        long.push(root1);
        prop_assert!(verify_consistency::<Blake3>(size1, size2, &long, &root1, &root2).is_err());
        if size1 < size2 {
            // Swapped roots never verify.
            prop_assert!(verify_consistency::<Blake3>(size1, size2, &proof, &root2, &root1).is_err());
        }
    }
}

fn string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect())
}

prop_compose! {
    fn entry()(
        origin in "[a-z.]{1,20}/[a-z]{1,10}",
        seq in any::<u64>(),
        ts in any::<i64>(),
        subject in string(20),
        actor in string(12),
        kind in string(12),
        content_type in string(12),
        attributes in proptest::collection::btree_map(string(8), string(16), 0..5),
        idempotency_key in string(10),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        salt in any::<[u8; 32]>(),
        prev in any::<[u8; 32]>(),
    ) -> Entry {
        Entry {
            origin, seq, timestamp_unix_nanos: ts, subject, actor, kind, content_type,
            attributes: attributes.into_iter().collect::<BTreeMap<_, _>>(),
            idempotency_key,
            payload_len: payload.len() as u64,
            payload_commitment: commit_payload(&Salt(salt), &payload),
            prev_leaf_hash: Hash(prev),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The path-remembering verifier answers exactly as `verify_inclusion`
    /// for any sequence of proofs: runs of consecutive leaves (its fast
    /// path), jumps, repeats, and tampered proofs, leaves and indexes mixed
    /// in, before and after good ones.
    #[test]
    fn remembering_verifier_is_exactly_as_strict(
        n in 1u64..2000,
        steps in proptest::collection::vec((any::<u64>(), 0u8..8, 0usize..256), 1..120),
    ) {
        let (tree, leaves) = tree_of(n);
        let root = root_at::<Blake3>(&tree, n).unwrap();
        let mut v = InclusionVerifier::<Blake3>::new(n, root);
        let mut at = 0u64;
        for (seed, how, bit) in steps {
            // Mostly the next leaf; sometimes a jump.
            at = if seed % 5 == 0 { seed % n } else { (at + 1) % n };
            let mut index = at;
            let mut leaf = leaves[at as usize];
            let mut proof = inclusion_proof::<Blake3>(&tree, at, n).unwrap();
            match how {
                0 if !proof.is_empty() => {
                    let k = (seed as usize / 7) % proof.len();
                    proof[k] = flip(&proof[k], bit);
                }
                1 => leaf = flip(&leaf, bit),
                2 => index = (at + 1) % n,
                3 if !proof.is_empty() => {
                    proof.pop();
                }
                4 if proof.len() > 1 => {
                    let last = proof.len() - 1;
                    proof.swap(0, last);
                }
                _ => {}
            }
            let want = verify_inclusion::<Blake3>(index, n, &leaf, &proof, &root).is_ok();
            let got = v.verify(index, &leaf, &proof).is_ok();
            prop_assert_eq!(got, want, "leaf {} as {} (tamper {})", at, index, how);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encoding_round_trips(e in entry()) {
        let bytes = e.encode().unwrap();
        prop_assert_eq!(bytes.len(), e.encoded_len());
        prop_assert_eq!(Entry::decode(&bytes).unwrap(), e);
    }

    /// Every single-byte change to an encoded entry is either rejected by the
    /// decoder or decodes to a different entry whose canonical encoding is
    /// exactly the changed bytes, and so has a different leaf hash.
    #[test]
    fn every_byte_change_is_rejected_or_changes_the_leaf(e in entry(), delta in 1u8..=255) {
        let bytes = e.encode().unwrap();
        let leaf = leaf_hash_of_encoding(&bytes);
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] = m[i].wrapping_add(delta);
            if let Ok(d) = Entry::decode(&m) {
                prop_assert_ne!(&d, &e);
                prop_assert_eq!(d.encode().unwrap(), m.clone(), "decoder accepted a non-canonical form");
                prop_assert_ne!(d.leaf_hash().unwrap(), leaf);
            }
        }
    }
}
