//! The merge of per-partition streams into the cluster's global order (the read_committed
//! contract's reader recipe), with no I/O: the caller feeds it the records a consumer
//! delivered and the consumer's positions, and it says what may be emitted.
//!
//! Offsets are global sequence numbers (GSNs), unique across all partitions of all topics.
//! A consumer's position in a partition only grows, and every record of that partition
//! below its position has been delivered. So with `m` = the minimum position over all
//! assigned partitions, every record below `m` (of any partition) has been delivered:
//! the buffered records below `m`, in offset order, are a prefix of the global order that
//! nothing can later extend from below. Until every position is known, `m` is undefined
//! and nothing is emitted.
//!
//! A record that arrives below the watermark already emitted breaks that promise: it is
//! reported ([`Arrival::Late`]) and never emitted, so the output stays strictly
//! increasing. So is an offset that is already buffered ([`Arrival::Duplicate`]).

use std::collections::BTreeMap;

/// What happened to a record handed to [`Merger::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival<K> {
    /// Buffered until the watermark passes it.
    Buffered,
    /// Below the watermark already emitted: the order cannot hold it any more.
    Late {
        /// Every offset below this was emitted or declared absent.
        watermark: i64,
        /// The largest offset emitted so far, if any.
        last_emitted: Option<i64>,
    },
    /// Another partition's buffered record holds the same offset (offsets are unique).
    Duplicate { other: K },
    /// The same partition delivered this offset again (a re-fetch after the consumer was
    /// assigned again): already buffered, nothing to do.
    Redelivered,
}

/// Pauses and resumes that keep the buffer bounded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flow<K> {
    pub pause: Vec<K>,
    pub resume: Vec<K>,
}

#[derive(Debug, Default, Clone)]
struct PartitionState {
    position: Option<i64>,
    buffered: usize,
    paused: bool,
}

/// Buffers records per partition and emits them in global order. `K` names a partition
/// (e.g. `(topic, partition)`), `R` is the record the caller wants back.
#[derive(Debug)]
pub struct Merger<K, R> {
    partitions: BTreeMap<K, PartitionState>,
    pending: BTreeMap<i64, (K, R)>,
    /// Everything below this was emitted (or will never exist): the largest `m` used.
    watermark: Option<i64>,
    last_emitted: Option<i64>,
}

impl<K: Ord + Clone, R> Default for Merger<K, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Clone, R> Merger<K, R> {
    pub fn new() -> Self {
        Merger {
            partitions: BTreeMap::new(),
            pending: BTreeMap::new(),
            watermark: None,
            last_emitted: None,
        }
    }

    /// Adds a partition to the set read; its position is unknown until set, which keeps
    /// the watermark where it is. Adding one twice changes nothing.
    #[cfg(test)]
    pub fn assign(&mut self, partition: K) {
        self.partitions.entry(partition).or_default();
    }

    /// Adds a partition read from `start`: its position until the consumer knows better
    /// (nothing below `start` is wanted from it, so it cannot hold the others back).
    pub fn assign_at(&mut self, partition: K, start: i64) {
        self.partitions.entry(partition).or_default().position = Some(start);
    }

    pub fn is_assigned(&self, partition: &K) -> bool {
        self.partitions.contains_key(partition)
    }

    pub fn partitions(&self) -> impl Iterator<Item = &K> {
        self.partitions.keys()
    }

    /// Each assigned partition with its position as last set.
    pub fn positions(&self) -> impl Iterator<Item = (K, Option<i64>)> + '_ {
        self.partitions.iter().map(|(k, s)| (k.clone(), s.position))
    }

    /// The consumer's position in a partition (the next offset it will deliver), or None
    /// while the consumer does not know it (then the last known one stays: librdkafka
    /// knows a position only once it delivered something). Unassigned partitions are
    /// ignored.
    pub fn set_position(&mut self, partition: &K, position: Option<i64>) {
        if let (Some(state), Some(position)) = (self.partitions.get_mut(partition), position) {
            state.position = Some(position);
        }
    }

    /// A record the consumer delivered.
    pub fn push(&mut self, partition: K, offset: i64, record: R) -> Arrival<K> {
        if let Some(watermark) = self.watermark {
            if offset < watermark {
                return Arrival::Late {
                    watermark,
                    last_emitted: self.last_emitted,
                };
            }
        }
        if let Some((other, _)) = self.pending.get(&offset) {
            if *other == partition {
                return Arrival::Redelivered;
            }
            return Arrival::Duplicate {
                other: other.clone(),
            };
        }
        self.partitions
            .entry(partition.clone())
            .or_default()
            .buffered += 1;
        self.pending.insert(offset, (partition, record));
        Arrival::Buffered
    }

    /// m: the minimum position over the assigned partitions; None while any is unknown
    /// (or nothing is assigned).
    pub fn frontier(&self) -> Option<i64> {
        if self.partitions.is_empty() {
            return None;
        }
        self.partitions
            .values()
            .map(|s| s.position)
            .try_fold(i64::MAX, |m, p| p.map(|p| m.min(p)))
    }

    /// Removes and returns, in offset order, every buffered record below the frontier.
    pub fn drain_ready(&mut self) -> Vec<(K, i64, R)> {
        let Some(m) = self.frontier() else {
            return Vec::new();
        };
        // A position that went back (a seek) must not pull the watermark back.
        let m = self.watermark.map_or(m, |w| w.max(m));
        let rest = self.pending.split_off(&m);
        let ready = std::mem::replace(&mut self.pending, rest);
        let mut out = Vec::with_capacity(ready.len());
        for (offset, (partition, record)) in ready {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.buffered = state.buffered.saturating_sub(1);
            }
            self.last_emitted = Some(offset);
            out.push((partition, offset, record));
        }
        self.watermark = Some(m);
        out
    }

    /// Records buffered (waiting for the watermark).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// The watermark emitted so far (None before the first emit).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    pub fn last_emitted(&self) -> Option<i64> {
        self.last_emitted
    }

    /// Bounded memory: at `limit` buffered records, every partition holding buffered
    /// records is paused. Those are ahead of the watermark, waiting for a partition that
    /// lags or whose position is unknown; that partition holds nothing buffered (all its
    /// delivered records lie below its position, and after a drain below the frontier),
    /// so it keeps being fetched and the watermark can move. Once the buffer is down to
    /// half the limit every paused partition is resumed.
    pub fn flow(&mut self, limit: usize) -> Flow<K> {
        let mut flow = Flow {
            pause: Vec::new(),
            resume: Vec::new(),
        };
        let total = self.pending.len();
        for (partition, state) in self.partitions.iter_mut() {
            if total >= limit && state.buffered > 0 && !state.paused {
                state.paused = true;
                flow.pause.push(partition.clone());
            } else if total <= limit / 2 && state.paused {
                state.paused = false;
                flow.resume.push(partition.clone());
            }
        }
        flow
    }

    /// Partitions currently paused by [`Merger::flow`].
    #[cfg(test)]
    pub fn paused(&self) -> std::collections::BTreeSet<K> {
        self.partitions
            .iter()
            .filter(|(_, s)| s.paused)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type P = (&'static str, i32);
    const A0: P = ("a", 0);
    const A1: P = ("a", 1);
    const B0: P = ("b", 0);

    fn merger(parts: &[P]) -> Merger<P, &'static str> {
        let mut m = Merger::new();
        for p in parts {
            m.assign(*p);
        }
        m
    }

    fn offsets(out: &[(P, i64, &'static str)]) -> Vec<i64> {
        out.iter().map(|(_, o, _)| *o).collect()
    }

    #[test]
    fn emits_in_global_order_across_topics_below_the_minimum_position() {
        let mut m = merger(&[A0, A1, B0]);
        assert_eq!(m.push(A0, 5, "a5"), Arrival::Buffered);
        assert_eq!(m.push(B0, 2, "b2"), Arrival::Buffered);
        assert_eq!(m.push(A1, 3, "a3"), Arrival::Buffered);
        assert_eq!(m.push(B0, 7, "b7"), Arrival::Buffered);
        m.set_position(&A0, Some(6));
        m.set_position(&A1, Some(4));
        m.set_position(&B0, Some(8));
        let out = m.drain_ready();
        assert_eq!(offsets(&out), vec![2, 3]);
        assert_eq!(out[0].0, B0);
        assert_eq!(m.watermark(), Some(4));
        assert_eq!(m.buffered(), 2);
        // A1 moves on: 5 and 7 go.
        m.set_position(&A1, Some(9));
        assert_eq!(offsets(&m.drain_ready()), vec![5]);
        assert_eq!(m.watermark(), Some(6));
        m.set_position(&A0, Some(10));
        assert_eq!(offsets(&m.drain_ready()), vec![7]);
        assert_eq!(m.last_emitted(), Some(7));
    }

    #[test]
    fn a_partition_whose_position_is_unknown_holds_everything_back() {
        let mut m = merger(&[A0, A1]);
        m.push(A0, 1, "a1");
        m.set_position(&A0, Some(2));
        assert_eq!(m.frontier(), None);
        assert!(m.drain_ready().is_empty());
        assert_eq!(m.watermark(), None);
        // Once known (even without a record: a quiet partition's position moves to the
        // frontier), the record goes.
        m.set_position(&A1, Some(50));
        assert_eq!(offsets(&m.drain_ready()), vec![1]);
        assert_eq!(m.watermark(), Some(2));
    }

    #[test]
    fn a_lagging_partition_holds_the_others_until_it_catches_up() {
        let mut m = merger(&[A0, A1]);
        for o in [10, 11, 12, 13] {
            m.push(A0, o, "a0");
        }
        m.set_position(&A0, Some(14));
        m.set_position(&A1, Some(3)); // lagging: has delivered up to 2
        assert!(m.drain_ready().is_empty());
        assert_eq!(m.watermark(), Some(3));
        m.push(A1, 8, "a1");
        m.set_position(&A1, Some(12));
        assert_eq!(offsets(&m.drain_ready()), vec![8, 10, 11]);
        assert_eq!(m.watermark(), Some(12));
    }

    #[test]
    fn a_quiet_partition_advances_by_position_alone() {
        let mut m = merger(&[A0, B0]);
        m.push(A0, 100, "x");
        m.set_position(&A0, Some(101));
        m.set_position(&B0, Some(40)); // quiet: its position is the frontier it was given
        assert!(m.drain_ready().is_empty());
        m.set_position(&B0, Some(101));
        assert_eq!(offsets(&m.drain_ready()), vec![100]);
    }

    #[test]
    fn a_record_below_the_watermark_is_late_and_never_emitted() {
        let mut m = merger(&[A0, A1]);
        m.push(A0, 5, "a5");
        m.set_position(&A0, Some(6));
        m.set_position(&A1, Some(9));
        assert_eq!(offsets(&m.drain_ready()), vec![5]);
        // A1 claimed position 9, then delivers 4, below what was emitted: the contract
        // is broken.
        assert_eq!(
            m.push(A1, 4, "late"),
            Arrival::Late {
                watermark: 6,
                last_emitted: Some(5)
            }
        );
        // Also below the watermark but above everything emitted: still late.
        m.set_position(&A0, Some(20));
        m.drain_ready();
        assert_eq!(m.watermark(), Some(9));
        assert!(matches!(m.push(A0, 8, "x"), Arrival::Late { .. }));
        assert_eq!(m.buffered(), 0);
    }

    #[test]
    fn an_offset_buffered_twice_is_a_duplicate() {
        let mut m = merger(&[A0, B0]);
        m.push(A0, 5, "a5");
        assert_eq!(m.push(B0, 5, "b5"), Arrival::Duplicate { other: A0 });
        assert_eq!(m.buffered(), 1);
    }

    #[test]
    fn the_same_partition_delivering_a_buffered_offset_again_is_a_redelivery() {
        let mut m = merger(&[A0, B0]);
        m.push(A0, 5, "a5");
        assert_eq!(m.push(A0, 5, "a5 again"), Arrival::Redelivered);
        assert_eq!(m.buffered(), 1);
        m.set_position(&A0, Some(6));
        m.set_position(&B0, Some(6));
        let out = m.drain_ready();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].2, "a5");
    }

    #[test]
    fn a_position_going_back_does_not_lower_the_watermark() {
        let mut m = merger(&[A0]);
        m.push(A0, 5, "a5");
        m.set_position(&A0, Some(6));
        m.drain_ready();
        m.set_position(&A0, Some(2)); // a seek back
        assert!(m.drain_ready().is_empty());
        assert_eq!(m.watermark(), Some(6));
        assert!(matches!(m.push(A0, 5, "again"), Arrival::Late { .. }));
    }

    #[test]
    fn a_partition_added_later_holds_emission_until_its_position_is_known() {
        let mut m = merger(&[A0]);
        m.push(A0, 3, "a3");
        m.set_position(&A0, Some(4));
        m.assign(A1);
        assert!(m.drain_ready().is_empty());
        m.set_position(&A1, Some(4));
        assert_eq!(offsets(&m.drain_ready()), vec![3]);
    }

    #[test]
    fn flow_pauses_the_partitions_ahead_and_resumes_at_half_the_limit() {
        let mut m = merger(&[A0, A1, B0]);
        for o in 10..14 {
            m.push(A0, o, "a0");
        }
        m.push(B0, 20, "b0");
        m.set_position(&A0, Some(14));
        m.set_position(&B0, Some(21));
        m.set_position(&A1, Some(2)); // the laggard
        m.drain_ready();
        let flow = m.flow(5);
        assert_eq!(flow.pause, vec![A0, B0]);
        assert!(flow.resume.is_empty());
        assert_eq!(m.paused().into_iter().collect::<Vec<_>>(), vec![A0, B0]);
        // Nothing changes while the buffer stays full.
        assert_eq!(m.flow(5), Flow::default());
        // The laggard catches up: 10..13 go, 1 record left <= 5/2.
        m.set_position(&A1, Some(15));
        assert_eq!(offsets(&m.drain_ready()), vec![10, 11, 12, 13]);
        let flow = m.flow(5);
        assert_eq!(flow.resume, vec![A0, B0]);
        assert!(m.paused().is_empty());
    }

    #[test]
    fn a_start_offset_stands_for_the_position_until_one_is_known() {
        let mut m = merger(&[A0]);
        m.assign_at(B0, 50); // e.g. read from the end: nothing below 50 is wanted from it
        m.push(A0, 10, "a");
        m.push(A0, 60, "b");
        m.set_position(&A0, Some(61));
        m.set_position(&B0, None); // the consumer does not know it yet: 50 stays
        assert_eq!(offsets(&m.drain_ready()), vec![10]);
        m.set_position(&B0, Some(70));
        assert_eq!(offsets(&m.drain_ready()), vec![60]);
    }

    #[test]
    fn nothing_assigned_means_no_frontier() {
        let mut m: Merger<P, ()> = Merger::new();
        assert_eq!(m.frontier(), None);
        assert!(m.drain_ready().is_empty());
    }
}
