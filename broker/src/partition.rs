//! A partition: its Raft group, its log, and the appender that gives batches their GSNs.
//!
//! Produce requests for a partition queue up at its appender task. The appender takes what
//! has queued, asks the sequencer for all the numbers those batches need in one ticket,
//! stamps each batch's base offset, and hands the batches to Raft in that order, so offsets
//! in a partition increase in append order. Waiting for the acknowledgement happens off the
//! appender, so many batches per partition are in flight at once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openraft::error::ClientWriteError;
use openraft::{BasicNode, ServerState};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::cluster::network::{Network, PartitionRoute};
use crate::cluster::wire::GroupKey;
use crate::cluster::{Cluster, RaftTiming};
use crate::producer_state::{
    self, BatchMeta, Incoming, PendingView, ProducerEntry, SequenceError, Verdict,
};
use crate::raft::log_store::{raise_log_start, LogStore, SharedLog};
use crate::raft::state_machine::{SnapshotTarget, StateMachineStore, TargetSlot};
use crate::raft::{partition_raft_config, AppendedSignal, BatchEntry, PartitionRaft};
use crate::sequencer::SequencerClient;
use crate::storage::batch;
use crate::storage::log::{ReadResult, RetentionPolicy};
use crate::storage::meta::MetaStore;
use crate::topic_config::TopicSettings;

/// Produce requests queued per partition before producers are pushed back.
const APPEND_QUEUE: usize = 1024;
/// Most batches given numbers with one sequencer ticket.
const MAX_GROUP: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("this broker is not the partition leader")]
    NotLeader,
    #[error("sequencer: {0}")]
    Sequencer(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("partition is shutting down")]
    ShuttingDown,
    /// An idempotent producer's batch broke Kafka's epoch or sequence rules.
    #[error("{0}")]
    Sequence(#[from] SequenceError),
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("raft: {0}")]
    Raft(String),
    #[error("storage: {0}")]
    Storage(String),
}

struct AppendRequest {
    batch: BytesMut,
    record_count: u64,
    acks: Acks,
    reply: oneshot::Sender<Result<i64, AppendError>>,
}

pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub key: GroupKey,
    /// Replica broker ids; the first is the preferred leader.
    pub replicas: Vec<i32>,
    node_id: i32,
    raft: PartitionRaft,
    log: SharedLog,
    high_watermark: watch::Receiver<i64>,
    appender: mpsc::Sender<AppendRequest>,
    cluster: Arc<Cluster>,
    isr: Mutex<IsrTracker>,
    /// Size of the ISR as last computed (all replicas until the first computation, as
    /// Kafka starts a partition with every replica in sync).
    isr_len: AtomicUsize,
    /// The topic's configs with the broker defaults filled in; replaced when they change.
    settings: std::sync::RwLock<TopicSettings>,
    /// Where retention tells the snapshot builder which entries to cover.
    snapshot_target: TargetSlot,
    meta: Arc<MetaStore>,
    /// Raft storage group name (RocksDB key prefix).
    group: String,
}

/// What one retention pass on a partition asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRequest {
    pub last_raft_index: u64,
    pub new_start_offset: i64,
    pub segments: usize,
    pub bytes: u64,
}

/// When each follower was last caught up with the leader's committed log.
#[derive(Default)]
struct IsrTracker {
    term: u64,
    caught_up: HashMap<u64, Instant>,
}

/// Everything a partition needs from the broker.
pub struct PartitionEnv<'a> {
    pub node_id: u64,
    pub data_dir: &'a Path,
    pub settings: TopicSettings,
    pub meta: Arc<MetaStore>,
    pub sequencer: SequencerClient,
    pub data_arrived: Arc<Notify>,
    pub cluster: Arc<Cluster>,
    pub timing: RaftTiming,
    /// Counts produce batches recognised as retries of stored ones.
    pub duplicates: IntCounter,
}

/// Which partition to open and who replicates it.
pub struct PartitionSpec<'a> {
    pub topic: &'a str,
    pub index: i32,
    /// Directory (and Raft storage group) name under the data dir.
    pub group: &'a str,
    pub key: GroupKey,
    pub replicas: Vec<i32>,
    /// Raft transport address of each replica.
    pub voters: BTreeMap<u64, BasicNode>,
}

impl Partition {
    /// Opens (creating if new) a partition replica and starts its Raft group. A new group is
    /// initialized at once by its preferred replica and, should that replica be down, by any
    /// other replica after a few election timeouts (same voter set everywhere, which
    /// openraft documents as safe).
    pub async fn open(
        env: &PartitionEnv<'_>,
        spec: PartitionSpec<'_>,
    ) -> Result<Arc<Self>, PartitionError> {
        let dir = env.data_dir.join(spec.group);
        let storage = |e: openraft::StorageError<u64>| PartitionError::Storage(e.to_string());
        let raft_err = |e: &dyn std::fmt::Display| PartitionError::Raft(e.to_string());
        let log_store = LogStore::open(
            spec.group,
            env.node_id,
            &dir,
            env.settings.log,
            Arc::clone(&env.meta),
        )
        .map_err(storage)?;
        let shared = log_store.shared();
        let (sm, high_watermark) = StateMachineStore::open(
            spec.group,
            Arc::clone(&env.meta),
            Arc::clone(&env.data_arrived),
            Arc::clone(&shared),
        )
        .map_err(storage)?;
        let snapshot_target = sm.target_slot();
        let config = partition_raft_config(env.timing).map_err(|e| raft_err(&e))?;
        let network = Network::new(Arc::clone(&env.cluster.transport), PartitionRoute(spec.key));
        let raft = PartitionRaft::new(env.node_id, config, network, log_store, sm)
            .await
            .map_err(|e| raft_err(&e))?;
        raft_support::spawn_split_vote_breaker(raft.clone());
        env.cluster.register_group(spec.key, raft.clone());
        let node_id = i32::try_from(env.node_id).unwrap_or(i32::MAX);
        if !raft.is_initialized().await.map_err(|e| raft_err(&e))? {
            let preferred = spec.replicas.first() == Some(&node_id);
            let delay = if preferred {
                Duration::ZERO
            } else {
                Duration::from_millis(env.timing.election_min_ms * 6)
            };
            tokio::spawn(initialize_later(raft.clone(), spec.voters.clone(), delay));
        }
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        tokio::spawn(run_appender(
            rx,
            Appender {
                raft: raft.clone(),
                sequencer: env.sequencer.clone(),
                log: Arc::clone(&shared),
                high_watermark: high_watermark.clone(),
                duplicates: env.duplicates.clone(),
                view: PendingView::default(),
                view_term: None,
            },
        ));
        let replicas = spec.replicas.clone();
        Ok(Arc::new(Self {
            topic: spec.topic.to_string(),
            index: spec.index,
            key: spec.key,
            isr_len: AtomicUsize::new(replicas.len()),
            replicas,
            node_id,
            raft,
            log: shared,
            high_watermark,
            appender: tx,
            cluster: Arc::clone(&env.cluster),
            isr: Mutex::new(IsrTracker::default()),
            settings: std::sync::RwLock::new(env.settings),
            snapshot_target,
            meta: Arc::clone(&env.meta),
            group: spec.group.to_string(),
        }))
    }

    /// The topic's current settings (configs with broker defaults).
    pub fn settings(&self) -> TopicSettings {
        match self.settings.read() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Takes new settings after the topic's (or the broker's dynamic) configs changed; the
    /// log rolls by the new segment.bytes/segment.ms from its next append.
    pub fn set_settings(&self, settings: TopicSettings) {
        let changed_log = self.settings().log != settings.log;
        match self.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
        if changed_log {
            if let Ok(mut shared) = self.log.write() {
                shared.log.set_config(settings.log);
            }
        }
    }

    /// This broker's id.
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this replica knows of and its term (Kafka's leader epoch).
    pub fn known_leader(&self) -> Option<(i32, i32)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = i32::try_from(m.current_leader?).ok()?;
        Some((leader, i32::try_from(m.current_term).unwrap_or(i32::MAX)))
    }

    /// Replicas currently in sync (meaningful on the leader).
    pub fn in_sync_count(&self) -> usize {
        self.isr_len.load(Ordering::Relaxed)
    }

    /// On the leader: recomputes the ISR (the leader plus followers that answered within
    /// `lag_max` and whose replicated log reached the leader's applied index within
    /// `lag_max`, Kafka's replica.lag.time.max.ms) and returns (epoch, ISR).
    pub fn refresh_isr(&self, lag_max: Duration) -> Option<(i32, Vec<i32>)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return None;
        }
        let now = Instant::now();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let mut tracker = self.isr.lock().ok()?;
        if tracker.term != m.current_term {
            // New leadership: every replica starts in sync, as in Kafka.
            tracker.term = m.current_term;
            tracker.caught_up.clear();
        }
        let mut isr = vec![self.node_id];
        for (follower, matched) in m.replication.iter().flatten() {
            // openraft lists the leader among the replication targets too.
            if i64::try_from(*follower).ok() == Some(i64::from(self.node_id)) {
                continue;
            }
            let seen = tracker.caught_up.entry(*follower).or_insert(now);
            if matched.is_some_and(|l| l.index >= applied) {
                *seen = now;
            }
            let alive = self.cluster.transport.answered_within(*follower, lag_max);
            if alive && now.duration_since(*seen) <= lag_max {
                isr.push(i32::try_from(*follower).unwrap_or(i32::MAX));
            }
        }
        isr.sort_unstable();
        self.isr_len.store(isr.len(), Ordering::Relaxed);
        Some((i32::try_from(m.current_term).unwrap_or(i32::MAX), isr))
    }

    /// Preferred leader election: the first replica, when it follows a known leader and
    /// has applied everything it holds, asks for the leadership back.
    pub async fn reclaim_preferred_leadership(&self) {
        if self.replicas.first() != Some(&self.node_id) {
            return;
        }
        let caught_up = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.state == ServerState::Follower
                && m.current_leader.is_some()
                && m.last_log_index.is_some()
                && m.last_applied.map(|l| l.index) == m.last_log_index
        };
        if caught_up {
            tracing::info!(topic = %self.topic, partition = self.index, "taking back preferred leadership");
            let _ = self.raft.trigger().elect().await;
        }
    }

    /// Current Raft term, reported to clients as the partition leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.raft.metrics().borrow().current_term).unwrap_or(i32::MAX)
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// Kafka's log start offset. GSN offsets below the first batch never existed, so until
    /// retention deletes data the log starts at 0 and a fetch from 0 returns the first batch;
    /// after a deletion it is the first offset that remains (persisted).
    pub fn log_start_offset(&self) -> i64 {
        self.log.read().map_or(0, |s| s.log_start())
    }

    /// DeleteRecords: raises the log start offset to `low_watermark` (persisted); the
    /// segments entirely below it go at the next retention pass.
    pub fn apply_low_watermark(&self, low_watermark: i64) {
        let Ok(mut shared) = self.log.write() else {
            return;
        };
        if low_watermark <= shared.log_start() {
            return;
        }
        if let Err(e) = raise_log_start(&self.meta, &self.group, &mut shared, low_watermark) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "cannot store the log start offset");
        }
    }

    /// Bytes of this replica's segment files.
    pub fn size_bytes(&self) -> u64 {
        self.log.read().map_or(0, |s| s.log.size_bytes())
    }

    /// Segments and bytes this replica deleted since the last call.
    pub fn take_deleted(&self) -> (u64, u64) {
        self.log.write().map_or((0, 0), |mut s| s.take_deleted())
    }

    /// One retention pass on this replica (Kafka runs retention on every replica): picks the
    /// oldest rolled, applied segments past retention.ms / retention.bytes and asks Raft for a
    /// snapshot ending at their last entry; openraft then purges the log up to it, which
    /// deletes the segments (`LogStore::purge`). Returns what was asked for.
    pub async fn enforce_retention(&self, now_ms: i64) -> Option<RetentionRequest> {
        let settings = self.settings();
        let log_start = self.log_start_offset();
        // cleanup.policy without `delete`: only what DeleteRecords put below the log start.
        let (retention_ms, retention_bytes) = if settings.cleanup_delete {
            (settings.retention_ms, settings.retention_bytes)
        } else {
            (-1, -1)
        };
        let policy = RetentionPolicy {
            retention_ms,
            retention_bytes,
            delete_below: log_start,
            now_ms,
        };
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index)?;
        let (cut, last_log_id) = {
            let shared = self.log.read().ok()?;
            let cut = shared.log.retention_cut(policy, applied)?;
            let id = match shared.log_id_at(
                cut.last_raft_index,
                u64::try_from(self.node_id).unwrap_or(0),
            ) {
                Ok(id) => id?,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "retention: reading the log failed");
                    return None;
                }
            };
            (cut, id)
        };
        if let Ok(mut slot) = self.snapshot_target.lock() {
            *slot = Some(SnapshotTarget {
                last_log_id,
                log_start: cut.new_start_offset.max(log_start),
            });
        }
        if let Err(e) = self.raft.trigger().snapshot().await {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "retention: snapshot trigger failed");
            return None;
        }
        tracing::info!(
            topic = %self.topic,
            partition = self.index,
            upto = cut.last_raft_index,
            log_start = cut.new_start_offset,
            segments = cut.segments,
            bytes = cut.bytes,
            "retention deletes old segments"
        );
        Some(RetentionRequest {
            last_raft_index: cut.last_raft_index,
            new_start_offset: cut.new_start_offset,
            segments: cut.segments,
            bytes: cut.bytes,
        })
    }

    /// Queues one validated batch for appending. The receiver resolves with its base offset
    /// once `acks` is satisfied; batches queued earlier get smaller offsets.
    pub async fn enqueue(
        &self,
        batch: BytesMut,
        record_count: u64,
        acks: Acks,
    ) -> Result<oneshot::Receiver<Result<i64, AppendError>>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.appender
            .send(AppendRequest {
                batch,
                record_count,
                acks,
                reply,
            })
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        Ok(rx)
    }

    /// Whole committed batches from `offset` (see `PartitionLog::read`).
    pub fn read(&self, offset: i64, max_bytes: u64) -> std::io::Result<Option<ReadResult>> {
        let hw = self.high_watermark();
        let shared = self
            .log
            .read()
            .map_err(|_| std::io::Error::other("partition log lock poisoned"))?;
        shared.log.read(offset, max_bytes, hw)
    }

    /// The log shared with Raft and fetch; the cleaner reads it and swaps cleaned segments in.
    pub fn shared_log(&self) -> SharedLog {
        Arc::clone(&self.log)
    }

    pub fn with_log<T>(
        &self,
        f: impl FnOnce(&crate::storage::log::PartitionLog) -> T,
    ) -> std::io::Result<T> {
        let shared = self
            .log
            .read()
            .map_err(|_| std::io::Error::other("partition log lock poisoned"))?;
        Ok(f(&shared.log))
    }

    pub async fn shutdown(&self) {
        self.cluster.unregister_group(&self.key);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "raft shutdown");
        }
    }
}

async fn initialize_later(raft: PartitionRaft, voters: BTreeMap<u64, BasicNode>, delay: Duration) {
    tokio::time::sleep(delay).await;
    if matches!(raft.is_initialized().await, Ok(false)) {
        if let Err(e) = raft.initialize(voters).await {
            tracing::debug!(error = %e, "partition group already initialized");
        }
    }
}

/// The partition's single writer on the leader: checks idempotent producers' batches,
/// takes sequencer numbers for the rest and hands them to Raft in order.
struct Appender {
    raft: PartitionRaft,
    sequencer: SequencerClient,
    log: SharedLog,
    high_watermark: watch::Receiver<i64>,
    duplicates: IntCounter,
    /// Batches stamped in `view_term` that may not be in the log yet.
    view: PendingView,
    view_term: Option<u64>,
}

/// A batch that passed the producer checks, with its producer fields (None: no producer id).
type Accepted = (AppendRequest, Option<ProducerBatch>);

#[derive(Clone, Copy)]
struct ProducerBatch {
    incoming: Incoming,
    max_timestamp: i64,
}

impl ProducerBatch {
    fn of(batch: &[u8]) -> Option<Self> {
        let f = batch::producer_fields(batch)?;
        (f.producer_id >= 0).then(|| Self {
            incoming: Incoming::new(
                f.producer_id,
                f.producer_epoch,
                f.base_sequence,
                f.last_offset_delta,
            ),
            max_timestamp: f.max_timestamp,
        })
    }
}

async fn run_appender(mut rx: mpsc::Receiver<AppendRequest>, mut appender: Appender) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        appender.append_group(group).await;
    }
}

fn fail_all(group: impl IntoIterator<Item = AppendRequest>, e: &AppendError) {
    for r in group {
        let _ = r.reply.send(Err(e.clone()));
    }
}

impl Appender {
    /// The current term while this replica leads.
    fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    async fn append_group(&mut self, group: Vec<AppendRequest>) {
        // Only the leader may take numbers: a follower would waste them.
        let Some(term) = self.leader_term() else {
            fail_all(group, &AppendError::NotLeader);
            return;
        };
        if self.view_term != Some(term) {
            // A new term: the log (which holds everything Raft may still commit) is the
            // starting point; batches pending in an older term either reached it or never will.
            self.view.clear();
            self.view_term = Some(term);
        }
        let group = match self.screen(group, term) {
            Ok(g) => g,
            Err(group) => {
                fail_all(
                    group,
                    &AppendError::Storage("partition log lock poisoned".into()),
                );
                return;
            }
        };
        if group.is_empty() {
            return;
        }
        let total: u64 = group.iter().map(|(r, _)| r.record_count).sum();
        let mut base = match self.sequencer.reserve(total).await {
            Ok(b) => b,
            Err(e) => {
                fail_all(
                    group.into_iter().map(|(r, _)| r),
                    &AppendError::Sequencer(e.to_string()),
                );
                return;
            }
        };
        // Offsets must grow within a partition, also across leader changes. The ring hands
        // out numbers in real-time order, so a new leader's numbers lie above everything the
        // old one appended; this check turns a violation into an error instead of a log
        // that goes backwards.
        let end = self.log.read().ok().and_then(|l| l.log.end_offset());
        if end.is_some_and(|end| (base as i64) < end) {
            tracing::error!(base, end = ?end, "sequencer returned numbers below the partition's end");
            fail_all(
                group.into_iter().map(|(r, _)| r),
                &AppendError::Sequencer("sequence numbers below the partition end".into()),
            );
            return;
        }
        // The numbers were taken while awaiting the sequencer: appends must still belong to
        // the term the producer checks were made in.
        if self.leader_term() != Some(term) {
            fail_all(group.into_iter().map(|(r, _)| r), &AppendError::NotLeader);
            return;
        }
        let mut stamped = Vec::with_capacity(group.len());
        for (r, producer) in group {
            let offset = base as i64;
            base += r.record_count;
            stamped.push((r, producer, offset));
        }
        self.note_pending(&stamped);
        for (r, _, offset) in stamped {
            submit(&self.raft, r, offset).await;
        }
    }

    /// Applies the idempotent-producer rules in arrival order: duplicates are answered from
    /// the log (without numbers), violations get their error, the rest is returned. Err
    /// gives the group back when the log cannot be read.
    fn screen(
        &mut self,
        group: Vec<AppendRequest>,
        term: u64,
    ) -> Result<Vec<Accepted>, Vec<AppendRequest>> {
        if group.iter().all(|r| ProducerBatch::of(&r.batch).is_none()) {
            return Ok(group.into_iter().map(|r| (r, None)).collect());
        }
        let Ok(shared) = self.log.read() else {
            return Err(group);
        };
        self.view.prune(shared.log.end_offset().unwrap_or(i64::MIN));
        // Batches accepted earlier in this group, not stamped yet (offsets unknown: -1).
        let mut in_group: HashMap<i64, ProducerEntry> = HashMap::new();
        let mut accepted = Vec::with_capacity(group.len());
        for r in group {
            let Some(p) = ProducerBatch::of(&r.batch) else {
                accepted.push((r, None));
                continue;
            };
            let pid = p.incoming.producer_id;
            let entry = in_group
                .get(&pid)
                .or_else(|| self.view.entry(pid, shared.producers.get(pid)));
            match producer_state::check(entry, &p.incoming) {
                Ok(Verdict::Append) => {
                    let mut e = entry
                        .cloned()
                        .unwrap_or_else(|| ProducerEntry::empty(p.incoming.epoch));
                    e.add(p.incoming.epoch, unstamped(&p.incoming), p.max_timestamp);
                    in_group.insert(pid, e);
                    accepted.push((r, Some(p)));
                }
                Ok(Verdict::Duplicate(meta)) if meta.base_offset < 0 => {
                    // A retry queued behind its original in this very group: the original's
                    // offset is not known yet, so the retry is asked to come again.
                    let _ = r.reply.send(Err(AppendError::NotLeader));
                }
                Ok(Verdict::Duplicate(meta)) => self.answer_duplicate(r, meta, term),
                Err(e) => {
                    tracing::debug!(error = %e, "idempotent batch refused");
                    let _ = r.reply.send(Err(AppendError::Sequence(e)));
                }
            }
        }
        Ok(accepted)
    }

    /// Records stamped producer batches in the view, so the next ones (up to 5 in flight per
    /// producer) are checked against them before they reach the log.
    fn note_pending(&mut self, stamped: &[(AppendRequest, Option<ProducerBatch>, i64)]) {
        if stamped.iter().all(|(_, p, _)| p.is_none()) {
            return;
        }
        let Ok(shared) = self.log.read() else {
            return;
        };
        for (r, p, offset) in stamped {
            if let Some(p) = p {
                let last = offset + r.record_count as i64 - 1;
                let logged = shared.producers.get(p.incoming.producer_id);
                self.view
                    .stamped(&p.incoming, logged, *offset, last, p.max_timestamp);
            }
        }
    }

    /// Answers a retried batch with its original offset once that batch is as durable as
    /// `acks` asks (acks=all: committed), or NOT_LEADER if this replica stops leading first.
    fn answer_duplicate(&self, req: AppendRequest, meta: BatchMeta, term: u64) {
        self.duplicates.inc();
        tracing::debug!(base_offset = meta.base_offset, "duplicate idempotent batch");
        if req.acks == Acks::None {
            return;
        }
        let mut metrics = self.raft.metrics();
        let mut hw = self.high_watermark.clone();
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            let AppendRequest {
                acks, mut reply, ..
            } = req;
            let stored = wait_stored(
                acks,
                meta.last_offset,
                term,
                &mut metrics,
                &mut hw,
                &log,
                &mut reply,
            )
            .await;
            let _ = reply.send(stored.map(|()| meta.base_offset));
        });
    }
}

fn unstamped(b: &Incoming) -> BatchMeta {
    BatchMeta {
        first_seq: b.first_seq,
        last_seq: b.last_seq,
        base_offset: -1,
        last_offset: -1,
    }
}

/// Waits until offset `last` is committed (acks=all) or in the leader's log (acks=1) while
/// this replica leads in `term`. Every wake-up is a change of the Raft metrics or the high
/// watermark; the produce request's own timeout bounds the wait (the waiter stops when the
/// request stops listening).
async fn wait_stored(
    acks: Acks,
    last: i64,
    term: u64,
    metrics: &mut watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    hw: &mut watch::Receiver<i64>,
    log: &SharedLog,
    reply: &mut oneshot::Sender<Result<i64, AppendError>>,
) -> Result<(), AppendError> {
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader || m.current_term != term {
                return Err(AppendError::NotLeader);
            }
        }
        let done = match acks {
            Acks::All => *hw.borrow_and_update() > last,
            Acks::Leader | Acks::None => log
                .read()
                .map(|l| l.log.end_offset().is_some_and(|end| end > last))
                .unwrap_or(false),
        };
        if done {
            return Ok(());
        }
        tokio::select! {
            _ = reply.closed() => return Err(AppendError::ShuttingDown),
            r = metrics.changed() => if r.is_err() { return Err(AppendError::ShuttingDown) },
            r = hw.changed() => if r.is_err() { return Err(AppendError::ShuttingDown) },
        }
    }
}

/// Stamps the batch and hands it to Raft in order; waits for the ack on a separate task.
async fn submit(raft: &PartitionRaft, mut req: AppendRequest, base_offset: i64) {
    batch::stamp(&mut req.batch, base_offset, 0);
    let (signal, appended) = match req.acks {
        Acks::Leader => {
            let (s, rx) = AppendedSignal::new();
            (Some(s), Some(rx))
        }
        Acks::None | Acks::All => (None, None),
    };
    let entry = BatchEntry {
        batch: Bytes::from(req.batch),
        appended: signal,
        verified: true,
    };
    let committed = match raft.client_write_ff(entry).await {
        Ok(rx) => rx,
        Err(e) => {
            let _ = req.reply.send(Err(AppendError::Storage(e.to_string())));
            return;
        }
    };
    let reply = req.reply;
    tokio::spawn(async move {
        let result = match appended {
            Some(appended) => {
                let r = appended.await.map_err(|_| AppendError::NotLeader);
                let _ = reply.send(r.map(|()| base_offset));
                // Keep the commit receiver alive until Raft answers: openraft logs a warning
                // for every response nobody waits for.
                let _ = committed.await;
                return;
            }
            None => match committed.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => Err(AppendError::NotLeader),
                Ok(Err(e)) => Err(AppendError::Storage(e.to_string())),
                Err(_) => Err(AppendError::ShuttingDown),
            },
        };
        let _ = reply.send(result.map(|()| base_offset));
    });
}
