//! Keyed postings of the embedded store: subject → seqs, actor → seqs,
//! idempotency key → seq, as a small log-structured merge index of our own.
//!
//! Why not sled: with three small keys per entry, sled 0.34 held about 8 KB
//! of resident memory per entry (3.8 GiB after 500,000 entries, cache set to
//! 64 MiB) and wrote about 900 bytes of disk per entry. A log that keeps
//! years of entries cannot afford either. Postings are tiny and
//! append-only, which an LSM index serves with bounded memory:
//!
//! - **Memtable**: postings of the newest entries, in memory, added in the
//!   append path after the batch is durable (so lookups see an entry as soon
//!   as it is acknowledged). At [`RUN_ENTRIES`] entries it is frozen and
//!   handed to the log's compactor thread.
//! - **Runs**: immutable sorted files `run-<first seq>-<end seq>` under
//!   `DATA/index/postings/<log>/`, each covering a contiguous seq range,
//!   together covering `[0, covered)`. The compactor writes frozen memtables
//!   as runs, then merges adjacent runs while an older one spans less than
//!   twice the next (the newest such pair first): each run spans at least
//!   twice the next, a binary counter, so there are O(log n) runs.
//!
//! A posting is `(hash, seq)`: the key's 64-bit hash (its top two bits name
//! the kind, so each kind is one contiguous stretch of a run) and the seq.
//! Hashes can collide, so every answer is a *candidate*: the store checks
//! it against the entry itself before answering.
//!
//! Invariants:
//! - Postings are derived: deleting the directory loses nothing; on start,
//!   runs that fail their checksum, overlap, leave a gap or reach past the
//!   durable log are deleted, and the store re-adds postings from segment
//!   files from `covered` on.
//! - Runs are written to a temporary name, synced, renamed, and the
//!   directory synced; a merged run is in place before its inputs go.
//! - A clean close writes the memtable as a (small) run, so a restart reads
//!   no segment; after a crash, the entries since the last run are re-read.
//! - Memory is bounded: the memtable holds at most [`RUN_ENTRIES`] entries
//!   (plus frozen ones waiting for the compactor), each run keeps one fence
//!   hash per [`BLOCK`] postings and a Bloom filter of its idempotency keys
//!   (10 bits per key), so a lookup of a new key touches no run file.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::segment::sync_dir;
use super::StoreError;

/// Entries per memtable before it is frozen and written as a run.
pub const RUN_ENTRIES: u64 = 65_536;

/// Postings per block: the unit of a run read, and of its fences.
pub const BLOCK: usize = 256;

const POSTING_LEN: usize = 16;
const HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"ALPI";
const VERSION: u32 = 1;
const DOMAIN: &[u8] = b"auditlog/postings/v1\0";

/// The kind of a key, stored in the top two bits of its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An entry's subject.
    Subject = 1,
    /// An entry's actor.
    Actor = 2,
    /// An entry's idempotency key.
    Idempotency = 3,
}

/// The 64-bit posting hash of a key: the first 8 bytes (big-endian) of
/// `BLAKE3(DOMAIN || kind || key)`, with the top two bits replaced by the
/// kind.
#[must_use]
pub fn key_hash(kind: KeyKind, key: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(&[kind as u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    (u64::from_be_bytes(b) >> 2) | ((kind as u64) << 62)
}

fn is_idempotency(hash: u64) -> bool {
    hash >> 62 == KeyKind::Idempotency as u64
}

/// The keyed facts of one entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryKeys<'a> {
    /// Subject.
    pub subject: &'a str,
    /// Actor.
    pub actor: &'a str,
    /// Idempotency key, empty for none.
    pub idempotency_key: &'a str,
}

fn postings_of(seq: u64, k: EntryKeys<'_>, mut f: impl FnMut((u64, u64))) {
    f((key_hash(KeyKind::Subject, k.subject), seq));
    f((key_hash(KeyKind::Actor, k.actor), seq));
    if !k.idempotency_key.is_empty() {
        f((key_hash(KeyKind::Idempotency, k.idempotency_key), seq));
    }
}

/// A Bloom filter over posting hashes (7 probes, 10 bits per key: about
/// 1% false positives).
struct Bloom {
    bits: Vec<u64>,
}

const BLOOM_PROBES: u64 = 7;

impl Bloom {
    fn new(keys: usize) -> Bloom {
        let words = (keys * 10).div_ceil(64).max(1);
        Bloom {
            bits: vec![0; words],
        }
    }

    /// Bit positions probed for `hash`: double hashing over the 62 hash
    /// bits below the kind.
    fn probes(bits: usize, hash: u64) -> impl Iterator<Item = usize> {
        let n = bits as u64;
        let a = hash & 0x7fff_ffff;
        let b = ((hash >> 31) & 0x7fff_ffff) | 1;
        (0..BLOOM_PROBES).map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % n) as usize)
    }

    fn insert(&mut self, hash: u64) {
        for p in Self::probes(self.bits.len() * 64, hash) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        Self::probes(self.bits.len() * 64, hash).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// One immutable sorted run file.
struct Run {
    first: u64,
    end: u64,
    count: u64,
    path: PathBuf,
    file: File,
    /// Hash of the first posting of each block.
    fences: Vec<u64>,
    /// Idempotency-key hashes in this run.
    bloom: Bloom,
}

fn run_file_name(first: u64, end: u64) -> String {
    format!("run-{first:020}-{end:020}")
}

fn parse_run_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("run-")?;
    let (a, b) = rest.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    let (first, end) = (a.parse().ok()?, b.parse().ok()?);
    (first < end).then_some((first, end))
}

fn encode_header(first: u64, end: u64, count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_be_bytes());
    h[8..16].copy_from_slice(&first.to_be_bytes());
    h[16..24].copy_from_slice(&end.to_be_bytes());
    h[24..32].copy_from_slice(&count.to_be_bytes());
    h
}

fn decode_posting(b: &[u8]) -> (u64, u64) {
    let mut h = [0u8; 8];
    let mut s = [0u8; 8];
    h.copy_from_slice(&b[..8]);
    s.copy_from_slice(&b[8..16]);
    (u64::from_be_bytes(h), u64::from_be_bytes(s))
}

fn bad(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

/// Builds a run's in-memory parts while its postings stream by.
struct RunBuilder {
    fences: Vec<u64>,
    idem: Vec<u64>,
    n: u64,
    last: Option<(u64, u64)>,
}

impl RunBuilder {
    fn new() -> RunBuilder {
        RunBuilder {
            fences: Vec::new(),
            idem: Vec::new(),
            n: 0,
            last: None,
        }
    }

    /// Accepts the next posting; false if it is out of order.
    fn push(&mut self, p: (u64, u64)) -> bool {
        if self.last.is_some_and(|l| l >= p) {
            return false;
        }
        if self.n.is_multiple_of(BLOCK as u64) {
            self.fences.push(p.0);
        }
        if is_idempotency(p.0) {
            self.idem.push(p.0);
        }
        self.last = Some(p);
        self.n += 1;
        true
    }

    fn finish(self, first: u64, end: u64, path: PathBuf, file: File) -> Run {
        let mut bloom = Bloom::new(self.idem.len());
        for h in self.idem {
            bloom.insert(h);
        }
        Run {
            first,
            end,
            count: self.n,
            path,
            file,
            fences: self.fences,
            bloom,
        }
    }
}

impl Run {
    /// Writes postings (sorted, distinct) for seqs `[first, end)` as a run
    /// in `dir`, durably.
    fn write(
        dir: &Path,
        first: u64,
        end: u64,
        count: u64,
        postings: impl Iterator<Item = io::Result<(u64, u64)>>,
    ) -> io::Result<Run> {
        let path = dir.join(run_file_name(first, end));
        let tmp = dir.join(format!("{}.tmp", run_file_name(first, end)));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        let mut hasher = blake3::Hasher::new();
        let header = encode_header(first, end, count);
        hasher.update(&header);
        w.write_all(&header)?;
        let mut b = RunBuilder::new();
        for p in postings {
            let p = p?;
            if !b.push(p) {
                return Err(bad(&tmp, "postings out of order"));
            }
            let mut rec = [0u8; POSTING_LEN];
            rec[..8].copy_from_slice(&p.0.to_be_bytes());
            rec[8..].copy_from_slice(&p.1.to_be_bytes());
            hasher.update(&rec);
            w.write_all(&rec)?;
        }
        if b.n != count {
            return Err(bad(&tmp, "posting count differs from the header"));
        }
        w.write_all(hasher.finalize().as_bytes())?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        let file = File::open(&path)?;
        Ok(b.finish(first, end, path, file))
    }

    /// Opens a run, checking every byte against its checksum.
    fn open(path: &Path, first: u64, end: u64) -> io::Result<Run> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 16, &file);
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)?;
        let count = {
            let mut c = [0u8; 8];
            c.copy_from_slice(&header[24..32]);
            u64::from_be_bytes(c)
        };
        if header != encode_header(first, end, count) {
            return Err(bad(path, "header does not match the file name"));
        }
        let expected_len = count
            .checked_mul(POSTING_LEN as u64)
            .and_then(|n| n.checked_add((HEADER_LEN + 32) as u64));
        if expected_len != Some(len) {
            return Err(bad(path, "length does not match the posting count"));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        let mut b = RunBuilder::new();
        let mut rec = [0u8; POSTING_LEN];
        for _ in 0..count {
            r.read_exact(&mut rec)?;
            hasher.update(&rec);
            let p = decode_posting(&rec);
            if p.1 < first || p.1 >= end || !b.push(p) {
                return Err(bad(path, "posting out of order or out of range"));
            }
        }
        let mut sum = [0u8; 32];
        r.read_exact(&mut sum)?;
        if &sum != hasher.finalize().as_bytes() {
            return Err(bad(path, "checksum mismatch"));
        }
        drop(r);
        Ok(b.finish(first, end, path.to_owned(), file))
    }

    /// Streams the postings in order (positioned reads: the file's offset
    /// is shared with every clone of it, so it is never used).
    fn iter(&self) -> impl Iterator<Item = io::Result<(u64, u64)>> + '_ {
        const CHUNK: u64 = 4096;
        let mut buf = Vec::new();
        let mut at = 0u64;
        let mut next = 0u64;
        std::iter::from_fn(move || {
            if next == self.count {
                return None;
            }
            if next == at {
                let n = (self.count - at).min(CHUNK);
                buf.resize(n as usize * POSTING_LEN, 0);
                let pos = HEADER_LEN as u64 + at * POSTING_LEN as u64;
                if let Err(e) = self.file.read_exact_at(&mut buf, pos) {
                    next = self.count;
                    return Some(Err(e));
                }
                at += n;
            }
            let i = (next - (at - (buf.len() / POSTING_LEN) as u64)) as usize;
            next += 1;
            Some(Ok(decode_posting(&buf[i * POSTING_LEN..])))
        })
    }

    /// Calls `f` with each seq posted under `hash` (at least `from_seq`), in
    /// seq order, until it breaks.
    fn for_each(
        &self,
        hash: u64,
        from_seq: u64,
        f: &mut impl FnMut(u64) -> ControlFlow<()>,
    ) -> io::Result<ControlFlow<()>> {
        if self.end <= from_seq || (is_idempotency(hash) && !self.bloom.may_contain(hash)) {
            return Ok(ControlFlow::Continue(()));
        }
        // The first block that can hold `hash`: the one before the first
        // fence at or above it.
        let mut block = self.fences.partition_point(|&f| f < hash).saturating_sub(1);
        let mut buf = vec![0u8; BLOCK * POSTING_LEN];
        while block < self.fences.len() && self.fences[block] <= hash {
            let start = block as u64 * BLOCK as u64;
            let n = (self.count - start).min(BLOCK as u64) as usize;
            let bytes = &mut buf[..n * POSTING_LEN];
            self.file
                .read_exact_at(bytes, HEADER_LEN as u64 + start * POSTING_LEN as u64)?;
            for rec in bytes.chunks_exact(POSTING_LEN) {
                let (h, seq) = decode_posting(rec);
                if h > hash {
                    return Ok(ControlFlow::Continue(()));
                }
                if h == hash && seq >= from_seq && f(seq).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            block += 1;
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// A frozen memtable: sorted postings for seqs `[first, end)`.
struct Frozen {
    first: u64,
    end: u64,
    postings: Vec<(u64, u64)>,
}

fn for_each_sorted(
    postings: &[(u64, u64)],
    hash: u64,
    from_seq: u64,
    f: &mut impl FnMut(u64) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let start = postings.partition_point(|&p| p < (hash, from_seq));
    for &(h, seq) in &postings[start..] {
        if h != hash {
            break;
        }
        f(seq)?;
    }
    ControlFlow::Continue(())
}

struct State {
    runs: Vec<Arc<Run>>,
    frozen: VecDeque<Arc<Frozen>>,
    mem_first: u64,
    mem_end: u64,
    mem: BTreeSet<(u64, u64)>,
    failed: Option<String>,
    stop: bool,
}

impl State {
    /// Hands the memtable, if it holds any entry, to the compactor.
    fn freeze(&mut self) {
        if self.mem_end > self.mem_first {
            let frozen = Frozen {
                first: self.mem_first,
                end: self.mem_end,
                postings: std::mem::take(&mut self.mem).into_iter().collect(),
            };
            self.frozen.push_back(Arc::new(frozen));
            self.mem_first = self.mem_end;
        }
    }

    fn merge_due(&self) -> Option<usize> {
        pair_to_merge(self.runs.iter().map(|r| r.end - r.first))
    }
}

/// The runs to merge next, given their spans oldest first: the newest
/// adjacent pair whose older run spans less than twice the newer (`i` names
/// the pair `i`, `i + 1`). Checking every pair, not only the newest two,
/// matters: frozen memtables are written before any merge, so when several
/// pile up the two newest runs can be in order while an older pair is not
/// (spans 1, 1, 2, 1), and a check of the newest pair alone would leave
/// them so for good.
fn pair_to_merge(spans: impl Iterator<Item = u64>) -> Option<usize> {
    let spans: Vec<u64> = spans.collect();
    (0..spans.len().saturating_sub(1))
        .rev()
        .find(|&i| spans[i] < 2 * spans[i + 1])
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    cv: Condvar,
}

/// The postings of one log. See the module documentation.
pub struct Postings {
    shared: Arc<Shared>,
    compactor: Mutex<Option<JoinHandle<()>>>,
}

/// What [`Postings::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingsOpened {
    /// Entries `[0, covered)` have their postings in runs.
    pub covered: u64,
    /// Run files deleted (damaged, overlapping, beyond the log).
    pub discarded: Vec<String>,
}

fn index_err(e: io::Error) -> StoreError {
    StoreError::Index(format!("postings: {e}"))
}

impl Postings {
    /// Opens (creating) the postings in `dir` for a log of `durable_size`
    /// entries, and starts its compactor thread. The caller re-adds every
    /// entry from `covered` on.
    ///
    /// # Errors
    /// I/O errors on the directory itself (damaged runs are deleted, not
    /// errors).
    pub fn open(dir: &Path, durable_size: u64) -> Result<(Postings, PostingsOpened), StoreError> {
        fs::create_dir_all(dir).map_err(index_err)?;
        let mut found = Vec::new();
        let mut discarded = Vec::new();
        for de in fs::read_dir(dir).map_err(index_err)? {
            let de = de.map_err(index_err)?;
            let name = de.file_name().to_string_lossy().into_owned();
            match parse_run_file_name(&name) {
                Some((first, end)) if end <= durable_size => found.push((first, end, de.path())),
                _ => {
                    fs::remove_file(de.path()).map_err(index_err)?;
                    discarded.push(name);
                }
            }
        }
        // Widest first among equal starts, so a merged run wins over the
        // inputs a crash left behind.
        found.sort_by_key(|&(first, end, _)| (first, std::cmp::Reverse(end)));
        let mut runs: Vec<Arc<Run>> = Vec::new();
        let mut covered = 0;
        for (first, end, path) in found {
            // A run after a gap is useless until the gap is rebuilt.
            let usable = first == covered
                && match Run::open(&path, first, end) {
                    Ok(run) => {
                        runs.push(Arc::new(run));
                        true
                    }
                    Err(_) => false,
                };
            if usable {
                covered = end;
            } else {
                fs::remove_file(&path).map_err(index_err)?;
                discarded.push(
                    path.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                );
            }
        }
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                runs,
                frozen: VecDeque::new(),
                mem_first: covered,
                mem_end: covered,
                mem: BTreeSet::new(),
                failed: None,
                stop: false,
            }),
            cv: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("postings".into())
                .spawn(move || compact(&shared))
                .map_err(index_err)?
        };
        Ok((
            Postings {
                shared,
                compactor: Mutex::new(Some(thread)),
            },
            PostingsOpened { covered, discarded },
        ))
    }

    /// Adds the postings of entries `first_seq..`, which must continue the
    /// entries added so far (entries already covered are skipped).
    ///
    /// # Errors
    /// A gap, or a failed compactor.
    pub fn add<'a>(
        &self,
        first_seq: u64,
        entries: impl ExactSizeIterator<Item = EntryKeys<'a>>,
    ) -> Result<(), StoreError> {
        let n = entries.len() as u64;
        self.add_hashed(first_seq, n, &Postings::hash(first_seq, entries))
    }

    /// The postings of entries `first_seq..` (their keys hashed), sorted,
    /// for [`Postings::add_hashed`]: the hashing needs no lock, so a
    /// writer can do it before its entries are durable.
    #[must_use]
    pub fn hash<'a>(
        first_seq: u64,
        entries: impl Iterator<Item = EntryKeys<'a>>,
    ) -> Vec<(u64, u64)> {
        let mut postings = Vec::new();
        for (i, k) in entries.enumerate() {
            postings_of(first_seq + i as u64, k, |p| postings.push(p));
        }
        // In memtable order: neighbouring inserts touch the same nodes.
        postings.sort_unstable();
        postings
    }

    /// Adds the postings of the `n` entries `first_seq..`, hashed by
    /// [`Postings::hash`] (with the same `first_seq`), as [`Postings::add`].
    ///
    /// # Errors
    /// A gap, or a failed compactor.
    pub fn add_hashed(
        &self,
        first_seq: u64,
        n: u64,
        postings: &[(u64, u64)],
    ) -> Result<(), StoreError> {
        let mut st = self.shared.state.lock().expect("postings lock");
        if let Some(f) = &st.failed {
            return Err(StoreError::Index(format!("postings: {f}")));
        }
        if first_seq > st.mem_end {
            return Err(StoreError::Index(format!(
                "postings: entries from {first_seq} would leave a gap after {}",
                st.mem_end
            )));
        }
        let covered = st.mem_end;
        st.mem
            .extend(postings.iter().filter(|&&(_, seq)| seq >= covered));
        st.mem_end = st.mem_end.max(first_seq + n);
        if st.mem_end - st.mem_first >= RUN_ENTRIES {
            st.freeze();
            self.shared.cv.notify_all();
        }
        Ok(())
    }

    /// Entries added so far (durable runs, frozen and live memtable).
    #[must_use]
    pub fn size(&self) -> u64 {
        self.shared.state.lock().expect("postings lock").mem_end
    }

    /// Calls `f` with every candidate seq (at least `from_seq`) for `hash`
    /// in seq order, until it breaks. Candidates may be hash collisions.
    ///
    /// # Errors
    /// I/O errors reading a run, or a failed compactor.
    pub fn for_each_candidate(
        &self,
        hash: u64,
        from_seq: u64,
        mut f: impl FnMut(u64) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let (runs, frozen, mem) = {
            let st = self.shared.state.lock().expect("postings lock");
            if let Some(e) = &st.failed {
                return Err(StoreError::Index(format!("postings: {e}")));
            }
            let mem: Vec<u64> = st
                .mem
                .range((hash, from_seq)..=(hash, u64::MAX))
                .map(|p| p.1)
                .collect();
            (st.runs.clone(), st.frozen.clone(), mem)
        };
        // Runs, then frozen memtables, then the live one: seq order.
        for run in &runs {
            if run
                .for_each(hash, from_seq, &mut f)
                .map_err(index_err)?
                .is_break()
            {
                return Ok(());
            }
        }
        for fz in &frozen {
            if fz.end > from_seq && for_each_sorted(&fz.postings, hash, from_seq, &mut f).is_break()
            {
                return Ok(());
            }
        }
        for seq in mem {
            if f(seq).is_break() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Run files and the seq range each covers, oldest first (for tests
    /// and diagnostics).
    #[must_use]
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let st = self.shared.state.lock().expect("postings lock");
        st.runs.iter().map(|r| (r.first, r.end)).collect()
    }

    /// Waits until every frozen memtable is written and no merge is due.
    ///
    /// # Errors
    /// A failed compactor.
    pub fn settle(&self) -> Result<(), StoreError> {
        let mut st = self.shared.state.lock().expect("postings lock");
        loop {
            if let Some(e) = &st.failed {
                return Err(StoreError::Index(format!("postings: {e}")));
            }
            if st.frozen.is_empty() && st.merge_due().is_none() {
                return Ok(());
            }
            st = self.shared.cv.wait(st).expect("postings lock");
        }
    }
}

impl Drop for Postings {
    /// Writes the memtable as a run (a clean restart then reads no segment
    /// to rebuild it) and stops the compactor.
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().expect("postings lock");
            st.freeze();
            st.stop = true;
        }
        self.shared.cv.notify_all();
        if let Some(t) = self.compactor.lock().expect("compactor lock").take() {
            let _ = t.join();
        }
    }
}

/// The compactor: writes frozen memtables as runs, then merges runs; on
/// stop, writes what is frozen and leaves.
fn compact(shared: &Shared) {
    loop {
        enum Work {
            Flush(Arc<Frozen>),
            Merge(Arc<Run>, Arc<Run>),
        }
        let work = {
            let mut st = shared.state.lock().expect("postings lock");
            loop {
                if st.failed.is_some() {
                    return;
                }
                if let Some(f) = st.frozen.front() {
                    break Work::Flush(f.clone());
                }
                if st.stop {
                    return;
                }
                if let Some(i) = st.merge_due() {
                    break Work::Merge(st.runs[i].clone(), st.runs[i + 1].clone());
                }
                st = shared.cv.wait(st).expect("postings lock");
            }
        };
        let done = match work {
            Work::Flush(f) => Run::write(
                &shared.dir,
                f.first,
                f.end,
                f.postings.len() as u64,
                f.postings.iter().map(|&p| Ok(p)),
            )
            .map(|run| {
                let mut st = shared.state.lock().expect("postings lock");
                st.runs.push(Arc::new(run));
                st.frozen.pop_front();
            }),
            Work::Merge(a, b) => merge(&shared.dir, &a, &b).and_then(|run| {
                {
                    let mut st = shared.state.lock().expect("postings lock");
                    // Only this thread changes the runs, and flushes only
                    // push at the end: the pair is where it was taken.
                    let i = st
                        .runs
                        .iter()
                        .position(|r| Arc::ptr_eq(r, &a))
                        .expect("merged runs are in place");
                    st.runs.splice(i..i + 2, [Arc::new(run)]);
                }
                // The merged run is durable: its inputs can go (readers
                // holding them keep reading the unlinked files).
                fs::remove_file(&a.path)?;
                fs::remove_file(&b.path)?;
                sync_dir(&shared.dir)
            }),
        };
        let mut st = shared.state.lock().expect("postings lock");
        if let Err(e) = done {
            st.failed = Some(e.to_string());
        }
        shared.cv.notify_all();
    }
}

/// Merges two adjacent runs into one covering both.
fn merge(dir: &Path, a: &Run, b: &Run) -> io::Result<Run> {
    let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
    let merged = std::iter::from_fn(move || {
        let take_x = match (x.peek(), y.peek()) {
            (None, None) => return None,
            (Some(Ok(p)), Some(Ok(q))) => p <= q,
            (Some(_), None) | (Some(Err(_)), _) => true,
            (None, Some(_)) | (_, Some(Err(_))) => false,
        };
        if take_x {
            x.next()
        } else {
            y.next()
        }
    });
    Run::write(dir, a.first, b.end, a.count + b.count, merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seq: u64) -> (String, String, String) {
        (
            format!("order:{}", seq / 3),
            format!("user:{}", seq % 5),
            if seq.is_multiple_of(2) {
                format!("idem-{seq}")
            } else {
                String::new()
            },
        )
    }

    /// Adds entries `[from, to)` in batches of 1024 (a divisor of
    /// `RUN_ENTRIES`, so runs end on multiples of it).
    fn add_range(p: &Postings, from: u64, to: u64) {
        let mut at = from;
        while at < to {
            let end = (at + 1024).min(to);
            let owned: Vec<_> = (at..end).map(keys).collect();
            p.add(
                at,
                owned.iter().map(|(s, a, i)| EntryKeys {
                    subject: s,
                    actor: a,
                    idempotency_key: i,
                }),
            )
            .unwrap();
            at = end;
        }
    }

    fn seqs(p: &Postings, kind: KeyKind, key: &str, from: u64) -> Vec<u64> {
        let mut out = Vec::new();
        p.for_each_candidate(key_hash(kind, key), from, |s| {
            out.push(s);
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    fn expected(n: u64, pred: impl Fn(u64) -> bool, from: u64) -> Vec<u64> {
        (from..n).filter(|&s| pred(s)).collect()
    }

    #[test]
    fn answers_from_memtable_frozen_and_runs_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let n = RUN_ENTRIES * 5 + 123;
        {
            let (p, opened) = Postings::open(dir.path(), 0).unwrap();
            assert_eq!(opened.covered, 0);
            add_range(&p, 0, n);
            // Before the compactor settles, and after.
            assert_eq!(seqs(&p, KeyKind::Subject, "order:7", 0), vec![21, 22, 23]);
            p.settle().unwrap();
            let runs = p.runs();
            assert!(runs.len() <= 3, "binary-counter merging: {runs:?}");
            assert_eq!(runs.last().unwrap().1, RUN_ENTRIES * 5);
            assert_eq!(
                seqs(&p, KeyKind::Actor, "user:3", n - 40),
                expected(n, |s| s % 5 == 3, n - 40)
            );
        }
        // A clean close wrote the memtable as a small run.
        let small = dir.path().join(run_file_name(RUN_ENTRIES * 5, n));
        assert!(small.exists());
        drop(Postings::open(dir.path(), n).unwrap());
        // As after a crash: the memtable is lost, its entries re-added.
        fs::remove_file(&small).unwrap();
        let (p, opened) = Postings::open(dir.path(), n).unwrap();
        assert_eq!(opened.covered, RUN_ENTRIES * 5);
        assert!(opened.discarded.is_empty());
        add_range(&p, opened.covered, n);
        for probe in [
            0,
            1,
            RUN_ENTRIES - 1,
            RUN_ENTRIES,
            3 * RUN_ENTRIES + 7,
            n - 1,
        ] {
            let (s, a, i) = keys(probe);
            assert!(seqs(&p, KeyKind::Subject, &s, 0).contains(&probe));
            assert!(seqs(&p, KeyKind::Actor, &a, probe).first() == Some(&probe));
            if !i.is_empty() {
                assert_eq!(seqs(&p, KeyKind::Idempotency, &i, 0), vec![probe]);
            }
        }
        let all_user0 = seqs(&p, KeyKind::Actor, "user:0", 0);
        assert_eq!(all_user0, expected(n, |s| s % 5 == 0, 0));
        assert!(seqs(&p, KeyKind::Idempotency, "idem-1", 0).is_empty());
        assert!(seqs(&p, KeyKind::Subject, "nobody", 0).is_empty());
    }

    #[test]
    fn kinds_never_collide_and_kind_bits_hold() {
        let s = key_hash(KeyKind::Subject, "x");
        let a = key_hash(KeyKind::Actor, "x");
        let i = key_hash(KeyKind::Idempotency, "x");
        assert_eq!((s >> 62, a >> 62, i >> 62), (1, 2, 3));
        assert!(is_idempotency(i) && !is_idempotency(s));
    }

    #[test]
    fn damaged_overlapping_and_too_long_runs_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let n = RUN_ENTRIES * 3;
        {
            let (p, _) = Postings::open(dir.path(), 0).unwrap();
            // One run at a time, so the merges are deterministic.
            for r in 0..3 {
                add_range(&p, r * RUN_ENTRIES, (r + 1) * RUN_ENTRIES);
                p.settle().unwrap();
            }
            assert_eq!(p.runs(), vec![(0, 2 * RUN_ENTRIES), (2 * RUN_ENTRIES, n)]);
        }
        // The log is shorter than the runs claim: the last run goes.
        {
            let (_, opened) = Postings::open(dir.path(), n - 1).unwrap();
            assert_eq!(opened.covered, 2 * RUN_ENTRIES);
            assert_eq!(opened.discarded.len(), 1);
        }
        // A flipped byte in the remaining run: it goes too.
        let path = dir.path().join(run_file_name(0, 2 * RUN_ENTRIES));
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN + 100] ^= 1;
        fs::write(&path, &bytes).unwrap();
        // And a stray temporary.
        fs::write(dir.path().join("run-x.tmp"), b"junk").unwrap();
        let (_, opened) = Postings::open(dir.path(), n).unwrap();
        assert_eq!(opened.covered, 0);
        assert_eq!(opened.discarded.len(), 2);
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_merged_run_wins_over_inputs_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let n = RUN_ENTRIES * 2;
        {
            let (p, _) = Postings::open(dir.path(), 0).unwrap();
            add_range(&p, 0, RUN_ENTRIES);
            p.settle().unwrap();
            let first = fs::read(dir.path().join(run_file_name(0, RUN_ENTRIES))).unwrap();
            add_range(&p, RUN_ENTRIES, n);
            p.settle().unwrap();
            assert_eq!(p.runs(), vec![(0, n)]);
            // As if the crash came between the merge and the deletions.
            fs::write(dir.path().join(run_file_name(0, RUN_ENTRIES)), first).unwrap();
        }
        let (p, opened) = Postings::open(dir.path(), n).unwrap();
        assert_eq!(opened.covered, n);
        assert_eq!(opened.discarded, vec![run_file_name(0, RUN_ENTRIES)]);
        assert_eq!(seqs(&p, KeyKind::Subject, "order:0", 0), vec![0, 1, 2]);
    }

    #[test]
    fn runs_opened_from_disk_merge_with_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (p, _) = Postings::open(dir.path(), 0).unwrap();
            add_range(&p, 0, RUN_ENTRIES);
            p.settle().unwrap();
        }
        let (p, opened) = Postings::open(dir.path(), 2 * RUN_ENTRIES).unwrap();
        assert_eq!(opened.covered, RUN_ENTRIES);
        add_range(&p, RUN_ENTRIES, 2 * RUN_ENTRIES);
        p.settle().unwrap();
        assert_eq!(p.runs(), vec![(0, 2 * RUN_ENTRIES)]);
        assert_eq!(
            seqs(&p, KeyKind::Actor, "user:4", 0),
            expected(2 * RUN_ENTRIES, |s| s % 5 == 4, 0)
        );
    }

    /// Writes a run for seqs `[first, end)` directly, as a compactor would.
    fn write_run(dir: &Path, first: u64, end: u64) {
        let mut set = BTreeSet::new();
        for seq in first..end {
            let (s, a, i) = keys(seq);
            let k = EntryKeys {
                subject: &s,
                actor: &a,
                idempotency_key: &i,
            };
            postings_of(seq, k, |p| {
                set.insert(p);
            });
        }
        Run::write(dir, first, end, set.len() as u64, set.into_iter().map(Ok)).unwrap();
    }

    #[test]
    fn runs_out_of_order_left_on_disk_are_merged_into_a_binary_counter() {
        // Spans 1, 1, 2, 1 (in RUN_ENTRIES): what a compactor that checked
        // only the newest pair left when four memtables piled up before it
        // merged. The newest pair is in order; the older ones are not.
        let dir = tempfile::tempdir().unwrap();
        let r = RUN_ENTRIES;
        for (first, end) in [(0, r), (r, 2 * r), (2 * r, 4 * r), (4 * r, 5 * r)] {
            write_run(dir.path(), first, end);
        }
        let (p, opened) = Postings::open(dir.path(), 5 * r).unwrap();
        assert_eq!(opened.covered, 5 * r);
        p.settle().unwrap();
        assert_eq!(p.runs(), vec![(0, 4 * r), (4 * r, 5 * r)]);
        assert_eq!(
            seqs(&p, KeyKind::Actor, "user:2", 0),
            expected(5 * r, |s| s % 5 == 2, 0)
        );
        let key = format!("idem-{}", 2 * r);
        assert_eq!(seqs(&p, KeyKind::Idempotency, &key, 0), vec![2 * r]);
    }

    proptest::proptest! {
        /// Whatever the order in which memtables freeze and the compactor
        /// works (it writes frozen memtables before it merges), once it
        /// settles the runs are a binary counter: each spans at least twice
        /// the next, so there are at most log2(memtables) + 1 of them.
        #[test]
        fn runs_settle_into_a_binary_counter_whatever_the_interleaving(
            steps in proptest::collection::vec(proptest::bool::ANY, 1..200)
        ) {
            let mut spans: Vec<u64> = Vec::new();
            let (mut frozen, mut total) = (0u64, 0u64);
            let compactor_step = |spans: &mut Vec<u64>, frozen: &mut u64| {
                if *frozen > 0 {
                    *frozen -= 1;
                    spans.push(1);
                    true
                } else if let Some(i) = pair_to_merge(spans.iter().copied()) {
                    let merged = spans[i] + spans[i + 1];
                    spans.splice(i..i + 2, [merged]);
                    true
                } else {
                    false
                }
            };
            for freeze in steps {
                if freeze {
                    frozen += 1;
                    total += 1;
                } else {
                    compactor_step(&mut spans, &mut frozen);
                }
            }
            while compactor_step(&mut spans, &mut frozen) {}
            proptest::prop_assert_eq!(spans.iter().sum::<u64>(), total);
            for w in spans.windows(2) {
                proptest::prop_assert!(w[0] >= 2 * w[1], "{:?}", spans);
            }
            let bound = if total == 0 { 0 } else { u64::from(total.ilog2()) + 1 };
            proptest::prop_assert!(spans.len() as u64 <= bound, "{:?}", spans);
        }
    }

    #[test]
    fn a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Postings::open(dir.path(), 0).unwrap();
        add_range(&p, 0, 10);
        let owned = keys(11);
        let err = p
            .add(
                11,
                std::iter::once(EntryKeys {
                    subject: &owned.0,
                    actor: &owned.1,
                    idempotency_key: &owned.2,
                }),
            )
            .unwrap_err();
        assert!(err.to_string().contains("gap"), "{err}");
        // Re-adding covered entries is a no-op.
        add_range(&p, 5, 12);
        assert_eq!(p.size(), 12);
        assert_eq!(seqs(&p, KeyKind::Subject, "order:2", 0), vec![6, 7, 8]);
    }

    #[test]
    fn bloom_has_no_false_negatives() {
        let mut b = Bloom::new(10_000);
        let hs: Vec<u64> = (0..10_000)
            .map(|i| key_hash(KeyKind::Idempotency, &i.to_string()))
            .collect();
        for &h in &hs {
            b.insert(h);
        }
        assert!(hs.iter().all(|&h| b.may_contain(h)));
        let fp = (10_000..110_000)
            .filter(|i| b.may_contain(key_hash(KeyKind::Idempotency, &i.to_string())))
            .count();
        assert!(fp < 3_000, "false positives {fp} of 100000");
    }
}
