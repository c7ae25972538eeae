//! Derived indexes of the embedded store, in sled.
//!
//! Owns: per log, the maps seq → (segment, offset, leaf hash), perfect tree
//! nodes, subject → seqs, actor → seqs, time → seq, idempotency key → seq,
//! tree size → signed checkpoint, segment → (first seq, seal), and the
//! high-water mark `indexed_size`.
//!
//! Invariants:
//! - Nothing here is the only copy of anything: every key is derived from
//!   segment files, and deleting the whole index directory loses nothing
//!   (the store rebuilds it on start).
//! - Entries are indexed only after they are durable in a segment, and
//!   `indexed_size` moves last, after the batch's other keys: a crash
//!   in between re-indexes the same keys to the same values.

use std::ops::Range;

use sled::{Db, Tree};

use crate::core::entry::Entry;
use crate::core::hash::Hash;
use crate::core::merkle::{NodeId, NodeReadError};

use super::StoreError;

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the record in the segment file.
    pub offset: u64,
}

/// The indexes of one log.
#[derive(Clone)]
pub struct LogIndex {
    loc: Tree,
    nodes: Tree,
    subject: Tree,
    actor: Tree,
    time: Tree,
    idem: Tree,
    checkpoints: Tree,
    segments: Tree,
    meta: Tree,
}

const INDEXED_SIZE: &[u8] = b"indexed_size";

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Order-preserving key of a signed timestamp.
fn time_key(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn prefixed(s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + s.len() + 8);
    k.extend_from_slice(&(s.len() as u16).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
    k
}

/// One entry to index.
pub struct IndexedEntry<'a> {
    /// Its decoded fields.
    pub entry: &'a Entry,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// Where it is.
    pub location: Location,
}

impl LogIndex {
    /// Opens (creating) the trees of `log` in `db`.
    ///
    /// # Errors
    /// sled errors.
    pub fn open(db: &Db, log: &str) -> Result<LogIndex, StoreError> {
        let t = |name: &str| db.open_tree(format!("{log}\u{0}{name}"));
        Ok(LogIndex {
            loc: t("loc")?,
            nodes: t("nodes")?,
            subject: t("subject")?,
            actor: t("actor")?,
            time: t("time")?,
            idem: t("idem")?,
            checkpoints: t("checkpoints")?,
            segments: t("segments")?,
            meta: t("meta")?,
        })
    }

    /// Entries indexed so far (every seq below it is in every index).
    ///
    /// # Errors
    /// sled errors.
    pub fn indexed_size(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(INDEXED_SIZE)?
            .map(|v| u64_of(&v))
            .unwrap_or(0))
    }

    /// Removes every key of this log (before a rebuild).
    ///
    /// # Errors
    /// sled errors.
    pub fn clear(&self) -> Result<(), StoreError> {
        for t in [
            &self.loc,
            &self.nodes,
            &self.subject,
            &self.actor,
            &self.time,
            &self.idem,
            &self.checkpoints,
            &self.segments,
            &self.meta,
        ] {
            t.clear()?;
        }
        Ok(())
    }

    /// Indexes entries `[first_seq, first_seq + entries.len())`, the tree
    /// nodes they completed and, when given, the checkpoint that closes
    /// them; then moves `indexed_size`.
    ///
    /// # Errors
    /// sled errors.
    pub fn add_entries(
        &self,
        first_seq: u64,
        entries: &[IndexedEntry<'_>],
        nodes: &[(NodeId, Hash)],
        checkpoint: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut loc = sled::Batch::default();
        let mut subject = sled::Batch::default();
        let mut actor = sled::Batch::default();
        let mut time = sled::Batch::default();
        let mut idem = sled::Batch::default();
        for (i, ie) in entries.iter().enumerate() {
            let seq = first_seq + i as u64;
            debug_assert_eq!(seq, ie.entry.seq);
            let mut v = Vec::with_capacity(48);
            v.extend_from_slice(&be(ie.location.segment));
            v.extend_from_slice(&be(ie.location.offset));
            v.extend_from_slice(&ie.leaf_hash.0);
            loc.insert(&be(seq), v);
            let mut k = prefixed(&ie.entry.subject);
            k.extend_from_slice(&be(seq));
            subject.insert(k, &[]);
            let mut k = prefixed(&ie.entry.actor);
            k.extend_from_slice(&be(seq));
            actor.insert(k, &[]);
            let mut k = time_key(ie.entry.timestamp_unix_nanos).to_vec();
            k.extend_from_slice(&be(seq));
            time.insert(k, &[]);
            if !ie.entry.idempotency_key.is_empty() {
                idem.insert(ie.entry.idempotency_key.as_bytes(), &be(seq));
            }
        }
        let mut nb = sled::Batch::default();
        for (id, h) in nodes {
            if id.level > 0 {
                nb.insert(&node_key(*id), &h.0);
            }
        }
        self.loc.apply_batch(loc)?;
        self.nodes.apply_batch(nb)?;
        self.subject.apply_batch(subject)?;
        self.actor.apply_batch(actor)?;
        self.time.apply_batch(time)?;
        self.idem.apply_batch(idem)?;
        let end = first_seq + entries.len() as u64;
        if let Some(cp) = checkpoint {
            self.checkpoints.insert(be(end), cp.as_bytes())?;
        }
        self.meta.insert(INDEXED_SIZE, &be(end))?;
        Ok(())
    }

    /// Records a checkpoint (one that does not close a batch being indexed).
    ///
    /// # Errors
    /// sled errors.
    pub fn add_checkpoint(&self, size: u64, signed: &str) -> Result<(), StoreError> {
        self.checkpoints.insert(be(size), signed.as_bytes())?;
        Ok(())
    }

    /// Records that segment `index` starts at `first_seq`.
    ///
    /// # Errors
    /// sled errors.
    pub fn add_segment(&self, index: u64, first_seq: u64) -> Result<(), StoreError> {
        let mut v = be(first_seq).to_vec();
        if let Some(old) = self.segments.get(be(index))? {
            // Keep a seal already recorded.
            v.extend_from_slice(&old[8..]);
        }
        self.segments.insert(be(index), v)?;
        Ok(())
    }

    /// Records the seal of segment `index`.
    ///
    /// # Errors
    /// sled errors.
    pub fn add_seal(&self, index: u64, first_seq: u64, signed: &str) -> Result<(), StoreError> {
        let mut v = be(first_seq).to_vec();
        v.extend_from_slice(signed.as_bytes());
        self.segments.insert(be(index), v)?;
        Ok(())
    }

    /// Segments: (index, first seq, seal text if sealed), oldest first.
    ///
    /// # Errors
    /// sled errors.
    pub fn segments(&self) -> Result<Vec<(u64, u64, Option<String>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.segments.iter() {
            let (k, v) = kv?;
            let seal = (v.len() > 8).then(|| String::from_utf8_lossy(&v[8..]).into_owned());
            out.push((u64_of(&k), u64_of(&v), seal));
        }
        Ok(out)
    }

    /// Location and leaf hash of `seq`.
    ///
    /// # Errors
    /// sled errors.
    pub fn location(&self, seq: u64) -> Result<Option<(Location, Hash)>, StoreError> {
        Ok(self.loc.get(be(seq))?.map(|v| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&v[16..48]);
            (
                Location {
                    segment: u64_of(&v[0..8]),
                    offset: u64_of(&v[8..16]),
                },
                Hash(h),
            )
        }))
    }

    /// A perfect node (level 0 from the location map).
    ///
    /// # Errors
    /// When the node is not indexed.
    pub fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
        let err = |reason: String| NodeReadError { id, reason };
        if id.level == 0 {
            return match self.location(id.index) {
                Ok(Some((_, h))) => Ok(h),
                Ok(None) => Err(err("leaf not indexed".into())),
                Err(e) => Err(err(e.to_string())),
            };
        }
        match self.nodes.get(node_key(id)) {
            Ok(Some(v)) if v.len() == 32 => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&v);
                Ok(Hash(h))
            }
            Ok(_) => Err(err("node not indexed".into())),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Seq appended with an idempotency key.
    ///
    /// # Errors
    /// sled errors.
    pub fn seq_by_idempotency_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.idem.get(key.as_bytes())?.map(|v| u64_of(&v)))
    }

    fn seqs_by(
        tree: &Tree,
        value: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let prefix = prefixed(value);
        let mut start = prefix.clone();
        start.extend_from_slice(&be(from_seq));
        let mut out = Vec::new();
        for kv in tree.range(start..) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(u64_of(&k[prefix.len()..]));
        }
        Ok(out)
    }

    /// Seqs about a subject.
    ///
    /// # Errors
    /// sled errors.
    pub fn seqs_by_subject(
        &self,
        subject: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        Self::seqs_by(&self.subject, subject, from_seq, limit)
    }

    /// Seqs by an actor.
    ///
    /// # Errors
    /// sled errors.
    pub fn seqs_by_actor(
        &self,
        actor: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        Self::seqs_by(&self.actor, actor, from_seq, limit)
    }

    /// First seq with a timestamp at or after `ts`, or `end` if none.
    fn first_seq_at_or_after(&self, ts: i64, end: u64) -> Result<u64, StoreError> {
        Ok(match self.time.range(time_key(ts).to_vec()..).next() {
            Some(kv) => u64_of(&kv?.0[8..]),
            None => end,
        })
    }

    /// Seqs with timestamps in `[since, until)`.
    ///
    /// # Errors
    /// sled errors.
    pub fn seq_range_by_time(&self, since: i64, until: i64) -> Result<Range<u64>, StoreError> {
        let end = self.indexed_size()?;
        if until <= since {
            return Ok(0..0);
        }
        let a = self.first_seq_at_or_after(since, end)?;
        let b = self.first_seq_at_or_after(until, end)?;
        Ok(a..b.max(a))
    }

    /// The checkpoint stored for exactly `size`.
    ///
    /// # Errors
    /// sled errors.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .checkpoints
            .get(be(size))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The latest stored checkpoint and its size.
    ///
    /// # Errors
    /// sled errors.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .checkpoints
            .last()?
            .map(|(k, v)| (u64_of(&k), String::from_utf8_lossy(&v).into_owned())))
    }
}

fn node_key(id: NodeId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = id.level;
    k[1..].copy_from_slice(&id.index.to_be_bytes());
    k
}
