//! A partition log: ordered segments of stamped record batches.
//!
//! The log is also the partition's Raft log: every Raft entry that carries a batch is stored
//! here once, and nowhere else. Raft indexes of batches are not written into the batch; they are
//! derived. A segment's file name holds the Raft index of its first batch, and Raft entries that
//! carry no batch (blank and membership entries) are kept by the caller and passed in as the set
//! `others`, so batch k of a segment has the k-th index, counting from the segment's first,
//! that is not in `others`. The active segment keeps that mapping in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{self, BatchSpan};
use super::compact::{RolledSegment, CLEANED_SUFFIX};
use super::segment::{self, BatchLoc, Segment};
use crate::config::LogConfig;
use crate::producer_state::{Incoming, ProducerTable, StoredBatch};

/// A batch of the log together with its Raft index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftBatch {
    pub raft_index: u64,
    pub segment_base: i64,
    pub loc: BatchLoc,
}

pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    /// Batches of the active (last) segment with their Raft indexes, in order.
    active: Vec<RaftBatch>,
    /// Leader epoch (Raft term) -> the offsets its batches span, for OffsetForLeaderEpoch.
    epochs: BTreeMap<i32, EpochSpan>,
}

/// The offsets a leader epoch's batches cover in a log: the first batch's base offset and
/// the offset after its last batch (with GSN offsets the next epoch starts well above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSpan {
    pub start: i64,
    pub end: i64,
}

/// What `read` found for a fetch.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub bytes: Bytes,
    pub first_offset: i64,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, truncating any torn tail of the last segment.
    pub fn open(dir: &Path, config: LogConfig, others: &BTreeSet<u64>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(i64, u64)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| segment::parse_log_file_name(&e.file_name().to_string_lossy()))
            .collect();
        names.sort_unstable();
        remove_unfinished_cleanings(dir)?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            config,
            segments: BTreeMap::new(),
            active: Vec::new(),
            epochs: BTreeMap::new(),
        };
        let count = names.len();
        for (i, (base, first_raft)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            let (seg, batches) =
                Segment::open(dir, base, first_raft, config.index_interval_bytes, last)?;
            for b in &batches {
                log.note_epoch(&b.span);
            }
            if last {
                log.active = assign_raft_indexes(first_raft, base, &batches, others);
            }
            log.segments.insert(base, seg);
        }
        log.drop_empty_tail(others)?;
        Ok(log)
    }

    /// Appends a stamped batch as Raft entry `raft_index`. Returns the file that now holds
    /// unsynced data.
    pub fn append(
        &mut self,
        raft_index: u64,
        data: &[u8],
        span: BatchSpan,
        max_timestamp: i64,
        now_ms: i64,
    ) -> io::Result<Arc<File>> {
        self.note_epoch(&span);
        if self.should_roll(data.len() as u64, now_ms) {
            self.roll(span.base_offset, raft_index, now_ms)?;
        }
        let interval = self.config.index_interval_bytes;
        let (&base, seg) = self
            .segments
            .iter_mut()
            .next_back()
            .ok_or_else(|| io::Error::other("no active segment after roll"))?;
        let loc = seg.append(data, span, max_timestamp, interval)?;
        self.active.push(RaftBatch {
            raft_index,
            segment_base: base,
            loc,
        });
        Ok(seg.log_file())
    }

    fn should_roll(&self, incoming: u64, now_ms: i64) -> bool {
        match self.segments.values().next_back() {
            None => true,
            Some(seg) => {
                seg.size() > 0
                    && (seg.size() + incoming > self.config.segment_bytes
                        || now_ms.saturating_sub(seg.created_ms) >= self.config.segment_ms as i64)
            }
        }
    }

    fn roll(&mut self, base_offset: i64, first_raft_index: u64, now_ms: i64) -> io::Result<()> {
        if let Some(old) = self.segments.values().next_back() {
            // Rolls are rare; syncing the finished segment here keeps the flusher single-file.
            old.log_file().sync_data()?;
            old.sync_indexes()?;
        }
        let seg = Segment::create(&self.dir, base_offset, first_raft_index, now_ms)?;
        tracing::debug!(dir = %self.dir.display(), base_offset, "rolled new segment");
        self.segments.insert(base_offset, seg);
        self.active.clear();
        Ok(())
    }

    /// New segment settings (a topic config changed); they act from the next append.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// The file holding the newest data (what a flush must sync).
    pub fn active_file(&self) -> Option<Arc<File>> {
        self.segments.values().next_back().map(Segment::log_file)
    }

    /// Offset after the last batch, or `None` for an empty log.
    pub fn end_offset(&self) -> Option<i64> {
        self.segments
            .values()
            .rev()
            .find(|s| s.size() > 0)
            .map(|s| s.last_offset + 1)
    }

    /// Base offset of the oldest batch, or `None` for an empty log.
    pub fn start_offset(&self) -> Option<i64> {
        self.segments
            .values()
            .find(|s| s.size() > 0)
            .map(|s| s.base_offset)
    }

    /// Largest max-timestamp in the log and the base offset of a batch holding it.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let seg = self.segments.values().max_by_key(|s| s.max_timestamp)?;
        if seg.max_timestamp < 0 {
            return None;
        }
        let loc = seg.find_by_time(seg.max_timestamp).ok()??;
        Some((seg.max_timestamp, loc.span.base_offset))
    }

    /// Last batch of the log with its Raft index.
    pub fn last_batch(&self) -> Option<RaftBatch> {
        self.active.last().copied()
    }

    /// Reads whole batches starting with the one holding `offset` (or the next one after a gap),
    /// stopping before `limit_offset` (the high watermark) and after `max_bytes`, but always
    /// returning a whole first batch (KIP-74). A read ends at the end of a segment, unless all
    /// it holds so far are empty batches (left by compaction): clients such as librdkafka take
    /// a response without a record for a fetch size too small and grow it until they fail, so
    /// the read goes on into the next segments until it holds a record.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: u64,
        limit_offset: i64,
    ) -> io::Result<Option<ReadResult>> {
        let Some((seg, first)) = self.locate_offset(offset)? else {
            return Ok(None);
        };
        if first.span.base_offset >= limit_offset {
            return Ok(None);
        }
        let (bytes, mut has_records) = read_segment(seg, first, max_bytes, limit_offset)?;
        if has_records || bytes.len() as u64 >= max_bytes {
            return Ok(Some(ReadResult {
                bytes,
                first_offset: first.span.base_offset,
            }));
        }
        let mut joined = bytes::BytesMut::from(&bytes[..]);
        for next in self.segments.range(seg.base_offset + 1..).map(|(_, s)| s) {
            let room = max_bytes.saturating_sub(joined.len() as u64);
            if has_records || next.size() == 0 || room == 0 {
                break;
            }
            let loc = BatchLoc {
                position: 0,
                span: next.span_at(0)?,
            };
            if loc.span.base_offset >= limit_offset || loc.span.total_len as u64 > room {
                break;
            }
            let (more, records) = read_segment(next, loc, room, limit_offset)?;
            joined.extend_from_slice(&more);
            has_records = records;
        }
        Ok(Some(ReadResult {
            bytes: joined.freeze(),
            first_offset: first.span.base_offset,
        }))
    }

    /// The segment and batch holding `offset`, or the first batch after it.
    fn locate_offset(&self, offset: i64) -> io::Result<Option<(&Segment, BatchLoc)>> {
        let from = self
            .segments
            .range(..=offset)
            .next_back()
            .map_or(i64::MIN, |(base, _)| *base);
        for seg in self.segments.range(from..).map(|(_, s)| s) {
            if let Some(loc) = seg.find(offset)? {
                return Ok(Some((seg, loc)));
            }
        }
        Ok(None)
    }

    /// First batch with a max timestamp >= `timestamp`, read whole.
    pub fn read_batch_by_time(&self, timestamp: i64) -> io::Result<Option<Bytes>> {
        for seg in self.segments.values() {
            if let Some(loc) = seg.find_by_time(timestamp)? {
                return seg
                    .read(loc.position as u64, loc.span.total_len as u64)
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// The batch stored as Raft entry `raft_index`, if it is a batch of this log.
    pub fn batch_by_raft_index(
        &self,
        raft_index: u64,
        others: &BTreeSet<u64>,
    ) -> io::Result<Option<(RaftBatch, Bytes)>> {
        let Some(found) = self.locate_raft_index(raft_index, others)? else {
            return Ok(None);
        };
        let seg = self
            .segments
            .get(&found.segment_base)
            .ok_or_else(|| io::Error::other("segment vanished"))?;
        let bytes = seg.read(found.loc.position as u64, found.loc.span.total_len as u64)?;
        Ok(Some((found, bytes)))
    }

    fn locate_raft_index(
        &self,
        raft_index: u64,
        others: &BTreeSet<u64>,
    ) -> io::Result<Option<RaftBatch>> {
        if let Some(first) = self.active.first() {
            if raft_index >= first.raft_index {
                return Ok(self
                    .active
                    .binary_search_by_key(&raft_index, |b| b.raft_index)
                    .ok()
                    .map(|i| self.active[i]));
            }
        }
        let Some(seg) = self
            .segments
            .values()
            .rev()
            .find(|s| s.first_raft_index <= raft_index)
        else {
            return Ok(None);
        };
        let batches = self.segment_batches(seg, others)?;
        Ok(batches.into_iter().find(|b| b.raft_index == raft_index))
    }

    fn segment_batches(&self, seg: &Segment, others: &BTreeSet<u64>) -> io::Result<Vec<RaftBatch>> {
        let mut locs = Vec::new();
        let mut pos = 0u64;
        while pos < seg.size() {
            let span = seg.span_at(pos)?;
            locs.push(BatchLoc {
                position: pos as u32,
                span,
            });
            pos += span.total_len as u64;
        }
        Ok(assign_raft_indexes(
            seg.first_raft_index,
            seg.base_offset,
            &locs,
            others,
        ))
    }

    /// Removes every batch whose Raft index is >= `raft_index` (Raft log truncation).
    pub fn truncate_from_raft_index(
        &mut self,
        raft_index: u64,
        others: &BTreeSet<u64>,
    ) -> io::Result<()> {
        let doomed: Vec<i64> = self
            .segments
            .values()
            .filter(|s| s.first_raft_index >= raft_index)
            .map(|s| s.base_offset)
            .collect();
        for base in doomed {
            if let Some(seg) = self.segments.remove(&base) {
                seg.remove_files()?;
            }
        }
        let interval = self.config.index_interval_bytes;
        if let Some(seg) = self.segments.values().next_back() {
            let batches = self.segment_batches(seg, others)?;
            if let Some(cut) = batches.iter().find(|b| b.raft_index >= raft_index) {
                let position = cut.loc.position as u64;
                if let Some(seg) = self.segments.values_mut().next_back() {
                    seg.truncate_to(position, interval)?;
                }
            }
        }
        self.drop_empty_tail(others)?;
        let end = self.end_offset().unwrap_or(i64::MIN);
        self.epochs.retain(|_, e| e.start < end);
        // Truncation cuts a suffix: only the last remaining epoch can have lost batches.
        if let Some(last) = self.epochs.values_mut().next_back() {
            last.end = last.end.min(end);
        }
        Ok(())
    }

    /// An empty last segment (a crash right after a roll, or a truncation) would claim a base
    /// offset that the next batch may not have: remove it.
    fn drop_empty_tail(&mut self, others: &BTreeSet<u64>) -> io::Result<()> {
        if let Some((&base, seg)) = self.segments.iter().next_back() {
            if seg.size() == 0 {
                seg.remove_files()?;
                self.segments.remove(&base);
            }
        }
        self.reload_active(others)
    }

    fn reload_active(&mut self, others: &BTreeSet<u64>) -> io::Result<()> {
        self.active = match self.segments.values().next_back() {
            Some(seg) => self.segment_batches(seg, others)?,
            None => Vec::new(),
        };
        Ok(())
    }

    fn note_epoch(&mut self, span: &BatchSpan) {
        let end = span.last_offset + 1;
        match self.epochs.iter_mut().next_back() {
            Some((last, e)) if *last == span.leader_epoch => e.end = e.end.max(end),
            Some((last, _)) if *last > span.leader_epoch => {}
            _ => {
                self.epochs.insert(
                    span.leader_epoch,
                    EpochSpan {
                        start: span.base_offset,
                        end,
                    },
                );
            }
        }
    }

    /// OffsetForLeaderEpoch on the leader whose own epoch is `current`: see `epoch_end`.
    /// The log end is the offset after the last batch (`high_watermark` for an empty log).
    pub fn end_of_epoch(
        &self,
        requested: i32,
        current: i32,
        high_watermark: i64,
    ) -> Option<(i32, i64)> {
        let log_end = self.end_offset().unwrap_or(high_watermark);
        epoch_end(&self.epochs, requested, current, log_end)
    }

    /// Feeds the producer fields of every batch, oldest first, to `table` (rebuilds the
    /// idempotence state on open and after truncation). Reads one header per batch.
    pub fn replay_producers(&self, table: &mut ProducerTable) -> io::Result<()> {
        for seg in self.segments.values() {
            let mut pos = 0u64;
            while pos < seg.size() {
                let head = seg.read(pos, batch::HEADER_LEN as u64)?;
                let span = batch::read_span(&head).map_err(io::Error::other)?;
                if let Some(stored) = stored_producer_batch(&head, span) {
                    table.replay(&stored);
                }
                pos += span.total_len as u64;
            }
        }
        Ok(())
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Every segment but the active one, oldest first: what the cleaner may rewrite.
    pub fn rolled_segments(&self) -> Vec<RolledSegment> {
        let mut rolled: Vec<RolledSegment> = self
            .segments
            .values()
            .map(|s| RolledSegment {
                base_offset: s.base_offset,
                first_raft_index: s.first_raft_index,
                size: s.size(),
                last_offset: s.last_offset,
                path: self
                    .dir
                    .join(segment::log_file_name(s.base_offset, s.first_raft_index)),
            })
            .collect();
        rolled.pop();
        rolled
    }

    /// Puts the cleaner's copy `cleaned` in place of rolled segment `seg` (atomic rename) and
    /// reloads it, rebuilding its indexes. The copy holds the same batches in the same order,
    /// so Raft indexes are unchanged. Does nothing (and returns false) if the segment changed
    /// since the cleaner listed it: removed by retention or truncation, or now the active one.
    pub fn replace_rolled_segment(
        &mut self,
        seg: &RolledSegment,
        cleaned: &Path,
    ) -> io::Result<bool> {
        let unchanged = self.segments.get(&seg.base_offset).is_some_and(|s| {
            s.first_raft_index == seg.first_raft_index
                && s.size() == seg.size
                && s.last_offset == seg.last_offset
        });
        let active = self.segments.keys().next_back() == Some(&seg.base_offset);
        if !unchanged || active {
            return Ok(false);
        }
        std::fs::rename(cleaned, &seg.path)?;
        File::open(&self.dir)?.sync_all()?;
        let (reloaded, _) = Segment::open(
            &self.dir,
            seg.base_offset,
            seg.first_raft_index,
            self.config.index_interval_bytes,
            false,
        )?;
        self.segments.insert(seg.base_offset, reloaded);
        Ok(true)
    }

    /// Total bytes of all segments (log files only).
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    /// What retention may delete now: the oldest rolled segments, in order, while each is
    /// past `retention_ms` (by its largest timestamp) or the log stays at or over
    /// `retention_bytes` without it (Kafka's rules). The active segment is never chosen, nor a
    /// segment holding an entry above `applied_index` (not yet committed everywhere it
    /// matters). The cut ends where the next segment's first Raft index begins, so it also
    /// covers the non-batch entries between the segments.
    pub fn retention_cut(
        &self,
        policy: RetentionPolicy,
        applied_index: u64,
    ) -> Option<RetentionCut> {
        let mut remaining = self.size_bytes();
        let mut cut: Option<RetentionCut> = None;
        let segs: Vec<&Segment> = self.segments.values().collect();
        for pair in segs.windows(2) {
            let (seg, next) = (pair[0], pair[1]);
            let last_index = next.first_raft_index.saturating_sub(1);
            if last_index > applied_index || next.first_raft_index <= seg.first_raft_index {
                break;
            }
            let expired = policy.retention_ms >= 0
                && seg.max_timestamp >= 0
                && policy.now_ms.saturating_sub(seg.max_timestamp) > policy.retention_ms;
            let oversized = policy.retention_bytes >= 0
                && remaining.saturating_sub(seg.size()) >= policy.retention_bytes as u64;
            // Every offset of the segment lies below the log start (DeleteRecords).
            let below_start = next.base_offset <= policy.delete_below;
            if !expired && !oversized && !below_start {
                break;
            }
            remaining -= seg.size();
            let prev = cut.unwrap_or_default();
            cut = Some(RetentionCut {
                last_raft_index: last_index,
                new_start_offset: next.base_offset,
                segments: prev.segments + 1,
                bytes: prev.bytes + seg.size(),
            });
        }
        cut
    }

    /// Removes every batch whose Raft index is <= `raft_index` (the part of the log a Raft
    /// snapshot covers): whole segments are deleted; a segment holding batches on both sides
    /// (possible on a follower, whose segment boundaries differ from the leader's) stays, and
    /// its batches at or below the cut are hidden by the log start offset. `raft_index` may lie
    /// beyond the last entry (a snapshot installed on a replica that fell behind): then
    /// everything goes. Segments that stay keep their first Raft index, so the Raft-index
    /// mapping of what stays is unchanged. Returns what was deleted and the base offset of the
    /// first batch above the cut, if any remains.
    pub fn purge_to_raft_index(
        &mut self,
        raft_index: u64,
        others: &BTreeSet<u64>,
    ) -> io::Result<PurgeOutcome> {
        let mut outcome = PurgeOutcome::default();
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        for (i, base) in bases.iter().enumerate() {
            let whole = match bases.get(i + 1) {
                Some(next) => self.segments[next].first_raft_index <= raft_index.saturating_add(1),
                None => self
                    .active
                    .last()
                    .is_none_or(|b| b.raft_index <= raft_index),
            };
            if !whole {
                break;
            }
            if let Some(seg) = self.segments.remove(base) {
                outcome.segments += 1;
                outcome.bytes += seg.size();
                seg.remove_files()?;
            }
        }
        if self.segments.is_empty() {
            self.active.clear();
            return Ok(outcome);
        }
        let first = self.segments.values().next().map(|s| s.base_offset);
        outcome.first_kept_offset = match self.segments.values().next() {
            Some(seg) if seg.first_raft_index <= raft_index => self
                .segment_batches(seg, others)?
                .iter()
                .find(|b| b.raft_index > raft_index)
                .map(|b| b.loc.span.base_offset)
                .or_else(|| self.segments.values().nth(1).map(|s| s.base_offset)),
            _ => first,
        };
        Ok(outcome)
    }
}

/// A cleaned copy that a crash left before it replaced its segment is not part of the log.
fn remove_unfinished_cleanings(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(CLEANED_SUFFIX)
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whole batches of `seg` from `first` on, below `limit_offset`, within `max_bytes` (but at
/// least `first`); and whether any of them holds a record (a batch with records is longer than
/// a bare header).
fn read_segment(
    seg: &Segment,
    first: BatchLoc,
    max_bytes: u64,
    limit_offset: i64,
) -> io::Result<(Bytes, bool)> {
    let start = first.position as u64;
    let mut end = start + first.span.total_len as u64;
    let mut has_records = first.span.total_len > batch::HEADER_LEN;
    while end < seg.size() {
        let span = seg.span_at(end)?;
        if span.base_offset >= limit_offset || end + span.total_len as u64 - start > max_bytes {
            break;
        }
        has_records |= span.total_len > batch::HEADER_LEN;
        end += span.total_len as u64;
    }
    Ok((seg.read(start, end - start)?, has_records))
}

/// The producer fields of a stored batch whose header starts `head`; None without a producer
/// id.
pub fn stored_producer_batch(head: &[u8], span: BatchSpan) -> Option<StoredBatch> {
    let f = batch::producer_fields(head)?;
    (f.producer_id >= 0).then(|| StoredBatch {
        incoming: Incoming::new(
            f.producer_id,
            f.producer_epoch,
            f.base_sequence,
            f.last_offset_delta,
        ),
        base_offset: span.base_offset,
        last_offset: span.last_offset,
        max_timestamp: f.max_timestamp,
    })
}

/// Retention settings of one pass (from the topic's configs) and the time it runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// -1: no time limit.
    pub retention_ms: i64,
    /// -1: no size limit.
    pub retention_bytes: i64,
    /// Segments whose every offset lies below this (the log start) go too.
    pub delete_below: i64,
    pub now_ms: i64,
}

/// The oldest segments retention deletes: every Raft entry up to `last_raft_index`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionCut {
    pub last_raft_index: u64,
    /// Base offset of the first segment that stays: the new log start offset.
    pub new_start_offset: i64,
    pub segments: usize,
    pub bytes: u64,
}

/// What `purge_to_raft_index` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeOutcome {
    pub segments: u64,
    pub bytes: u64,
    /// Base offset of the first batch above the cut; None when the log is now empty.
    pub first_kept_offset: Option<i64>,
}

/// Gives batch k of a segment the k-th Raft index from `first` that is not a non-batch entry.
fn assign_raft_indexes(
    first: u64,
    segment_base: i64,
    batches: &[BatchLoc],
    others: &BTreeSet<u64>,
) -> Vec<RaftBatch> {
    let mut next = first;
    batches
        .iter()
        .map(|loc| {
            while others.contains(&next) {
                next += 1;
            }
            let b = RaftBatch {
                raft_index: next,
                segment_base,
                loc: *loc,
            };
            next += 1;
            b
        })
        .collect()
}

/// Kafka's OffsetForLeaderEpoch answer on a leader (`LeaderEpochFileCache.endOffsetFor`) for
/// GSN offsets: the largest epoch <= `requested` that has batches here, and the offset after
/// its last batch. The leader's own epoch `current` (which may have no batch yet) ends at
/// the log end. An epoch older than every batch here (retention removed its batches) gets
/// the start of the first epoch after it, as Kafka answers. A negative epoch, or one newer
/// than the leader's, has no answer (clients treat that as truncation).
pub fn epoch_end(
    epochs: &BTreeMap<i32, EpochSpan>,
    requested: i32,
    current: i32,
    log_end: i64,
) -> Option<(i32, i64)> {
    if requested < 0 || requested > current {
        return None;
    }
    if requested == current {
        return Some((current, log_end));
    }
    match epochs.range(..=requested).next_back() {
        Some((&epoch, span)) => Some((epoch, span.end)),
        None => Some((
            requested,
            epochs.values().next().map_or(log_end, |first| first.start),
        )),
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    fn epochs(list: &[(i32, i64, i64)]) -> BTreeMap<i32, EpochSpan> {
        list.iter()
            .map(|&(e, start, end)| (e, EpochSpan { start, end }))
            .collect()
    }

    #[test]
    fn an_epoch_ends_after_its_last_batch() {
        // Epoch 2: batches 10..=19 and 40..=44; epoch 5 starts at 100 (GSN gap).
        let map = epochs(&[(2, 10, 45), (5, 100, 130)]);
        assert_eq!(epoch_end(&map, 2, 7, 130), Some((2, 45)));
        // Epochs without batches here fall back to the largest epoch below.
        assert_eq!(epoch_end(&map, 3, 7, 130), Some((2, 45)));
        assert_eq!(epoch_end(&map, 6, 7, 130), Some((5, 130)));
        // The leader's own epoch ends at the log end, batches or not.
        assert_eq!(epoch_end(&map, 7, 7, 130), Some((7, 130)));
        // Older than every batch: where the first known epoch starts (Kafka).
        assert_eq!(epoch_end(&map, 1, 7, 130), Some((1, 10)));
        // Unknown: negative, or newer than the leader.
        assert_eq!(epoch_end(&map, -1, 7, 130), None);
        assert_eq!(epoch_end(&map, 8, 7, 130), None);
        // An empty log: everything ends at the log end.
        assert_eq!(epoch_end(&BTreeMap::new(), 3, 7, 0), Some((3, 0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{self, tests::make_batch};

    fn cfg(segment_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes,
            index_interval_bytes: 100,
            ..LogConfig::default()
        }
    }

    fn put(log: &mut PartitionLog, raft: u64, base: i64, count: i32) {
        put_in_epoch(log, raft, base, count, 1);
    }

    fn put_in_epoch(log: &mut PartitionLog, raft: u64, base: i64, count: i32, epoch: i32) {
        let mut b = make_batch(0, count, base);
        batch::stamp(&mut b, base, epoch);
        let h = batch::parse_and_verify(&b).expect("valid");
        log.append(raft, &b, h.span, h.max_timestamp, 0)
            .expect("append");
    }

    #[test]
    fn epoch_ends_follow_appends_truncation_and_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = PartitionLog::open(dir.path(), cfg(200), &others).expect("open");
        put_in_epoch(&mut log, 1, 0, 2, 1);
        put_in_epoch(&mut log, 2, 10, 1, 1);
        put_in_epoch(&mut log, 3, 50, 3, 3);
        put_in_epoch(&mut log, 4, 60, 1, 3);
        // Epoch 1 ends after its last batch (11), not where epoch 3 starts (50).
        assert_eq!(log.end_of_epoch(1, 4, 0), Some((1, 11)));
        assert_eq!(log.end_of_epoch(2, 4, 0), Some((1, 11)));
        assert_eq!(log.end_of_epoch(3, 4, 0), Some((3, 61)));
        assert_eq!(log.end_of_epoch(4, 4, 0), Some((4, 61)));
        log.truncate_from_raft_index(4, &others).expect("truncate");
        assert_eq!(log.end_of_epoch(3, 4, 0), Some((3, 53)));
        log.truncate_from_raft_index(3, &others).expect("truncate");
        assert_eq!(log.end_of_epoch(3, 4, 0), Some((1, 11)));
        assert_eq!(log.end_of_epoch(4, 4, 0), Some((4, 11)));
        put_in_epoch(&mut log, 3, 70, 2, 4);
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(200), &others).expect("reopen");
        assert_eq!(log.end_of_epoch(1, 5, 0), Some((1, 11)));
        assert_eq!(log.end_of_epoch(4, 5, 0), Some((4, 72)));
    }

    #[test]
    fn io_errors_reach_the_caller() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("p");
        let others = BTreeSet::new();
        let mut log = PartitionLog::open(&dir, cfg(200), &others).expect("open");
        put(&mut log, 1, 0, 1);
        put(&mut log, 2, 10, 1);
        // A segment cut short underneath: the read fails, it does not return less.
        let first = dir.join(segment::log_file_name(0, 1));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .and_then(|f| f.set_len(30))
            .expect("cut");
        assert!(log.read(0, 1 << 20, 100).is_err());
        // The directory removed: the open segment still takes writes, but the roll that
        // creates the next file fails with NotFound.
        std::fs::remove_dir_all(&dir).expect("rm");
        let mut failed = None;
        for (i, base) in [20i64, 30, 40].into_iter().enumerate() {
            let mut b = make_batch(0, 1, base);
            batch::stamp(&mut b, base, 1);
            let h = batch::parse_and_verify(&b).expect("valid");
            if let Err(e) = log.append(3 + i as u64, &b, h.span, h.max_timestamp, 0) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a roll into the removed directory fails");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn reads_across_gaps_and_segments_and_respects_limits() {
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = PartitionLog::open(dir.path(), cfg(200), &others).expect("open");
        let bases = [0i64, 3, 7, 100, 250, 251];
        for (i, base) in bases.iter().enumerate() {
            put(&mut log, i as u64 + 1, *base, 1);
        }
        assert!(log.segment_count() > 1, "small segment-bytes must roll");
        assert_eq!(log.end_offset(), Some(252));
        assert_eq!(log.start_offset(), Some(0));
        // Offset in a gap returns the next batch.
        let r = log.read(4, 1 << 20, i64::MAX).expect("io").expect("found");
        assert_eq!(r.first_offset, 7);
        // The high watermark hides later batches.
        assert!(log.read(250, 1 << 20, 250).expect("io").is_none());
        // max_bytes smaller than one batch still yields that batch.
        let r = log.read(0, 1, i64::MAX).expect("io").expect("found");
        assert_eq!(batch::read_span(&r.bytes).expect("span").base_offset, 0);
        assert_eq!(
            r.bytes.len(),
            batch::read_span(&r.bytes).expect("span").total_len
        );
    }

    #[test]
    fn raft_indexes_skip_non_batch_entries_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let others: BTreeSet<u64> = [1u64, 4].into_iter().collect();
        let mut log = PartitionLog::open(dir.path(), cfg(1 << 20), &others).expect("open");
        put(&mut log, 2, 10, 1);
        put(&mut log, 3, 11, 1);
        put(&mut log, 5, 20, 1);
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(1 << 20), &others).expect("reopen");
        assert_eq!(log.last_batch().map(|b| b.raft_index), Some(5));
        let (found, _) = log
            .batch_by_raft_index(3, &others)
            .expect("io")
            .expect("present");
        assert_eq!(found.loc.span.base_offset, 11);
        assert!(log.batch_by_raft_index(4, &others).expect("io").is_none());
    }

    /// Appends a batch of producer `pid` (epoch 0) starting at sequence `seq`.
    fn put_idempotent(log: &mut PartitionLog, raft: u64, base: i64, pid: i64, seq: i32) {
        let mut b = make_batch(0, 2, base);
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        batch::stamp(&mut b, base, 1);
        let h = batch::parse_and_verify(&b).expect("valid");
        log.append(raft, &b, h.span, h.max_timestamp, 0)
            .expect("append");
    }

    #[test]
    fn producer_state_is_rebuilt_from_the_stored_headers() {
        use crate::producer_state::{check, Incoming, Verdict};
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = PartitionLog::open(dir.path(), cfg(200), &others).expect("open");
        for i in 0..6u64 {
            put_idempotent(&mut log, i + 1, i as i64 * 10, 9, i as i32 * 2);
        }
        put(&mut log, 7, 100, 1);
        drop(log);
        let mut log = PartitionLog::open(dir.path(), cfg(200), &others).expect("reopen");
        assert!(log.segment_count() > 1, "the replay must cross segments");
        let mut table = ProducerTable::default();
        log.replay_producers(&mut table).expect("replay");
        assert_eq!(table.len(), 1);
        let retry = Incoming::new(9, 0, 8, 1);
        assert!(matches!(
            check(table.get(9), &retry),
            Ok(Verdict::Duplicate(m)) if m.base_offset == 40
        ));
        assert_eq!(
            check(table.get(9), &Incoming::new(9, 0, 12, 0)),
            Ok(Verdict::Append)
        );
        // After truncation the table follows the shorter log.
        log.truncate_from_raft_index(5, &others).expect("truncate");
        let mut table = ProducerTable::default();
        log.replay_producers(&mut table).expect("replay");
        assert_eq!(check(table.get(9), &retry), Ok(Verdict::Append));
        assert!(check(table.get(9), &Incoming::new(9, 0, 12, 0)).is_err());
    }

    #[test]
    fn truncation_by_raft_index_removes_the_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = PartitionLog::open(dir.path(), cfg(200), &others).expect("open");
        for i in 0..6u64 {
            put(&mut log, i + 1, i as i64 * 10, 1);
        }
        log.truncate_from_raft_index(3, &others).expect("truncate");
        assert_eq!(log.last_batch().map(|b| b.raft_index), Some(2));
        assert_eq!(log.end_offset(), Some(11));
        put(&mut log, 3, 15, 1);
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(200), &others).expect("reopen");
        assert_eq!(log.end_offset(), Some(16));
    }

    /// Six one-record batches (timestamp = base offset), two per segment at 200 bytes:
    /// segments [0,10] [20,30] [40,50], Raft indexes 1..=6 unless `others` shifts them.
    fn three_segments(dir: &Path, others: &BTreeSet<u64>, rafts: [u64; 6]) -> PartitionLog {
        let mut log = PartitionLog::open(dir, cfg(200), others).expect("open");
        for (i, raft) in rafts.iter().enumerate() {
            put(&mut log, *raft, i as i64 * 10, 1);
        }
        assert_eq!(log.segment_count(), 3);
        log
    }

    fn by_time(retention_ms: i64, now_ms: i64) -> RetentionPolicy {
        RetentionPolicy {
            retention_ms,
            retention_bytes: -1,
            delete_below: 0,
            now_ms,
        }
    }

    #[test]
    fn retention_by_time_takes_expired_rolled_segments_from_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = three_segments(dir.path(), &BTreeSet::new(), [1, 2, 3, 4, 5, 6]);
        // Segment [0,10] is 40 ms old, [20,30] 20 ms: only the first is past 25 ms.
        let cut = log.retention_cut(by_time(25, 50), 6).expect("cut");
        assert_eq!(cut.last_raft_index, 2);
        assert_eq!(cut.new_start_offset, 20);
        assert_eq!(cut.segments, 1);
        // Everything expired: the active segment still stays.
        let cut = log.retention_cut(by_time(0, 1_000), 6).expect("cut");
        assert_eq!(
            (cut.last_raft_index, cut.new_start_offset, cut.segments),
            (4, 40, 2)
        );
        // -1 = never.
        assert_eq!(log.retention_cut(by_time(-1, i64::MAX), 6), None);
    }

    #[test]
    fn segments_below_the_log_start_go_whatever_the_retention_settings() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = three_segments(dir.path(), &BTreeSet::new(), [1, 2, 3, 4, 5, 6]);
        let below = |delete_below: i64| RetentionPolicy {
            retention_ms: -1,
            retention_bytes: -1,
            delete_below,
            now_ms: 0,
        };
        assert_eq!(
            log.retention_cut(below(19), 6),
            None,
            "offset 10 is still readable"
        );
        assert_eq!(log.retention_cut(below(20), 6).map(|c| c.segments), Some(1));
        assert_eq!(log.retention_cut(below(35), 6).map(|c| c.segments), Some(1));
        assert_eq!(
            log.retention_cut(below(1_000), 6).map(|c| c.segments),
            Some(2)
        );
    }

    #[test]
    fn retention_only_takes_applied_segments() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = three_segments(dir.path(), &BTreeSet::new(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(log.retention_cut(by_time(0, 1_000), 1), None);
        let cut = log.retention_cut(by_time(0, 1_000), 3).expect("cut");
        assert_eq!(
            cut.last_raft_index, 2,
            "segment 2 ends at index 4, not applied"
        );
    }

    #[test]
    fn retention_by_size_keeps_the_log_at_or_over_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = three_segments(dir.path(), &BTreeSet::new(), [1, 2, 3, 4, 5, 6]);
        let seg = log.size_bytes() / 3;
        let policy = |bytes: u64| RetentionPolicy {
            retention_ms: -1,
            retention_bytes: bytes as i64,
            delete_below: 0,
            now_ms: 0,
        };
        let cut = log.retention_cut(policy(seg), 6).expect("cut");
        assert_eq!(
            (cut.segments, cut.bytes, cut.new_start_offset),
            (2, 2 * seg, 40)
        );
        let cut = log.retention_cut(policy(2 * seg), 6).expect("cut");
        assert_eq!((cut.segments, cut.new_start_offset), (1, 20));
        assert_eq!(log.retention_cut(policy(2 * seg + 1), 6), None);
        // A limit of 0 still never touches the active segment.
        assert_eq!(log.retention_cut(policy(0), 6).map(|c| c.segments), Some(2));
    }

    #[test]
    fn purge_deletes_covered_segments_and_keeps_the_raft_mapping() {
        let dir = tempfile::tempdir().expect("tmp");
        // Non-batch entries at 1 and 4: batches at 2,3 | 5,6 | 7,8.
        let others: BTreeSet<u64> = [1u64, 4].into_iter().collect();
        let mut log = three_segments(dir.path(), &others, [2, 3, 5, 6, 7, 8]);
        let cut = log.retention_cut(by_time(25, 50), 8).expect("cut");
        assert_eq!(
            cut.last_raft_index, 4,
            "the cut covers the entry between the segments"
        );
        let outcome = log.purge_to_raft_index(4, &others).expect("purge");
        assert_eq!(outcome.segments, 1);
        assert_eq!(outcome.first_kept_offset, Some(20));
        assert_eq!(log.start_offset(), Some(20));
        let files = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(
            files,
            2 * 3,
            "two segments of .log/.index/.timeindex remain"
        );
        // The caller forgets the purged non-batch entries; the mapping of what stays holds.
        let others = BTreeSet::new();
        for (raft, base) in [(5u64, 20i64), (6, 30), (7, 40), (8, 50)] {
            let (found, _) = log
                .batch_by_raft_index(raft, &others)
                .expect("io")
                .expect("present");
            assert_eq!(found.loc.span.base_offset, base);
        }
        assert!(log.batch_by_raft_index(3, &others).expect("io").is_none());
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(200), &others).expect("reopen");
        assert_eq!(log.start_offset(), Some(20));
        assert_eq!(log.last_batch().map(|b| b.raft_index), Some(8));
    }

    #[test]
    fn purge_inside_a_segment_keeps_it_and_reports_the_first_batch_above() {
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = three_segments(dir.path(), &others, [1, 2, 3, 4, 5, 6]);
        let outcome = log.purge_to_raft_index(3, &others).expect("purge");
        assert_eq!(outcome.segments, 1);
        assert_eq!(outcome.first_kept_offset, Some(30));
        assert_eq!(log.segment_count(), 2);
    }

    #[test]
    fn purge_beyond_the_end_empties_the_log_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tmp");
        let others = BTreeSet::new();
        let mut log = three_segments(dir.path(), &others, [1, 2, 3, 4, 5, 6]);
        let outcome = log.purge_to_raft_index(100, &others).expect("purge");
        assert_eq!((outcome.segments, outcome.first_kept_offset), (3, None));
        assert_eq!(log.segment_count(), 0);
        assert_eq!(log.end_offset(), None);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
        put(&mut log, 101, 500, 1);
        let (found, _) = log
            .batch_by_raft_index(101, &others)
            .expect("io")
            .expect("present");
        assert_eq!(found.loc.span.base_offset, 500);
    }
}
