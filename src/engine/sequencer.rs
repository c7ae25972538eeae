//! The sequencer: a pure state machine that turns prepared entries into a
//! sequenced, chained, tree-appended batch, and closes segments with seals.
//!
//! ```text
//!   prepared entries, now ──▶ Sequencer::sequence ──▶ Proposal
//!                                                       │ store.append OK
//!   Sequencer  ◀──────────── Sequencer::commit ◀────────┘
//! ```
//!
//! No I/O and no clock: the engine passes `now` in and writes what comes
//! out. A [`Proposal`] is computed on a copy of the state; the state moves
//! only when the engine commits it after the store made the batch durable,
//! so a failed write leaves the sequencer where it was.
//!
//! Invariants:
//! - seqs are dense; each entry links to the previous leaf hash;
//! - timestamps never decrease within a log, whatever `now` says, and never
//!   precede the open segment's span start;
//! - the tree and the open segment's own tree grow by the same leaves.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::core::checkpoint::Checkpoint;
use crate::core::entry::Entry;
use crate::core::hash::{Blake3, Hash};
use crate::core::merkle::{CompactRange, NodeId, NodeReadError, NodeReader};
use crate::core::seal::{RetainUntil, Seal, SealReason};
use crate::store::{Batch, BatchEntry, LogHead, PayloadState};

use super::input::PreparedEntry;

/// FxHash-style hasher for tree node ids: they come from our own tree, not
/// from clients, so a fast non-keyed hash is safe here (SipHash showed in
/// the receipts' profile).
#[derive(Default)]
pub struct NodeIdHasher(u64);

impl Hasher for NodeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Map of tree nodes keyed by id.
pub type NodeMap = HashMap<NodeId, Hash, BuildHasherDefault<NodeIdHasher>>;

/// Sequencer state of one log.
#[derive(Debug, Clone)]
pub struct Sequencer {
    origin: String,
    size: u64,
    prev_leaf: Hash,
    last_ts: i64,
    tree: CompactRange<Blake3>,
    prev_seal: Hash,
    segment: u64,
    segment_first_seq: u64,
    segment_span_from: i64,
    segment_tree: CompactRange<Blake3>,
    segment_first_ts: Option<i64>,
}

/// A sequenced batch, not yet durable.
pub struct Proposal {
    /// The batch to write (its checkpoint is filled in by the engine after
    /// signing [`Proposal::checkpoint`]).
    pub batch: Batch,
    /// The unsigned checkpoint of the tree after the batch.
    pub checkpoint: Checkpoint,
    /// Nodes completed by the batch, for proofs before they are indexed.
    pub new_nodes: NodeMap,
    /// State after the batch.
    next: Sequencer,
}

impl Sequencer {
    /// Resumes from a store's durable head.
    ///
    /// # Panics
    /// If the head's frontiers do not match its sizes (a store bug).
    pub fn from_head(origin: &str, head: &LogHead) -> Sequencer {
        let tree = CompactRange::from_parts(head.size, head.frontier.clone())
            .expect("store returned a frontier that does not match the size");
        let seg_len = head.size - head.segment.first_seq;
        let segment_tree = CompactRange::from_parts(seg_len, head.segment.frontier.clone())
            .expect("store returned a segment frontier that does not match its size");
        Sequencer {
            origin: origin.to_owned(),
            size: head.size,
            prev_leaf: head.prev_leaf,
            last_ts: head.last_timestamp.max(head.segment.span_from),
            tree,
            prev_seal: head.prev_seal,
            segment: head.segment.index,
            segment_first_seq: head.segment.first_seq,
            segment_span_from: head.segment.span_from,
            segment_tree,
            segment_first_ts: head.segment.first_timestamp,
        }
    }

    /// True when `head` is the state this sequencer extends (no other
    /// process appended or sealed since).
    pub fn is_at(&self, head: &LogHead) -> bool {
        self.size == head.size
            && self.segment == head.segment.index
            && self.prev_seal == head.prev_seal
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Current tree root.
    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// Entries in the open segment.
    pub fn segment_len(&self) -> u64 {
        self.size - self.segment_first_seq
    }

    /// Timestamp of the open segment's first entry.
    pub fn segment_first_timestamp(&self) -> Option<i64> {
        self.segment_first_ts
    }

    /// Start of the open segment's time span.
    pub fn segment_span_from(&self) -> i64 {
        self.segment_span_from
    }

    /// The latest timestamp given out (entries and seals): the next entry's
    /// timestamp is at least this.
    pub fn last_timestamp(&self) -> i64 {
        self.last_ts
    }

    /// The unsigned checkpoint of the current tree.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            origin: self.origin.clone(),
            size: self.size,
            root: self.tree.root(),
            extensions: Vec::new(),
        }
    }

    /// Sequences `entries` at time `now` into a proposal. `self` is unchanged.
    pub fn sequence(&self, entries: Vec<PreparedEntry>, now: i64) -> Proposal {
        let mut next = self.clone();
        let ts = now.max(next.last_ts);
        let first_seq = next.size;
        let mut batch_entries = Vec::with_capacity(entries.len());
        let mut new_nodes =
            NodeMap::with_capacity_and_hasher(entries.len() * 2, Default::default());
        let mut nodes = Vec::with_capacity(entries.len());
        for p in entries {
            let entry = Entry {
                origin: next.origin.clone(),
                seq: next.size,
                timestamp_unix_nanos: ts,
                subject: p.input.subject,
                actor: p.input.actor,
                kind: p.input.kind,
                content_type: p.input.content_type,
                attributes: p.input.attributes,
                idempotency_key: p.input.idempotency_key,
                payload_len: p.input.payload.len() as u64,
                payload_commitment: p.commitment,
                prev_leaf_hash: next.prev_leaf,
            };
            // Validated input always encodes: every field is within the
            // limits, which are far below the format's. (Encoded straight
            // into the entry's own buffer: no scratch buffer to copy from.)
            let encoding = entry.encode().expect("validated entries encode");
            let leaf = crate::core::entry::leaf_hash_of_encoding(&encoding);
            next.tree.append(leaf, |id, h| {
                new_nodes.insert(id, h);
                if id.level > 0 {
                    nodes.push((id, h));
                }
            });
            next.segment_tree.append(leaf, |_, _| {});
            next.segment_first_ts.get_or_insert(ts);
            next.prev_leaf = leaf;
            next.size += 1;
            batch_entries.push(BatchEntry {
                entry,
                encoding,
                leaf_hash: leaf,
                salt: p.salt,
                payload: p.input.payload,
                state: PayloadState::Present,
            });
        }
        next.last_ts = ts;
        let checkpoint = next.checkpoint();
        Proposal {
            batch: Batch {
                first_seq,
                entries: batch_entries,
                nodes,
                checkpoint: String::new(),
            },
            checkpoint,
            new_nodes,
            next,
        }
    }

    /// Moves to the state after a proposal that the store made durable.
    pub fn commit(&mut self, proposal_state: ProposalState) {
        *self = proposal_state.0;
    }

    /// The seal that would close the open segment now, and the state after
    /// it. `retention` (nanoseconds) sets `retain-until` from the span end.
    pub fn seal(
        &self,
        now: i64,
        reason: SealReason,
        retention: Option<i64>,
    ) -> (Seal, ProposalState) {
        let span_to = now.max(self.last_ts).max(self.segment_span_from);
        let seal = Seal {
            origin: self.origin.clone(),
            segment: self.segment,
            first_seq: self.segment_first_seq,
            end_seq: self.size,
            span_from: self.segment_span_from,
            span_to,
            segment_root: self.segment_tree.root(),
            tree_root: self.tree.root(),
            prev_seal: self.prev_seal,
            reason,
            retain_until: match retention {
                None => RetainUntil::Forever,
                Some(r) => RetainUntil::At(span_to.saturating_add(r)),
            },
        };
        let mut next = self.clone();
        next.prev_seal = seal.hash();
        next.segment += 1;
        next.segment_first_seq = self.size;
        next.segment_span_from = span_to;
        next.segment_tree = CompactRange::new();
        next.segment_first_ts = None;
        next.last_ts = span_to;
        (seal, ProposalState(next))
    }
}

/// The state a proposal or seal leads to; applied with [`Sequencer::commit`].
pub struct ProposalState(Sequencer);

impl Proposal {
    /// Splits off the state to commit once the batch is durable.
    pub fn into_parts(self) -> (Batch, Checkpoint, NodeMap, ProposalState) {
        (
            self.batch,
            self.checkpoint,
            self.new_nodes,
            ProposalState(self.next),
        )
    }
}

/// Reads nodes completed by a batch first, then the frontier of the tree
/// before it, then the store: every node a proof at the new size needs
/// exists in one of them, before the batch is indexed.
pub struct OverlayReader<'a, R> {
    /// Nodes completed by the batch.
    pub batch: &'a NodeMap,
    /// Frontier nodes of the tree before the batch.
    pub frontier: &'a NodeMap,
    /// Everything else.
    pub store: R,
}

impl<R: NodeReader> NodeReader for OverlayReader<'_, R> {
    fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
        if let Some(h) = self.batch.get(&id).or_else(|| self.frontier.get(&id)) {
            return Ok(*h);
        }
        self.store.node(id)
    }
}

/// The nodes of a frontier, keyed by their ids.
pub fn frontier_nodes(size: u64, hashes: &[Hash]) -> NodeMap {
    let mut out = NodeMap::with_capacity_and_hasher(hashes.len(), Default::default());
    let mut start = 0u64;
    let mut i = 0;
    for level in (0..64u8).rev() {
        if size & (1u64 << level) != 0 {
            out.insert(
                NodeId {
                    level,
                    index: start >> level,
                },
                hashes[i],
            );
            start += 1u64 << level;
            i += 1;
        }
    }
    out
}

impl Sequencer {
    /// The frontier of the current tree, keyed by node id.
    pub fn frontier_nodes(&self) -> NodeMap {
        frontier_nodes(self.tree.size(), self.tree.hashes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::merkle::{inclusion_proof, root_at, verify_inclusion, MemoryTree};
    use crate::engine::input::{prepare, EntryInput, Limits};
    use crate::store::OpenSegment;

    fn head() -> LogHead {
        LogHead {
            size: 0,
            prev_leaf: Hash::ZERO,
            last_timestamp: 100,
            frontier: vec![],
            segment: OpenSegment {
                index: 0,
                first_seq: 0,
                span_from: 100,
                frontier: vec![],
                first_timestamp: None,
            },
            prev_seal: Hash::ZERO,
            latest_checkpoint: None,
        }
    }

    fn entries(n: usize) -> Vec<PreparedEntry> {
        let inputs = (0..n)
            .map(|i| EntryInput {
                subject: format!("order:{i}"),
                actor: "a".into(),
                kind: "k".into(),
                payload: vec![i as u8; 10],
                ..Default::default()
            })
            .collect();
        prepare(&Limits::default(), inputs, |s| *s = [3; 32]).unwrap()
    }

    #[test]
    fn sequence_chains_and_never_goes_back_in_time() {
        let mut s = Sequencer::from_head("o", &head());
        let p = s.sequence(entries(3), 500);
        let (b1, _, _, st) = p.into_parts();
        s.commit(st);
        // The clock jumps backwards: timestamps stay at 500.
        let (b2, cp, _, st) = s.sequence(entries(2), 200).into_parts();
        s.commit(st);
        let all: Vec<_> = b1.entries.iter().chain(&b2.entries).collect();
        assert_eq!(all.len(), 5);
        let mut prev = Hash::ZERO;
        let mut tree = MemoryTree::<Blake3>::new();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.entry.seq, i as u64);
            assert_eq!(e.entry.prev_leaf_hash, prev);
            assert_eq!(e.entry.timestamp_unix_nanos, 500);
            assert_eq!(e.entry.leaf_hash().unwrap(), e.leaf_hash);
            prev = e.leaf_hash;
            tree.push(e.leaf_hash);
        }
        assert_eq!(cp.size, 5);
        assert_eq!(cp.root, tree.root());
        assert_eq!(b2.first_seq, 3);
    }

    #[test]
    fn a_proposal_not_committed_changes_nothing() {
        let s = Sequencer::from_head("o", &head());
        let _ = s.sequence(entries(4), 500);
        assert_eq!(s.size(), 0);
        assert_eq!(
            s.checkpoint().root,
            <Blake3 as crate::core::hash::TreeHasher>::empty_root()
        );
    }

    #[test]
    fn overlay_reader_proves_batch_leaves_without_the_store() {
        // Build a tree of 13 leaves in a MemoryTree as "the store", then a
        // batch of 6 more whose proofs use only overlay + frontier.
        let mut s = Sequencer::from_head("o", &head());
        let (b1, _, _, st) = s.sequence(entries(13), 1).into_parts();
        s.commit(st);
        let mut store = MemoryTree::<Blake3>::new();
        for e in &b1.entries {
            store.push(e.leaf_hash);
        }
        let frontier = s.frontier_nodes();
        let (b2, cp, nodes, _) = s.sequence(entries(6), 2).into_parts();

        struct Nothing;
        impl NodeReader for Nothing {
            fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
                Err(NodeReadError {
                    id,
                    reason: "no store".into(),
                })
            }
        }
        let overlay = OverlayReader {
            batch: &nodes,
            frontier: &frontier,
            store: Nothing,
        };
        for e in &b2.entries {
            store.push(e.leaf_hash);
        }
        assert_eq!(root_at::<Blake3>(&store, 19).unwrap(), cp.root);
        for e in &b2.entries {
            let proof = inclusion_proof::<Blake3>(&overlay, e.entry.seq, cp.size).unwrap();
            assert_eq!(
                proof,
                inclusion_proof::<Blake3>(&store, e.entry.seq, cp.size).unwrap()
            );
            verify_inclusion::<Blake3>(e.entry.seq, cp.size, &e.leaf_hash, &proof, &cp.root)
                .unwrap();
        }
    }

    #[test]
    fn seals_chain_and_tile_time() {
        let mut s = Sequencer::from_head("o", &head());
        let (_, _, _, st) = s.sequence(entries(3), 300).into_parts();
        s.commit(st);
        let (seal0, st) = s.seal(400, SealReason::Request, Some(1000));
        s.commit(st);
        seal0.check_follows(None).unwrap();
        assert_eq!(
            (
                seal0.first_seq,
                seal0.end_seq,
                seal0.span_from,
                seal0.span_to
            ),
            (0, 3, 100, 400)
        );
        assert_eq!(seal0.retain_until, RetainUntil::At(1400));
        assert_eq!(seal0.segment_root, seal0.tree_root);
        // Clock goes back: the next entries and seal still move forward.
        let (b, _, _, st) = s.sequence(entries(2), 350).into_parts();
        s.commit(st);
        assert_eq!(b.entries[0].entry.timestamp_unix_nanos, 400);
        let (seal1, st) = s.seal(390, SealReason::Size, None);
        s.commit(st);
        seal1.check_follows(Some(&seal0)).unwrap();
        assert_eq!((seal1.first_seq, seal1.end_seq), (3, 5));
        assert_ne!(seal1.segment_root, seal1.tree_root);
        // An empty segment seals too.
        let (seal2, _) = s.seal(500, SealReason::Window, None);
        seal2.check_follows(Some(&seal1)).unwrap();
        assert!(seal2.is_empty());
    }
}
