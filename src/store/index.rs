//! Derived indexes of the embedded store.
//!
//! Two kinds, both rebuilt from segment files when lost:
//!
//! - **Dense** ([`DenseIndex`]): one fixed-size record per seq (segment,
//!   offset, leaf hash, timestamp) and one file per tree level of perfect
//!   node hashes. Flat files under `DATA/index/<log>/`, written in the append
//!   path (a `write`, no sync): proofs and reads by seq see a batch as soon as
//!   it is acknowledged. Timestamps never decrease within a log, so time
//!   ranges are a binary search over the location records.
//! - **Keyed** ([`KeyedIndex`]): sled trees for tree size → checkpoint and
//!   segment → (first seq, seal). Applied by a background indexer thread,
//!   off the append path.
//!
//! Subject, actor and idempotency-key postings are a third kind, in their
//! own files: see [`super::postings`].
//!
//! Invariants:
//! - Nothing here is the only copy of anything; deleting `DATA/index`
//!   loses nothing.
//! - `indexed_size` (in sled) is written only after the dense files are
//!   synced up to it and the sled trees hold it: on start, everything below
//!   it is trusted, everything above it is truncated and recomputed from
//!   segments.
//! - Nothing is indexed before it is durable in a segment file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sled::{Db, Tree};

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

/// Dense per-seq data of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseEntry {
    /// Where the record is.
    pub location: Location,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// Its timestamp.
    pub timestamp: i64,
}

/// Bytes of one location record: segment, offset, leaf hash, timestamp.
const LOC_LEN: u64 = 8 + 8 + 32 + 8;

fn io_err(context: String) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

struct DenseFiles {
    locs: File,
    /// `levels[l - 1]` holds the perfect nodes of level `l`.
    levels: Vec<File>,
}

/// Flat files of locations and tree nodes of one log.
pub struct DenseIndex {
    dir: PathBuf,
    files: RwLock<DenseFiles>,
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl DenseIndex {
    /// Opens the files of a log and cuts them to the entries they can be
    /// trusted for: at most `trusted` (what was synced and recorded), less if
    /// a file is shorter than that. Returns the index and that count;
    /// everything beyond is recomputed from segments by catch-up.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(dir: &Path, trusted: u64) -> Result<(DenseIndex, u64), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let len = |f: &File, what: &str| {
            f.metadata()
                .map(|m| m.len())
                .map_err(io_err(format!("stat {what}")))
        };
        let locs_path = dir.join("locations");
        let locs = open_rw(&locs_path).map_err(io_err(format!("open {}", locs_path.display())))?;
        let mut trusted = trusted.min(len(&locs, "locations")? / LOC_LEN);
        let mut levels = Vec::new();
        for level in 1..64u32 {
            let path = dir.join(format!("nodes-{level:02}"));
            if (trusted >> level) == 0 && !path.exists() {
                break;
            }
            let f = open_rw(&path).map_err(io_err(format!("open {}", path.display())))?;
            // A level file too short for `trusted` lowers it: with n hashes
            // it covers every size t with t >> level <= n.
            let n = len(&f, "nodes")? / 32;
            trusted = trusted.min(((n + 1) << level) - 1);
            levels.push(f);
        }
        locs.set_len(trusted * LOC_LEN)
            .map_err(io_err("truncate locations".into()))?;
        for (i, f) in levels.iter().enumerate() {
            f.set_len((trusted >> (i + 1)) * 32)
                .map_err(io_err(format!("truncate nodes-{:02}", i + 1)))?;
        }
        Ok((
            DenseIndex {
                dir: dir.to_owned(),
                files: RwLock::new(DenseFiles { locs, levels }),
            },
            trusted,
        ))
    }

    /// Writes the records of entries `[first_seq, first_seq + n)` and the
    /// nodes they completed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn add(
        &self,
        first_seq: u64,
        entries: &[DenseEntry],
        nodes: &[(NodeId, Hash)],
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(entries.len() * LOC_LEN as usize);
        for e in entries {
            buf.extend_from_slice(&e.location.segment.to_be_bytes());
            buf.extend_from_slice(&e.location.offset.to_be_bytes());
            buf.extend_from_slice(&e.leaf_hash.0);
            buf.extend_from_slice(&e.timestamp.to_be_bytes());
        }
        let mut files = self.files.write().expect("dense files lock");
        files
            .locs
            .write_all_at(&buf, first_seq * LOC_LEN)
            .map_err(io_err("write locations".into()))?;
        // Nodes arrive bottom-up per leaf; group the runs of each level.
        let mut by_level: Vec<(u64, Vec<u8>)> = Vec::new();
        for (id, h) in nodes {
            if id.level == 0 {
                continue;
            }
            let l = id.level as usize;
            while files.levels.len() < l {
                let level = files.levels.len() + 1;
                let path = self.dir.join(format!("nodes-{level:02}"));
                let f = open_rw(&path).map_err(io_err(format!("open {}", path.display())))?;
                files.levels.push(f);
            }
            if by_level.len() < l {
                by_level.resize_with(l, || (u64::MAX, Vec::new()));
            }
            let (start, bytes) = &mut by_level[l - 1];
            if *start == u64::MAX {
                *start = id.index;
            }
            debug_assert_eq!(*start + bytes.len() as u64 / 32, id.index);
            bytes.extend_from_slice(&h.0);
        }
        for (l, (start, bytes)) in by_level.iter().enumerate() {
            if !bytes.is_empty() {
                files.levels[l]
                    .write_all_at(bytes, start * 32)
                    .map_err(io_err(format!("write nodes-{:02}", l + 1)))?;
            }
        }
        Ok(())
    }

    /// Makes the files durable (before `indexed_size` may cover them).
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<(), StoreError> {
        let files = self.files.read().expect("dense files lock");
        files
            .locs
            .sync_data()
            .map_err(io_err("sync locations".into()))?;
        for f in &files.levels {
            f.sync_data().map_err(io_err("sync nodes".into()))?;
        }
        Ok(())
    }

    /// The dense record of `seq`, if written.
    ///
    /// # Errors
    /// I/O errors.
    pub fn get(&self, seq: u64) -> Result<Option<DenseEntry>, StoreError> {
        let files = self.files.read().expect("dense files lock");
        let mut b = [0u8; LOC_LEN as usize];
        match files.locs.read_exact_at(&mut b, seq * LOC_LEN) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_err("read locations".into())(e)),
        }
        let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let mut h = [0u8; 32];
        h.copy_from_slice(&b[16..48]);
        Ok(Some(DenseEntry {
            location: Location {
                segment: u(0),
                offset: u(8),
            },
            leaf_hash: Hash(h),
            timestamp: u(48) as i64,
        }))
    }

    /// Moves the location of `seq` (after its segment was rewritten).
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_location(&self, seq: u64, loc: Location) -> Result<(), StoreError> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&loc.segment.to_be_bytes());
        b[8..].copy_from_slice(&loc.offset.to_be_bytes());
        let files = self.files.write().expect("dense files lock");
        files
            .locs
            .write_all_at(&b, seq * LOC_LEN)
            .map_err(io_err("write locations".into()))
    }

    /// A perfect node (level 0 from the location records).
    ///
    /// # Errors
    /// When the node is not written.
    pub fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
        let err = |reason: String| NodeReadError { id, reason };
        if id.level == 0 {
            return match self.get(id.index) {
                Ok(Some(d)) => Ok(d.leaf_hash),
                Ok(None) => Err(err("leaf not indexed".into())),
                Err(e) => Err(err(e.to_string())),
            };
        }
        let files = self.files.read().expect("dense files lock");
        let f = files
            .levels
            .get(id.level as usize - 1)
            .ok_or_else(|| err("node not indexed".into()))?;
        let mut h = [0u8; 32];
        f.read_exact_at(&mut h, id.index * 32)
            .map_err(|e| err(format!("node not indexed: {e}")))?;
        Ok(Hash(h))
    }

    /// First seq below `size` with a timestamp at or after `ts` (timestamps
    /// never decrease within a log), or `size`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn first_at_or_after(&self, ts: i64, size: u64) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = (0u64, size);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let t = self
                .get(mid)?
                .ok_or_else(|| StoreError::Index(format!("location {mid} missing")))?
                .timestamp;
            if t < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

/// The sled trees of one log: tree size → checkpoint, segment → (first
/// seq, seal), and the `indexed_size` mark. Few keys (one per batch or
/// segment), appended in key order: what sled handles well. The keyed
/// postings (subject, actor, idempotency key) live in
/// [`super::postings`].
#[derive(Clone)]
pub struct KeyedIndex {
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

impl KeyedIndex {
    /// Opens (creating) the trees of `log` in `db`.
    ///
    /// # Errors
    /// sled errors.
    pub fn open(db: &Db, log: &str) -> Result<KeyedIndex, StoreError> {
        let name = |name: &str| format!("{log}\u{0}{name}");
        // Earlier builds kept postings in a sled tree `keys`; they now
        // live in their own files, so drop what an older directory has.
        db.drop_tree(name("keys"))?;
        Ok(KeyedIndex {
            checkpoints: db.open_tree(name("checkpoints"))?,
            segments: db.open_tree(name("segments"))?,
            meta: db.open_tree(name("meta"))?,
        })
    }

    /// Entries indexed (dense synced and checkpoints recorded) so far.
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

    /// Records `indexed_size` (after the dense files were synced).
    ///
    /// # Errors
    /// sled errors.
    pub fn set_indexed_size(&self, n: u64) -> Result<(), StoreError> {
        self.meta.insert(INDEXED_SIZE, &be(n))?;
        Ok(())
    }

    /// Removes every key of this log (before a rebuild).
    ///
    /// # Errors
    /// sled errors.
    pub fn clear(&self) -> Result<(), StoreError> {
        for t in [&self.checkpoints, &self.segments, &self.meta] {
            t.clear()?;
        }
        Ok(())
    }

    /// Records signed checkpoints by tree size, in one sled batch.
    ///
    /// # Errors
    /// sled errors.
    pub fn add_checkpoints<'a>(
        &self,
        checkpoints: impl IntoIterator<Item = (u64, &'a str)>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (size, cp) in checkpoints {
            batch.insert(&be(size), cp.as_bytes());
        }
        self.checkpoints.apply_batch(batch)?;
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

    /// Up to `limit` checkpoints of sizes above `after`, by size.
    ///
    /// # Errors
    /// sled errors.
    pub fn checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.checkpoints
            .range(be(from)..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((u64_of(&k), String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
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

/// Both indexes of one log.
pub struct LogIndex {
    /// Flat files.
    pub dense: DenseIndex,
    /// sled trees.
    pub keyed: KeyedIndex,
}

impl LogIndex {
    /// Opens both for `log`: sled trees in `db`, flat files in `dir`.
    ///
    /// # Errors
    /// I/O and sled errors.
    pub fn open(db: &Db, dir: &Path, log: &str) -> Result<LogIndex, StoreError> {
        let keyed = KeyedIndex::open(db, log)?;
        let recorded = keyed.indexed_size()?;
        let (dense, trusted) = DenseIndex::open(dir, recorded)?;
        if trusted < recorded {
            // Re-indexing keyed facts is idempotent: catch up from here.
            keyed.set_indexed_size(trusted)?;
        }
        Ok(LogIndex { dense, keyed })
    }

    /// Seqs with timestamps in `[since, until)` among the first `size`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn seq_range_by_time(
        &self,
        since: i64,
        until: i64,
        size: u64,
    ) -> Result<Range<u64>, StoreError> {
        if until <= since {
            return Ok(0..0);
        }
        let a = self.dense.first_at_or_after(since, size)?;
        let b = self.dense.first_at_or_after(until, size)?;
        Ok(a..b.max(a))
    }
}
