//! Idempotent-producer state of one partition, and Kafka's sequence rules (KIP-98), without
//! I/O: per producer id its epoch and the metadata of its last 5 batches.
//!
//! The rules (Kafka's `ProducerAppendInfo` / `ProducerStateEntry`, 3.x and 4.x):
//! * a batch whose epoch and first/last sequence equal a cached batch's is a duplicate: it is
//!   not written again and is answered with the cached batch's base offset;
//! * an epoch older than the producer's → INVALID_PRODUCER_EPOCH;
//! * a newer epoch must start at sequence 0 → else OUT_OF_ORDER_SEQUENCE_NUMBER;
//! * the same epoch must continue at last sequence + 1 (after i32::MAX comes 0) → else
//!   OUT_OF_ORDER_SEQUENCE_NUMBER (also for a retry older than the 5 cached batches);
//! * an unknown producer id is accepted at any sequence (Kafka does so since KIP-360: the
//!   producer's batches may have been removed by retention).
//!
//! The table is rebuilt from the batch headers in the log (`replay`), so leader, followers and
//! a restarted broker derive the same state from the same log.

use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer (Kafka's NUM_BATCHES_TO_RETAIN = max.in.flight of 5).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producers remembered per partition. When full, the least recently active eighth is
/// forgotten (their next batch is then accepted as from an unknown producer).
pub const MAX_PRODUCERS: usize = 10_000;

/// The producer fields of a batch that has not been given offsets yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl Incoming {
    /// From a batch header's producer id, epoch, base sequence and lastOffsetDelta.
    pub fn new(producer_id: i64, epoch: i16, base_sequence: i32, last_offset_delta: i32) -> Self {
        Self {
            producer_id,
            epoch,
            first_seq: base_sequence,
            last_seq: last_sequence(base_sequence, last_offset_delta),
        }
    }
}

/// What is remembered of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// One stored batch of a producer, as replayed from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub incoming: Incoming,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Max timestamp of the producer's newest batch (decides who is forgotten first).
    last_timestamp: i64,
}

impl ProducerEntry {
    pub fn empty(epoch: i16) -> Self {
        Self {
            epoch,
            batches: VecDeque::with_capacity(BATCHES_PER_PRODUCER),
            last_timestamp: i64::MIN,
        }
    }

    /// Kafka's addBatch: a new epoch forgets the old epoch's batches; at most 5 are kept.
    pub fn add(&mut self, epoch: i16, meta: BatchMeta, timestamp: i64) {
        if epoch != self.epoch {
            self.batches.clear();
            self.epoch = epoch;
        }
        if self.batches.len() == BATCHES_PER_PRODUCER {
            self.batches.pop_front();
        }
        self.batches.push_back(meta);
        self.last_timestamp = timestamp;
    }

    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    fn duplicate_of(&self, b: &Incoming) -> Option<BatchMeta> {
        if b.epoch != self.epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|m| m.first_seq == b.first_seq && m.last_seq == b.last_seq)
            .copied()
    }
}

/// How an incoming batch is to be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Already appended: answer with this batch's offsets, write nothing.
    Duplicate(BatchMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "producer {producer_id} epoch {epoch}: sequence {first_seq} does not follow {expected_after:?}"
    )]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        /// The last sequence the batch should follow (None: a new epoch must start at 0).
        expected_after: Option<i32>,
    },
}

/// Sequence of the last record of a batch starting at `first` (wraps after i32::MAX to 0).
pub fn last_sequence(first: i32, last_offset_delta: i32) -> i32 {
    let delta = last_offset_delta.max(0);
    if first > i32::MAX - delta {
        delta - (i32::MAX - first) - 1
    } else {
        first + delta
    }
}

fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// Checks `b` against the producer's entry (None: an unknown producer).
pub fn check(entry: Option<&ProducerEntry>, b: &Incoming) -> Result<Verdict, SequenceError> {
    let Some(entry) = entry else {
        return Ok(Verdict::Append);
    };
    if let Some(meta) = entry.duplicate_of(b) {
        return Ok(Verdict::Duplicate(meta));
    }
    if b.epoch < entry.epoch {
        return Err(SequenceError::InvalidEpoch {
            producer_id: b.producer_id,
            epoch: b.epoch,
            current: entry.epoch,
        });
    }
    let out_of_order = |expected_after| SequenceError::OutOfOrder {
        producer_id: b.producer_id,
        epoch: b.epoch,
        first_seq: b.first_seq,
        expected_after,
    };
    if b.epoch != entry.epoch {
        return if b.first_seq == 0 {
            Ok(Verdict::Append)
        } else {
            Err(out_of_order(None))
        };
    }
    match entry.last_seq() {
        Some(last) if !in_sequence(last, b.first_seq) => Err(out_of_order(Some(last))),
        _ => Ok(Verdict::Append),
    }
}

/// The producers of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerTable {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Records a stored batch without checking it (the log is the truth: the leader checked
    /// it before it was stored). Batches without a producer id are ignored.
    pub fn replay(&mut self, b: &StoredBatch) {
        if b.incoming.producer_id < 0 {
            return;
        }
        if !self.producers.contains_key(&b.incoming.producer_id)
            && self.producers.len() >= MAX_PRODUCERS
        {
            self.forget_least_recent();
        }
        let entry = self
            .producers
            .entry(b.incoming.producer_id)
            .or_insert_with(|| ProducerEntry::empty(b.incoming.epoch));
        entry.add(
            b.incoming.epoch,
            BatchMeta {
                first_seq: b.incoming.first_seq,
                last_seq: b.incoming.last_seq,
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            },
            b.max_timestamp,
        );
    }

    /// Forgets the least recently active eighth of the producers (ties broken by id, so every
    /// replica forgets the same ones).
    fn forget_least_recent(&mut self) {
        let mut by_age: Vec<(i64, i64)> = self
            .producers
            .iter()
            .map(|(id, e)| (e.last_timestamp, *id))
            .collect();
        let n = (by_age.len() / 8).max(1);
        by_age.select_nth_unstable(n - 1);
        for (_, id) in &by_age[..n] {
            self.producers.remove(id);
        }
    }
}

/// The appender's view: the log's table plus the batches it stamped that are not in the log
/// yet (up to 5 per producer are in flight before the first is stored). Valid for one Raft
/// term; a new term starts from the log again.
#[derive(Debug, Default)]
pub struct PendingView {
    /// Per producer: its entry including pending batches, and the base offset of its newest
    /// pending batch.
    pending: HashMap<i64, (ProducerEntry, i64)>,
}

impl PendingView {
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Forgets producers whose pending batches are all in the log (below `log_end`): the
    /// log's table holds them now.
    pub fn prune(&mut self, log_end: i64) {
        self.pending.retain(|_, (_, newest)| *newest >= log_end);
    }

    /// The producer's entry as the appender sees it: pending batches over the log's entry.
    pub fn entry<'a>(
        &'a self,
        producer_id: i64,
        logged: Option<&'a ProducerEntry>,
    ) -> Option<&'a ProducerEntry> {
        self.pending.get(&producer_id).map(|(e, _)| e).or(logged)
    }

    /// Notes a batch the appender stamped with `base_offset` and handed to Raft.
    pub fn stamped(
        &mut self,
        b: &Incoming,
        logged: Option<&ProducerEntry>,
        base_offset: i64,
        last_offset: i64,
        timestamp: i64,
    ) {
        let slot = self.pending.entry(b.producer_id).or_insert_with(|| {
            let entry = logged
                .cloned()
                .unwrap_or_else(|| ProducerEntry::empty(b.epoch));
            (entry, base_offset)
        });
        slot.0.add(
            b.epoch,
            BatchMeta {
                first_seq: b.first_seq,
                last_seq: b.last_seq,
                base_offset,
                last_offset,
            },
            timestamp,
        );
        slot.1 = base_offset;
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i64 = 7;

    fn inc(epoch: i16, first: i32, count: i32) -> Incoming {
        Incoming::new(PID, epoch, first, count - 1)
    }

    fn stored(epoch: i16, first: i32, count: i32, base: i64) -> StoredBatch {
        StoredBatch {
            incoming: inc(epoch, first, count),
            base_offset: base,
            last_offset: base + i64::from(count) - 1,
            max_timestamp: base,
        }
    }

    fn table(batches: &[StoredBatch]) -> ProducerTable {
        let mut t = ProducerTable::default();
        for b in batches {
            t.replay(b);
        }
        t
    }

    #[test]
    fn duplicates_within_the_window_of_five_keep_their_offsets() {
        let batches: Vec<StoredBatch> = (0..7)
            .map(|i| stored(0, i * 10, 10, 1000 + i64::from(i) * 100))
            .collect();
        let t = table(&batches);
        let e = t.get(PID);
        // The last five (sequences 20..70) are remembered.
        for (i, b) in batches.iter().enumerate().skip(2) {
            assert_eq!(
                check(e, &b.incoming),
                Ok(Verdict::Duplicate(BatchMeta {
                    first_seq: b.incoming.first_seq,
                    last_seq: b.incoming.last_seq,
                    base_offset: 1000 + i as i64 * 100,
                    last_offset: 1000 + i as i64 * 100 + 9,
                }))
            );
        }
        // Older than the window: out of order (Kafka: the retry is too old to recognise).
        assert!(matches!(
            check(e, &batches[1].incoming),
            Err(SequenceError::OutOfOrder { .. })
        ));
        // The next batch continues; a partial overlap is not a duplicate.
        assert_eq!(check(e, &inc(0, 70, 3)), Ok(Verdict::Append));
        assert!(matches!(
            check(e, &inc(0, 60, 5)),
            Err(SequenceError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn gaps_and_reordering_are_out_of_order() {
        let t = table(&[stored(0, 0, 5, 10)]);
        let e = t.get(PID);
        assert_eq!(
            check(e, &inc(0, 6, 1)),
            Err(SequenceError::OutOfOrder {
                producer_id: PID,
                epoch: 0,
                first_seq: 6,
                expected_after: Some(4),
            })
        );
        assert!(check(e, &inc(0, 3, 1)).is_err());
        assert_eq!(check(e, &inc(0, 5, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn epochs_fence_old_producers_and_new_epochs_start_at_zero() {
        let t = table(&[stored(3, 0, 5, 10)]);
        let e = t.get(PID);
        assert_eq!(
            check(e, &inc(2, 5, 1)),
            Err(SequenceError::InvalidEpoch {
                producer_id: PID,
                epoch: 2,
                current: 3,
            })
        );
        assert_eq!(check(e, &inc(4, 0, 1)), Ok(Verdict::Append));
        assert!(matches!(
            check(e, &inc(4, 5, 1)),
            Err(SequenceError::OutOfOrder {
                expected_after: None,
                ..
            })
        ));
        // A duplicate of an old-epoch batch is no duplicate once the epoch moved on.
        let t = table(&[stored(3, 0, 5, 10), stored(4, 0, 1, 20)]);
        assert!(matches!(
            check(t.get(PID), &inc(3, 0, 5)),
            Err(SequenceError::InvalidEpoch { .. })
        ));
    }

    #[test]
    fn unknown_producers_are_accepted_at_any_sequence() {
        let t = ProducerTable::default();
        assert_eq!(check(t.get(PID), &inc(0, 0, 1)), Ok(Verdict::Append));
        assert_eq!(check(t.get(PID), &inc(5, 1234, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 2), 0);
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 3), 2);
        let t = table(&[stored(0, i32::MAX - 4, 5, 10)]);
        assert_eq!(t.get(PID).and_then(ProducerEntry::last_seq), Some(i32::MAX));
        assert_eq!(check(t.get(PID), &inc(0, 0, 3)), Ok(Verdict::Append));
        assert!(check(t.get(PID), &inc(0, 1, 3)).is_err());
        // A batch that wraps inside itself is found again as a duplicate.
        let t = table(&[stored(0, i32::MAX - 1, 4, 10)]);
        assert_eq!(t.get(PID).and_then(ProducerEntry::last_seq), Some(1));
        assert!(matches!(
            check(t.get(PID), &inc(0, i32::MAX - 1, 4)),
            Ok(Verdict::Duplicate(m)) if m.base_offset == 10
        ));
        assert_eq!(check(t.get(PID), &inc(0, 2, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn rebuilding_from_headers_gives_the_same_table() {
        let mut log = Vec::new();
        let mut live = ProducerTable::default();
        let mut offset = 100;
        for (pid, epoch, first, count) in [
            (1, 0, 0, 3),
            (2, 0, 0, 1),
            (1, 0, 3, 2),
            (-1, -1, -1, 4),
            (2, 1, 0, 2),
            (1, 0, 5, 1),
        ] {
            let b = StoredBatch {
                incoming: Incoming::new(pid, epoch, first, count - 1),
                base_offset: offset,
                last_offset: offset + i64::from(count) - 1,
                max_timestamp: offset,
            };
            if pid >= 0 {
                let e = live.get(pid);
                assert_eq!(check(e, &b.incoming), Ok(Verdict::Append));
            }
            live.replay(&b);
            log.push(b);
            offset += 50;
        }
        let rebuilt = table(&log);
        assert_eq!(rebuilt, live);
        assert_eq!(rebuilt.len(), 2);
        assert_eq!(rebuilt.get(2).map(|e| e.epoch), Some(1));
        assert_eq!(rebuilt.get(1).and_then(ProducerEntry::last_seq), Some(5));
        assert!(matches!(
            check(rebuilt.get(1), &Incoming::new(1, 0, 3, 1)),
            Ok(Verdict::Duplicate(m)) if m.base_offset == 200
        ));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = ProducerTable::default();
        for pid in 0..(MAX_PRODUCERS as i64 + 10) {
            t.replay(&StoredBatch {
                incoming: Incoming::new(pid, 0, 0, 0),
                base_offset: pid,
                last_offset: pid,
                max_timestamp: pid,
            });
        }
        assert!(t.len() <= MAX_PRODUCERS);
        // The least recently active were forgotten, the newest kept.
        assert!(t.get(0).is_none());
        assert!(t.get(MAX_PRODUCERS as i64 + 9).is_some());
    }

    #[test]
    fn pending_batches_count_until_they_are_in_the_log() {
        let logged = table(&[stored(0, 0, 2, 10)]);
        let mut view = PendingView::default();
        // Five in flight: each must follow the previous one, not the log's last.
        let mut base = 20;
        for i in 0..5 {
            let b = inc(0, 2 + i * 2, 2);
            let e = view.entry(PID, logged.get(PID));
            assert_eq!(check(e, &b), Ok(Verdict::Append), "batch {i}");
            view.stamped(&b, logged.get(PID), base, base + 1, 0);
            base += 10;
        }
        // A retry of an in-flight batch is a duplicate with its stamped offset.
        let e = view.entry(PID, logged.get(PID));
        assert!(
            matches!(check(e, &inc(0, 4, 2)), Ok(Verdict::Duplicate(m)) if m.base_offset == 30)
        );
        // Once the log holds them, the view gives way to the log's table.
        view.prune(1000);
        assert!(view.is_empty());
        view.prune(0);
        assert_eq!(view.len(), 0);
    }
}
