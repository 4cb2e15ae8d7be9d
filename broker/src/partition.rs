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

use bytes::BytesMut;
use openraft::{BasicNode, ServerState};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::appender::{run_appender, AppendRequest, Appender};
use crate::cluster::network::{Network, PartitionRoute};
use crate::cluster::wire::GroupKey;
use crate::cluster::{Cluster, RaftTiming};
use crate::frontier_driver::Frontier;
use crate::producer_state::{PendingView, SequenceError};
use crate::raft::log_store::{raise_log_start, LogStore, SharedLog};
use crate::raft::state_machine::{SnapshotTarget, StateMachineStore, TargetSlot};
use crate::raft::{partition_raft_config, PartitionRaft};
use crate::sequencer::SequencerClient;
use crate::storage::health::{HealthMetrics, ReplicaHealth, StorageFailure};
use crate::storage::log::{ReadResult, RetentionPolicy};
use crate::storage::meta::MetaStore;
use crate::topic_config::TopicSettings;

/// Produce requests queued per partition before producers are pushed back.
const APPEND_QUEUE: usize = 1024;

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
    #[error("the replica's directory {0} is missing but its Raft state exists: its log was lost")]
    LostLog(String),
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
    frontier: Arc<Frontier>,
    /// Healthy until the first storage error, then offline (see `storage::health`).
    health: Arc<ReplicaHealth>,
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
    pub frontier: Arc<Frontier>,
    /// Storage errors and offline replicas.
    pub storage: HealthMetrics,
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
        refuse_lost_log(&env.meta, spec.group, &dir)?;
        let log_store = LogStore::open(
            spec.group,
            env.node_id,
            &dir,
            env.settings.log,
            Arc::clone(&env.meta),
        )
        .map_err(storage)?
        .with_vote_hook(env.frontier.vote_hook(spec.key));
        // The frontier must know this replica's vote before its Raft node can act on it.
        env.frontier
            .open_replica(spec.key, log_store.persisted_vote_term().map_err(storage)?);
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
        let raft = PartitionRaft::new(env.node_id, config, network.clone(), log_store, sm)
            .await
            .map_err(|e| raft_err(&e))?;
        crate::cluster::spawn_elections(raft.clone(), network);
        env.frontier
            .watch_replica(spec.key, raft.clone(), high_watermark.clone());
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
                key: spec.key,
                frontier: Arc::clone(&env.frontier),
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
        let partition = Arc::new(Self {
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
            frontier: Arc::clone(&env.frontier),
            health: Arc::new(ReplicaHealth::new(env.storage.clone())),
        });
        tokio::spawn(crate::offline::supervise(Arc::downgrade(&partition)));
        Ok(partition)
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
        !self.is_offline() && self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this replica knows of and its term (Kafka's leader epoch). An offline
    /// replica knows none: its Raft node has stopped.
    pub fn known_leader(&self) -> Option<(i32, i32)> {
        if self.is_offline() {
            return None;
        }
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
        if self.is_offline() {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return None;
        }
        // Replicas the metadata lists offline are out at once (their Raft node has stopped;
        // waiting for `lag_max` would keep them in for nothing).
        let offline = self
            .cluster
            .state()
            .offline_replicas(&self.key.topic_id, self.index);
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
            let alive = self.cluster.transport.answered_within(*follower, lag_max)
                && i32::try_from(*follower).is_ok_and(|f| !offline.contains(&f));
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
        if self.replicas.first() != Some(&self.node_id) || self.is_offline() {
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
        if self.is_offline() {
            return;
        }
        let Ok(mut shared) = self.log.write() else {
            return;
        };
        if low_watermark <= shared.log_start() {
            return;
        }
        if let Err(e) = raise_log_start(&self.meta, &self.group, &mut shared, low_watermark) {
            self.note_storage_error("write log start", &e);
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
        if self.is_offline() {
            return None;
        }
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
                    self.note_storage_error("read log", &e);
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
        let copies = match acks {
            Acks::All => self.settings().min_insync_replicas,
            Acks::Leader | Acks::None => 1,
        };
        self.appender
            .send(AppendRequest {
                batch,
                record_count,
                acks,
                copies,
                reply,
            })
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        Ok(rx)
    }

    /// Whole committed batches from `offset` (see `PartitionLog::read`). A read error takes
    /// the replica offline.
    pub fn read(&self, offset: i64, max_bytes: u64) -> std::io::Result<Option<ReadResult>> {
        self.read_below(offset, max_bytes, i64::MAX)
    }

    /// Like `read`, but only batches that start below `limit` (read_committed: the stable
    /// offset, which never falls inside a batch).
    pub fn read_below(
        &self,
        offset: i64,
        max_bytes: u64,
        limit: i64,
    ) -> std::io::Result<Option<ReadResult>> {
        if let Some(f) = self.storage_failure() {
            return Err(std::io::Error::other(format!("replica offline: {f}")));
        }
        let hw = self.high_watermark();
        let shared = self
            .log
            .read()
            .map_err(|_| std::io::Error::other("partition log lock poisoned"))?;
        shared
            .log
            .read(offset, max_bytes, hw.min(limit))
            .inspect_err(|e| {
                self.note_storage_error("read log", e);
            })
    }

    /// Why this replica is offline, if it is (see `storage::health`).
    pub fn storage_failure(&self) -> Option<&StorageFailure> {
        self.health.failure()
    }

    pub fn is_offline(&self) -> bool {
        self.health.is_offline()
    }

    /// An I/O error on one of this replica's paths outside Raft (reads for clients, the
    /// cleaner, the log start): counted, and the replica goes offline.
    pub fn note_storage_error(&self, op: &'static str, error: &dyn std::fmt::Display) {
        self.health.fail(op, error);
    }

    pub(crate) fn health(&self) -> Arc<ReplicaHealth> {
        Arc::clone(&self.health)
    }

    pub(crate) fn raft_metrics(&self) -> watch::Receiver<openraft::RaftMetrics<u64, BasicNode>> {
        self.raft.metrics()
    }

    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Stops serving after a storage error: peers find the group gone (unreachable to their
    /// Raft), and the Raft node stops if the error did not already stop it, so the other
    /// replicas elect a leader among themselves.
    pub(crate) async fn stop_serving(&self) {
        self.cluster.unregister_group(&self.key);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "raft shutdown");
        }
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
        self.health.forget();
        self.cluster.unregister_group(&self.key);
        self.frontier.close_replica(self.key);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "raft shutdown");
        }
    }
}

/// A replica whose directory is gone although its Raft state (a vote) is stored lost its log:
/// it must not rejoin its group with an empty log, where its vote could elect a replica that
/// misses committed entries. It stays offline (the partition runs on its other replicas).
fn refuse_lost_log(meta: &MetaStore, group: &str, dir: &Path) -> Result<(), PartitionError> {
    if dir.exists() {
        return Ok(());
    }
    let vote: Option<openraft::Vote<u64>> = meta
        .get_raft(group, "vote")
        .map_err(|e| PartitionError::Storage(e.to_string()))?;
    match vote {
        None => Ok(()),
        Some(_) => Err(PartitionError::LostLog(dir.display().to_string())),
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
