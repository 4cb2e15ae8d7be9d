//! One segment of a partition log: an append-only `.log` file of record batches plus a sparse
//! offset index and a time index, in the Kafka layout (entries widened to absolute offsets,
//! because GSN gaps inside one partition can exceed a 32-bit relative offset).
//!
//! File names: `{base_offset:020}-{first_raft_index:020}.log`, `{base_offset:020}.index`
//! (12-byte entries: base offset i64, position u32) and `{base_offset:020}.timeindex`
//! (16-byte entries: max timestamp so far i64, base offset i64).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{self, BatchSpan, OFFSETS_PREFIX_LEN};

const INDEX_ENTRY: usize = 12;
const TIME_ENTRY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: i64,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub offset: i64,
}

/// Where one batch lives inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLoc {
    pub position: u32,
    pub span: BatchSpan,
}

pub struct Segment {
    pub base_offset: i64,
    pub first_raft_index: u64,
    dir: PathBuf,
    log: Arc<File>,
    size: u64,
    index: Vec<IndexEntry>,
    index_file: File,
    time_index: Vec<TimeEntry>,
    time_index_file: File,
    bytes_since_index: u64,
    /// Last offset of the last batch; `base_offset - 1` while empty.
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// Wall-clock ms when the segment was created (drives segment.ms rolling).
    pub created_ms: i64,
}

pub fn log_file_name(base_offset: i64, first_raft_index: u64) -> String {
    format!("{base_offset:020}-{first_raft_index:020}.log")
}

/// Parses `{base}-{raft}.log`; None for anything else in the directory.
pub fn parse_log_file_name(name: &str) -> Option<(i64, u64)> {
    let stem = name.strip_suffix(".log")?;
    let (base, raft) = stem.split_once('-')?;
    Some((base.parse().ok()?, raft.parse().ok()?))
}

impl Segment {
    pub fn create(
        dir: &Path,
        base_offset: i64,
        first_raft_index: u64,
        now_ms: i64,
    ) -> io::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join(log_file_name(base_offset, first_raft_index)))?;
        // The new name must survive a crash before any data is acknowledged from it.
        File::open(dir)?.sync_all()?;
        Self::empty(dir, base_offset, first_raft_index, log, now_ms)
    }

    /// Opens an existing segment. Every batch is re-read: a torn or corrupt tail (a crash in the
    /// middle of a write) is cut off, and the indexes are rebuilt from what remains. Returns the
    /// segment and the batches it holds, in order.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        first_raft_index: u64,
        index_interval: u64,
        verify_crc: bool,
    ) -> io::Result<(Self, Vec<BatchLoc>)> {
        let path = dir.join(log_file_name(base_offset, first_raft_index));
        let log = OpenOptions::new().read(true).write(true).open(&path)?;
        let created_ms = log
            .metadata()?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let (batches, valid_len) = scan(&log, verify_crc)?;
        if valid_len < log.metadata()?.len() {
            tracing::warn!(
                segment = %path.display(),
                kept_bytes = valid_len,
                "truncating torn or corrupt tail of segment"
            );
            log.set_len(valid_len)?;
            log.sync_all()?;
        }
        let mut segment = Self::empty(dir, base_offset, first_raft_index, log, created_ms)?;
        for loc in &batches {
            let ts = batch_max_timestamp(&segment.log, loc.position)?;
            segment.note_appended(loc.span, ts, index_interval)?;
        }
        Ok((segment, batches))
    }

    /// A segment over `log` with fresh (truncated) index files and no batches noted yet.
    fn empty(
        dir: &Path,
        base_offset: i64,
        first_raft_index: u64,
        log: File,
        created_ms: i64,
    ) -> io::Result<Self> {
        let (index_file, time_index_file) = open_index_files(dir, base_offset, true)?;
        Ok(Self {
            base_offset,
            first_raft_index,
            dir: dir.to_path_buf(),
            log: Arc::new(log),
            size: 0,
            index: Vec::new(),
            index_file,
            time_index: Vec::new(),
            time_index_file,
            bytes_since_index: 0,
            last_offset: base_offset - 1,
            max_timestamp: -1,
            created_ms,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn log_file(&self) -> Arc<File> {
        Arc::clone(&self.log)
    }

    /// Appends one batch stamped with its base offset, writing `span.leader_epoch` into its
    /// partitionLeaderEpoch field on the way (outside the CRC). Returns where it went. Not
    /// synced: the caller decides when.
    pub fn append(
        &mut self,
        data: &[u8],
        span: BatchSpan,
        max_timestamp: i64,
        index_interval: u64,
    ) -> io::Result<BatchLoc> {
        let position = u32::try_from(self.size)
            .map_err(|_| io::Error::other("segment exceeds 4 GiB; segment-bytes must be lower"))?;
        if data.len() != span.total_len || data.len() < batch::HEADER_LEN {
            return Err(io::Error::other("batch length does not match its header"));
        }
        let mut head = [0u8; batch::HEADER_LEN];
        head.copy_from_slice(&data[..batch::HEADER_LEN]);
        head[12..16].copy_from_slice(&span.leader_epoch.to_be_bytes());
        self.log.write_all_at(&head, self.size)?;
        self.log.write_all_at(
            &data[batch::HEADER_LEN..],
            self.size + batch::HEADER_LEN as u64,
        )?;
        let loc = BatchLoc { position, span };
        self.note_appended(span, max_timestamp, index_interval)?;
        Ok(loc)
    }

    /// Updates size, offsets and the sparse indexes after a batch of `span` at `self.size`.
    fn note_appended(
        &mut self,
        span: BatchSpan,
        max_timestamp: i64,
        index_interval: u64,
    ) -> io::Result<()> {
        let position = self.size as u32;
        if self.index.is_empty() || self.bytes_since_index >= index_interval {
            let entry = IndexEntry {
                offset: span.base_offset,
                position,
            };
            let mut raw = [0u8; INDEX_ENTRY];
            raw[..8].copy_from_slice(&entry.offset.to_be_bytes());
            raw[8..].copy_from_slice(&entry.position.to_be_bytes());
            self.index_file.write_all(&raw)?;
            self.index.push(entry);
            self.bytes_since_index = 0;
        }
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            let entry = TimeEntry {
                timestamp: max_timestamp,
                offset: span.base_offset,
            };
            let mut raw = [0u8; TIME_ENTRY];
            raw[..8].copy_from_slice(&entry.timestamp.to_be_bytes());
            raw[8..].copy_from_slice(&entry.offset.to_be_bytes());
            self.time_index_file.write_all(&raw)?;
            self.time_index.push(entry);
        }
        self.size += span.total_len as u64;
        self.bytes_since_index += span.total_len as u64;
        self.last_offset = span.last_offset;
        Ok(())
    }

    /// Position of the first batch whose last offset is >= `offset`, if any.
    pub fn find(&self, offset: i64) -> io::Result<Option<BatchLoc>> {
        if offset > self.last_offset {
            return Ok(None);
        }
        let start = match self.index.partition_point(|e| e.offset <= offset) {
            0 => 0,
            i => self.index[i - 1].position as u64,
        };
        let mut pos = start;
        while pos < self.size {
            let span = self.span_at(pos)?;
            if span.last_offset >= offset {
                return Ok(Some(BatchLoc {
                    position: pos as u32,
                    span,
                }));
            }
            pos += span.total_len as u64;
        }
        Ok(None)
    }

    /// Position of the first batch whose max timestamp is >= `timestamp`, if any.
    pub fn find_by_time(&self, timestamp: i64) -> io::Result<Option<BatchLoc>> {
        if timestamp > self.max_timestamp {
            return Ok(None);
        }
        // Entries are (max timestamp so far, batch); start from the last entry below the target.
        let i = self.time_index.partition_point(|e| e.timestamp < timestamp);
        let from_offset = if i == 0 {
            self.base_offset
        } else {
            self.time_index[i - 1].offset
        };
        let mut loc = self.find(from_offset)?;
        while let Some(l) = loc {
            // An empty batch (compaction removed its records) keeps its max timestamp but has
            // no record to answer with: the answer is in a later batch.
            let has_records = l.span.total_len > batch::HEADER_LEN;
            if has_records && batch_max_timestamp(&self.log, l.position)? >= timestamp {
                return Ok(Some(l));
            }
            let next = l.position as u64 + l.span.total_len as u64;
            loc = if next < self.size {
                Some(BatchLoc {
                    position: next as u32,
                    span: self.span_at(next)?,
                })
            } else {
                None
            };
        }
        Ok(None)
    }

    pub fn span_at(&self, position: u64) -> io::Result<BatchSpan> {
        let mut prefix = [0u8; OFFSETS_PREFIX_LEN];
        self.log.read_exact_at(&mut prefix, position)?;
        batch::read_span(&prefix).map_err(io::Error::other)
    }

    /// Reads `len` bytes at `position`, clamped to the segment end.
    pub fn read(&self, position: u64, len: u64) -> io::Result<Bytes> {
        let len = len.min(self.size.saturating_sub(position));
        let mut buf = vec![0u8; len as usize];
        self.log.read_exact_at(&mut buf, position)?;
        Ok(Bytes::from(buf))
    }

    /// Cuts the segment back to `position` (a batch boundary) and rebuilds its indexes.
    pub fn truncate_to(&mut self, position: u64, index_interval: u64) -> io::Result<()> {
        self.log.set_len(position)?;
        self.log.sync_all()?;
        let (batches, _) = scan(&self.log, false)?;
        let (index_file, time_index_file) = open_index_files(&self.dir, self.base_offset, true)?;
        self.index_file = index_file;
        self.time_index_file = time_index_file;
        self.index.clear();
        self.time_index.clear();
        self.size = 0;
        self.bytes_since_index = 0;
        self.last_offset = self.base_offset - 1;
        self.max_timestamp = -1;
        for loc in batches {
            let ts = batch_max_timestamp(&self.log, loc.position)?;
            self.note_appended(loc.span, ts, index_interval)?;
        }
        Ok(())
    }

    /// Flushes index files (they are rebuilt on open, so this is only for tidy rolls).
    pub fn sync_indexes(&self) -> io::Result<()> {
        self.index_file.sync_data()?;
        self.time_index_file.sync_data()
    }

    pub fn remove_files(&self) -> io::Result<()> {
        std::fs::remove_file(
            self.dir
                .join(log_file_name(self.base_offset, self.first_raft_index)),
        )?;
        let _ = std::fs::remove_file(self.dir.join(format!("{:020}.index", self.base_offset)));
        let _ = std::fs::remove_file(self.dir.join(format!("{:020}.timeindex", self.base_offset)));
        Ok(())
    }
}

fn open_index_files(dir: &Path, base_offset: i64, truncate: bool) -> io::Result<(File, File)> {
    let open = |name: String| {
        OpenOptions::new()
            .create(true)
            .truncate(truncate)
            .write(true)
            .open(dir.join(name))
    };
    Ok((
        open(format!("{base_offset:020}.index"))?,
        open(format!("{base_offset:020}.timeindex"))?,
    ))
}

/// Walks a log file batch by batch; returns the intact batches and the byte length they cover.
/// Stops at the first batch that is short, malformed, or (with `verify_crc`) corrupt.
fn scan(log: &File, verify_crc: bool) -> io::Result<(Vec<BatchLoc>, u64)> {
    let len = log.metadata()?.len();
    let mut batches = Vec::new();
    let mut pos = 0u64;
    let mut prefix = [0u8; OFFSETS_PREFIX_LEN];
    while pos + OFFSETS_PREFIX_LEN as u64 <= len && pos <= u32::MAX as u64 {
        log.read_exact_at(&mut prefix, pos)?;
        let Ok(span) = batch::read_span(&prefix) else {
            break;
        };
        if pos + span.total_len as u64 > len {
            break;
        }
        if verify_crc {
            let mut whole = vec![0u8; span.total_len];
            log.read_exact_at(&mut whole, pos)?;
            if batch::verify_stored(&whole).is_err() {
                break;
            }
        }
        batches.push(BatchLoc {
            position: pos as u32,
            span,
        });
        pos += span.total_len as u64;
    }
    Ok((batches, pos))
}

fn batch_max_timestamp(log: &File, position: u32) -> io::Result<i64> {
    let mut raw = [0u8; 8];
    log.read_exact_at(&mut raw, position as u64 + 35)?;
    Ok(i64::from_be_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::tests::make_batch;

    fn append(seg: &mut Segment, base: i64, count: i32, ts: i64) -> BatchLoc {
        let mut b = make_batch(0, count, ts);
        batch::stamp(&mut b, base, 1);
        let h = batch::parse_and_verify(&b).expect("valid");
        seg.append(&b, h.span, h.max_timestamp, 64).expect("append")
    }

    #[test]
    fn find_by_offset_handles_gaps_and_mid_batch() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut seg = Segment::create(dir.path(), 10, 1, 0).expect("create");
        for (i, base) in [10i64, 20, 35, 1_000_000_000_000].iter().enumerate() {
            append(&mut seg, *base, 3, 100 + i as i64);
        }
        assert_eq!(
            seg.find(11).expect("io").map(|l| l.span.base_offset),
            Some(10)
        );
        assert_eq!(
            seg.find(13).expect("io").map(|l| l.span.base_offset),
            Some(20)
        );
        assert_eq!(
            seg.find(37).expect("io").map(|l| l.span.base_offset),
            Some(35)
        );
        assert_eq!(
            seg.find(38).expect("io").map(|l| l.span.base_offset),
            Some(1_000_000_000_000)
        );
        assert_eq!(seg.find(1_000_000_000_003).expect("io"), None);
        assert_eq!(
            seg.find_by_time(102)
                .expect("io")
                .map(|l| l.span.base_offset),
            Some(35)
        );
        assert_eq!(seg.find_by_time(104).expect("io"), None);
    }

    #[test]
    fn reopen_truncates_torn_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut seg = Segment::create(dir.path(), 0, 1, 0).expect("create");
        append(&mut seg, 0, 2, 1);
        let second = append(&mut seg, 5, 2, 2);
        let full = seg.size();
        drop(seg);
        let path = dir.path().join(log_file_name(0, 1));
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(full - 3).expect("tear");
        let (seg, batches) = Segment::open(dir.path(), 0, 1, 64, true).expect("open");
        assert_eq!(batches.len(), 1);
        assert_eq!(seg.size(), second.position as u64);
        assert_eq!(seg.last_offset, 1);
    }

    #[test]
    fn reopen_drops_corrupt_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut seg = Segment::create(dir.path(), 0, 1, 0).expect("create");
        append(&mut seg, 0, 2, 1);
        let second = append(&mut seg, 5, 2, 2);
        drop(seg);
        let path = dir.path().join(log_file_name(0, 1));
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&[0xff], second.position as u64 + 70)
            .expect("corrupt");
        let (_, batches) = Segment::open(dir.path(), 0, 1, 64, true).expect("open");
        assert_eq!(batches.len(), 1);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_log_file_name(&log_file_name(42, 7)), Some((42, 7)));
        assert_eq!(parse_log_file_name("junk.log"), None);
    }
}
