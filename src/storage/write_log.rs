//! The write-ahead log: each round's [`Write`]s as one record, appended
//! and `fdatasync`'ed before anything of the round leaves the node.
//!
//! Owns the log's byte format and its segment files in `DATA_DIR/wal/`. It
//! never interprets the writes (that is [`super::write_codec`]) and never
//! touches LMDB (that is [`super::store_writer`]).
//!
//! A segment is `wal/{first_seq:020}.log`: a header, then records.
//!
//! ```text
//! header: magic "TIMEWAL\n"(8) ‖ LOG_FORMAT_VERSION(u32) ‖ first_seq(u64)
//! record: seq(u64) ‖ len(u32) ‖ payload(len) ‖ blake3(seq ‖ len ‖ payload)[..16]
//! ```
//!
//! Integers are little-endian. Sequence numbers are consecutive across the
//! whole log, starting at 1 in a new data directory; the payload is one
//! round's writes ([`super::write_codec`]).
//!
//! Reading a log back ([`replay`]): a segment ends at pre-written space
//! (zeros, or older records of a reused file), which is where the next
//! append goes. A record that is cut short or fails its checksum *at the
//! end of the log* is a write that was interrupted: it was never
//! acknowledged (nothing of its round was sent), so the log ends before it.
//! A closed segment may end in stale bytes when the next segment goes on
//! from its last record (a record never spans two segments). A bad record
//! *followed by* a good one, a bad header in front of records, or a missing
//! sequence number is damage to what was acknowledged:
//! [`StoreError::LogCorrupt`], and the node does not start.
//!
//! Segments are retired once LMDB holds everything in them
//! ([`WriteLog::checkpoint`]): one is kept as `wal/spare.tmp` and reused
//! for the next segment (its blocks are already written, which makes each
//! `fdatasync` cheaper), the others are deleted. After a start's replay the
//! log is empty.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::records::RecordError;
use super::write_codec::encode_writes;
use super::{StoreError, Write};

/// Version of the segment and record layout.
pub const LOG_FORMAT_VERSION: u32 = 1;
/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TIMEWAL\n";
/// magic ‖ version ‖ first sequence number.
pub const SEGMENT_HEADER_LEN: usize = 8 + 4 + 8;
/// seq ‖ len.
pub const RECORD_HEADER_LEN: usize = 8 + 4;
/// The first 16 bytes of a blake3 hash.
pub const CHECKSUM_LEN: usize = 16;
/// Largest payload of one record (one round's writes). A round larger than
/// this cannot be made durable and stops the core, as a failed commit did.
pub const MAX_RECORD_BYTES: usize = 256 << 20;
/// A segment is closed and a new one started once it holds this much.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest segment file a replay reads (a full segment plus one largest
/// record); a longer file is damage, not something to read into memory.
pub const MAX_SEGMENT_FILE: u64 = SEGMENT_BYTES
    + (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + MAX_RECORD_BYTES + CHECKSUM_LEN) as u64;

fn checksum(head: &[u8], payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

/// The header of the segment whose first record is `first_seq`.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
    h[12..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Appends one record carrying `payload` to `out`.
pub fn encode_record(seq: u64, payload: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
    if payload.len() > MAX_RECORD_BYTES {
        return Err(StoreError::RoundTooLarge {
            bytes: payload.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[..8].copy_from_slice(&seq.to_le_bytes());
    head[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(&head, payload));
    Ok(())
}

/// A whole, checksummed record at `at` in `bytes`: its sequence number and
/// payload range. None: cut short, or a bad checksum.
fn record_at(bytes: &[u8], at: usize) -> Option<(u64, Range<usize>)> {
    let head = bytes.get(at..at.checked_add(RECORD_HEADER_LEN)?)?;
    let seq = u64::from_le_bytes(head[..8].try_into().ok()?);
    let len = u32::from_le_bytes(head[8..].try_into().ok()?) as usize;
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let start = at + RECORD_HEADER_LEN;
    let end = start.checked_add(len)?;
    let sum = bytes.get(end..end.checked_add(CHECKSUM_LEN)?)?;
    if sum != checksum(head, &bytes[start..end]) {
        return None;
    }
    Some((seq, start..end))
}

/// How a segment's bytes end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte after the header belongs to a good record.
    Clean,
    /// Pre-written space from `offset` on (zeros, or older records of a
    /// reused segment), with no good record after it: where the next
    /// append goes. The normal end of a segment.
    Unwritten { offset: usize },
    /// A record cut short or failing its checksum at `offset`, with no good
    /// record after it: an interrupted last write.
    Torn { offset: usize },
    /// Damage at `offset` with good records after it (or out of order).
    Corrupt { offset: usize, detail: String },
}

/// What [`scan_segment`] found in one segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Each good record's sequence number and payload range, in order.
    pub records: Vec<(u64, Range<usize>)>,
    pub end: ScanEnd,
}

/// Reads one segment's bytes; `first_seq` is what its name says. Pure and
/// bounded by its input (no allocation beyond one entry per record), so
/// any bytes give an answer, never a panic.
pub fn scan_segment(bytes: &[u8], first_seq: u64) -> SegmentScan {
    let mut scan = SegmentScan {
        records: Vec::new(),
        end: ScanEnd::Clean,
    };
    if bytes.get(..SEGMENT_HEADER_LEN) != Some(&segment_header(first_seq)[..]) {
        // A segment is created, its header synced, before any record goes
        // in: a bad header is an interrupted creation unless records follow.
        scan.end = match later_record(bytes, 0, first_seq.saturating_sub(1)) {
            Some(at) => ScanEnd::Corrupt {
                offset: 0,
                detail: format!("bad segment header, but a good record at byte {at}"),
            },
            None => ScanEnd::Torn { offset: 0 },
        };
        return scan;
    }
    let mut at = SEGMENT_HEADER_LEN;
    let mut expect = first_seq;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Some((seq, range)) if seq == expect => {
                at = range.end + CHECKSUM_LEN;
                scan.records.push((seq, range));
                expect = expect.saturating_add(1);
            }
            Some((seq, _)) if seq > expect => {
                scan.end = ScanEnd::Corrupt {
                    offset: at,
                    detail: format!("record {seq} where {expect} was expected"),
                };
                return scan;
            }
            // Stale bytes (an older record) or a torn one: the end, unless
            // something newer follows.
            found => {
                scan.end = match later_record(bytes, at, expect.saturating_sub(1)) {
                    Some(good) => ScanEnd::Corrupt {
                        offset: at,
                        detail: format!(
                            "record {expect} is unreadable, but a good record follows at byte \
                             {good}"
                        ),
                    },
                    None if found.is_some() || unwritten_header(&bytes[at..]) => {
                        ScanEnd::Unwritten { offset: at }
                    }
                    None => ScanEnd::Torn { offset: at },
                };
                return scan;
            }
        }
    }
    scan
}

/// Whether a record header would start with what a pre-written segment
/// holds where nothing was appended yet: zeros (as far as the bytes go).
/// A write interrupted before its header reached the disk looks the same,
/// and is the same: nothing of it was acknowledged.
fn unwritten_header(rest: &[u8]) -> bool {
    rest.iter().take(RECORD_HEADER_LEN).all(|&b| b == 0)
}

/// The offset of a good record with a sequence number above `after`
/// anywhere past `from`, if there is one.
fn later_record(bytes: &[u8], from: usize, after: u64) -> Option<usize> {
    let last = bytes.len().checked_sub(RECORD_HEADER_LEN + CHECKSUM_LEN)?;
    // A later record of this log is at most as many numbers ahead as
    // records fit in the bytes: stale records of a reused segment (lower
    // numbers) and zeros fail this before any checksum is computed.
    let window = (bytes.len() / (RECORD_HEADER_LEN + CHECKSUM_LEN)) as u64 + 1;
    (from.saturating_add(1)..=last).find(|&p| {
        let seq = u64::from_le_bytes(bytes[p..p + 8].try_into().expect("8 bytes"));
        seq > after && seq - after <= window && record_at(bytes, p).is_some_and(|(s, _)| s == seq)
    })
}

/// A retired segment kept for the next one (not a segment name: replay
/// ignores it, [`WriteLog`] reuses it).
const SPARE_NAME: &str = "spare.tmp";

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// The segments in `dir`, oldest first: (first sequence number, path).
/// Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(first) = stem.parse::<u64>() {
                out.push((first, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn corrupt(path: &Path, offset: usize, detail: String) -> StoreError {
    StoreError::LogCorrupt {
        segment: path.display().to_string(),
        offset: offset as u64,
        detail,
    }
}

/// Reads the log in `dir` and calls `f` on every record above `applied`, in
/// order. Returns the last sequence number in the log (None: empty).
///
/// One segment is in memory at a time (at most [`MAX_SEGMENT_FILE`]).
pub fn replay(
    dir: &Path,
    applied: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<Option<u64>, StoreError> {
    let segments = list_segments(dir)?;
    let mut last: Option<u64> = None;
    for (i, (first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let len = std::fs::metadata(path)?.len();
        if len > MAX_SEGMENT_FILE {
            return Err(corrupt(
                path,
                0,
                format!("segment is {len} bytes, more than the {MAX_SEGMENT_FILE} a segment holds"),
            ));
        }
        let bytes = std::fs::read(path)?;
        if let Some(l) = last {
            if *first != l + 1 {
                return Err(corrupt(
                    path,
                    0,
                    format!("segment starts at record {first}, but the one before ends at {l}"),
                ));
            }
        }
        let scan = scan_segment(&bytes, *first);
        match scan.end {
            ScanEnd::Clean => {}
            ScanEnd::Unwritten { offset } if is_last => {
                tracing::debug!(segment = %path.display(), offset, "write-ahead log ends");
            }
            ScanEnd::Torn { offset } if is_last => {
                tracing::info!(
                    segment = %path.display(),
                    offset,
                    "write-ahead log ends with an interrupted write (never acknowledged): ignored"
                );
            }
            // Not the last segment: what follows its last good record is
            // stale only if the next segment goes on from that record (a
            // record is never split across segments). Otherwise a record
            // that was acknowledged is unreadable.
            ScanEnd::Unwritten { offset } | ScanEnd::Torn { offset } => {
                let ends = scan.records.last().map(|(seq, _)| *seq);
                let next = segments[i + 1].0;
                if ends.map(|e| e.saturating_add(1)) != Some(next) {
                    return Err(corrupt(
                        path,
                        offset,
                        "unreadable record, and later segments follow".into(),
                    ));
                }
            }
            ScanEnd::Corrupt { offset, detail } => return Err(corrupt(path, offset, detail)),
        }
        for (seq, range) in scan.records {
            if seq > applied {
                // Exactly once: the first record LMDB lacks must be the next.
                let want = last.map_or(applied + 1, |l| l + 1).max(applied + 1);
                if seq != want {
                    return Err(corrupt(
                        path,
                        range.start - RECORD_HEADER_LEN,
                        format!(
                            "record {seq} follows record {} (the database holds up to {applied})",
                            want - 1
                        ),
                    ));
                }
                f(seq, &bytes[range])?;
            }
            last = Some(seq);
        }
        if last.is_none() && !is_last {
            return Err(corrupt(path, 0, "an empty segment before others".into()));
        }
    }
    // A log that ends below `applied` is fine: segments are deleted only
    // after LMDB holds them, so the next record is `applied + 1`.
    Ok(last)
}

/// Removes every segment in `dir` (after a replay put them all in LMDB).
pub fn clear(dir: &Path) -> Result<(), StoreError> {
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        return Ok(());
    }
    for (_, path) in segments {
        std::fs::remove_file(path)?;
    }
    sync_dir(dir)
}

/// The appending side of the log: owned by the core thread.
pub struct WriteLog {
    dir: PathBuf,
    file: File,
    /// Bytes in the current segment.
    pos: u64,
    next_seq: u64,
    /// First sequence number of every segment on disk, oldest first; the
    /// last is the current one.
    segments: VecDeque<u64>,
    sync: bool,
    /// [`SEGMENT_BYTES`] but in tests.
    segment_bytes: u64,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

impl std::fmt::Debug for WriteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLog")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl WriteLog {
    /// Starts an empty log in `dir` whose first record is `next_seq`.
    /// `sync: false` (`--unsafe-no-sync`) never syncs. Fails if `dir`
    /// still holds segments: they must be replayed and cleared first.
    pub fn create(dir: &Path, next_seq: u64, sync: bool) -> Result<Self, StoreError> {
        Self::create_sized(dir, next_seq, sync, SEGMENT_BYTES)
    }

    fn create_sized(
        dir: &Path,
        next_seq: u64,
        sync: bool,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        if let Some((_, path)) = list_segments(dir)?.first() {
            return Err(corrupt(
                path,
                0,
                "a new log was started over a log not yet replayed".into(),
            ));
        }
        let file = Self::new_segment(dir, next_seq, sync, segment_bytes)?;
        Ok(WriteLog {
            dir: dir.to_path_buf(),
            file,
            pos: SEGMENT_HEADER_LEN as u64,
            next_seq,
            segments: VecDeque::from([next_seq]),
            sync,
            segment_bytes,
            buf: Vec::new(),
            payload: Vec::new(),
        })
    }

    /// A new segment file with its header, durable (file and directory
    /// entry) before any record goes in.
    ///
    /// Its blocks are written before records go in: the spare (a retired
    /// segment, see [`WriteLog::checkpoint`]) if there is one, else
    /// `segment_bytes` of zeros. Measured on the 2-core VM of
    /// docs/BENCHMARKS.md (2026-12-03, in its git history): a 4 KiB
    /// `pwrite` + `fdatasync` that grows the file (so the sync also
    /// commits metadata) took p50 200 µs when idle, into `fallocate`d or sparse space the same (the extents still change),
    /// into written zeros 166 µs; under the 4-node load test, pre-written
    /// segments took the finality p50 from 6.2 to 5.6 ms and the p99 from
    /// 35 to 22 ms. Zeroing 64 MiB takes about 50 ms here, once per
    /// segment when no spare is left.
    fn new_segment(
        dir: &Path,
        first_seq: u64,
        sync: bool,
        segment_bytes: u64,
    ) -> Result<File, StoreError> {
        let path = dir.join(segment_name(first_seq));
        let mut file = match std::fs::rename(dir.join(SPARE_NAME), &path) {
            // Stale records stay in it: older sequence numbers, which a
            // replay takes for the end of the log.
            Ok(()) => OpenOptions::new().write(true).open(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut file = OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(&path)?;
                zero_fill(&mut file, segment_bytes)?;
                file
            }
            Err(e) => return Err(e.into()),
        };
        file.write_all(&segment_header(first_seq))?;
        if sync {
            file.sync_all()?;
            sync_dir(dir)?;
        }
        Ok(file)
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Segments on disk (the current one included).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends one round as one record: one `write`, one `fdatasync`.
    /// Returns its sequence number and payload size. On error nothing of
    /// the round may be sent (it may or may not be on disk; a replay takes
    /// it only if it is whole).
    pub fn append(&mut self, writes: &[Write]) -> Result<(u64, usize), StoreError> {
        self.payload.clear();
        encode_writes(writes, &mut self.payload).map_err(|e: RecordError| StoreError::Corrupt {
            table: "write-ahead log",
            detail: e.to_string(),
        })?;
        let seq = self.next_seq;
        self.buf.clear();
        encode_record(seq, &self.payload, &mut self.buf)?;
        // A full segment that holds at least one record.
        if self.pos >= self.segment_bytes && self.pos > SEGMENT_HEADER_LEN as u64 {
            self.rotate(seq)?;
        }
        self.file.write_all(&self.buf)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.pos += self.buf.len() as u64;
        self.next_seq += 1;
        Ok((seq, self.payload.len()))
    }

    fn rotate(&mut self, first_seq: u64) -> Result<(), StoreError> {
        // A reused file can be longer than what this life wrote into it:
        // cut its stale tail (records of its first life, not aligned with
        // this life's) so the closed segment ends at its last record.
        if self.file.metadata()?.len() > self.pos {
            self.file.set_len(self.pos)?;
            if self.sync {
                self.file.sync_all()?;
            }
        }
        self.file = Self::new_segment(&self.dir, first_seq, self.sync, self.segment_bytes)?;
        self.pos = SEGMENT_HEADER_LEN as u64;
        self.segments.push_back(first_seq);
        Ok(())
    }

    /// LMDB holds (durably) every record up to `applied`: retires the
    /// segments wholly at or below it (never the current one). The first
    /// becomes the spare if there is none (its blocks are written, so
    /// appends into it do not grow a file); the others are deleted.
    pub fn checkpoint(&mut self, applied: u64) -> Result<(), StoreError> {
        let mut removed = false;
        // Segment i holds [segments[i], segments[i+1]).
        while self.segments.len() > 1 && self.segments[1] <= applied.saturating_add(1) {
            let first = self.segments.pop_front().expect("len > 1");
            let path = self.dir.join(segment_name(first));
            let spare = self.dir.join(SPARE_NAME);
            if spare.exists() {
                std::fs::remove_file(path)?;
            } else {
                std::fs::rename(path, spare)?;
            }
            removed = true;
        }
        if removed && self.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Writes `len` zero bytes from the start of `file` (then the cursor is back
/// at 0) and syncs them.
fn zero_fill(file: &mut File, len: u64) -> Result<(), StoreError> {
    use std::io::{Seek, SeekFrom};
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::types::{OutPoint, TxOutput, Txid};
    use crate::protocol::utxo::{UtxoEntry, UtxoState};
    use crate::storage::write_codec::decode_writes;

    fn round(n: u8) -> Vec<Write> {
        vec![
            Write::AppendFinality(Txid([n; 32])),
            Write::PutUtxo(
                OutPoint {
                    txid: Txid([n; 32]),
                    vout: n as u32,
                },
                UtxoEntry {
                    output: TxOutput {
                        amount: n as u64,
                        address: crate::protocol::types::Address([n; 20]),
                    },
                    state: UtxoState::Unspent,
                },
            ),
        ]
    }

    type Replayed = (Vec<(u64, Vec<Write>)>, Option<u64>);

    /// Every record above `applied`, decoded.
    fn read(dir: &Path, applied: u64) -> Result<Replayed, StoreError> {
        let mut out = Vec::new();
        let last = replay(dir, applied, |seq, p| {
            out.push((seq, decode_writes(p).unwrap()));
            Ok(())
        })?;
        Ok((out, last))
    }

    /// Length of the record of `round(n)`.
    fn record_len(n: u8) -> usize {
        let mut p = Vec::new();
        encode_writes(&round(n), &mut p).unwrap();
        RECORD_HEADER_LEN + p.len() + CHECKSUM_LEN
    }

    /// The bytes of a segment holding `round(1..=3)`, without the
    /// pre-written tail.
    fn three_records(path: &Path) -> Vec<u8> {
        let mut b = std::fs::read(path).unwrap();
        b.truncate(SEGMENT_HEADER_LEN + 3 * record_len(1));
        b
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let s = list_segments(dir).unwrap();
        assert_eq!(s.len(), 1);
        s[0].1.clone()
    }

    #[test]
    fn golden_segment_header_and_record() {
        assert_eq!(
            hex::encode(segment_header(0x0102)),
            "54494d4557414c0a010000000201000000000000"
        );
        let mut rec = Vec::new();
        encode_record(0x0102, b"abc", &mut rec).unwrap();
        // seq ‖ len ‖ payload ‖ blake3(seq ‖ len ‖ payload)[..16].
        assert_eq!(
            hex::encode(&rec),
            "020100000000000003000000616263c0b8b87d2ab92d6f39d8e7b0cfb62d9a"
        );
        let hash = blake3::hash(&hex::decode("020100000000000003000000616263").unwrap());
        assert_eq!(
            hex::encode(&hash.as_bytes()[..16]),
            "c0b8b87d2ab92d6f39d8e7b0cfb62d9a"
        );
        // The round payload: count, then tag ‖ body.
        let mut p = Vec::new();
        encode_writes(
            &[
                Write::AppendFinality(Txid([0x11; 32])),
                Write::ClearBlockStop,
                Write::PutConfirmedThrough(0x0102),
            ],
            &mut p,
        )
        .unwrap();
        assert_eq!(
            hex::encode(&p),
            format!("0300000004{}0f100201000000000000", "11".repeat(32))
        );
        assert_eq!(segment_name(7), "00000000000000000007.log");
    }

    #[test]
    fn append_then_replay_above_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WriteLog::create(dir.path(), 1, true).unwrap();
        for n in 1..=3u8 {
            assert_eq!(log.append(&round(n)).unwrap().0, n as u64);
        }
        assert_eq!(log.next_seq(), 4);
        let (all, last) = read(dir.path(), 0).unwrap();
        assert_eq!(last, Some(3));
        assert_eq!(
            all,
            (1..=3u8).map(|n| (n as u64, round(n))).collect::<Vec<_>>()
        );
        let (tail, _) = read(dir.path(), 2).unwrap();
        assert_eq!(tail, vec![(3, round(3))]);
        // A log that starts above what the database holds has lost records.
        let gap = tempfile::tempdir().unwrap();
        let mut l = WriteLog::create(gap.path(), 5, false).unwrap();
        l.append(&round(5)).unwrap();
        assert!(matches!(
            read(gap.path(), 3),
            Err(StoreError::LogCorrupt { .. })
        ));
        assert_eq!(read(gap.path(), 4).unwrap().0, vec![(5, round(5))]);
        // A new log over one not yet replayed is refused.
        assert!(WriteLog::create(dir.path(), 4, false).is_err());
        clear(dir.path()).unwrap();
        assert_eq!(read(dir.path(), 0).unwrap(), (vec![], None));
    }

    #[test]
    fn torn_tail_is_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WriteLog::create(dir.path(), 1, false).unwrap();
        for n in 1..=3u8 {
            log.append(&round(n)).unwrap();
        }
        let path = only_segment(dir.path());
        let full = three_records(&path);
        // As a stop leaves it: the records, then the pre-written zeros.
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk.len() > full.len());
        assert_eq!(
            scan_segment(&on_disk, 1).end,
            ScanEnd::Unwritten { offset: full.len() }
        );
        let third = full.len() - record_len(3);
        // Cut anywhere inside the last record: records 1 and 2 remain.
        for cut in [third + 1, third + RECORD_HEADER_LEN, full.len() - 1] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (got, last) = read(dir.path(), 0).unwrap();
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(last, Some(2));
        }
        // A whole last record with a bad checksum: also never acknowledged.
        let mut bad = full.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(read(dir.path(), 0).unwrap().0.len(), 2);
        assert_eq!(
            scan_segment(&bad, 1).end,
            ScanEnd::Torn { offset: third },
            "a torn record is not unwritten space"
        );
        // Zeros after the last record (a preallocated tail): the normal
        // end, not an interrupted write.
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &zeros).unwrap();
        assert_eq!(read(dir.path(), 0).unwrap().0.len(), 3);
        assert_eq!(
            scan_segment(&zeros, 1).end,
            ScanEnd::Unwritten { offset: full.len() }
        );
    }

    /// A log whose segments close after about three `round` records, and
    /// the length of one such record.
    fn three_record_segments(dir: &Path) -> (WriteLog, usize) {
        let rec = record_len(1);
        let log =
            WriteLog::create_sized(dir, 1, true, (SEGMENT_HEADER_LEN + 3 * rec) as u64).unwrap();
        (log, rec)
    }

    /// The sequence numbers a replay above `applied` hands over, and the
    /// log's last one.
    fn replayed(dir: &Path, applied: u64) -> (Vec<u64>, Option<u64>) {
        let (got, last) = read(dir, applied).unwrap();
        (got.iter().map(|(s, _)| *s).collect(), last)
    }

    /// A round of `n` copies of `round(seed)`: a record of about `n`
    /// times the size of `round`'s.
    fn big_round(seed: u8, n: usize) -> Vec<Write> {
        (0..n).flat_map(|_| round(seed)).collect()
    }

    /// A reused file longer than what its second life wrote gets its
    /// stale tail cut when the log moves on, so a crash before LMDB holds
    /// the closed segment still replays; and a closed segment's stale
    /// tail is accepted only if the next segment goes on from its last
    /// record.
    #[test]
    fn a_reused_segment_closes_at_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = three_record_segments(dir.path());
        // Segment 1: one record of about five small ones, so its file
        // ends past where three small records of a second life end.
        log.append(&big_round(1, 5)).unwrap();
        for n in 2..=4u8 {
            log.append(&round(n)).unwrap();
        }
        assert_eq!(log.segment_count(), 2);
        log.checkpoint(1).unwrap();
        assert!(dir.path().join(SPARE_NAME).exists());
        // 5, 6, 7 go into the reused file (segment 5), 8 into a new one.
        for n in 5..=8u8 {
            log.append(&round(n)).unwrap();
        }
        assert_eq!(log.segment_count(), 3);
        let reused = dir.path().join(segment_name(5));
        let bytes = std::fs::read(&reused).unwrap();
        assert_eq!(bytes.len(), SEGMENT_HEADER_LEN + 3 * rec, "stale tail cut");
        assert_eq!(scan_segment(&bytes, 5).end, ScanEnd::Clean);
        // A crash now: LMDB holds up to 4.
        assert_eq!(replayed(dir.path(), 4), (vec![5, 6, 7, 8], Some(8)));
        // A log an older build wrote: the stale tail is still there
        // (misaligned bytes of the first life). Segment 8 goes on from 7,
        // so nothing acknowledged is missing.
        let mut stale = bytes.clone();
        stale.extend_from_slice(&[0xa5; 100]);
        std::fs::write(&reused, &stale).unwrap();
        assert_eq!(read(dir.path(), 4).unwrap().1, Some(8));
        // The same tail where record 7 was: 8 does not follow 6, damage.
        let mut cut = bytes[..bytes.len() - rec].to_vec();
        cut.extend_from_slice(&[0xa5; 100]);
        std::fs::write(&reused, &cut).unwrap();
        assert!(matches!(
            read(dir.path(), 4),
            Err(StoreError::LogCorrupt { .. })
        ));
    }

    #[test]
    fn damage_followed_by_good_records_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WriteLog::create(dir.path(), 1, false).unwrap();
        for n in 1..=3u8 {
            log.append(&round(n)).unwrap();
        }
        let path = only_segment(dir.path());
        let full = three_records(&path);
        let rec_len = record_len(1);
        // One byte of record 2's payload, then its length field.
        for at in [
            SEGMENT_HEADER_LEN + rec_len + RECORD_HEADER_LEN + 3,
            SEGMENT_HEADER_LEN + rec_len + 9,
        ] {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            match read(dir.path(), 0) {
                Err(StoreError::LogCorrupt { offset, .. }) => {
                    assert_eq!(offset as usize, SEGMENT_HEADER_LEN + rec_len)
                }
                other => panic!("expected LogCorrupt, got {other:?}"),
            }
        }
        // A damaged header in front of records.
        let mut bad = full.clone();
        bad[0] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read(dir.path(), 0),
            Err(StoreError::LogCorrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn segments_rotate_and_checkpoint_deletes_applied_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WriteLog::create_sized(dir.path(), 1, true, 1).unwrap();
        for n in 1..=5u8 {
            log.append(&round(n)).unwrap();
        }
        assert_eq!(log.segment_count(), 5);
        let firsts = |d: &Path| -> Vec<u64> {
            list_segments(d)
                .unwrap()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(firsts(dir.path()), vec![1, 2, 3, 4, 5]);
        log.checkpoint(3).unwrap();
        assert_eq!(firsts(dir.path()), vec![4, 5]);
        // The current segment stays even when all of it is applied.
        log.checkpoint(5).unwrap();
        assert_eq!(firsts(dir.path()), vec![5]);
        log.append(&round(6)).unwrap();
        let (got, last) = read(dir.path(), 5).unwrap();
        assert_eq!((got, last), (vec![(6, round(6))], Some(6)));
        // A segment missing between two is damage, not a torn tail.
        log.append(&round(7)).unwrap();
        log.append(&round(8)).unwrap();
        std::fs::remove_file(dir.path().join(segment_name(7))).unwrap();
        assert!(matches!(
            read(dir.path(), 5),
            Err(StoreError::LogCorrupt { .. })
        ));
    }

    /// A reused segment still holds the records of its first life, after
    /// the new ones: they end the log, they are not damage.
    #[test]
    fn a_reused_segment_ends_at_its_stale_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = three_record_segments(dir.path());
        for n in 1..=4u8 {
            log.append(&round(n)).unwrap();
        }
        assert_eq!(log.segment_count(), 2);
        log.checkpoint(3).unwrap();
        assert!(
            dir.path().join(SPARE_NAME).exists(),
            "segment 1 kept as the spare"
        );
        for n in 5..=7u8 {
            log.append(&round(n)).unwrap();
        }
        // Segment 4 holds 4, 5, 6; record 7 went into the reused file,
        // whose records 2 and 3 from before follow it.
        assert_eq!(log.segment_count(), 2);
        let reused = dir.path().join(segment_name(7));
        let bytes = std::fs::read(&reused).unwrap();
        assert_eq!(bytes.len(), SEGMENT_HEADER_LEN + 3 * rec);
        assert_eq!(replayed(dir.path(), 3), (vec![4, 5, 6, 7], Some(7)));
        // A torn record 8 over the stale ones: still the end.
        let mut torn = bytes.clone();
        torn[SEGMENT_HEADER_LEN + rec..SEGMENT_HEADER_LEN + rec + 8]
            .copy_from_slice(&8u64.to_le_bytes());
        std::fs::write(&reused, &torn).unwrap();
        assert_eq!(read(dir.path(), 3).unwrap().1, Some(7));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes scan without a panic, and payload decoding refuses or
        /// accepts without one.
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600),
                                    first in 0u64..4) {
            let _ = scan_segment(&bytes, first);
            let _ = decode_writes(&bytes);
            let mut seg = segment_header(first).to_vec();
            seg.extend_from_slice(&bytes);
            let _ = scan_segment(&seg, first);
        }

        /// A segment cut anywhere reads back as a prefix of its records,
        /// never as damage.
        #[test]
        fn any_cut_is_a_prefix(cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
            let mut seg = segment_header(1).to_vec();
            for n in 1..=4u8 {
                let mut p = Vec::new();
                encode_writes(&round(n), &mut p).unwrap();
                encode_record(n as u64, &p, &mut seg).unwrap();
            }
            let cut = cut.index(seg.len() + 1);
            let scan = scan_segment(&seg[..cut], 1);
            let corrupt = matches!(scan.end, ScanEnd::Corrupt { .. });
            prop_assert!(!corrupt);
            for (i, (s, _)) in scan.records.iter().enumerate() {
                prop_assert_eq!(*s, i as u64 + 1);
            }
            // One flipped bit: never a silent wrong record.
            let mut bad = seg.clone();
            let at = flip.index(bad.len());
            bad[at] ^= 1;
            let scan = scan_segment(&bad, 1);
            for (s, r) in &scan.records {
                let mut p = Vec::new();
                encode_writes(&round(*s as u8), &mut p).unwrap();
                prop_assert_eq!(&bad[r.clone()], &p[..]);
            }
        }
    }
}
