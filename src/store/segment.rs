//! Segment files: the source of truth of the embedded store (FORMAT.md §8).
//!
//! Owns: the record framing, the writer (append, `fdatasync`, directory
//! sync on creation) and the scanner that recovers a file after a crash.
//!
//! Invariants:
//! - Every record carries a 32-byte check: an entry's is its leaf hash, so a
//!   record that reads back is the record that was hashed into the tree.
//! - A batch is committed when its checkpoint record is durable: entry
//!   records after the last checkpoint (or seal) record of the *last* file
//!   belong to a batch that was never acknowledged, and are cut on recovery.
//! - Bad bytes followed by a valid record are corruption, never a torn tail:
//!   the scanner reports where and the store refuses the log.
//! - No length read from disk allocates more than [`MAX_RECORD_BODY`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::entry::{leaf_hash_of_encoding, Entry, Salt, SALT_LEN};
use crate::core::hash::{blake3_concat, Hash, HASH_LEN};

/// Four bytes that open every record: "ALR" and the framing version 1.
pub const RECORD_MAGIC: [u8; 4] = *b"ALR\x01";

/// Largest record body accepted when reading (a length field beyond it is
/// corruption, not a reason to allocate).
pub const MAX_RECORD_BODY: u32 = 64 << 20;

/// Bytes of framing around a body: magic, kind, length, check.
pub const FRAME_OVERHEAD: u64 = 4 + 1 + 4 + HASH_LEN as u64;

/// Version of the segment header body.
pub const SEGMENT_HEADER_VERSION: u8 = 1;

/// File name of segment `index`.
pub fn segment_file_name(index: u64) -> String {
    format!("{index:020}.seg")
}

/// Parses a segment file name back to its index.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// First record of every file.
    Header = 0,
    /// One log entry with its payload.
    Entry = 1,
    /// Signed checkpoint closing a batch.
    Checkpoint = 2,
    /// Signed seal closing the segment; always the last record.
    Seal = 3,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        Some(match b {
            0 => RecordKind::Header,
            1 => RecordKind::Entry,
            2 => RecordKind::Checkpoint,
            3 => RecordKind::Seal,
            _ => return None,
        })
    }
}

/// Whether an entry's payload and salt are still on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadState {
    /// Payload and salt are stored.
    Present = 0,
    /// Removed on request (erasure).
    Erased = 1,
    /// Removed when retention ended.
    Expired = 2,
}

impl PayloadState {
    /// The state stored as byte `b` (FORMAT §8.1).
    pub fn from_u8(b: u8) -> Option<PayloadState> {
        Some(match b {
            0 => PayloadState::Present,
            1 => PayloadState::Erased,
            2 => PayloadState::Expired,
            _ => return None,
        })
    }
}

/// The header that opens a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment number.
    pub segment: u64,
    /// Seq of the first entry the segment will hold.
    pub first_seq: u64,
    /// Start of the segment's time span (see the seal's `span`).
    pub span_from: i64,
    /// Log origin.
    pub origin: String,
}

/// An entry record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// Canonical encoding of the entry.
    pub encoding: Vec<u8>,
    /// `BLAKE3(0x00 || encoding)`.
    pub leaf_hash: Hash,
    /// Payload state.
    pub state: PayloadState,
    /// The salt when present.
    pub salt: Option<Salt>,
    /// The payload when present.
    pub payload: Vec<u8>,
}

impl EntryRecord {
    /// Decodes the entry fields.
    ///
    /// # Errors
    /// When the encoding is not canonical (only possible for a corrupt file
    /// whose check still matched, i.e. never for records we wrote).
    pub fn entry(&self) -> Result<Entry, crate::core::entry::DecodeError> {
        Entry::decode(&self.encoding)
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// File header.
    Header(SegmentHeader),
    /// An entry.
    Entry(EntryRecord),
    /// A signed checkpoint (note text).
    Checkpoint(String),
    /// A signed seal (note text).
    Seal(String),
}

/// Appends the framed encoding of an entry record to `out`.
pub fn encode_entry_record(
    out: &mut Vec<u8>,
    encoding: &[u8],
    leaf_hash: &Hash,
    state: PayloadState,
    salt: Option<&Salt>,
    payload: &[u8],
) {
    let body_len = 4 + encoding.len() + 1 + SALT_LEN + payload.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(RecordKind::Entry as u8);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&(encoding.len() as u32).to_be_bytes());
    out.extend_from_slice(encoding);
    out.push(state as u8);
    out.extend_from_slice(&salt.map(|s| s.0).unwrap_or([0; SALT_LEN]));
    out.extend_from_slice(payload);
    out.extend_from_slice(&leaf_hash.0);
}

fn other_check(kind: RecordKind, body: &[u8]) -> Hash {
    blake3_concat(&[&[kind as u8], body])
}

/// Appends a framed non-entry record (header, checkpoint, seal).
pub fn encode_other_record(out: &mut Vec<u8>, kind: RecordKind, body: &[u8]) {
    debug_assert!(kind != RecordKind::Entry);
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&other_check(kind, body).0);
}

/// Body of a header record.
pub fn encode_header(h: &SegmentHeader) -> Vec<u8> {
    let mut b = vec![SEGMENT_HEADER_VERSION];
    b.extend_from_slice(&h.segment.to_be_bytes());
    b.extend_from_slice(&h.first_seq.to_be_bytes());
    b.extend_from_slice(&h.span_from.to_be_bytes());
    b.extend_from_slice(&(h.origin.len() as u16).to_be_bytes());
    b.extend_from_slice(h.origin.as_bytes());
    b
}

fn decode_header(b: &[u8]) -> Result<SegmentHeader, &'static str> {
    if b.len() < 27 {
        return Err("header too short");
    }
    if b[0] != SEGMENT_HEADER_VERSION {
        return Err("unknown segment header version");
    }
    let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let len = u16::from_be_bytes([b[25], b[26]]) as usize;
    if b.len() != 27 + len {
        return Err("header length mismatch");
    }
    let origin = std::str::from_utf8(&b[27..])
        .map_err(|_| "origin is not UTF-8")?
        .to_owned();
    Ok(SegmentHeader {
        segment: u(1),
        first_seq: u(9),
        span_from: u(17) as i64,
        origin,
    })
}

/// Why one record could not be read.
fn decode_record(kind: u8, body: &[u8], check: &Hash) -> Result<Record, &'static str> {
    let kind = RecordKind::from_u8(kind).ok_or("unknown record kind")?;
    if kind != RecordKind::Entry {
        if other_check(kind, body) != *check {
            return Err("record check mismatch");
        }
        return match kind {
            RecordKind::Header => decode_header(body).map(Record::Header),
            RecordKind::Checkpoint => String::from_utf8(body.to_vec())
                .map(Record::Checkpoint)
                .map_err(|_| "checkpoint is not UTF-8"),
            RecordKind::Seal => String::from_utf8(body.to_vec())
                .map(Record::Seal)
                .map_err(|_| "seal is not UTF-8"),
            RecordKind::Entry => unreachable!("handled above"),
        };
    }
    if body.len() < 4 {
        return Err("entry body too short");
    }
    let enc_len = u32::from_be_bytes(body[..4].try_into().expect("4 bytes")) as usize;
    let rest = &body[4..];
    if rest.len() < enc_len + 1 + SALT_LEN {
        return Err("entry body shorter than its encoding");
    }
    let encoding = &rest[..enc_len];
    if leaf_hash_of_encoding(encoding) != *check {
        return Err("leaf hash mismatch");
    }
    let state = PayloadState::from_u8(rest[enc_len]).ok_or("unknown payload state")?;
    let salt_bytes: [u8; SALT_LEN] = rest[enc_len + 1..enc_len + 1 + SALT_LEN]
        .try_into()
        .expect("32 bytes");
    let payload = &rest[enc_len + 1 + SALT_LEN..];
    let entry = Entry::decode(encoding).map_err(|_| "entry encoding is not canonical")?;
    let salt = match state {
        PayloadState::Present => {
            if payload.len() as u64 != entry.payload_len {
                return Err("payload length differs from the entry's");
            }
            let salt = Salt(salt_bytes);
            if crate::core::entry::commit_payload(&salt, payload) != entry.payload_commitment {
                return Err("payload does not match its commitment");
            }
            Some(salt)
        }
        PayloadState::Erased | PayloadState::Expired => {
            if !payload.is_empty() || salt_bytes != [0; SALT_LEN] {
                return Err("removed payload still has bytes");
            }
            None
        }
    };
    Ok(Record::Entry(EntryRecord {
        encoding: encoding.to_vec(),
        leaf_hash: *check,
        state,
        salt,
        payload: payload.to_vec(),
    }))
}

/// Outcome of reading one record at an offset.
enum Step {
    Record(Record, u64),
    End,
    Bad(&'static str),
}

/// Reads the record at the reader's position; `len` is the file length.
fn read_one<R: Read>(r: &mut R, offset: u64, file_len: u64) -> io::Result<Step> {
    if offset == file_len {
        return Ok(Step::End);
    }
    if file_len - offset < FRAME_OVERHEAD {
        return Ok(Step::Bad("incomplete record frame"));
    }
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    if head[..4] != RECORD_MAGIC {
        return Ok(Step::Bad("bad record magic"));
    }
    let len = u32::from_be_bytes(head[5..9].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BODY {
        return Ok(Step::Bad("record length beyond the maximum"));
    }
    let total = FRAME_OVERHEAD + len as u64;
    if file_len - offset < total {
        return Ok(Step::Bad("record runs past the end of the file"));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    let mut check = [0u8; HASH_LEN];
    r.read_exact(&mut check)?;
    match decode_record(head[4], &body, &Hash(check)) {
        Ok(rec) => Ok(Step::Record(rec, total)),
        Err(why) => Ok(Step::Bad(why)),
    }
}

/// Where and why a file stopped making sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBytes {
    /// Byte offset of the first bad record.
    pub offset: u64,
    /// What was wrong.
    pub reason: &'static str,
}

/// Sequential reader of a segment file's records.
pub struct SegmentReader {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    len: u64,
}

impl SegmentReader {
    /// Opens a file for reading from its start.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> io::Result<SegmentReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SegmentReader {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 16, file),
            offset: 0,
            len,
        })
    }

    /// Opens a file and positions it at `offset` (a record boundary).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open_at(path: &Path, offset: u64) -> io::Result<SegmentReader> {
        let mut r = SegmentReader::open(path)?;
        r.reader.seek(SeekFrom::Start(offset))?;
        r.offset = offset;
        Ok(r)
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the file when opened.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The next record and its offset; `Ok(Err(bad))` at the first record
    /// that does not check out; `Ok(Ok(None))` at a clean end of file.
    ///
    /// # Errors
    /// I/O errors.
    #[allow(clippy::type_complexity)]
    pub fn next_record(&mut self) -> io::Result<Result<Option<(u64, Record)>, BadBytes>> {
        let at = self.offset;
        match read_one(&mut self.reader, at, self.len)? {
            Step::End => Ok(Ok(None)),
            Step::Bad(reason) => Ok(Err(BadBytes { offset: at, reason })),
            Step::Record(rec, n) => {
                self.offset += n;
                Ok(Ok(Some((at, rec))))
            }
        }
    }

    /// Offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True when some valid record starts anywhere after `offset`: the
    /// difference between corruption (later data exists) and a torn tail.
    ///
    /// # Errors
    /// I/O errors.
    pub fn valid_record_after(&self, offset: u64) -> io::Result<Option<u64>> {
        let mut bytes = Vec::new();
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset + 1))?;
        f.read_to_end(&mut bytes)?;
        let mut i = 0;
        while let Some(pos) = find_magic(&bytes[i..]) {
            let at = i + pos;
            let mut cursor = io::Cursor::new(&bytes[at..]);
            if let Step::Record(..) = read_one(&mut cursor, 0, (bytes.len() - at) as u64)? {
                return Ok(Some(offset + 1 + at as u64));
            }
            i = at + 1;
        }
        Ok(None)
    }
}

fn find_magic(hay: &[u8]) -> Option<usize> {
    hay.windows(4).position(|w| w == RECORD_MAGIC)
}

/// Reads one record at a known offset (random access).
///
/// # Errors
/// I/O errors; a record that does not check out is `Ok(Err(_))`.
pub fn read_record_at(path: &Path, offset: u64) -> io::Result<Result<Record, BadBytes>> {
    let mut r = SegmentReader::open_at(path, offset)?;
    Ok(match r.next_record()? {
        Ok(Some((_, rec))) => Ok(rec),
        Ok(None) => Err(BadBytes {
            offset,
            reason: "no record at this offset",
        }),
        Err(b) => Err(b),
    })
}

/// Append handle of the open segment file.
pub struct SegmentWriter {
    path: PathBuf,
    /// Unbuffered (every write is one whole framed batch: a buffer would
    /// only copy it once more) and shared with the sync points, which
    /// sync it on another thread while the next batch is written.
    file: Arc<File>,
    len: u64,
}

impl SegmentWriter {
    /// Creates a new segment file holding only `header`, atomically: the
    /// header is written and synced under a temporary name, then renamed into
    /// place and the directory synced, so a crash leaves either no segment
    /// file or a complete header.
    ///
    /// # Errors
    /// When the file exists or I/O fails.
    pub fn create(dir: &Path, header: &SegmentHeader) -> io::Result<SegmentWriter> {
        let path = dir.join(segment_file_name(header.segment));
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ));
        }
        let tmp = dir.join(format!("{}.tmp", segment_file_name(header.segment)));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut w = SegmentWriter {
            path: path.clone(),
            file: Arc::new(file),
            len: 0,
        };
        let mut buf = Vec::new();
        encode_other_record(&mut buf, RecordKind::Header, &encode_header(header));
        w.write_and_sync(&buf)?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        Ok(w)
    }

    /// Removes leftovers of segment creations and rewrites a crash
    /// interrupted (a rewrite not yet renamed leaves the original intact).
    ///
    /// # Errors
    /// I/O errors.
    pub fn remove_temporaries(dir: &Path) -> io::Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_name().to_str().is_some_and(|n| {
                n.ends_with(".seg.tmp") || n.ends_with(&format!(".seg{REWRITE_SUFFIX}"))
            }) {
                fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }

    /// Opens an existing file for appending after cutting it to `len` bytes
    /// (the end of its last committed record).
    ///
    /// # Errors
    /// I/O errors.
    pub fn reopen(path: &Path, len: u64) -> io::Result<SegmentWriter> {
        let file = OpenOptions::new().write(true).open(path)?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        let mut file = file;
        file.seek(SeekFrom::Start(len))?;
        Ok(SegmentWriter {
            path: path.to_owned(),
            file: Arc::new(file),
            len,
        })
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends framed records and makes them durable (`fdatasync`) before
    /// returning. On error the file may hold a torn tail, which recovery cuts.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_and_sync(&mut self, framed: &[u8]) -> io::Result<()> {
        self.write(framed)?;
        self.sync_point()()
    }

    /// Appends framed records without waiting for them to be durable: they
    /// are in the file (and read back) but a crash may lose them until a
    /// [`SegmentWriter::sync_point`] taken after this call has run. On error
    /// the file may hold a torn tail, which recovery cuts.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(&mut self, framed: &[u8]) -> io::Result<()> {
        (&*self.file).write_all(framed)?;
        self.len += framed.len() as u64;
        Ok(())
    }

    /// An `fdatasync` of the file, to run on any thread: it makes durable
    /// every write made before it starts, and does not stop the writer.
    pub fn sync_point(&self) -> impl FnOnce() -> io::Result<()> + Send + 'static {
        let file = self.file.clone();
        move || {
            let started = std::time::Instant::now();
            file.sync_data()?;
            crate::metrics::global().fsync(started.elapsed());
            Ok(())
        }
    }
}

/// A sealed segment rewritten without some payloads, under a temporary
/// name, synced, waiting to be renamed over the original.
#[derive(Debug)]
pub struct Rewritten {
    /// The temporary file (`<segment>.seg.rewrite`).
    pub tmp: PathBuf,
    /// Offset of every entry record in the new file: (seq, offset).
    pub offsets: Vec<(u64, u64)>,
    /// Entries whose payload and salt were removed.
    pub removed: u64,
    /// Length of the original file.
    pub old_len: u64,
    /// Length of the new file.
    pub new_len: u64,
}

/// Suffix of a segment being rewritten.
pub const REWRITE_SUFFIX: &str = ".rewrite";

/// Rewrites the sealed segment at `path` with the payload and salt of every
/// entry `remove` selects (by seq) removed and its state set to `state`;
/// every other byte is kept (records re-encode to the same bytes, and an
/// entry's check is its leaf hash, which does not cover the payload).
/// Entries whose payload is already gone keep their state. The result is
/// written to `<path>.rewrite` and synced; nothing else is touched.
///
/// # Errors
/// I/O errors; `Ok(Err(_))` when the file is damaged or not sealed.
pub fn rewrite_without_payloads(
    path: &Path,
    state: PayloadState,
    remove: impl Fn(u64) -> bool,
) -> io::Result<Result<Rewritten, BadBytes>> {
    debug_assert!(state != PayloadState::Present);
    let mut r = SegmentReader::open(path)?;
    let old_len = r.file_len();
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(REWRITE_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let (mut offsets, mut removed, mut new_len) = (Vec::new(), 0u64, 0u64);
    let mut sealed = false;
    loop {
        let (off, rec) = match r.next_record()? {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(bad) => return Ok(Err(bad)),
        };
        if sealed {
            return Ok(Err(BadBytes {
                offset: off,
                reason: "record after the seal",
            }));
        }
        buf.clear();
        match &rec {
            Record::Header(h) => {
                encode_other_record(&mut buf, RecordKind::Header, &encode_header(h))
            }
            Record::Checkpoint(t) => {
                encode_other_record(&mut buf, RecordKind::Checkpoint, t.as_bytes());
            }
            Record::Seal(t) => {
                sealed = true;
                encode_other_record(&mut buf, RecordKind::Seal, t.as_bytes());
            }
            Record::Entry(e) => {
                let seq = e
                    .entry()
                    .map_err(|_| BadBytes {
                        offset: off,
                        reason: "entry does not decode",
                    })
                    .map(|entry| entry.seq);
                let seq = match seq {
                    Ok(seq) => seq,
                    Err(bad) => return Ok(Err(bad)),
                };
                offsets.push((seq, new_len));
                if e.state == PayloadState::Present && remove(seq) {
                    removed += 1;
                    encode_entry_record(&mut buf, &e.encoding, &e.leaf_hash, state, None, &[]);
                } else {
                    encode_entry_record(
                        &mut buf,
                        &e.encoding,
                        &e.leaf_hash,
                        e.state,
                        e.salt.as_ref(),
                        &e.payload,
                    );
                }
            }
        }
        w.write_all(&buf)?;
        new_len += buf.len() as u64;
    }
    if !sealed {
        return Ok(Err(BadBytes {
            offset: old_len,
            reason: "segment is not sealed",
        }));
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    Ok(Ok(Rewritten {
        tmp,
        offsets,
        removed,
        old_len,
        new_len,
    }))
}

/// `fsync` of a directory, so that a new or renamed file survives a crash.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Segment files of a log directory, sorted by index.
///
/// # Errors
/// I/O errors.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(i) = e.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((i, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::entry::commit_payload;

    fn entry_bytes(seq: u64, payload: &[u8]) -> (Vec<u8>, Hash, Salt) {
        let salt = Salt([seq as u8; 32]);
        let e = Entry {
            origin: "o".into(),
            seq,
            timestamp_unix_nanos: 5,
            subject: "s".into(),
            actor: "a".into(),
            kind: "k".into(),
            content_type: "text/plain".into(),
            attributes: Default::default(),
            idempotency_key: String::new(),
            payload_len: payload.len() as u64,
            payload_commitment: commit_payload(&salt, payload),
            prev_leaf_hash: Hash::ZERO,
        };
        let enc = e.encode().unwrap();
        let leaf = leaf_hash_of_encoding(&enc);
        (enc, leaf, salt)
    }

    #[test]
    fn write_then_scan() {
        let dir = tempfile::tempdir().unwrap();
        let header = SegmentHeader {
            segment: 0,
            first_seq: 0,
            span_from: 1,
            origin: "o".into(),
        };
        let mut w = SegmentWriter::create(dir.path(), &header).unwrap();
        let mut buf = Vec::new();
        let (enc, leaf, salt) = entry_bytes(0, b"hello");
        encode_entry_record(
            &mut buf,
            &enc,
            &leaf,
            PayloadState::Present,
            Some(&salt),
            b"hello",
        );
        encode_other_record(&mut buf, RecordKind::Checkpoint, b"cp\n");
        w.write_and_sync(&buf).unwrap();

        let mut r = SegmentReader::open(w.path()).unwrap();
        let mut kinds = Vec::new();
        while let Some((_, rec)) = r.next_record().unwrap().unwrap() {
            kinds.push(rec);
        }
        assert_eq!(kinds.len(), 3);
        assert_eq!(kinds[0], Record::Header(header));
        match &kinds[1] {
            Record::Entry(e) => {
                assert_eq!(e.payload, b"hello");
                assert_eq!(e.leaf_hash, leaf);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kinds[2], Record::Checkpoint("cp\n".into()));
        assert_eq!(
            list_segments(dir.path()).unwrap(),
            vec![(0, dir.path().join(segment_file_name(0)))]
        );
    }

    #[test]
    fn payload_tampering_is_caught_by_the_commitment() {
        let (enc, leaf, salt) = entry_bytes(0, b"hello");
        let mut buf = Vec::new();
        encode_entry_record(
            &mut buf,
            &enc,
            &leaf,
            PayloadState::Present,
            Some(&salt),
            b"hello",
        );
        let n = buf.len();
        buf[n - 33] ^= 1; // last payload byte
        let mut c = io::Cursor::new(&buf);
        assert!(matches!(
            read_one(&mut c, 0, n as u64).unwrap(),
            Step::Bad("payload does not match its commitment")
        ));
    }

    #[test]
    fn huge_length_field_does_not_allocate() {
        let mut buf = RECORD_MAGIC.to_vec();
        buf.push(1);
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        buf.extend_from_slice(&[0; 64]);
        let mut c = io::Cursor::new(&buf);
        assert!(matches!(
            read_one(&mut c, 0, buf.len() as u64).unwrap(),
            Step::Bad("record length beyond the maximum")
        ));
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name("00000000000000000007.seg"), Some(7));
        assert_eq!(parse_segment_file_name("7.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000007.seg.tmp"),
            None
        );
    }
}
