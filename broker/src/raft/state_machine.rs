//! The partition's Raft state machine. The partition log itself is the replicated state, so
//! applying an entry only advances the high watermark (the offset after the last committed
//! record) and wakes long-polling fetches.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::{Applied, Entry, LogId, StorageError, TypeConfig};
use crate::storage::batch;
use crate::storage::meta::MetaStore;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    high_watermark: i64,
}

pub struct StateMachineStore {
    group: String,
    meta: Arc<MetaStore>,
    state: AppliedState,
    high_watermark: watch::Sender<i64>,
    /// Broker-wide: notified whenever any partition's high watermark moves.
    data_arrived: Arc<Notify>,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

impl StateMachineStore {
    pub fn open(
        group: &str,
        meta: Arc<MetaStore>,
        data_arrived: Arc<Notify>,
    ) -> Result<(Self, watch::Receiver<i64>), StorageError> {
        let state: AppliedState = meta
            .get_raft(group, "applied")
            .map_err(|e| StorageIOError::read_state_machine(&e))?
            .unwrap_or_default();
        let (tx, rx) = watch::channel(state.high_watermark);
        Ok((
            Self {
                group: group.to_string(),
                meta,
                state,
                high_watermark: tx,
                data_arrived,
                snapshot: None,
            },
            rx,
        ))
    }

    fn persist(&self) -> Result<(), StorageError> {
        // Not synced: after a crash Raft re-applies from the older applied id, which is exact
        // because applying is idempotent (the high watermark only moves forward).
        self.meta
            .put_raft(&self.group, "applied", &self.state, false)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
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
        SnapshotCopy {
            state: self.state.clone(),
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
        let data = snapshot.into_inner();
        let state: AppliedState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            high_watermark: state.high_watermark.max(self.state.high_watermark),
        };
        self.persist()?;
        self.high_watermark.send_replace(self.state.high_watermark);
        self.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

/// Builds snapshots from a copy of the applied state, off the state machine's task.
pub struct SnapshotCopy {
    state: AppliedState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotCopy {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data =
            serde_json::to_vec(&self.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!("{}", self.state.last_applied.map_or(0, |l| l.index)),
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
