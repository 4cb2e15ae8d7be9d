//! openraft log storage over the partition's segment log.
//!
//! Entries that carry a batch go to the segment files (written once, read back by fetch);
//! blank and membership entries go to RocksDB. Appends are written to the page cache at
//! once and made durable by a per-partition flusher task that fsyncs once for every group of
//! appends queued behind it (group commit), then reports them persisted in order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend,
    RaftLogReader, StorageIOError, Vote,
};
use tokio::sync::mpsc;

use super::{BatchEntry, Entry, LogId, StorageError, TypeConfig};
use crate::config::{FlushPolicy, LogConfig};
use crate::producer_state::ProducerTable;
use crate::storage::batch;
use crate::storage::log::{stored_producer_batch, PartitionLog};
use crate::storage::meta::MetaStore;

/// Most appends waiting for one fsync; more wait for the next.
const FLUSH_QUEUE: usize = 1024;

/// Log state shared by the Raft log store and the fetch path.
pub struct LogShared {
    pub log: PartitionLog,
    /// Idempotent producers as the log says (replayed from every stored batch; see
    /// `producer_state`). The appender checks produce requests against it.
    pub producers: ProducerTable,
    others: BTreeMap<u64, Entry>,
    other_indexes: BTreeSet<u64>,
    last_purged: Option<LogId>,
    last_log_id: Option<LogId>,
    /// Kafka's log start offset: 0 until something is deleted, then the first offset a
    /// consumer may read. Persisted (RocksDB, synced) whenever it moves.
    log_start: i64,
    /// Segments and bytes deleted by purges since the last `take_deleted`.
    deleted: (u64, u64),
}

impl LogShared {
    pub fn log_start(&self) -> i64 {
        self.log_start
    }

    /// Segments and bytes deleted since the last call (for the metrics).
    pub fn take_deleted(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.deleted)
    }

    /// The Raft log id of entry `index`, if this log holds it.
    pub fn log_id_at(&self, index: u64, node_id: u64) -> io::Result<Option<LogId>> {
        if let Some(e) = self.others.get(&index) {
            return Ok(Some(e.log_id));
        }
        Ok(self
            .log
            .batch_by_raft_index(index, &self.other_indexes)?
            .map(|(found, _)| {
                LogId::new(
                    CommittedLeaderId::new(found.loc.span.leader_epoch.max(0) as u64, node_id),
                    index,
                )
            }))
    }
}

/// Raises the log start offset of `group` to `offset` (never lowers it) and persists it.
pub fn raise_log_start(
    meta: &MetaStore,
    group: &str,
    shared: &mut LogShared,
    offset: i64,
) -> Result<(), StorageError> {
    if offset > shared.log_start {
        meta.put_raft(group, "log_start", &offset, true)
            .map_err(io_err)?;
        shared.log_start = offset;
    }
    Ok(())
}

pub type SharedLog = Arc<RwLock<LogShared>>;

/// Told the term of every vote before it is persisted (and so before Raft acts on it): the
/// frontier must know when a replica may have voted for a newer leader.
pub type VoteHook = Arc<dyn Fn(u64) + Send + Sync>;

struct FlushJob {
    file: Option<Arc<File>>,
    callback: LogFlushed<TypeConfig>,
}

#[derive(Clone)]
pub struct LogStore {
    group: String,
    node_id: u64,
    meta: Arc<MetaStore>,
    shared: SharedLog,
    flusher: mpsc::Sender<FlushJob>,
    vote_hook: Option<VoteHook>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

/// Truncation and purge remove entries: their errors say so (the replica's offline reason).
fn delete_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, AnyError::new(&e)).into()
}

fn lock_err() -> StorageError {
    io_err(io::Error::other("partition log lock poisoned"))
}

impl LogStore {
    /// Opens the log of Raft group `group` stored in `dir`, recovering from any crash.
    pub fn open(
        group: &str,
        node_id: u64,
        dir: &std::path::Path,
        config: LogConfig,
        meta: Arc<MetaStore>,
    ) -> Result<Self, StorageError> {
        let others: BTreeMap<u64, Entry> = meta
            .raft_entries::<Entry>(group)
            .map_err(read_err)?
            .into_iter()
            .map(|e| (e.log_id.index, e))
            .collect();
        let other_indexes: BTreeSet<u64> = others.keys().copied().collect();
        let log = PartitionLog::open(dir, config, &other_indexes).map_err(read_err)?;
        let last_purged: Option<LogId> = meta.get_raft(group, "purged").map_err(read_err)?;
        let mut producers = ProducerTable::default();
        log.replay_producers(&mut producers).map_err(read_err)?;
        let log_start: i64 = meta
            .get_raft(group, "log_start")
            .map_err(read_err)?
            .unwrap_or(0);
        let mut shared = LogShared {
            log,
            producers,
            others,
            other_indexes,
            last_purged,
            last_log_id: None,
            log_start,
            deleted: (0, 0),
        };
        // Non-batch entries past the end of the recovered log were written after batches that
        // a crash tore off; they are not part of the log any more.
        let end = contiguous_end(&shared, node_id);
        forget_others(&meta, group, &mut shared, end.map_or(0, |l| l.index + 1)..)?;
        shared.last_log_id = end.or(shared.last_purged);
        // A crash between storing a snapshot and purging the log it covers: openraft purges
        // only after building a newer snapshot, so finish that purge here.
        let snapshot =
            super::state_machine::stored_snapshot_last_log_id(&meta, group).map_err(read_err)?;
        if let Some(snap) = snapshot.filter(|s| Some(*s) > shared.last_purged) {
            purge_shared(&meta, group, &mut shared, snap)?;
        }
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE);
        let active = shared.log.active_file();
        let shared = Arc::new(RwLock::new(shared));
        tokio::spawn(run_flusher(
            rx,
            config.flush_policy,
            config.flush_interval,
            active,
            Arc::downgrade(&shared),
        ));
        Ok(Self {
            group: group.to_string(),
            node_id,
            meta,
            shared,
            flusher: tx,
            vote_hook: None,
        })
    }

    /// Calls `hook` with the term of every vote before it is saved.
    pub fn with_vote_hook(mut self, hook: VoteHook) -> Self {
        self.vote_hook = Some(hook);
        self
    }

    /// The term of the persisted vote (0: none).
    pub fn persisted_vote_term(&self) -> Result<u64, StorageError> {
        let vote: Option<Vote<u64>> = self
            .meta
            .get_raft(&self.group, "vote")
            .map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(vote.map_or(0, |v| v.leader_id().term))
    }

    pub fn shared(&self) -> SharedLog {
        Arc::clone(&self.shared)
    }

    fn log_id(&self, term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, self.node_id), index)
    }
}

/// The last log id of the gap-free run of entries starting at the earliest known entry.
fn contiguous_end(shared: &LogShared, node_id: u64) -> Option<LogId> {
    let last_batch = shared.log.last_batch();
    let mut candidates: Vec<LogId> = Vec::new();
    if let Some(b) = last_batch {
        candidates.push(LogId::new(
            CommittedLeaderId::new(b.loc.span.leader_epoch.max(0) as u64, node_id),
            b.raft_index,
        ));
    }
    // Non-batch entries directly following the last batch (or forming the whole log) extend it.
    let mut next = last_batch.map(|b| b.raft_index + 1);
    if next.is_none() {
        next = shared.other_indexes.iter().next().copied();
    }
    if let Some(mut idx) = next {
        while let Some(e) = shared.others.get(&idx) {
            candidates.push(e.log_id);
            idx += 1;
        }
    }
    candidates.into_iter().max_by_key(|l| l.index)
}

/// Syncs appended data and reports it persisted, one fsync per group of queued appends.
/// A failed sync, or an active segment deleted underneath, is reported to Raft as an error
/// (which stops the replica's Raft node: see `storage::health`).
async fn run_flusher(
    mut rx: mpsc::Receiver<FlushJob>,
    policy: FlushPolicy,
    interval: Duration,
    mut last_file: Option<Arc<File>>,
    shared: Weak<RwLock<LogShared>>,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        let first = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => break },
            _ = ticker.tick(), if policy == FlushPolicy::Interval => {
                if let Some(f) = last_file.clone() {
                    let _ = tokio::task::spawn_blocking(move || f.sync_data()).await;
                }
                continue;
            }
        };
        let mut jobs = vec![first];
        while jobs.len() < FLUSH_QUEUE {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for f in jobs.iter().filter_map(|j| j.file.clone()) {
            if !files.iter().any(|g| Arc::ptr_eq(g, &f)) {
                files.push(f);
            }
        }
        let newest = files.last().cloned();
        if let Some(f) = &newest {
            last_file = Some(Arc::clone(f));
        }
        let result = if policy == FlushPolicy::Always && !files.is_empty() {
            match tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
                .await
            {
                Ok(r) => r,
                Err(join) => Err(io::Error::other(join.to_string())),
            }
        } else {
            Ok(())
        };
        let result = result.and_then(|()| match &newest {
            Some(f) => check_not_deleted(f, &shared),
            None => Ok(()),
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "flush of partition log failed");
        }
        for job in jobs {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            job.callback.log_io_completed(r);
        }
    }
}

/// Fails when `file`, the segment the newest append went to, was deleted while it is still
/// the active segment: the partition's directory was removed underneath the broker. Writes
/// to the open file would go on succeeding into an unlinked inode that no restart can read,
/// and nothing else notices until the next roll. Rolled segments may be deleted (retention)
/// or replaced (the cleaner): only the active one counts.
fn check_not_deleted(file: &Arc<File>, shared: &Weak<RwLock<LogShared>>) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if file.metadata()?.nlink() > 0 {
        return Ok(());
    }
    let Some(shared) = shared.upgrade() else {
        return Ok(());
    };
    let active = shared.read().ok().and_then(|s| s.log.active_file());
    if active.is_some_and(|a| Arc::ptr_eq(&a, file)) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the active segment file was deleted while in use (No such file or directory)",
        ));
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let shared = self.shared.read().map_err(|_| lock_err())?;
        let Some(last) = shared.last_log_id else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => (*e).min(last.index),
            Bound::Excluded(e) => e.saturating_sub(1).min(last.index),
            Bound::Unbounded => last.index,
        };
        if matches!(range.end_bound(), Bound::Excluded(0)) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for idx in start..=end {
            if let Some(e) = shared.others.get(&idx) {
                out.push(e.clone());
                continue;
            }
            match shared
                .log
                .batch_by_raft_index(idx, &shared.other_indexes)
                .map_err(read_err)?
            {
                Some((found, bytes)) => out.push(Entry {
                    log_id: self.log_id(found.loc.span.leader_epoch.max(0) as u64, idx),
                    payload: EntryPayload::Normal(BatchEntry {
                        batch: bytes,
                        appended: None,
                        // Read back from our own log, which only holds verified batches.
                        verified: true,
                    }),
                }),
                // Purged or never written: entries must be returned without holes.
                None if out.is_empty() => continue,
                None => break,
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let shared = self.shared.read().map_err(|_| lock_err())?;
        Ok(LogState {
            last_purged_log_id: shared.last_purged,
            last_log_id: shared.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        if let Some(hook) = &self.vote_hook {
            hook(vote.leader_id().term);
        }
        self.meta
            .put_raft(&self.group, "vote", vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.meta
            .get_raft(&self.group, "vote")
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.meta
            .put_raft(&self.group, "committed", &committed, false)
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .meta
            .get_raft::<Option<LogId>>(&self.group, "committed")
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let file = {
            let mut shared = self.shared.write().map_err(|_| lock_err())?;
            let mut file = None;
            for entry in entries {
                let log_id = entry.log_id;
                match &entry.payload {
                    EntryPayload::Normal(data) => {
                        let shared = &mut *shared;
                        let (f, stored) = append_batch(&mut shared.log, log_id, data)?;
                        file = Some(f);
                        let intact = stored.is_none();
                        note_producer(
                            &mut shared.producers,
                            stored.as_deref().unwrap_or(&data.batch),
                        );
                        if let Some(signal) = &data.appended {
                            signal.fire(intact);
                        }
                    }
                    EntryPayload::Blank | EntryPayload::Membership(_) => {
                        self.meta
                            .put_raft_entry(&self.group, log_id.index, &entry)
                            .map_err(io_err)?;
                        shared.other_indexes.insert(log_id.index);
                        shared.others.insert(log_id.index, entry);
                    }
                }
                shared.last_log_id = Some(log_id);
            }
            file
        };
        self.flusher
            .send(FlushJob { file, callback })
            .await
            .map_err(|_| io_err(io::Error::other("partition flusher stopped")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut shared = self.shared.write().map_err(|_| lock_err())?;
        forget_others(&self.meta, &self.group, &mut shared, log_id.index..)?;
        let others = shared.other_indexes.clone();
        shared
            .log
            .truncate_from_raft_index(log_id.index, &others)
            .map_err(delete_err)?;
        // The removed tail may have held producers' latest batches: derive the table again.
        let shared_ref = &mut *shared;
        shared_ref.producers = ProducerTable::default();
        shared_ref
            .log
            .replay_producers(&mut shared_ref.producers)
            .map_err(read_err)?;
        let end = contiguous_end(&shared, self.node_id);
        shared.last_log_id = end.or(shared.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Raft purges only what a snapshot covers (retention or DeleteRecords built it, or a
        // leader sent it): the batches up to `log_id` go with their segments. The purge point
        // is stored first, so a crash in between leaves files that the next purge (openraft
        // repeats it at start) or open removes, never a log that claims purged entries.
        let mut shared = self.shared.write().map_err(|_| lock_err())?;
        purge_shared(&self.meta, &self.group, &mut shared, log_id)
    }
}

/// Deletes every entry up to `log_id` (see `purge`).
fn purge_shared(
    meta: &MetaStore,
    group: &str,
    shared: &mut LogShared,
    log_id: LogId,
) -> Result<(), StorageError> {
    meta.put_raft(group, "purged", &log_id, true)
        .map_err(io_err)?;
    let others = shared.other_indexes.clone();
    let outcome = shared
        .log
        .purge_to_raft_index(log_id.index, &others)
        .map_err(delete_err)?;
    shared.deleted.0 += outcome.segments;
    shared.deleted.1 += outcome.bytes;
    // An emptied log takes its start from the snapshot (state machine install).
    if let Some(start) = outcome.first_kept_offset {
        raise_log_start(meta, group, shared, start)?;
    }
    tracing::info!(
        group = %group,
        upto = log_id.index,
        segments = outcome.segments,
        bytes = outcome.bytes,
        log_start = shared.log_start,
        "purged partition log"
    );
    forget_others(meta, group, shared, ..=log_id.index)?;
    shared.last_purged = Some(log_id);
    if shared.last_log_id.is_none_or(|l| l.index < log_id.index) {
        shared.last_log_id = Some(log_id);
    }
    Ok(())
}

/// Deletes the non-batch entries with indexes in `range`, from RocksDB and from memory.
fn forget_others(
    meta: &MetaStore,
    group: &str,
    shared: &mut LogShared,
    range: impl RangeBounds<u64>,
) -> Result<(), StorageError> {
    let doomed: Vec<u64> = shared.other_indexes.range(range).copied().collect();
    for idx in doomed {
        meta.delete_raft_entry(group, idx).map_err(io_err)?;
        shared.others.remove(&idx);
        shared.other_indexes.remove(&idx);
    }
    Ok(())
}

/// Records a stored batch's producer fields in the table.
fn note_producer(table: &mut ProducerTable, data: &[u8]) {
    if let Ok(span) = batch::read_span(data) {
        if let Some(stored) = stored_producer_batch(data, span) {
            table.replay(&stored);
        }
    }
}

/// Stores one batch entry. Returns the segment file written and, when the batch had to be
/// voided (its numbers were taken in another term than the entry's), the bytes stored
/// instead of it.
fn append_batch(
    log: &mut PartitionLog,
    log_id: LogId,
    data: &BatchEntry,
) -> Result<(Arc<File>, Option<Vec<u8>>), StorageError> {
    let bad = |e: batch::BatchError| io_err(io::Error::other(e));
    // The leader's own entries come from its produce path, which verified CRC and records;
    // entries received from a leader are checked again before they touch the log.
    let header = if data.verified {
        batch::parse_header(&data.batch)
    } else {
        batch::verify_stored(&data.batch)
    }
    .map_err(bad)?;
    let term = log_id.leader_id.term;
    let reserved = u64::try_from(header.span.leader_epoch).unwrap_or(0);
    let voided = if frontier::stale_reservation(reserved, term) {
        tracing::warn!(
            raft_index = log_id.index,
            base_offset = header.span.base_offset,
            reserved_term = reserved,
            entry_term = term,
            "batch numbered in another term is stored without its records"
        );
        Some(batch::voided(&data.batch).map_err(bad)?)
    } else {
        None
    };
    let (bytes, header) = match &voided {
        Some(v) => (v.as_slice(), batch::parse_header(v).map_err(bad)?),
        None => (&data.batch[..], header),
    };
    let mut span = header.span;
    span.leader_epoch = i32::try_from(term).unwrap_or(i32::MAX);
    let file = log
        .append(log_id.index, bytes, span, header.max_timestamp, now_ms())
        .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
    Ok((file, voided))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state_machine::{SnapshotData, StateMachineStore};
    use crate::storage::batch::tests::make_batch;
    use openraft::storage::RaftStateMachine;
    use openraft::SnapshotMeta;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 200,
            index_interval_bytes: 100,
            ..LogConfig::default()
        }
    }

    /// One-record batches at offsets 0, 10, 20, ... as Raft entries `rafts` (term 1); two
    /// per segment.
    fn fill(store: &LogStore, rafts: &[u64]) {
        let mut shared = store.shared.write().expect("lock");
        for (i, raft) in rafts.iter().enumerate() {
            let base = i as i64 * 10;
            let mut b = make_batch(0, 1, base);
            batch::stamp(&mut b, base, 1);
            let h = batch::parse_and_verify(&b).expect("valid");
            shared
                .log
                .append(*raft, &b, h.span, h.max_timestamp, 0)
                .expect("append");
            shared.last_log_id = Some(store.log_id(1, *raft));
        }
    }

    fn open(dir: &std::path::Path, meta: &Arc<MetaStore>) -> LogStore {
        LogStore::open("g", 1, &dir.join("p"), config(), Arc::clone(meta)).expect("open")
    }

    #[tokio::test]
    async fn a_batch_numbered_in_another_term_is_stored_without_its_records() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&tmp.path().join("meta")).expect("meta"));
        let store = open(tmp.path(), &meta);
        let mut shared = store.shared.write().expect("lock");
        let entry = |reserved_term: i32, base: i64| {
            let mut b = make_batch(0, 3, 7);
            b[43..51].copy_from_slice(&9i64.to_be_bytes()); // a producer id
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            batch::stamp(&mut b, base, reserved_term);
            BatchEntry {
                batch: bytes::Bytes::from(b),
                appended: None,
                verified: true,
            }
        };
        // Numbers taken in term 4, entry of term 4: stored as sent.
        let (_, voided) =
            append_batch(&mut shared.log, store.log_id(4, 1), &entry(4, 100)).expect("append");
        assert!(voided.is_none());
        // Numbers taken in term 4, but Raft stored the entry in term 5: no records, no
        // producer, offsets kept (readers skip it; the producer was told NOT_LEADER).
        let (_, voided) =
            append_batch(&mut shared.log, store.log_id(5, 2), &entry(4, 200)).expect("append");
        let stored = voided.expect("voided");
        let h = batch::verify_stored(&stored).expect("valid");
        assert_eq!(
            (h.record_count, h.span.base_offset, h.span.last_offset),
            (0, 200, 202)
        );
        assert_eq!(
            batch::producer_fields(&stored).map(|f| f.producer_id),
            Some(-1)
        );
        let read = shared
            .log
            .read(200, 1 << 20, i64::MAX)
            .expect("read")
            .expect("a batch");
        let h = batch::verify_stored(&read.bytes).expect("valid");
        assert_eq!((h.record_count, h.span.leader_epoch), (0, 5));
        let read = shared
            .log
            .read(100, 1 << 20, 200)
            .expect("read")
            .expect("a batch");
        assert_eq!(
            batch::verify_stored(&read.bytes)
                .expect("valid")
                .record_count,
            3
        );
    }

    #[tokio::test]
    async fn a_deleted_active_segment_is_a_flush_error_a_deleted_rolled_one_is_not() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&tmp.path().join("meta")).expect("meta"));
        let store = open(tmp.path(), &meta);
        fill(&store, &[1, 2]);
        let weak = Arc::downgrade(&store.shared);
        let first = store
            .shared
            .read()
            .expect("lock")
            .log
            .active_file()
            .expect("file");
        assert!(check_not_deleted(&first, &weak).is_ok());
        fill(&store, &[3]);
        let active = store
            .shared
            .read()
            .expect("lock")
            .log
            .active_file()
            .expect("file");
        assert!(
            !Arc::ptr_eq(&first, &active),
            "the third batch rolled a segment"
        );
        std::fs::remove_dir_all(tmp.path().join("p")).expect("rm");
        // Retention and the cleaner delete or replace rolled segments: not an error.
        assert!(check_not_deleted(&first, &weak).is_ok());
        let e = check_not_deleted(&active, &weak).expect_err("the active segment is gone");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("No such file or directory"), "{e}");
    }

    #[tokio::test]
    async fn storage_errors_name_what_failed() {
        use crate::storage::health::op_of;
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&tmp.path().join("meta")).expect("meta"));
        let mut store = open(tmp.path(), &meta);
        fill(&store, &[1, 2, 3]);
        // A segment cut short underneath: replication and apply read it and fail.
        let first = tmp
            .path()
            .join("p")
            .join(crate::storage::segment::log_file_name(0, 1));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .and_then(|f| f.set_len(30))
            .expect("cut");
        let e = store
            .try_get_log_entries(1..=3)
            .await
            .expect_err("a short segment");
        assert_eq!(op_of(&e), "read log", "{e}");
        assert_eq!(op_of(&delete_err(io::Error::other("x"))), "delete log");
        let entry_id = store.log_id(1, 4);
        let e: StorageError =
            StorageIOError::write_log_entry(entry_id, &io::Error::other("x")).into();
        assert_eq!(op_of(&e), "write log");
    }

    #[tokio::test]
    async fn purge_deletes_segments_and_a_restart_keeps_the_log_start() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&tmp.path().join("meta")).expect("meta"));
        let mut store = open(tmp.path(), &meta);
        fill(&store, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(store.shared.read().expect("lock").log_start(), 0);
        store.purge(store.log_id(1, 2)).await.expect("purge");
        {
            let mut shared = store.shared.write().expect("lock");
            assert_eq!(shared.log_start(), 20);
            assert_eq!(shared.log.segment_count(), 2);
            assert_eq!(shared.take_deleted().0, 1);
        }
        drop(store);
        let mut store = open(tmp.path(), &meta);
        assert_eq!(store.shared.read().expect("lock").log_start(), 20);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
        let entries = store.try_get_log_entries(3..=6).await.expect("read");
        assert_eq!(
            entries.len(),
            4,
            "the entries above the purge point are intact"
        );
    }

    #[tokio::test]
    async fn a_snapshot_built_before_a_crash_is_purged_at_open() {
        use crate::raft::state_machine::SnapshotTarget;
        use openraft::RaftSnapshotBuilder;
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&tmp.path().join("meta")).expect("meta"));
        let mut store = open(tmp.path(), &meta);
        fill(&store, &[1, 2, 3, 4, 5, 6]);
        let notify = Arc::new(tokio::sync::Notify::new());
        let (mut sm, _) =
            StateMachineStore::open("g", Arc::clone(&meta), notify, store.shared()).expect("sm");
        let entries = store.try_get_log_entries(1..=6).await.expect("read");
        sm.apply(entries).await.expect("apply");
        let cut = store.log_id(1, 2);
        *sm.target_slot().lock().expect("slot") = Some(SnapshotTarget {
            last_log_id: cut,
            log_start: 20,
        });
        let mut builder = sm.get_snapshot_builder().await;
        let snap = builder.build_snapshot().await.expect("build");
        assert_eq!(snap.meta.last_log_id, Some(cut));
        // Crash before openraft purges: the next open finishes the purge.
        drop((builder, sm, store));
        let mut store = open(tmp.path(), &meta);
        {
            let shared = store.shared.read().expect("lock");
            assert_eq!(shared.log_start(), 20);
            assert_eq!(shared.log.segment_count(), 2);
        }
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(cut));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
    }

    #[tokio::test]
    async fn a_snapshot_beyond_the_local_end_empties_the_log() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&tmp.path().join("meta")).expect("meta"));
        let mut store = open(tmp.path(), &meta);
        fill(&store, &[1, 2, 3]);
        let notify = Arc::new(tokio::sync::Notify::new());
        let (mut sm, hw) =
            StateMachineStore::open("g", Arc::clone(&meta), Arc::clone(&notify), store.shared())
                .expect("sm");
        let snap_id = store.log_id(2, 50);
        let snap_meta = SnapshotMeta {
            last_log_id: Some(snap_id),
            snapshot_id: "2-50".to_string(),
            ..SnapshotMeta::default()
        };
        let data = serde_json::to_vec(&SnapshotData {
            log_start: 400,
            high_watermark: 420,
        })
        .expect("json");
        sm.install_snapshot(&snap_meta, Box::new(std::io::Cursor::new(data)))
            .await
            .expect("install");
        store.purge(snap_id).await.expect("purge");
        assert_eq!(*hw.borrow(), 420);
        {
            let shared = store.shared.read().expect("lock");
            assert_eq!(shared.log.segment_count(), 0);
            assert_eq!(shared.log_start(), 400);
        }
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(snap_id));
        drop((sm, store));
        let store = open(tmp.path(), &meta);
        let (mut sm, hw) =
            StateMachineStore::open("g", Arc::clone(&meta), notify, store.shared()).expect("sm");
        assert_eq!(store.shared.read().expect("lock").log_start(), 400);
        assert_eq!(*hw.borrow(), 420);
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(snap_id));
        let current = sm.get_current_snapshot().await.expect("snapshot");
        assert_eq!(current.map(|s| s.meta.last_log_id), Some(Some(snap_id)));
    }
}
