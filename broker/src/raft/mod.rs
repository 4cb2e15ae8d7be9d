//! Raft (openraft) for partitions: each partition is one Raft group whose log is the
//! partition's segment log (see `storage::log`). Its voters are the partition's replicas;
//! the transport is `cluster::network`.

// openraft's storage traits return its `StorageError` (208 bytes); our helpers return the same
// type so `?` flows through them unchanged. Errors are rare, so the size costs nothing.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod state_machine;

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

openraft::declare_raft_types!(
    /// Types of a partition's Raft group.
    pub TypeConfig:
        D = BatchEntry,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type PartitionRaft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StorageError = openraft::StorageError<u64>;

/// Fired once when the leader has written an entry to its own log (before fsync and before
/// commit): what acks=1 waits for. Carries false when the batch was stored voided (its
/// numbers belonged to another term, see `frontier::stale_reservation`).
#[derive(Clone, Default)]
pub struct AppendedSignal(Arc<Mutex<Option<oneshot::Sender<bool>>>>);

impl AppendedSignal {
    pub fn new() -> (Self, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    pub fn fire(&self, intact: bool) {
        if let Ok(mut slot) = self.0.lock() {
            if let Some(tx) = slot.take() {
                let _ = tx.send(intact);
            }
        }
    }
}

impl std::fmt::Debug for AppendedSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppendedSignal")
    }
}

/// The application payload of a Raft entry: one record batch, already stamped with its GSN
/// base offset and, in partitionLeaderEpoch, the term its numbers were taken in. The log
/// store voids a batch whose entry has another term, then writes the entry's term there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchEntry {
    pub batch: Bytes,
    /// Local-only hook for acks=1; never replicated.
    #[serde(skip)]
    pub appended: Option<AppendedSignal>,
    /// True when this broker's produce path checked the batch (CRC, records). Entries that
    /// arrive from a leader deserialize as false and are verified before they are stored.
    #[serde(skip)]
    pub verified: bool,
}

impl BatchEntry {
    /// A batch received from another node: verified again before it is stored.
    pub fn received(batch: Bytes) -> Self {
        Self {
            batch,
            appended: None,
            verified: false,
        }
    }
}

/// What applying an entry reports back to the writer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub high_watermark: i64,
}

/// Raft settings of partition groups. Raft never snapshots on its own: retention and
/// DeleteRecords trigger a snapshot at the last entry they delete, and the log is purged right
/// up to it (`max_in_snapshot_log_to_keep` = 0), which deletes those segments.
pub fn partition_raft_config(
    timing: crate::cluster::RaftTiming,
) -> Result<Arc<openraft::Config>, crate::cluster::ClusterError> {
    let base = timing.config("partition", openraft::SnapshotPolicy::Never)?;
    let config = openraft::Config {
        max_in_snapshot_log_to_keep: 0,
        ..(*base).clone()
    };
    let valid = config
        .validate()
        .map_err(|e| crate::cluster::ClusterError::Raft(e.to_string()))?;
    Ok(Arc::new(valid))
}
