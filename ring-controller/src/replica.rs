//! One controller replica: the Raft node, its TCP server, and the conditional write.

// openraft's error types are large (StorageError, ConfigError, RaftError); they occur only at
// start-up or on a failed write, so carrying them unboxed costs nothing that matters.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use sequencer_p4::config::RingConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::net::{serve, TcpNetwork};
use crate::store::{
    Command, ControllerRaft, CtrlState, LogStore, Outcome, RosterEntry, StateMachine,
};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] openraft::StorageError<u64>),
    #[error("raft fatal: {0}")]
    Fatal(#[from] openraft::error::Fatal<u64>),
    #[error("write refused: {0}")]
    Write(#[from] RaftError<u64, ClientWriteError<u64, BasicNode>>),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    #[error("replica {0} is not in the group")]
    NotAMember(u64),
    #[error("replica {0} did not catch up with the log within {1:?} (is it running with --join, and is its address right?); it stays a learner")]
    NotCaughtUp(u64, Duration),
    #[error("cannot remove the last voter")]
    LastVoter,
    #[error("membership change failed: {0}")]
    Raft(String),
}

impl MembershipError {
    fn from_raft(e: RaftError<u64, ClientWriteError<u64, BasicNode>>, leader: Option<u64>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                MembershipError::NotLeader(f.leader_id.or(leader))
            }
            other => MembershipError::Raft(other.to_string()),
        }
    }
}

/// Result of `install`: whether our configuration won, and what is stored now.
#[derive(Debug, Clone)]
pub struct InstallResult {
    pub won: bool,
    pub state: CtrlState,
}

#[derive(Clone)]
pub struct Replica {
    pub id: u64,
    pub raft: ControllerRaft,
    state: watch::Receiver<CtrlState>,
}

/// Raft timing for the control plane: elections well under the ring's reconfiguration
/// give-up time, so a dead leader is replaced before switches notice anything.
pub fn raft_config() -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: "ring-controller".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

impl Replica {
    /// Starts replica `id`, serving Raft on `listener`. `peers` includes this replica.
    /// Every replica tries to initialize the same membership; openraft refuses it once a
    /// log exists, so racing initializations are harmless.
    pub async fn start(
        id: u64,
        peers: BTreeMap<u64, SocketAddr>,
        listener: TcpListener,
        data_dir: Option<PathBuf>,
    ) -> Result<Self, ReplicaError> {
        Self::start_with_config(id, peers, listener, data_dir, raft_config()?).await
    }

    /// [`Replica::start`] with other Raft timing (tests that need elections to collide).
    pub async fn start_with_config(
        id: u64,
        peers: BTreeMap<u64, SocketAddr>,
        listener: TcpListener,
        data_dir: Option<PathBuf>,
        config: Arc<openraft::Config>,
    ) -> Result<Self, ReplicaError> {
        if let Some(d) = &data_dir {
            std::fs::create_dir_all(d)?;
        }
        let log = LogStore::open(data_dir)?;
        let (sm, state) = StateMachine::new();
        let net = TcpNetwork {
            peers: peers.clone(),
        };
        let raft = ControllerRaft::new(id, config, net, log, sm).await?;
        raft_support::spawn_split_vote_breaker(raft.clone());
        tokio::spawn(serve(listener, raft.clone()));
        let members: BTreeMap<u64, BasicNode> = peers
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a.to_string())))
            .collect();
        // Only the lowest id initializes: one bootstrap proposal, no split first term.
        if peers.keys().next() == Some(&id) {
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "initialize skipped");
            }
        }
        Ok(Self { id, raft, state })
    }

    /// Starts replica `id` that is not part of any group yet: it initializes nothing and
    /// waits for a leader to add it ([`Replica::add_member`] on the leader). Its peers'
    /// addresses come from the membership it receives.
    pub async fn join(
        id: u64,
        listener: TcpListener,
        data_dir: Option<PathBuf>,
    ) -> Result<Self, ReplicaError> {
        if let Some(d) = &data_dir {
            std::fs::create_dir_all(d)?;
        }
        let log = LogStore::open(data_dir)?;
        let (sm, state) = StateMachine::new();
        let net = TcpNetwork {
            peers: BTreeMap::new(),
        };
        let raft = ControllerRaft::new(id, raft_config()?, net, log, sm).await?;
        raft_support::spawn_split_vote_breaker(raft.clone());
        tokio::spawn(serve(listener, raft.clone()));
        Ok(Self { id, raft, state })
    }

    /// Adds replica `id` (its Raft address `addr`) as a voter: first as a learner, then,
    /// once it has caught up with the log (within `catch_up`), by a joint-consensus
    /// membership change. Must run on the leader. Returns the voters afterwards. A learner
    /// that does not catch up stays a learner (remove it with [`Replica::remove_member`]).
    pub async fn add_member(
        &self,
        id: u64,
        addr: SocketAddr,
        catch_up: Duration,
    ) -> Result<BTreeSet<u64>, MembershipError> {
        if !self.is_leader() {
            return Err(MembershipError::NotLeader(self.leader()));
        }
        let mut voters = self.voters();
        if voters.contains(&id) {
            return Ok(voters);
        }
        let added = self
            .raft
            .add_learner(id, BasicNode::new(addr.to_string()), false)
            .await
            .map_err(|e| MembershipError::from_raft(e, self.leader()))?;
        let target = added.log_id.index;
        let caught_up = self
            .raft
            .wait(Some(catch_up))
            .metrics(
                |m| {
                    m.replication.as_ref().is_some_and(|r| {
                        r.get(&id)
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|l| l.index >= target)
                    })
                },
                "new controller replica caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(MembershipError::NotCaughtUp(id, catch_up));
        }
        voters.insert(id);
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map_err(|e| MembershipError::from_raft(e, self.leader()))?;
        Ok(self.voters())
    }

    /// Removes replica `id` from the group (a voter, or a learner that never caught up).
    /// Must run on the leader; refuses to remove the last voter. Returns the voters
    /// afterwards.
    pub async fn remove_member(&self, id: u64) -> Result<BTreeSet<u64>, MembershipError> {
        if !self.is_leader() {
            return Err(MembershipError::NotLeader(self.leader()));
        }
        let mut voters = self.voters();
        let change = if voters.remove(&id) {
            if voters.is_empty() {
                return Err(MembershipError::LastVoter);
            }
            ChangeMembers::ReplaceAllVoters(voters)
        } else if self.nodes().contains_key(&id) {
            ChangeMembers::RemoveNodes([id].into())
        } else {
            return Err(MembershipError::NotAMember(id));
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| MembershipError::from_raft(e, self.leader()))?;
        Ok(self.voters())
    }

    /// Every node in the membership with its Raft address (voters and learners).
    pub fn nodes(&self) -> BTreeMap<u64, String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// The state this replica has applied (possibly behind the leader).
    pub fn state(&self) -> CtrlState {
        self.state.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<CtrlState> {
        self.state.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    async fn write(&self, cmd: Command) -> Result<Outcome, ReplicaError> {
        Ok(self.raft.client_write(cmd).await?.data)
    }

    /// The conditional write: stores `config` only if the stored epoch is still
    /// `expected_epoch`. Must be called on the leader (others get ForwardToLeader).
    pub async fn install(
        &self,
        expected_epoch: u32,
        config: RingConfig,
    ) -> Result<InstallResult, ReplicaError> {
        let o = self
            .write(Command::Install {
                expected_epoch,
                config,
            })
            .await?;
        Ok(InstallResult {
            won: o.applied,
            state: o.state,
        })
    }

    pub async fn set_roster(&self, roster: Vec<RosterEntry>) -> Result<CtrlState, ReplicaError> {
        Ok(self.write(Command::SetRoster { roster }).await?.state)
    }

    /// Waits (bounded) until some replica is leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let mut m = self.raft.metrics();
        let fut = async {
            loop {
                if let Some(l) = m.borrow().current_leader {
                    return l;
                }
                if m.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok()
    }

    /// Voter ids in the current membership (for diagnostics).
    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}
