//! Storage of the metadata Raft group in the broker's RocksDB: log entries, vote, committed
//! and purged ids, the applied `ClusterState` (written with fsync on every apply: metadata
//! changes are rare and small) and the last snapshot (the whole state, JSON).

// openraft's storage traits return its `StorageError` (208 bytes).
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metadata::{ClusterState, MetaConfig, MetaReply};
use crate::storage::meta::MetaStore;

/// Key prefix of the metadata group in the MetaStore (`raft/{GROUP}/...`).
pub const GROUP: &str = "__cluster_metadata";

type Entry = openraft::Entry<MetaConfig>;
type SError = StorageError<u64>;

fn write_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::read_logs(&e).into()
}

#[derive(Debug, thiserror::Error)]
#[error("metadata log lock poisoned")]
struct Poisoned;

struct LogInner {
    entries: BTreeMap<u64, Entry>,
    purged: Option<LogId<u64>>,
}

#[derive(Clone)]
pub struct MetaLogStore {
    meta: Arc<MetaStore>,
    inner: Arc<Mutex<LogInner>>,
}

impl MetaLogStore {
    pub fn open(meta: Arc<MetaStore>) -> Result<Self, SError> {
        let entries = meta
            .raft_entries::<Entry>(GROUP)
            .map_err(read_err)?
            .into_iter()
            .map(|e| (e.log_id.index, e))
            .collect();
        let purged = meta.get_raft(GROUP, "purged").map_err(read_err)?;
        Ok(Self {
            meta,
            inner: Arc::new(Mutex::new(LogInner { entries, purged })),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, LogInner>, SError> {
        self.inner.lock().map_err(|_| write_err(Poisoned))
    }

    fn forget(&self, inner: &mut LogInner, indexes: Vec<u64>) -> Result<(), SError> {
        for idx in indexes {
            self.meta.delete_raft_entry(GROUP, idx).map_err(write_err)?;
            inner.entries.remove(&idx);
        }
        Ok(())
    }
}

impl RaftLogReader<MetaConfig> for MetaLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, SError> {
        let inner = self.lock()?;
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(inner
            .entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<MetaConfig> for MetaLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<MetaConfig>, SError> {
        let inner = self.lock()?;
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SError> {
        self.meta
            .put_raft(GROUP, "vote", vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SError> {
        self.meta
            .get_raft(GROUP, "vote")
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SError> {
        self.meta
            .put_raft(GROUP, "committed", &committed, false)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SError> {
        Ok(self
            .meta
            .get_raft::<Option<LogId<u64>>>(GROUP, "committed")
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<MetaConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.lock()?;
            for entry in entries {
                // Each put is synced: metadata entries are few and must survive power loss.
                self.meta
                    .put_raft_entry(GROUP, entry.log_id.index, &entry)
                    .map_err(write_err)?;
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SError> {
        let mut inner = self.lock()?;
        let doomed: Vec<u64> = inner
            .entries
            .range(log_id.index..)
            .map(|(k, _)| *k)
            .collect();
        self.forget(&mut inner, doomed)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SError> {
        let mut inner = self.lock()?;
        self.meta
            .put_raft(GROUP, "purged", &log_id, true)
            .map_err(write_err)?;
        let doomed: Vec<u64> = inner
            .entries
            .range(..=log_id.index)
            .map(|(k, _)| *k)
            .collect();
        self.forget(&mut inner, doomed)?;
        inner.purged = Some(log_id);
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    state: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The applied metadata: published on `state` (whole state) and `applied` (log index) after
/// every apply.
pub struct MetaStateMachine {
    meta: Arc<MetaStore>,
    applied: Applied,
    state_tx: watch::Sender<Arc<ClusterState>>,
    index_tx: watch::Sender<u64>,
}

/// Receivers for what the state machine publishes.
#[derive(Clone)]
pub struct MetaWatch {
    pub state: watch::Receiver<Arc<ClusterState>>,
    pub applied: watch::Receiver<u64>,
}

impl MetaStateMachine {
    pub fn open(meta: Arc<MetaStore>) -> Result<(Self, MetaWatch), SError> {
        let applied: Applied = meta
            .get_raft(GROUP, "state")
            .map_err(|e| StorageIOError::read_state_machine(&e))?
            .unwrap_or_default();
        let mut published = applied.state.clone();
        published.applied_index = applied.last_applied.map_or(0, |l| l.index);
        let (state_tx, state) = watch::channel(Arc::new(published));
        let (index_tx, applied_rx) = watch::channel(applied.last_applied.map_or(0, |l| l.index));
        Ok((
            Self {
                meta,
                applied,
                state_tx,
                index_tx,
            },
            MetaWatch {
                state,
                applied: applied_rx,
            },
        ))
    }

    fn persist_and_publish(&mut self) -> Result<(), SError> {
        self.applied.state.applied_index = self.applied.last_applied.map_or(0, |l| l.index);
        self.meta
            .put_raft(GROUP, "state", &self.applied, true)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.state_tx
            .send_replace(Arc::new(self.applied.state.clone()));
        self.index_tx
            .send_replace(self.applied.last_applied.map_or(0, |l| l.index));
        Ok(())
    }
}

impl RaftStateMachine<MetaConfig> for MetaStateMachine {
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaReply>, SError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            self.applied.state.applied_index = entry.log_id.index;
            let reply = match entry.payload {
                EntryPayload::Normal(cmd) => self.applied.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    MetaReply::default()
                }
                EntryPayload::Blank => MetaReply::default(),
            };
            replies.push(reply);
        }
        self.persist_and_publish()?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetaSnapshotBuilder {
            meta: Arc::clone(&self.meta),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.meta
            .put_raft(GROUP, "snapshot", &stored, true)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.persist_and_publish()
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<MetaConfig>>, SError> {
        let stored: Option<StoredSnapshot> = self
            .meta
            .get_raft(GROUP, "snapshot")
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

pub struct MetaSnapshotBuilder {
    meta: Arc<MetaStore>,
    applied: Applied,
}

impl RaftSnapshotBuilder<MetaConfig> for MetaSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<MetaConfig>, SError> {
        let data = serde_json::to_vec(&self.applied.state)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("{}", self.applied.last_applied.map_or(0, |l| l.index)),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.meta
            .put_raft(GROUP, "snapshot", &stored, true)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
