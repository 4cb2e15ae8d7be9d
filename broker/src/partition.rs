//! A partition: its Raft group, its log, and the appender that gives batches their GSNs.
//!
//! Produce requests for a partition queue up at its appender task. The appender takes what
//! has queued, asks the sequencer for all the numbers those batches need in one ticket,
//! stamps each batch's base offset, and hands the batches to Raft in that order, so offsets
//! in a partition increase in append order. Waiting for the acknowledgement happens off the
//! appender, so many batches per partition are in flight at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openraft::error::ClientWriteError;
use openraft::{BasicNode, ServerState};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::LogConfig;
use crate::raft::log_store::{LogStore, SharedLog};
use crate::raft::network::LocalOnlyNetwork;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{partition_raft_config, AppendedSignal, BatchEntry, PartitionRaft};
use crate::sequencer::SequencerClient;
use crate::storage::batch;
use crate::storage::log::ReadResult;
use crate::storage::meta::MetaStore;

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
    node_id: i32,
    raft: PartitionRaft,
    log: SharedLog,
    high_watermark: watch::Receiver<i64>,
    appender: mpsc::Sender<AppendRequest>,
}

/// Everything a partition needs from the broker.
pub struct PartitionEnv<'a> {
    pub node_id: u64,
    pub advertised: String,
    pub data_dir: &'a Path,
    pub log_config: LogConfig,
    pub meta: Arc<MetaStore>,
    pub sequencer: SequencerClient,
    pub data_arrived: Arc<Notify>,
}

impl Partition {
    /// Opens (creating if new) partition `index` of a topic, stored under `dir_name`, and
    /// starts its Raft group.
    pub async fn open(
        env: &PartitionEnv<'_>,
        topic: &str,
        index: i32,
        group: &str,
    ) -> Result<Arc<Self>, PartitionError> {
        let dir = env.data_dir.join(group);
        let storage = |e: openraft::StorageError<u64>| PartitionError::Storage(e.to_string());
        let log_store = LogStore::open(
            group,
            env.node_id,
            &dir,
            env.log_config,
            Arc::clone(&env.meta),
        )
        .map_err(storage)?;
        let shared = log_store.shared();
        let (sm, high_watermark) =
            StateMachineStore::open(group, Arc::clone(&env.meta), Arc::clone(&env.data_arrived))
                .map_err(storage)?;
        let config = partition_raft_config().map_err(|e| PartitionError::Raft(e.to_string()))?;
        let raft = PartitionRaft::new(env.node_id, config, LocalOnlyNetwork, log_store, sm)
            .await
            .map_err(|e| PartitionError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| PartitionError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(env.node_id, BasicNode::new(&env.advertised))]);
            raft.initialize(members)
                .await
                .map_err(|e| PartitionError::Raft(e.to_string()))?;
        }
        let (tx, rx) = mpsc::channel(APPEND_QUEUE);
        tokio::spawn(run_appender(rx, raft.clone(), env.sequencer.clone()));
        Ok(Arc::new(Self {
            topic: topic.to_string(),
            index,
            node_id: i32::try_from(env.node_id).unwrap_or(i32::MAX),
            raft,
            log: shared,
            high_watermark,
            appender: tx,
        }))
    }

    /// Waits until this node leads the partition (a single voter elects itself).
    pub async fn wait_for_leadership(&self, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .state(ServerState::Leader, "partition leadership")
            .await
            .is_ok()
    }

    /// This broker's id (every replica of a single-voter group).
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Current Raft term, reported to clients as the partition leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.raft.metrics().borrow().current_term).unwrap_or(i32::MAX)
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// Kafka's log start offset. GSN offsets below the first batch never existed, so until
    /// retention deletes data the log starts at 0 and a fetch from 0 returns the first batch.
    pub fn log_start_offset(&self) -> i64 {
        0
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
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "raft shutdown");
        }
    }
}

async fn run_appender(
    mut rx: mpsc::Receiver<AppendRequest>,
    raft: PartitionRaft,
    sequencer: SequencerClient,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // Only the leader may take numbers: a follower would waste them.
        if raft.metrics().borrow().state != ServerState::Leader {
            for r in group {
                let _ = r.reply.send(Err(AppendError::NotLeader));
            }
            continue;
        }
        let total: u64 = group.iter().map(|r| r.record_count).sum();
        let mut base = match sequencer.reserve(total).await {
            Ok(b) => b,
            Err(e) => {
                for r in group {
                    let _ = r.reply.send(Err(AppendError::Sequencer(e.to_string())));
                }
                continue;
            }
        };
        for r in group {
            let offset = base as i64;
            base += r.record_count;
            submit(&raft, r, offset).await;
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
