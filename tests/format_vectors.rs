//! Every worked example in `docs/FORMAT.md` is reproduced by the code.
//!
//! The spec carries its vectors as fenced blocks opened by "```json vector".
//! This test recomputes each output from the block's inputs and compares.
//! Run with `AUDITLOG_PRINT_VECTORS=1` to print the computed blocks (to write
//! a new vector into the spec) instead of comparing.

use std::collections::BTreeMap;
use std::path::Path;

use auditlog::core::checkpoint::Checkpoint;
use auditlog::core::entry::{commit_payload, Entry, Salt};
use auditlog::core::hash::{Blake3, Hash, TreeHasher};
use auditlog::core::merkle::{
    consistency_proof, inclusion_proof, root_at, verify_consistency, verify_inclusion, MemoryTree,
};
use auditlog::core::note::{self, SignerKey};
use auditlog::core::seal::{RetainUntil, Seal, SealReason};
use auditlog::core::transition::KeyTransition;
use serde_json::{json, Value};

fn vectors() -> Vec<Value> {
    let spec =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"))
            .unwrap();
    let mut out = Vec::new();
    let mut lines = spec.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "```json vector" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push(serde_json::from_str(&body.join("\n")).expect("vector block is JSON"));
        }
    }
    out
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing string {k}"))
}

fn h(v: &Value, k: &str) -> Hash {
    Hash::from_hex(s(v, k)).unwrap()
}

fn arr32(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// Compares computed outputs with the block's, printing when asked.
fn check(block: &Value, computed: Value) {
    if std::env::var_os("AUDITLOG_PRINT_VECTORS").is_some() {
        let mut merged = block.clone();
        for (k, v) in computed.as_object().unwrap() {
            merged[k] = v.clone();
        }
        println!("{}", serde_json::to_string_pretty(&merged).unwrap());
        return;
    }
    for (k, v) in computed.as_object().unwrap() {
        assert_eq!(&block[k], v, "vector {} field {k}", block["vector"]);
    }
}

fn entry_outputs(v: &Value) -> Value {
    let payload = s(v, "payload_utf8").as_bytes();
    let salt = Salt(arr32(s(v, "salt_hex")));
    let attributes: BTreeMap<String, String> = v["attributes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| (k.clone(), x.as_str().unwrap().to_owned()))
        .collect();
    let e = Entry {
        origin: s(v, "origin").into(),
        seq: v["seq"].as_u64().unwrap(),
        timestamp_unix_nanos: v["timestamp_unix_nanos"].as_i64().unwrap(),
        subject: s(v, "subject").into(),
        actor: s(v, "actor").into(),
        kind: s(v, "kind").into(),
        content_type: s(v, "content_type").into(),
        attributes,
        idempotency_key: s(v, "idempotency_key").into(),
        payload_len: payload.len() as u64,
        payload_commitment: commit_payload(&salt, payload),
        prev_leaf_hash: h(v, "prev_leaf_hash_hex"),
    };
    let enc = e.encode().unwrap();
    assert_eq!(Entry::decode(&enc).unwrap(), e);
    json!({
        "payload_commitment_hex": e.payload_commitment.to_hex(),
        "encoding_hex": hex::encode(&enc),
        "leaf_hash_hex": e.leaf_hash().unwrap().to_hex(),
    })
}

fn tree_outputs(v: &Value) -> Value {
    let leaves: Vec<Hash> = v["leaf_data_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| Blake3::hash_leaf(&hex::decode(d.as_str().unwrap()).unwrap()))
        .collect();
    let mut tree = MemoryTree::<Blake3>::new();
    for l in &leaves {
        tree.push(*l);
    }
    let n = leaves.len() as u64;
    let roots: Vec<String> = (0..=n)
        .map(|m| root_at::<Blake3>(&tree, m).unwrap().to_hex())
        .collect();
    let (index, size) = (
        v["inclusion_index"].as_u64().unwrap(),
        v["inclusion_size"].as_u64().unwrap(),
    );
    let incl = inclusion_proof::<Blake3>(&tree, index, size).unwrap();
    verify_inclusion::<Blake3>(
        index,
        size,
        &leaves[index as usize],
        &incl,
        &root_at::<Blake3>(&tree, size).unwrap(),
    )
    .unwrap();
    let (s1, s2) = (
        v["consistency_size1"].as_u64().unwrap(),
        v["consistency_size2"].as_u64().unwrap(),
    );
    let cons = consistency_proof::<Blake3>(&tree, s1, s2).unwrap();
    verify_consistency::<Blake3>(
        s1,
        s2,
        &cons,
        &root_at::<Blake3>(&tree, s1).unwrap(),
        &root_at::<Blake3>(&tree, s2).unwrap(),
    )
    .unwrap();
    json!({
        "leaf_hashes_hex": leaves.iter().map(Hash::to_hex).collect::<Vec<_>>(),
        "roots_hex": roots,
        "inclusion_proof_hex": incl.iter().map(Hash::to_hex).collect::<Vec<_>>(),
        "consistency_proof_hex": cons.iter().map(Hash::to_hex).collect::<Vec<_>>(),
    })
}

fn signer(v: &Value) -> SignerKey {
    SignerKey::from_seed(s(v, "key_name"), &arr32(s(v, "seed_hex"))).unwrap()
}

fn key_outputs(v: &Value) -> Value {
    let k = signer(v);
    json!({
        "key_id_hex": format!("{:08x}", k.key_id()),
        "verifier_key": k.verifier().to_text(),
        "signer_key": k.to_text(),
    })
}

fn checkpoint_outputs(v: &Value) -> Value {
    let k = signer(v);
    let cp = Checkpoint {
        origin: s(v, "origin").into(),
        size: v["size"].as_u64().unwrap(),
        root: h(v, "root_hex"),
        extensions: vec![],
    };
    let signed = cp.sign(&k).unwrap();
    let (opened, _) = Checkpoint::open(&signed, &[k.verifier()], Some(&cp.origin)).unwrap();
    assert_eq!(opened, cp);
    json!({ "body": cp.to_text(), "signed_note": signed })
}

fn seal_outputs(v: &Value) -> Value {
    let k = signer(v);
    let seal = Seal {
        origin: s(v, "origin").into(),
        segment: v["segment"].as_u64().unwrap(),
        first_seq: v["first_seq"].as_u64().unwrap(),
        end_seq: v["end_seq"].as_u64().unwrap(),
        span_from: v["span_from"].as_i64().unwrap(),
        span_to: v["span_to"].as_i64().unwrap(),
        segment_root: h(v, "segment_root_hex"),
        tree_root: h(v, "tree_root_hex"),
        prev_seal: h(v, "prev_seal_hex"),
        reason: match s(v, "reason") {
            "size" => SealReason::Size,
            "age" => SealReason::Age,
            "request" => SealReason::Request,
            "window" => SealReason::Window,
            "shutdown" => SealReason::Shutdown,
            other => panic!("reason {other}"),
        },
        retain_until: match &v["retain_until"] {
            Value::String(f) if f == "forever" => RetainUntil::Forever,
            t => RetainUntil::At(t.as_i64().unwrap()),
        },
    };
    let signed = seal.sign(&k).unwrap();
    let (opened, _) = Seal::open(&signed, &[k.verifier()]).unwrap();
    assert_eq!(opened, seal);
    json!({
        "body": seal.to_text(),
        "seal_hash_hex": seal.hash().to_hex(),
        "signed_note": signed,
    })
}

fn transition_outputs(v: &Value) -> Value {
    let old = SignerKey::from_seed(s(v, "from_key_name"), &arr32(s(v, "from_seed_hex"))).unwrap();
    let new = SignerKey::from_seed(s(v, "to_key_name"), &arr32(s(v, "to_seed_hex"))).unwrap();
    let t = KeyTransition {
        from: old.verifier(),
        to: new.verifier(),
        time_unix_nanos: v["time_unix_nanos"].as_i64().unwrap(),
    };
    let signed = t.sign(&old, &new).unwrap();
    assert_eq!(KeyTransition::open(&signed).unwrap(), t);
    json!({ "body": t.to_text(), "signed_note": signed })
}

#[test]
fn format_md_vectors_are_reproduced() {
    let vs = vectors();
    let mut kinds = BTreeMap::new();
    for v in &vs {
        let kind = s(v, "vector");
        *kinds.entry(kind.to_owned()).or_insert(0) += 1;
        let computed = match kind {
            "entry" => entry_outputs(v),
            "tree" => tree_outputs(v),
            "key" => key_outputs(v),
            "checkpoint" => checkpoint_outputs(v),
            "seal" => seal_outputs(v),
            "transition" => transition_outputs(v),
            other => panic!("unknown vector kind {other}"),
        };
        check(v, computed);
    }
    for kind in ["entry", "tree", "key", "checkpoint", "seal", "transition"] {
        assert!(kinds.contains_key(kind), "FORMAT.md has no {kind} vector");
    }
}

#[test]
fn chained_entry_vectors_link() {
    // The second entry vector links to the first one's leaf hash.
    let entries: Vec<Value> = vectors()
        .into_iter()
        .filter(|v| v["vector"] == "entry")
        .collect();
    assert!(entries.len() >= 2);
    assert_eq!(entries[0]["prev_leaf_hash_hex"], Hash::ZERO.to_hex());
    assert_eq!(
        entries[1]["prev_leaf_hash_hex"],
        entries[0]["leaf_hash_hex"]
    );
    let _ = note::ALG_ED25519;
}
