//! The consensus-backed configuration store: openraft log + state machine, in memory, with
//! the Raft-critical part (vote, log, committed id) mirrored to one small JSON file per
//! replica.
//!
//! The state machine holds the current [`sequencer_p4::config::RingConfig`] and the switch roster. Its only
//! conditional command is [`Command::Install`]: applied only if the stored epoch is still
//! the expected one. Because every replica applies the same log in the same order, two
//! controllers racing to store epoch e+1 get exactly one winner, and the loser learns the
//! winner's configuration from the response (Delos' VirtualLog "install" step).

// openraft's storage traits return its `StorageError` (208 bytes); our helpers return the same
// type so `?` flows through them unchanged. Errors are rare, so the size costs nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

openraft::declare_raft_types!(
    /// Types of the controllers' Raft group.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type ControllerRaft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StorageError = openraft::StorageError<u64>;

pub use sequencer_p4::control::{Command, CtrlState, RosterEntry};

/// What applying a command reports back: whether it took effect, and the state after it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub applied: bool,
    pub state: CtrlState,
}

/// The part of Raft state that must survive a restart for Raft to be safe.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Durable {
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
}

struct LogInner {
    durable: Durable,
    path: Option<PathBuf>,
}

impl LogInner {
    /// Rewrites the whole file (it holds one entry per reconfiguration: small) through a
    /// temporary file and a rename, fsynced, so a crash leaves the old or the new version.
    fn persist(&self) -> Result<(), StorageError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |e: std::io::Error| StorageError::from(StorageIOError::write(&e));
        let bytes = serde_json::to_vec(&self.durable)
            .map_err(|e| StorageError::from(StorageIOError::write(&e)))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Raft log storage; cheap to clone (shared inner state).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn lock_err() -> StorageError {
    StorageIOError::write(&std::io::Error::other("log store lock poisoned")).into()
}

impl LogStore {
    /// Opens (or creates) `dir/raft.json`; `None` keeps everything in memory (tests).
    pub fn open(dir: Option<PathBuf>) -> Result<Self, StorageError> {
        let path = dir.map(|d| d.join("raft.json"));
        let durable = match &path {
            Some(p) if p.exists() => {
                let bytes =
                    std::fs::read(p).map_err(|e| StorageError::from(StorageIOError::read(&e)))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| StorageError::from(StorageIOError::read(&e)))?
            }
            _ => Durable::default(),
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(LogInner { durable, path })),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().map_err(|_| lock_err())?;
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
            .durable
            .log
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().map_err(|_| lock_err())?;
        let last = inner.durable.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.durable.last_purged,
            last_log_id: last.or(inner.durable.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().map_err(|_| lock_err())?;
        inner.durable.vote = Some(*vote);
        inner.persist()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.inner.lock().map_err(|_| lock_err())?.durable.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().map_err(|_| lock_err())?;
        inner.durable.committed = committed;
        inner.persist()
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.lock().map_err(|_| lock_err())?.durable.committed)
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
        let result = {
            let mut inner = self.inner.lock().map_err(|_| lock_err())?;
            for e in entries {
                inner.durable.log.insert(e.log_id.index, e);
            }
            inner.persist()
        };
        // The file is fsynced inside persist(), so the entries are durable when we report.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().map_err(|_| lock_err())?;
        let _ = inner.durable.log.split_off(&log_id.index);
        inner.persist()
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().map_err(|_| lock_err())?;
        let keep = inner.durable.log.split_off(&(log_id.index + 1));
        inner.durable.log = keep;
        inner.durable.last_purged = Some(log_id);
        inner.persist()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    state: CtrlState,
}

/// The state machine. Kept in memory only: openraft re-applies the committed log on start
/// (the log and the committed id are in the replica's JSON file), which rebuilds it.
pub struct StateMachine {
    applied: Applied,
    published: watch::Sender<CtrlState>,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

impl StateMachine {
    /// The state machine and a receiver that sees every applied state (for `GET /ring` and
    /// the controller loop).
    pub fn new() -> (Self, watch::Receiver<CtrlState>) {
        let (tx, rx) = watch::channel(CtrlState::default());
        (
            Self {
                applied: Applied::default(),
                published: tx,
                snapshot: None,
            },
            rx,
        )
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotCopy;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            let applied = match &entry.payload {
                EntryPayload::Normal(cmd) => self.applied.state.apply(cmd),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    true
                }
                EntryPayload::Blank => true,
            };
            out.push(Outcome {
                applied,
                state: self.applied.state.clone(),
            });
        }
        self.published.send_replace(self.applied.state.clone());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotCopy {
            applied: self.applied.clone(),
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
        let applied: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: applied.state,
        };
        self.published.send_replace(self.applied.state.clone());
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

/// Builds snapshots from a copy of the applied state. Snapshots are never triggered by
/// policy (the log has one entry per reconfiguration); this exists because the trait needs it.
pub struct SnapshotCopy {
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotCopy {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = serde_json::to_vec(&self.applied)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("{}", self.applied.last_applied.map_or(0, |l| l.index)),
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
