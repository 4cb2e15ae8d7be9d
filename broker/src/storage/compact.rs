//! Log compaction (cleanup.policy=compact): keep the latest record of every key.
//!
//! A partition's segment log is also its Raft log, and a batch's Raft index is derived by
//! counting batches (see `storage::log`). So the cleaner never removes or reorders a batch: it
//! rewrites each batch of a rolled segment to hold only its surviving records, keeping
//! baseOffset, lastOffsetDelta, the producer fields and partitionLeaderEpoch (offsets never
//! change), and recomputing length, record count, max timestamp and CRC. A batch that loses
//! every record stays as an empty batch (61 bytes, count 0, no compression), as Kafka's own
//! cleaner keeps empty batches for producer state. Records keep their bytes, so their offset
//! and timestamp deltas are unchanged (gaps in offset deltas are allowed in compacted batches).
//!
//! Rules (Kafka's LogCleaner): the key map holds key digest -> latest offset over the rolled,
//! committed segments; a record is dropped when the map holds a later offset for its key, a
//! record without a key is dropped, and a tombstone (null value) that is the latest for its
//! key is dropped once its segment was last written more than delete.retention.ms ago. The
//! map is bounded: when it is full, only the segments whose keys all fit are cleaned.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD, OFFSETS_PREFIX_LEN};
use super::records::{self, read_varint, RecordsError};

const ATTR_CODEC: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
const ATTR_CONTROL: i16 = 1 << 5;
/// Largest stored batch the cleaner reads (Kafka's max.message.bytes is far below this).
const MAX_BATCH_BYTES: usize = records::MAX_DECOMPRESSED;
/// Uncompressed bytes per chunk of xerial-framed snappy (the Java client's block size).
const XERIAL_CHUNK: usize = 32 * 1024;
const XERIAL_HEADER: &[u8] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Suffix of a cleaned segment copy before it replaces the original.
pub const CLEANED_SUFFIX: &str = ".cleaned";

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("batch at position {position}: {source}")]
    Batch {
        position: u64,
        source: batch::BatchError,
    },
    #[error("batch at position {position} is {len} bytes, above the cleaner's limit")]
    TooLarge { position: u64, len: usize },
    #[error("records: {0}")]
    Records(#[from] RecordsError),
    #[error("record {index} is malformed: {reason}")]
    Malformed { index: i32, reason: &'static str },
    #[error("cannot compress cleaned records: {0}")]
    Compress(String),
}

/// One record of a batch, borrowed from its (decompressed) records section.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The whole record, length prefix included.
    pub raw: &'a [u8],
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    pub tombstone: bool,
}

/// Splits a records section into `count` records.
pub fn parse_records(mut data: &[u8], count: i32) -> Result<Vec<RecordRef<'_>>, CompactError> {
    let mut out = Vec::new();
    for index in 0..count {
        let malformed = |reason| CompactError::Malformed { index, reason };
        let start = data;
        let len = read_varint(&mut data).ok_or(malformed("bad length"))?;
        let len = usize::try_from(len).map_err(|_| malformed("negative length"))?;
        let prefix = start.len() - data.len();
        let mut rec = data.get(..len).ok_or(malformed("length past the end"))?;
        data = &data[len..];
        rec = rec.get(1..).ok_or(malformed("empty record"))?; // attributes
        let timestamp_delta = read_varint(&mut rec).ok_or(malformed("bad timestamp delta"))?;
        let offset_delta = read_varint(&mut rec).ok_or(malformed("bad offset delta"))?;
        let key = field(&mut rec).ok_or(malformed("bad key"))?;
        let value = field(&mut rec).ok_or(malformed("bad value"))?;
        out.push(RecordRef {
            raw: &start[..prefix + len],
            timestamp_delta,
            offset_delta,
            key,
            tombstone: value.is_none(),
        });
    }
    Ok(out)
}

/// A length-prefixed nullable byte field.
fn field<'a>(rec: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let len = read_varint(rec)?;
    if len < 0 {
        return Some(None);
    }
    let (v, rest) = rec.split_at_checked(usize::try_from(len).ok()?)?;
    *rec = rest;
    Some(Some(v))
}

/// A rewritten batch and how many records it lost.
#[derive(Debug)]
pub struct Rewritten {
    pub bytes: Vec<u8>,
    pub removed: u64,
}

/// Rewrites `batch` to hold only the records for which `keep(offset, record)` is true.
/// Returns None when every record is kept (the batch stays byte-for-byte as it is). Control
/// batches and empty batches are never changed.
pub fn rewrite_batch(
    batch: &[u8],
    mut keep: impl FnMut(i64, &RecordRef) -> bool,
) -> Result<Option<Rewritten>, CompactError> {
    let header = batch::parse_header(batch).map_err(|source| CompactError::Batch {
        position: 0,
        source,
    })?;
    if header.attributes & ATTR_CONTROL != 0 || header.record_count <= 0 {
        return Ok(None);
    }
    let payload = records::decompressed(batch, &header)?;
    let all = parse_records(&payload, header.record_count)?;
    let base = header.span.base_offset;
    let kept: Vec<&RecordRef> = all
        .iter()
        .filter(|r| keep(base.saturating_add(r.offset_delta), r))
        .collect();
    if kept.len() == all.len() {
        return Ok(None);
    }
    let framed =
        header.attributes & ATTR_CODEC == 2 && batch[HEADER_LEN..].starts_with(&XERIAL_HEADER[..8]);
    Ok(Some(Rewritten {
        bytes: rebuild(batch, &header, &kept, framed)?,
        removed: (all.len() - kept.len()) as u64,
    }))
}

/// A batch with `batch`'s header fields and `kept` as its records (re-compressed with the
/// batch's codec), or an empty uncompressed batch when nothing is kept.
fn rebuild(
    batch: &[u8],
    header: &BatchHeader,
    kept: &[&RecordRef],
    xerial: bool,
) -> Result<Vec<u8>, CompactError> {
    let mut out = batch[..HEADER_LEN].to_vec();
    let (attributes, base_ts, max_ts) = if kept.is_empty() {
        // Kafka's empty-batch header: no codec, both timestamps the original max timestamp.
        let ts = header.max_timestamp;
        (header.attributes & !ATTR_CODEC, ts, ts)
    } else {
        let mut plain = Vec::with_capacity(kept.iter().map(|r| r.raw.len()).sum());
        for r in kept {
            plain.extend_from_slice(r.raw);
        }
        out.extend_from_slice(&compress(header.attributes & ATTR_CODEC, &plain, xerial)?);
        let max_ts = if header.attributes & ATTR_LOG_APPEND_TIME != 0 {
            header.max_timestamp
        } else {
            kept.iter()
                .map(|r| header.base_timestamp.saturating_add(r.timestamp_delta))
                .max()
                .unwrap_or(header.max_timestamp)
        };
        (header.attributes, header.base_timestamp, max_ts)
    };
    let len = i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| CompactError::TooLarge {
        position: 0,
        len: out.len(),
    })?;
    let count = kept.len() as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[27..35].copy_from_slice(&base_ts.to_be_bytes());
    out[35..43].copy_from_slice(&max_ts.to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Compresses a records section with Kafka codec `codec` (0 none, 1 gzip, 2 snappy, 3 lz4
/// frame with independent blocks, 4 zstd).
fn compress(codec: i16, plain: &[u8], xerial: bool) -> Result<Vec<u8>, CompactError> {
    let err = |e: &dyn std::fmt::Display| CompactError::Compress(e.to_string());
    match codec {
        0 => Ok(plain.to_vec()),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(plain).map_err(|x| err(&x))?;
            e.finish().map_err(|x| err(&x))
        }
        2 if xerial => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut enc = snap::raw::Encoder::new();
            for chunk in plain.chunks(XERIAL_CHUNK) {
                let block = enc.compress_vec(chunk).map_err(|x| err(&x))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        2 => snap::raw::Encoder::new()
            .compress_vec(plain)
            .map_err(|x| err(&x)),
        3 => {
            let mut e = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(|x| err(&x))?;
            e.write_all(plain).map_err(|x| err(&x))?;
            let (out, result) = e.finish();
            result.map_err(|x| err(&x))?;
            Ok(out)
        }
        4 => zstd::encode_all(plain, 3).map_err(|x| err(&x)),
        other => Err(CompactError::Records(RecordsError::UnknownCodec(other))),
    }
}

/// 128-bit digest of a key (two independently seeded SipHash values), as Kafka's cleaner
/// keeps an MD5 per key rather than the key itself.
pub type KeyDigest = [u8; 16];

pub fn digest(key: &[u8]) -> KeyDigest {
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        key.hash(&mut h);
        h.finish().to_be_bytes()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(0x5a));
    out[8..].copy_from_slice(&half(0xa5));
    out
}

/// Key digest -> latest offset, with at most `capacity` keys (log.cleaner.dedupe.buffer.size).
pub struct KeyMap {
    latest: HashMap<KeyDigest, i64>,
    capacity: usize,
}

impl KeyMap {
    pub fn new(capacity: usize) -> Self {
        Self {
            latest: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `offset` as the latest for `key`; false when the key is new and the map full.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        let d = digest(key);
        if let Some(o) = self.latest.get_mut(&d) {
            *o = (*o).max(offset);
            return true;
        }
        if self.latest.len() >= self.capacity {
            return false;
        }
        self.latest.insert(d, offset);
        true
    }

    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&digest(key)).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// Whether a record survives cleaning: a later record with the same key removes it, a record
/// without a key is removed (Kafka counts it invalid), and a latest-for-its-key tombstone is
/// removed once `tombstones_expired`.
pub fn survives(map: &KeyMap, offset: i64, record: &RecordRef, tombstones_expired: bool) -> bool {
    let Some(key) = record.key else {
        return false;
    };
    if map.latest(key).is_some_and(|latest| latest > offset) {
        return false;
    }
    !(record.tombstone && tombstones_expired)
}

/// A rolled segment as the cleaner sees it (from `PartitionLog::rolled_segments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledSegment {
    pub base_offset: i64,
    pub first_raft_index: u64,
    pub size: u64,
    pub last_offset: i64,
    pub path: PathBuf,
}

/// Calls `f(position, batch)` for every batch of the first `len` bytes of a segment file,
/// reading one batch at a time.
fn for_each_batch(
    file: &File,
    len: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), CompactError>,
) -> Result<(), CompactError> {
    let mut pos = 0u64;
    let mut prefix = [0u8; OFFSETS_PREFIX_LEN];
    let mut buf = Vec::new();
    while pos < len {
        file.read_exact_at(&mut prefix, pos)?;
        let span = batch::read_span(&prefix).map_err(|source| CompactError::Batch {
            position: pos,
            source,
        })?;
        if span.total_len > MAX_BATCH_BYTES || pos + span.total_len as u64 > len {
            return Err(CompactError::TooLarge {
                position: pos,
                len: span.total_len,
            });
        }
        buf.resize(span.total_len, 0);
        file.read_exact_at(&mut buf, pos)?;
        f(pos, &buf)?;
        pos += span.total_len as u64;
    }
    Ok(())
}

/// Adds every keyed record of `seg` to `map`. False when the map filled up first.
pub fn map_segment(seg: &RolledSegment, map: &mut KeyMap) -> Result<bool, CompactError> {
    let file = File::open(&seg.path)?;
    let mut fits = true;
    for_each_batch(&file, seg.size, |position, b| {
        let header =
            batch::parse_header(b).map_err(|source| CompactError::Batch { position, source })?;
        if header.attributes & ATTR_CONTROL != 0 || header.record_count <= 0 || !fits {
            return Ok(());
        }
        let payload = records::decompressed(b, &header)?;
        for r in parse_records(&payload, header.record_count)? {
            if let Some(key) = r.key {
                let offset = header.span.base_offset.saturating_add(r.offset_delta);
                if !map.put(key, offset) {
                    fits = false;
                    break;
                }
            }
        }
        Ok(())
    })?;
    Ok(fits)
}

/// What cleaning one segment did.
#[derive(Debug, Default)]
pub struct SegmentOutcome {
    /// The cleaned copy (fsynced, with the original's modification time), when anything
    /// was removed.
    pub cleaned: Option<PathBuf>,
    pub records_removed: u64,
    pub bytes_after: u64,
    /// The segment keeps a tombstone (it expires delete.retention.ms after the segment's
    /// last write).
    pub keeps_tombstones: bool,
}

/// Writes the cleaned copy of `seg` next to it, if any record goes. `modified_ms` is the
/// segment's last write; its tombstones go when that is `delete_retention_ms` in the past.
pub fn clean_segment(
    seg: &RolledSegment,
    map: &KeyMap,
    modified_ms: i64,
    now_ms: i64,
    delete_retention_ms: i64,
) -> Result<SegmentOutcome, CompactError> {
    let expired = now_ms.saturating_sub(modified_ms) >= delete_retention_ms;
    let source = File::open(&seg.path)?;
    let mut out = Vec::new();
    let mut outcome = SegmentOutcome::default();
    for_each_batch(&source, seg.size, |position, b| {
        let mut tombstone_kept = false;
        let rewritten = rewrite_batch(b, |offset, r| {
            let keep = survives(map, offset, r, expired);
            tombstone_kept |= keep && r.tombstone;
            keep
        })
        .map_err(|e| match e {
            CompactError::Batch { source, .. } => CompactError::Batch { position, source },
            other => other,
        })?;
        outcome.keeps_tombstones |= tombstone_kept;
        match rewritten {
            Some(r) => {
                outcome.records_removed += r.removed;
                out.extend_from_slice(&r.bytes);
            }
            None => out.extend_from_slice(b),
        }
        Ok(())
    })?;
    outcome.bytes_after = out.len() as u64;
    if outcome.records_removed == 0 {
        return Ok(outcome);
    }
    let path = cleaned_path(&seg.path);
    let write = || -> io::Result<()> {
        let mut f = File::create(&path)?;
        f.write_all(&out)?;
        f.sync_all()?;
        if let Ok(modified) = File::open(&seg.path)?.metadata()?.modified() {
            // Tombstone expiry and segment.ms read the last write; cleaning is not a write.
            f.set_modified(modified)?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    outcome.cleaned = Some(path);
    Ok(outcome)
}

pub fn cleaned_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(CLEANED_SUFFIX);
    PathBuf::from(name)
}

/// Settings of one cleaning pass over a partition.
#[derive(Debug, Clone, Copy)]
pub struct CleanPlan {
    pub now_ms: i64,
    pub delete_retention_ms: i64,
    pub max_keys: usize,
}

/// What a cleaning pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanReport {
    /// Segments whose keys all fit in the map (the ones cleaned).
    pub segments_cleaned: usize,
    pub segments_rewritten: usize,
    pub bytes_read: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    /// Base offset of the last cleaned segment.
    pub cleaned_through: Option<i64>,
    /// When a kept tombstone expires and another pass would remove it.
    pub tombstone_deadline: Option<i64>,
}

/// Cleans `rolled` (oldest first; rolled, committed segments only). `modified_ms` gives a
/// segment's last write; `swap` puts a cleaned copy in place of its segment (under the log's
/// write lock) and says whether it did (the segment may have been removed meanwhile).
pub fn clean_log(
    rolled: &[RolledSegment],
    plan: CleanPlan,
    modified_ms: impl Fn(&RolledSegment) -> i64,
    mut swap: impl FnMut(&RolledSegment, &Path) -> io::Result<bool>,
) -> Result<CleanReport, CompactError> {
    let mut map = KeyMap::new(plan.max_keys);
    let mut fitting = 0;
    for seg in rolled {
        match map_segment(seg, &mut map) {
            Ok(true) => fitting += 1,
            Ok(false) => break,
            // Retention removed it since the listing: clean what came before.
            Err(CompactError::Io(e)) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        }
    }
    let mut report = CleanReport::default();
    for seg in &rolled[..fitting] {
        let modified = modified_ms(seg);
        let outcome =
            match clean_segment(seg, &map, modified, plan.now_ms, plan.delete_retention_ms) {
                Ok(o) => o,
                Err(CompactError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
        report.segments_cleaned += 1;
        report.bytes_read += seg.size;
        report.cleaned_through = Some(seg.base_offset);
        if outcome.keeps_tombstones {
            let deadline = modified.saturating_add(plan.delete_retention_ms);
            report.tombstone_deadline = Some(
                report
                    .tombstone_deadline
                    .map_or(deadline, |d| d.min(deadline)),
            );
        }
        match &outcome.cleaned {
            Some(path) => {
                if swap(seg, path)? {
                    report.segments_rewritten += 1;
                    report.records_removed += outcome.records_removed;
                    report.bytes_after += outcome.bytes_after;
                } else {
                    let _ = std::fs::remove_file(path);
                    report.bytes_after += seg.size;
                }
            }
            None => report.bytes_after += seg.size,
        }
    }
    Ok(report)
}

/// Last modification of a file in ms since the epoch (0 when unknown).
pub fn modified_ms(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::sync::RwLock;

    use super::*;
    use crate::config::LogConfig;
    use crate::storage::log::PartitionLog;

    /// A test record: key and value, either null.
    pub type KV<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    fn bytes_field(out: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => varint(out, -1),
            Some(b) => {
                varint(out, b.len() as i64);
                out.extend_from_slice(b);
            }
        }
    }

    /// A v2 batch of keyed records (timestamp delta = index * 10) compressed with `codec`,
    /// with producer id 77, epoch 3, base sequence 5 and leader epoch 9.
    pub fn keyed_batch(base_offset: i64, records: &[KV], codec: i16) -> Vec<u8> {
        let mut plain = Vec::new();
        for (i, (k, v)) in records.iter().enumerate() {
            let mut body = vec![0u8];
            varint(&mut body, i as i64 * 10);
            varint(&mut body, i as i64);
            bytes_field(&mut body, *k);
            bytes_field(&mut body, *v);
            varint(&mut body, 0);
            varint(&mut plain, body.len() as i64);
            plain.extend_from_slice(&body);
        }
        let payload = compress(codec, &plain, false).expect("compress");
        let n = records.len() as i32;
        let mut b = Vec::new();
        b.extend_from_slice(&base_offset.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&9i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&codec.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&1_000i64.to_be_bytes());
        b.extend_from_slice(&(1_000 + (n as i64 - 1) * 10).to_be_bytes());
        b.extend_from_slice(&77i64.to_be_bytes());
        b.extend_from_slice(&3i16.to_be_bytes());
        b.extend_from_slice(&5i32.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&payload);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn records_of(b: &[u8]) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        let h = batch::verify_stored(b).expect("stored batch valid");
        let payload = records::decompressed(b, &h).expect("decompress");
        parse_records(&payload, h.record_count)
            .expect("records")
            .iter()
            .map(|r| (r.offset_delta, r.key.map(<[u8]>::to_vec), r.tombstone))
            .collect()
    }

    #[test]
    fn rewriting_keeps_offsets_and_producer_fields_for_every_codec() {
        let recs: [KV; 4] = [
            (Some(b"a"), Some(b"1")),
            (Some(b"b"), Some(b"2")),
            (Some(b"a"), Some(b"3")),
            (Some(b"c"), None),
        ];
        for codec in 0..=4i16 {
            let original = keyed_batch(1_000, &recs, codec);
            let out = rewrite_batch(&original, |offset, _| offset != 1_000 && offset != 1_001)
                .expect("rewrite")
                .expect("changed");
            assert_eq!(out.removed, 2, "codec {codec}");
            let b = out.bytes;
            let h = batch::verify_stored(&b).expect("CRC and counts valid");
            assert_eq!(h.span.base_offset, 1_000);
            assert_eq!(h.last_offset_delta, 3, "lastOffsetDelta kept");
            assert_eq!(h.record_count, 2);
            assert_eq!(h.attributes & ATTR_CODEC, codec, "codec kept");
            assert_eq!(h.span.total_len, b.len());
            // partitionLeaderEpoch, producer id/epoch and base sequence are untouched.
            assert_eq!(&b[12..16], &original[12..16]);
            assert_eq!(&b[43..57], &original[43..57]);
            assert_eq!(h.base_timestamp, 1_000);
            assert_eq!(h.max_timestamp, 1_030);
            assert_eq!(
                records_of(&b),
                vec![
                    (2, Some(b"a".to_vec()), false),
                    (3, Some(b"c".to_vec()), true)
                ]
            );
            // Clients may not produce such a batch: its offsets have a gap.
            assert!(batch::parse_and_verify(&b).is_err());
        }
    }

    #[test]
    fn xerial_snappy_stays_xerial() {
        let mut plain_batch =
            keyed_batch(0, &[(Some(b"k"), Some(b"x")), (Some(b"k"), Some(b"y"))], 0);
        let plain = plain_batch.split_off(HEADER_LEN);
        let mut b = plain_batch;
        b.extend_from_slice(&compress(2, &plain, true).expect("xerial"));
        b[21..23].copy_from_slice(&2i16.to_be_bytes());
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let out = rewrite_batch(&b, |o, _| o == 1)
            .expect("rewrite")
            .expect("changed");
        assert!(out.bytes[HEADER_LEN..].starts_with(XERIAL_HEADER));
        assert_eq!(
            records_of(&out.bytes),
            vec![(1, Some(b"k".to_vec()), false)]
        );
    }

    #[test]
    fn a_batch_losing_every_record_becomes_an_empty_header() {
        for codec in [0i16, 4] {
            let original = keyed_batch(
                500,
                &[(Some(b"a"), Some(b"1")), (Some(b"b"), Some(b"2"))],
                codec,
            );
            let b = rewrite_batch(&original, |_, _| false)
                .expect("rewrite")
                .expect("changed")
                .bytes;
            assert_eq!(b.len(), HEADER_LEN);
            let h = batch::verify_stored(&b).expect("empty batch is a valid stored batch");
            assert_eq!(h.record_count, 0);
            assert_eq!(h.span.base_offset, 500);
            assert_eq!(h.span.last_offset, 501);
            assert_eq!(
                h.attributes & ATTR_CODEC,
                0,
                "an empty batch is not compressed"
            );
            assert_eq!(h.base_timestamp, h.max_timestamp);
            assert_eq!(h.max_timestamp, 1_010);
            assert_eq!(&b[43..57], &original[43..57]);
            // A follower stores it; a client may not produce it.
            assert!(batch::verify_produce_records(&b).is_err());
            // Rewriting it again changes nothing.
            assert!(rewrite_batch(&b, |_, _| false).expect("rewrite").is_none());
        }
    }

    #[test]
    fn unchanged_batches_are_left_alone() {
        let b = keyed_batch(0, &[(Some(b"a"), Some(b"1"))], 1);
        assert!(rewrite_batch(&b, |_, _| true).expect("rewrite").is_none());
    }

    #[test]
    fn key_map_rules() {
        let mut map = KeyMap::new(2);
        assert!(map.put(b"a", 1));
        assert!(map.put(b"a", 5));
        assert!(map.put(b"b", 2));
        assert!(!map.put(b"c", 3), "full map refuses a new key");
        assert!(map.put(b"b", 7), "but updates a known one");
        assert_eq!(map.latest(b"a"), Some(5));
        assert_eq!(map.len(), 2);
        let rec = |key: Option<&'static [u8]>, tombstone| RecordRef {
            raw: &[],
            timestamp_delta: 0,
            offset_delta: 0,
            key,
            tombstone,
        };
        // Latest wins.
        assert!(!survives(&map, 1, &rec(Some(b"a"), false), false));
        assert!(survives(&map, 5, &rec(Some(b"a"), false), false));
        // A key the map does not hold (a later, unmapped segment) stays.
        assert!(survives(&map, 9, &rec(Some(b"zz"), false), true));
        // Keyless records go.
        assert!(!survives(&map, 9, &rec(None, false), false));
        // A latest tombstone stays until it expires; an older one goes at once.
        assert!(survives(&map, 7, &rec(Some(b"b"), true), false));
        assert!(!survives(&map, 7, &rec(Some(b"b"), true), true));
        assert!(!survives(&map, 2, &rec(Some(b"b"), true), false));
    }

    fn log_config() -> LogConfig {
        LogConfig {
            segment_bytes: 300,
            index_interval_bytes: 100,
            ..LogConfig::default()
        }
    }

    /// A log of 12 batches (2 keys updated over and over, one tombstone, one keyless
    /// record) with non-batch Raft entries at indexes 1 and 6.
    fn build_log(dir: &Path, others: &BTreeSet<u64>) -> PartitionLog {
        let mut log = PartitionLog::open(dir, log_config(), others).expect("open");
        let mut raft = 1u64;
        for i in 0..12i64 {
            while others.contains(&raft) {
                raft += 1;
            }
            let v = format!("v{i}");
            let recs: Vec<KV> = match i {
                4 => vec![(Some(b"gone"), Some(b"x")), (None, Some(b"nokey"))],
                7 => vec![(Some(b"gone"), None)],
                _ => vec![
                    (Some(b"a"), Some(v.as_bytes())),
                    (Some(b"b"), Some(v.as_bytes())),
                ],
            };
            let b = keyed_batch(i * 10, &recs, (i % 5) as i16);
            let h = batch::verify_stored(&b).expect("valid");
            log.append(raft, &b, h.span, h.max_timestamp, 0)
                .expect("append");
            raft += 1;
        }
        log
    }

    fn raft_map(log: &PartitionLog, others: &BTreeSet<u64>) -> Vec<(u64, i64, i64)> {
        (1..=20u64)
            .filter_map(|i| {
                log.batch_by_raft_index(i, others)
                    .expect("io")
                    .map(|(b, _)| (i, b.loc.span.base_offset, b.loc.span.last_offset))
            })
            .collect()
    }

    fn records_of_all(mut bytes: &[u8]) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let h = batch::verify_stored(bytes).expect("valid");
            out.extend(records_of(&bytes[..h.span.total_len]));
            bytes = &bytes[h.span.total_len..];
        }
        out
    }

    fn all_records(log: &PartitionLog) -> Vec<(i64, Option<Vec<u8>>, bool)> {
        let mut out = Vec::new();
        let mut next = 0;
        while let Some(r) = log.read(next, 1 << 20, i64::MAX).expect("read") {
            let mut rest = &r.bytes[..];
            while !rest.is_empty() {
                let h = batch::verify_stored(rest).expect("valid");
                for (delta, k, t) in records_of(&rest[..h.span.total_len]) {
                    out.push((h.span.base_offset + delta, k, t));
                }
                next = h.span.last_offset + 1;
                rest = &rest[h.span.total_len..];
            }
        }
        out
    }

    fn clean(shared: &RwLock<PartitionLog>, now_ms: i64, retention: i64) -> CleanReport {
        let rolled = shared.read().expect("lock").rolled_segments();
        let plan = CleanPlan {
            now_ms,
            delete_retention_ms: retention,
            max_keys: 100,
        };
        clean_log(
            &rolled,
            plan,
            |_| 0,
            |seg, path| {
                shared
                    .write()
                    .expect("lock")
                    .replace_rolled_segment(seg, path)
            },
        )
        .expect("clean")
    }

    #[test]
    fn cleaning_keeps_raft_indexes_and_offsets_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let others: BTreeSet<u64> = [1u64, 6].into_iter().collect();
        let log = build_log(dir.path(), &others);
        assert!(log.segment_count() > 3);
        let before = raft_map(&log, &others);
        assert_eq!(before.len(), 12);
        let active_base = *log
            .rolled_segments()
            .last()
            .map(|s| &s.last_offset)
            .expect("rolled")
            + 1;
        let active_before = log.read(active_base, 1 << 20, i64::MAX).expect("read");
        let shared = RwLock::new(log);

        // Tombstones are young: the one for "gone" stays, its older value goes.
        let report = clean(&shared, 0, 1_000);
        assert!(report.records_removed > 0);
        assert!(report.tombstone_deadline.is_some());
        let log = shared.into_inner().expect("lock");
        assert_eq!(
            raft_map(&log, &others),
            before,
            "same Raft index for every batch"
        );
        let active_after = log.read(active_base, 1 << 20, i64::MAX).expect("read");
        assert_eq!(
            active_before.map(|r| r.bytes),
            active_after.map(|r| r.bytes),
            "the active segment is untouched"
        );
        let recs = all_records(&log);
        assert!(recs.contains(&(70, Some(b"gone".to_vec()), true)));
        assert!(!recs.iter().any(|(o, _, _)| *o == 40 || *o == 41));
        drop(log);

        // Reopen, then clean again after delete.retention.ms: the tombstone goes too.
        let log = PartitionLog::open(dir.path(), log_config(), &others).expect("reopen");
        assert_eq!(raft_map(&log, &others), before);
        let shared = RwLock::new(log);
        clean(&shared, 10_000, 1_000);
        let log = shared.into_inner().expect("lock");
        let recs = all_records(&log);
        assert!(!recs.iter().any(|(_, k, _)| k.as_deref() == Some(b"gone")));
        // Each key appears once in the cleaned (rolled) part, at its latest offset there,
        // plus whatever the active segment holds.
        let rolled_end = active_base;
        for key in [b"a".as_slice(), b"b"] {
            let in_rolled: Vec<i64> = recs
                .iter()
                .filter(|(o, k, _)| *o < rolled_end && k.as_deref() == Some(key))
                .map(|(o, _, _)| *o)
                .collect();
            assert!(in_rolled.len() <= 1, "{in_rolled:?}");
        }
        drop(log);
        let log = PartitionLog::open(dir.path(), log_config(), &others).expect("reopen");
        assert_eq!(raft_map(&log, &others), before);
        assert_eq!(log.end_offset(), Some(112));
        // The first segments now hold only empty batches: a read from 0 goes on until it
        // includes a record (clients take a record-less response for a too-small fetch).
        let r = log.read(0, 1 << 20, i64::MAX).expect("read").expect("data");
        assert_eq!(r.first_offset, 0);
        assert!(!records_of_all(&r.bytes).is_empty());
        let tiny = log.read(0, 1, i64::MAX).expect("read").expect("data");
        assert_eq!(
            tiny.bytes.len(),
            HEADER_LEN,
            "max_bytes still bounds the read"
        );
    }

    #[test]
    fn a_segment_changed_since_listing_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = build_log(dir.path(), &others);
        let rolled = log.rolled_segments();
        let mut stale = rolled[0].clone();
        stale.size += 1;
        let copy = cleaned_path(&stale.path);
        std::fs::write(&copy, b"junk").expect("write");
        assert!(!log.replace_rolled_segment(&stale, &copy).expect("io"));
        drop(log);
        // A leftover copy is removed on open.
        let _log = PartitionLog::open(dir.path(), log_config(), &others).expect("reopen");
        assert!(!copy.exists());
    }
}
