//! The partition's Raft state machine. The partition log itself is the replicated state, so
//! applying an entry only advances the high watermark (the offset after the last committed
//! record) and wakes long-polling fetches.
//!
//! Snapshots exist to delete data: retention (and DeleteRecords) asks for a snapshot whose
//! last log id is the last entry of the segments to delete (`SnapshotTarget`), openraft then
//! purges the log up to it, and the log store deletes those segments. The snapshot holds no
//! records, only the new log start offset and the high watermark: what it covers is deleted
//! on every replica that installs it. A follower behind the leader's purge point receives it,
//! deletes its own batches up to that point and replicates the rest normally.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::log_store::{raise_log_start, SharedLog};
use super::{Applied, Entry, LogId, StorageError, TypeConfig};
use crate::storage::batch;
use crate::storage::meta::MetaStore;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    high_watermark: i64,
}

/// The content of a partition snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// The log start offset once everything the snapshot covers is deleted.
    pub log_start: i64,
    pub high_watermark: i64,
}

/// What the next snapshot should cover, set by retention before it triggers one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTarget {
    /// The last Raft entry to delete; must be applied when the snapshot is built.
    pub last_log_id: LogId,
    pub log_start: i64,
}

pub type TargetSlot = Arc<Mutex<Option<SnapshotTarget>>>;

/// The current snapshot, persisted in RocksDB (openraft sends it to followers behind the
/// purge point and reads it at start).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: SnapshotData,
}

type CurrentSnapshot = Arc<Mutex<Option<StoredSnapshot>>>;

/// The last log id of the partition's stored snapshot, if it has one.
pub fn stored_snapshot_last_log_id(
    meta: &MetaStore,
    group: &str,
) -> Result<Option<LogId>, crate::storage::meta::MetaError> {
    Ok(meta
        .get_raft::<StoredSnapshot>(group, "snapshot")?
        .and_then(|s| s.meta.last_log_id))
}

pub struct StateMachineStore {
    group: String,
    meta: Arc<MetaStore>,
    state: AppliedState,
    high_watermark: watch::Sender<i64>,
    /// Broker-wide: notified whenever any partition's high watermark moves.
    data_arrived: Arc<Notify>,
    current: CurrentSnapshot,
    target: TargetSlot,
    log: SharedLog,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    pub fn open(
        group: &str,
        meta: Arc<MetaStore>,
        data_arrived: Arc<Notify>,
        log: SharedLog,
    ) -> Result<(Self, watch::Receiver<i64>), StorageError> {
        let read = |e: crate::storage::meta::MetaError| StorageIOError::read_state_machine(&e);
        let mut state: AppliedState = meta
            .get_raft(group, "applied")
            .map_err(read)?
            .unwrap_or_default();
        let current: Option<StoredSnapshot> = meta.get_raft(group, "snapshot").map_err(read)?;
        if let Some(snap) = &current {
            // The applied state is written unsynced; the snapshot (synced) proves at least
            // this much was applied, and the entries below it may be purged already.
            if snap.meta.last_log_id > state.last_applied {
                state.last_applied = snap.meta.last_log_id;
                state.membership = snap.meta.last_membership.clone();
            }
            state.high_watermark = state.high_watermark.max(snap.data.high_watermark);
        }
        let (tx, rx) = watch::channel(state.high_watermark);
        Ok((
            Self {
                group: group.to_string(),
                meta,
                state,
                high_watermark: tx,
                data_arrived,
                current: Arc::new(Mutex::new(current)),
                target: Arc::new(Mutex::new(None)),
                log,
            },
            rx,
        ))
    }

    /// Where retention puts the cut of the next snapshot.
    pub fn target_slot(&self) -> TargetSlot {
        Arc::clone(&self.target)
    }

    fn persist(&self) -> Result<(), StorageError> {
        // Not synced: after a crash Raft re-applies from the older applied id, which is exact
        // because applying is idempotent (the high watermark only moves forward).
        self.meta
            .put_raft(&self.group, "applied", &self.state, false)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }
}

fn store_snapshot(
    meta: &MetaStore,
    group: &str,
    current: &CurrentSnapshot,
    snap: StoredSnapshot,
) -> Result<(), StorageError> {
    meta.put_raft(group, "snapshot", &snap, true)
        .map_err(sm_err)?;
    match current.lock() {
        Ok(mut c) => *c = Some(snap),
        Err(poisoned) => *poisoned.into_inner() = Some(snap),
    }
    Ok(())
}

fn to_snapshot(snap: &StoredSnapshot) -> Result<Snapshot<TypeConfig>, StorageError> {
    let bytes = serde_json::to_vec(&snap.data).map_err(sm_err)?;
    Ok(Snapshot {
        meta: snap.meta.clone(),
        snapshot: Box::new(Cursor::new(bytes)),
    })
}

fn current_of(current: &CurrentSnapshot) -> Option<StoredSnapshot> {
    match current.lock() {
        Ok(c) => c.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotCopy;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Normal(data) => {
                    if let Ok(span) = batch::read_span(&data.batch) {
                        self.state.high_watermark =
                            self.state.high_watermark.max(span.last_offset + 1);
                    }
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m);
                }
                EntryPayload::Blank => {}
            }
            out.push(Applied {
                high_watermark: self.state.high_watermark,
            });
        }
        self.persist()?;
        self.high_watermark.send_replace(self.state.high_watermark);
        self.data_arrived.notify_waiters();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let target = match self.target.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        SnapshotCopy {
            state: self.state.clone(),
            target,
            group: self.group.clone(),
            meta: Arc::clone(&self.meta),
            current: Arc::clone(&self.current),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        store_snapshot(
            &self.meta,
            &self.group,
            &self.current,
            StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        {
            let mut shared = self
                .log
                .write()
                .map_err(|_| sm_err(std::io::Error::other("partition log lock poisoned")))?;
            raise_log_start(&self.meta, &self.group, &mut shared, data.log_start)?;
        }
        self.state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            high_watermark: data.high_watermark.max(self.state.high_watermark),
        };
        self.persist()?;
        self.high_watermark.send_replace(self.state.high_watermark);
        self.data_arrived.notify_waiters();
        tracing::info!(
            group = %self.group,
            upto = ?meta.last_log_id,
            log_start = data.log_start,
            "installed partition snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        current_of(&self.current)
            .as_ref()
            .map(to_snapshot)
            .transpose()
    }
}

/// Builds a snapshot at the retention target, off the state machine's task. Without a usable
/// target (none set, not applied yet, not past the current snapshot) it returns the current
/// snapshot again, which openraft ignores as not newer.
pub struct SnapshotCopy {
    state: AppliedState,
    target: Option<SnapshotTarget>,
    group: String,
    meta: Arc<MetaStore>,
    current: CurrentSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotCopy {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let current = current_of(&self.current);
        let usable = self.target.filter(|t| {
            Some(t.last_log_id) <= self.state.last_applied
                && current
                    .as_ref()
                    .is_none_or(|c| Some(t.last_log_id) > c.meta.last_log_id)
        });
        let Some(target) = usable else {
            return match &current {
                Some(c) => to_snapshot(c),
                None => to_snapshot(&StoredSnapshot {
                    meta: SnapshotMeta::default(),
                    data: SnapshotData::default(),
                }),
            };
        };
        let log_start = current
            .as_ref()
            .map_or(target.log_start, |c| c.data.log_start.max(target.log_start));
        let snap = StoredSnapshot {
            // Partition groups never change membership after their first entries, so the
            // applied membership is the one in force at the cut too.
            meta: SnapshotMeta {
                last_log_id: Some(target.last_log_id),
                last_membership: self.state.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    target.last_log_id.leader_id.term, target.last_log_id.index
                ),
            },
            data: SnapshotData {
                log_start,
                high_watermark: self.state.high_watermark,
            },
        };
        store_snapshot(&self.meta, &self.group, &self.current, snap.clone())?;
        to_snapshot(&snap)
    }
}
