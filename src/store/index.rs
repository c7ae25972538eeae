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
//! - **Keyed** ([`KeyedIndex`]): tree size → signed checkpoint in two flat
//!   files ([`CheckpointFile`], written when a batch is published, like the
//!   dense files), and sled trees for segment → (first seq, seal) and the
//!   `indexed_size` mark (applied by a background indexer thread, off the
//!   append path).
//!
//! Subject, actor and idempotency-key postings are a third kind, in their
//! own files: see [`super::postings`].
//!
//! Invariants:
//! - Nothing here is the only copy of anything; deleting `DATA/index`
//!   loses nothing.
//! - `indexed_size` (in sled) is written only after the dense files and the
//!   checkpoint files are synced up to it and the sled trees hold it: on
//!   start, everything below it is trusted, everything above it is
//!   truncated and recomputed from segments.
//! - Nothing is indexed before it is durable in a segment file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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

fn file_len(f: &File, what: &str) -> Result<u64, StoreError> {
    f.metadata()
        .map(|m| m.len())
        .map_err(io_err(format!("stat {what}")))
}

struct DenseFiles {
    locs: Arc<File>,
    /// `levels[l - 1]` holds the perfect nodes of level `l`.
    levels: Vec<Arc<File>>,
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
        let locs_path = dir.join("locations");
        let locs = open_rw(&locs_path).map_err(io_err(format!("open {}", locs_path.display())))?;
        let mut trusted = trusted.min(file_len(&locs, "locations")? / LOC_LEN);
        let mut levels = Vec::new();
        for level in 1..64u32 {
            let path = dir.join(format!("nodes-{level:02}"));
            if (trusted >> level) == 0 && !path.exists() {
                break;
            }
            let f = open_rw(&path).map_err(io_err(format!("open {}", path.display())))?;
            // A level file too short for `trusted` lowers it: with n hashes
            // it covers every size t with t >> level <= n.
            let n = file_len(&f, "nodes")? / 32;
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
                files: RwLock::new(DenseFiles {
                    locs: Arc::new(locs),
                    levels: levels.into_iter().map(Arc::new).collect(),
                }),
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
                files.levels.push(Arc::new(f));
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

    /// Makes the files durable (before `indexed_size` may cover them): what
    /// was written before the call. No lock is held while the disk works,
    /// so the append path's writes never wait for these syncs.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (locs, levels) = {
            let files = self.files.read().expect("dense files lock");
            (files.locs.clone(), files.levels.clone())
        };
        locs.sync_data().map_err(io_err("sync locations".into()))?;
        for f in &levels {
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

/// Bytes of one checkpoint record: tree size, end offset of its text in
/// the text file, and the first 8 bytes of the text's BLAKE3.
const CP_LEN: u64 = 8 + 8 + 8;

/// Domain of the check of a checkpoint record.
const CP_CHECK_DOMAIN: &[u8] = b"auditlog/index/checkpoint/v1\x00";

fn cp_check(text: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(CP_CHECK_DOMAIN);
    h.update(text);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// One record of `checkpoints.idx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpRecord {
    size: u64,
    end: u64,
    check: [u8; 8],
}

struct CpFiles {
    /// `checkpoints.idx`: one [`CP_LEN`]-byte record per checkpoint, sizes
    /// never decreasing.
    idx: Arc<File>,
    /// `checkpoints.txt`: the signed note texts, back to back.
    txt: Arc<File>,
    /// Records written.
    count: u64,
    /// The last record, if any.
    last: Option<CpRecord>,
}

/// Signed checkpoints of one log by tree size, in two append-only flat
/// files beside the dense index: sled rewrote a page per batch for these
/// (about a fifth of the server's CPU per entry under 64 unary appenders),
/// where two `pwrite`s do.
///
/// *Invariants:* record sizes never decrease; a record's text is the bytes
/// between the previous record's end and its own, and hashes to its check
/// (checked on every read); several records may share a size (a log
/// re-signed at one size), and the last of them answers for it.
pub struct CheckpointFile {
    files: RwLock<CpFiles>,
}

impl CheckpointFile {
    /// Opens (creating) the files in `dir`, cut to the checkpoints of sizes
    /// at most `trusted` whose text is all there. Also returns the size it
    /// vouches for: its last checkpoint's (0 if none). Each batch ends in a
    /// checkpoint and `indexed_size` is always a batch's end, so that is
    /// `trusted` itself unless something was lost (files deleted, or written
    /// by a version that kept checkpoints in sled): the caller re-indexes
    /// from there.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(dir: &Path, trusted: u64) -> Result<(CheckpointFile, u64), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let idx_path = dir.join("checkpoints.idx");
        let idx = open_rw(&idx_path).map_err(io_err(format!("open {}", idx_path.display())))?;
        let txt_path = dir.join("checkpoints.txt");
        let txt = open_rw(&txt_path).map_err(io_err(format!("open {}", txt_path.display())))?;
        let txt_len = file_len(&txt, "checkpoints.txt")?;
        let count = file_len(&idx, "checkpoints.idx")? / CP_LEN;
        let mut files = CpFiles {
            idx: Arc::new(idx),
            txt: Arc::new(txt),
            count,
            last: None,
        };
        // Keep the records of sizes up to `trusted`, then drop any whose
        // text is not all there.
        let mut keep = Self::first_above(&files, trusted)?;
        while keep > 0 && read_cp(&files.idx, keep - 1)?.end > txt_len {
            keep -= 1;
        }
        files.count = keep;
        files.last = if keep > 0 {
            Some(read_cp(&files.idx, keep - 1)?)
        } else {
            None
        };
        let end = files.last.map_or(0, |r| r.end);
        files
            .idx
            .set_len(keep * CP_LEN)
            .map_err(io_err("truncate checkpoints.idx".into()))?;
        files
            .txt
            .set_len(end)
            .map_err(io_err("truncate checkpoints.txt".into()))?;
        let vouched = files.last.map_or(0, |r| r.size);
        Ok((
            CheckpointFile {
                files: RwLock::new(files),
            },
            vouched,
        ))
    }

    /// Records `text` as the checkpoint of `size`. A size below the last
    /// recorded one, or the last one again with the same text, is already
    /// recorded (catch-up re-reads whole segments): nothing is written.
    ///
    /// # Errors
    /// I/O errors.
    pub fn add(&self, size: u64, text: &str) -> Result<(), StoreError> {
        let mut files = self.files.write().expect("checkpoint files lock");
        let check = cp_check(text.as_bytes());
        if let Some(last) = files.last {
            if size < last.size || (size == last.size && check == last.check) {
                return Ok(());
            }
        }
        let start = files.last.map_or(0, |r| r.end);
        let rec = CpRecord {
            size,
            end: start + text.len() as u64,
            check,
        };
        files
            .txt
            .write_all_at(text.as_bytes(), start)
            .map_err(io_err("write checkpoints.txt".into()))?;
        let mut b = [0u8; CP_LEN as usize];
        b[..8].copy_from_slice(&rec.size.to_be_bytes());
        b[8..16].copy_from_slice(&rec.end.to_be_bytes());
        b[16..].copy_from_slice(&rec.check);
        files
            .idx
            .write_all_at(&b, files.count * CP_LEN)
            .map_err(io_err("write checkpoints.idx".into()))?;
        files.count += 1;
        files.last = Some(rec);
        Ok(())
    }

    /// Makes the files durable (before `indexed_size` may cover them): what
    /// was written before the call, without holding the lock `add` takes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (txt, idx) = {
            let files = self.files.read().expect("checkpoint files lock");
            (files.txt.clone(), files.idx.clone())
        };
        txt.sync_data()
            .map_err(io_err("sync checkpoints.txt".into()))?;
        idx.sync_data()
            .map_err(io_err("sync checkpoints.idx".into()))
    }

    /// Removes every checkpoint (before a rebuild).
    ///
    /// # Errors
    /// I/O errors.
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut files = self.files.write().expect("checkpoint files lock");
        files
            .idx
            .set_len(0)
            .map_err(io_err("truncate checkpoints.idx".into()))?;
        files
            .txt
            .set_len(0)
            .map_err(io_err("truncate checkpoints.txt".into()))?;
        files.count = 0;
        files.last = None;
        Ok(())
    }

    /// The text of record `i` (checked).
    fn text(files: &CpFiles, i: u64) -> Result<(u64, String), StoreError> {
        let rec = read_cp(&files.idx, i)?;
        let start = if i == 0 {
            0
        } else {
            read_cp(&files.idx, i - 1)?.end
        };
        let damaged = || {
            StoreError::Index(format!(
                "checkpoint index record {i} is damaged; delete the index directory to rebuild it"
            ))
        };
        let len = rec.end.checked_sub(start).ok_or_else(damaged)?;
        if len > MAX_CHECKPOINT_TEXT {
            return Err(damaged());
        }
        let mut buf = vec![0u8; len as usize];
        files
            .txt
            .read_exact_at(&mut buf, start)
            .map_err(io_err("read checkpoints.txt".into()))?;
        if cp_check(&buf) != rec.check {
            return Err(damaged());
        }
        String::from_utf8(buf)
            .map(|t| (rec.size, t))
            .map_err(|_| damaged())
    }

    /// Index of the first record of a size above `size` (a binary search:
    /// sizes never decrease).
    fn first_above(files: &CpFiles, size: u64) -> Result<u64, StoreError> {
        let (mut lo, mut hi) = (0u64, files.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if read_cp(&files.idx, mid)?.size <= size {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The checkpoint stored for exactly `size` (the last, if several).
    ///
    /// # Errors
    /// I/O errors, a damaged record.
    pub fn at(&self, size: u64) -> Result<Option<String>, StoreError> {
        let files = self.files.read().expect("checkpoint files lock");
        let i = Self::first_above(&files, size)?;
        if i == 0 || read_cp(&files.idx, i - 1)?.size != size {
            return Ok(None);
        }
        Self::text(&files, i - 1).map(|(_, t)| Some(t))
    }

    /// Up to `limit` checkpoints of sizes above `after`, by size (one per
    /// size: the last recorded for it).
    ///
    /// # Errors
    /// I/O errors, a damaged record.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let files = self.files.read().expect("checkpoint files lock");
        let mut out: Vec<(u64, String)> = Vec::new();
        let mut i = Self::first_above(&files, after)?;
        while i < files.count {
            let (size, text) = Self::text(&files, i)?;
            i += 1;
            if let Some(last) = out.last_mut().filter(|l| l.0 == size) {
                last.1 = text;
            } else if out.len() == limit {
                break;
            } else {
                out.push((size, text));
            }
        }
        Ok(out)
    }

    /// The latest checkpoint and its size.
    ///
    /// # Errors
    /// I/O errors, a damaged record.
    pub fn latest(&self) -> Result<Option<(u64, String)>, StoreError> {
        let files = self.files.read().expect("checkpoint files lock");
        if files.count == 0 {
            return Ok(None);
        }
        Self::text(&files, files.count - 1).map(Some)
    }
}

/// Longest checkpoint text a record may claim (a signed note is a few
/// hundred bytes; a damaged end offset must not allocate gigabytes).
const MAX_CHECKPOINT_TEXT: u64 = 64 << 10;

fn read_cp(idx: &File, i: u64) -> Result<CpRecord, StoreError> {
    let mut b = [0u8; CP_LEN as usize];
    idx.read_exact_at(&mut b, i * CP_LEN)
        .map_err(io_err("read checkpoints.idx".into()))?;
    let mut check = [0u8; 8];
    check.copy_from_slice(&b[16..]);
    Ok(CpRecord {
        size: u64_of(&b[..8]),
        end: u64_of(&b[8..16]),
        check,
    })
}

/// The sled trees of one log (segment → (first seq, seal), and the
/// `indexed_size` mark: few keys, appended in key order, what sled handles
/// well), and its [`CheckpointFile`]. The keyed postings (subject, actor,
/// idempotency key) live in [`super::postings`].
pub struct KeyedIndex {
    checkpoints: CheckpointFile,
    segments: Tree,
    meta: Tree,
}

const INDEXED_SIZE: &[u8] = b"indexed_size";

/// Name of the sled tree `name` of `log`.
fn tree_name(log: &str, name: &str) -> String {
    format!("{log}\u{0}{name}")
}

fn indexed_size_in(meta: &Tree) -> Result<u64, StoreError> {
    Ok(meta.get(INDEXED_SIZE)?.map_or(0, |v| u64_of(&v)))
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl KeyedIndex {
    /// Opens (creating) the trees of `log` in `db`, with `checkpoints`.
    ///
    /// # Errors
    /// sled errors.
    fn open(
        db: &Db,
        log: &str,
        meta: Tree,
        checkpoints: CheckpointFile,
    ) -> Result<KeyedIndex, StoreError> {
        // Earlier builds kept postings in a sled tree `keys` and checkpoints
        // in a tree `checkpoints`; both now live in their own files, so
        // drop what an older directory has.
        db.drop_tree(tree_name(log, "keys"))?;
        db.drop_tree(tree_name(log, "checkpoints"))?;
        Ok(KeyedIndex {
            checkpoints,
            segments: db.open_tree(tree_name(log, "segments"))?,
            meta,
        })
    }

    /// Entries indexed (dense synced and checkpoints recorded) so far.
    ///
    /// # Errors
    /// sled errors.
    pub fn indexed_size(&self) -> Result<u64, StoreError> {
        indexed_size_in(&self.meta)
    }

    /// Records `indexed_size` (after the dense files were synced): syncs the
    /// checkpoint files first, so the mark never covers a checkpoint that a
    /// crash could lose.
    ///
    /// # Errors
    /// I/O and sled errors.
    pub fn set_indexed_size(&self, n: u64) -> Result<(), StoreError> {
        self.checkpoints.sync()?;
        self.meta.insert(INDEXED_SIZE, &be(n))?;
        Ok(())
    }

    /// Removes every key of this log (before a rebuild).
    ///
    /// # Errors
    /// I/O and sled errors.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.checkpoints.clear()?;
        for t in [&self.segments, &self.meta] {
            t.clear()?;
        }
        Ok(())
    }

    /// Records signed checkpoints by tree size.
    ///
    /// # Errors
    /// I/O errors.
    pub fn add_checkpoints<'a>(
        &self,
        checkpoints: impl IntoIterator<Item = (u64, &'a str)>,
    ) -> Result<(), StoreError> {
        for (size, cp) in checkpoints {
            self.checkpoints.add(size, cp)?;
        }
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
    /// I/O errors, a damaged record.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.checkpoints.at(size)
    }

    /// Up to `limit` checkpoints of sizes above `after`, by size.
    ///
    /// # Errors
    /// I/O errors, a damaged record.
    pub fn checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        self.checkpoints.after(after, limit)
    }

    /// The latest stored checkpoint and its size.
    ///
    /// # Errors
    /// I/O errors, a damaged record.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.checkpoints.latest()
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
        let meta = db.open_tree(tree_name(log, "meta"))?;
        let recorded = indexed_size_in(&meta)?;
        let (mut dense, mut trusted) = DenseIndex::open(dir, recorded)?;
        let (checkpoints, vouched) = CheckpointFile::open(dir, trusted)?;
        if vouched < trusted {
            // Checkpoints are missing (an index from before the checkpoint
            // files, or damaged ones): index again from the last one kept.
            (dense, trusted) = DenseIndex::open(dir, vouched)?;
        }
        let keyed = KeyedIndex::open(db, log, meta, checkpoints)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn note(size: u64, tag: &str) -> String {
        format!("example.com/log\n{size}\n{tag}\n\n— key sig\n")
    }

    fn filled(dir: &Path, sizes: &[u64]) -> CheckpointFile {
        let (f, vouched) = CheckpointFile::open(dir, 0).unwrap();
        assert_eq!(vouched, 0);
        for s in sizes {
            f.add(*s, &note(*s, "a")).unwrap();
        }
        f.sync().unwrap();
        f
    }

    #[test]
    fn checkpoints_answer_by_size_and_skip_what_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let f = filled(dir.path(), &[1, 4, 9, 16]);
        assert_eq!(f.at(4).unwrap(), Some(note(4, "a")));
        assert_eq!(f.at(5).unwrap(), None);
        assert_eq!(f.at(0).unwrap(), None);
        assert_eq!(f.at(17).unwrap(), None);
        // Catch-up re-reads whole segments: older sizes and the same text
        // again change nothing.
        f.add(4, &note(4, "b")).unwrap();
        f.add(16, &note(16, "a")).unwrap();
        assert_eq!(f.at(4).unwrap(), Some(note(4, "a")));
        assert_eq!(f.files.read().unwrap().count, 4);
        // The same size re-signed: the last text answers for it.
        f.add(16, &note(16, "b")).unwrap();
        f.add(20, &note(20, "a")).unwrap();
        assert_eq!(f.at(16).unwrap(), Some(note(16, "b")));
        assert_eq!(
            f.after(4, 2).unwrap(),
            vec![(9, note(9, "a")), (16, note(16, "b"))]
        );
        assert_eq!(
            f.after(0, 100)
                .unwrap()
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            vec![1, 4, 9, 16, 20]
        );
        assert_eq!(f.after(20, 10).unwrap(), vec![]);
        assert_eq!(f.after(u64::MAX, 10).unwrap(), vec![]);
        assert_eq!(f.latest().unwrap(), Some((20, note(20, "a"))));
        f.clear().unwrap();
        assert_eq!(f.latest().unwrap(), None);
        f.add(3, &note(3, "c")).unwrap();
        assert_eq!(f.after(0, 10).unwrap(), vec![(3, note(3, "c"))]);
    }

    #[test]
    fn open_keeps_what_is_trusted_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), &[2, 5, 7, 11]));
        // Cut to the trusted size; the size vouched for is the last kept.
        let (f, vouched) = CheckpointFile::open(dir.path(), 8).unwrap();
        assert_eq!(vouched, 7);
        assert_eq!(f.latest().unwrap(), Some((7, note(7, "a"))));
        assert_eq!(f.at(11).unwrap(), None);
        // Records past the trusted size are gone from the files too.
        f.add(9, &note(9, "z")).unwrap();
        drop(f);
        let (f, vouched) = CheckpointFile::open(dir.path(), 100).unwrap();
        assert_eq!(vouched, 9);
        assert_eq!(f.at(9).unwrap(), Some(note(9, "z")));
        drop(f);

        // A torn record and text lost after its record (a power loss
        // before the sync): the incomplete checkpoints are dropped.
        let txt = dir.path().join("checkpoints.txt");
        let len = fs::metadata(&txt).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&txt)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let idx = dir.path().join("checkpoints.idx");
        let mut tail = fs::read(&idx).unwrap();
        tail.extend_from_slice(&[0xee; 11]);
        fs::write(&idx, tail).unwrap();
        let (f, vouched) = CheckpointFile::open(dir.path(), 100).unwrap();
        assert_eq!(vouched, 7, "the checkpoint of 9 lost a byte of its text");
        assert_eq!(f.latest().unwrap(), Some((7, note(7, "a"))));
        f.add(9, &note(9, "y")).unwrap();
        assert_eq!(f.at(9).unwrap(), Some(note(9, "y")));
        drop(f);

        // Nothing there at all (deleted, or an index written before these
        // files): nothing vouched for.
        fs::remove_file(&idx).unwrap();
        let (f, vouched) = CheckpointFile::open(dir.path(), 100).unwrap();
        assert_eq!((vouched, f.latest().unwrap()), (0, None));
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_not_served() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), &[3, 6]));
        let txt = dir.path().join("checkpoints.txt");
        let mut bytes = fs::read(&txt).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        fs::write(&txt, bytes).unwrap();
        let (f, _) = CheckpointFile::open(dir.path(), 6).unwrap();
        assert_eq!(f.at(3).unwrap(), Some(note(3, "a")));
        let err = f.at(6).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert!(f.latest().is_err());
        assert!(f.after(0, 10).is_err());

        // An end offset claiming gigabytes allocates nothing.
        let idx = dir.path().join("checkpoints.idx");
        let mut rec = fs::read(&idx).unwrap();
        rec[CP_LEN as usize + 8..CP_LEN as usize + 16].copy_from_slice(&(5u64 << 30).to_be_bytes());
        fs::write(&idx, rec).unwrap();
        let (f, vouched) = CheckpointFile::open(dir.path(), 6).unwrap();
        assert_eq!(vouched, 3, "its text is not all there");
        assert_eq!(f.at(6).unwrap(), None);
    }

    #[test]
    fn damaged_offsets_inside_the_file_are_refused_and_neighbours_served() {
        let dir = tempfile::tempdir().unwrap();
        // Enough text that an offset can claim more than
        // MAX_CHECKPOINT_TEXT and still point inside the file.
        let sizes: Vec<u64> = (1..=2_000).collect();
        drop(filled(dir.path(), &sizes));
        let txt_len = fs::metadata(dir.path().join("checkpoints.txt"))
            .unwrap()
            .len();
        assert!(txt_len > MAX_CHECKPOINT_TEXT + 100);
        let idx = dir.path().join("checkpoints.idx");
        let mut recs = fs::read(&idx).unwrap();
        // Record 9's end moved to the file's end: a text longer than any
        // note, and every later record now starts after its own end.
        let at = 9 * CP_LEN as usize + 8;
        recs[at..at + 8].copy_from_slice(&txt_len.to_be_bytes());
        fs::write(&idx, recs).unwrap();
        let (f, _) = CheckpointFile::open(dir.path(), 2_000).unwrap();
        assert_eq!(f.at(9).unwrap(), Some(note(9, "a")));
        for size in [10, 11] {
            let err = f.at(size).unwrap_err().to_string();
            assert!(err.contains("damaged"), "{size}: {err}");
        }
        assert_eq!(f.at(12).unwrap(), Some(note(12, "a")));
    }
}
