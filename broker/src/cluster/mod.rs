//! The cluster: the metadata Raft group every broker takes part in (voters = the seed list,
//! other brokers as learners), the broker-to-broker transport, and the registry of partition
//! Raft groups that peers' RPCs are routed to.
//!
//! A broker without `--seeds` is a cluster of one: the same code with a single voter and no
//! transport listener.

pub mod meta_store;
pub mod metadata;
pub mod network;
pub mod transport;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::net::TcpListener;

use self::meta_store::{MetaLogStore, MetaStateMachine, MetaWatch};
use self::metadata::{BrokerInfo, ClusterState, MetaCommand, MetaRaft, MetaReply, Rejection};
use self::network::{MetaRoute, Network};
use self::transport::{Handler, Transport};
use self::wire::{ForwardError, GroupKey, Request, Response};
use crate::raft::PartitionRaft;
use crate::storage::meta::MetaStore;

/// How long a metadata write keeps looking for a leader.
const WRITE_DEADLINE: Duration = Duration::from_secs(15);
/// How long a forwarded write may take on the leader.
const FORWARD_TTL: Duration = Duration::from_secs(10);
/// How often each broker probes every other registered broker (liveness for Metadata).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("raft: {0}")]
    Raft(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("no metadata leader answered within {0:?}")]
    NoQuorum(Duration),
}

/// Raft timing, shared by the metadata group and the partition groups.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
}

impl RaftTiming {
    pub fn config(
        &self,
        name: &str,
        snapshots: openraft::SnapshotPolicy,
    ) -> Result<Arc<openraft::Config>, ClusterError> {
        let config = openraft::Config {
            cluster_name: name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_min_ms * 2,
            snapshot_policy: snapshots,
            max_payload_entries: 64,
            // Elections are started by the pre-vote driver (`spawn_elections`).
            enable_elect: false,
            ..Default::default()
        };
        let valid = config
            .validate()
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(Arc::new(valid))
    }
}

/// Starts a group's election driver: openraft's own election timer is off in every group
/// (`RaftTiming::config`), and elections start only after a pre-vote round finds a quorum
/// that would vote (`raft_support::prevote`), so a broker cut off from the others does not
/// raise its terms and force elections when it comes back.
pub fn spawn_elections<C, R>(raft: openraft::Raft<C>, network: Network<R>)
where
    C: openraft::RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    R: network::Route<C>,
{
    raft_support::spawn_election_driver(raft, network);
}

pub struct ClusterOptions {
    pub node_id: u64,
    /// Metadata voters: node id -> Raft transport address.
    pub seeds: BTreeMap<u64, String>,
    /// This broker's registration (its Raft address and Kafka listeners).
    pub info: BrokerInfo,
    /// This broker's own cluster id, proposed if the cluster has none yet.
    pub cluster_id: String,
    pub timing: RaftTiming,
    /// A broker that has not answered for this long is not live (broker.session.timeout.ms).
    pub session_timeout: Duration,
}

/// Answers peers' frontier probes (the broker's frontier driver).
pub trait FrontierPeer: Send + Sync {
    fn on_probe(&self, probe: frontier::Probe<GroupKey>) -> frontier::Ack<GroupKey>;
}

pub struct Cluster {
    pub node_id: u64,
    pub raft: MetaRaft,
    pub watch: MetaWatch,
    pub transport: Arc<Transport>,
    pub timing: RaftTiming,
    seeds: BTreeMap<u64, String>,
    groups: RwLock<HashMap<GroupKey, PartitionRaft>>,
    frontier: std::sync::OnceLock<Arc<dyn FrontierPeer>>,
    /// Set when the cluster refused this broker's registration: the reason it must stop.
    refused: tokio::sync::watch::Sender<Option<String>>,
    started: Instant,
    session_timeout: Duration,
}

impl Cluster {
    /// Opens the metadata group, serves peers on `listener` (if any) and registers this
    /// broker in the background.
    pub async fn start(
        options: ClusterOptions,
        meta: Arc<MetaStore>,
        listener: Option<TcpListener>,
    ) -> Result<Arc<Self>, ClusterError> {
        let storage = |e: openraft::StorageError<u64>| ClusterError::Storage(e.to_string());
        let raft_err = |e: &dyn std::fmt::Display| ClusterError::Raft(e.to_string());
        let transport = Transport::new(options.node_id);
        let log = MetaLogStore::open(Arc::clone(&meta)).map_err(storage)?;
        let (sm, watch) = MetaStateMachine::open(meta).map_err(storage)?;
        // The metadata group runs at half the partitions' pace: a metadata leader change
        // stalls only admin requests and leader reports, so it is better rare than fast.
        let meta_timing = RaftTiming {
            heartbeat_ms: options.timing.heartbeat_ms * 2,
            election_min_ms: options.timing.election_min_ms * 2,
        };
        let config = meta_timing
            .config("metadata", openraft::SnapshotPolicy::LogsSinceLast(1000))
            .map_err(|e| raft_err(&e))?;
        let network = Network::new(Arc::clone(&transport), MetaRoute);
        let raft = MetaRaft::new(options.node_id, config, network.clone(), log, sm)
            .await
            .map_err(|e| raft_err(&e))?;
        spawn_elections(raft.clone(), network);
        let is_voter = options.seeds.contains_key(&options.node_id);
        if is_voter && !raft.is_initialized().await.map_err(|e| raft_err(&e))? {
            // Every seed initializes with the same voter set: openraft documents this as
            // safe (the vote decides), and it lets the cluster form whichever seed starts
            // first.
            let members: BTreeMap<u64, BasicNode> = options
                .seeds
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "metadata group already initialized");
            }
        }
        let cluster = Arc::new(Self {
            node_id: options.node_id,
            raft,
            watch,
            transport,
            timing: options.timing,
            seeds: options.seeds,
            groups: RwLock::new(HashMap::new()),
            frontier: std::sync::OnceLock::new(),
            refused: tokio::sync::watch::channel(None).0,
            started: Instant::now(),
            session_timeout: options.session_timeout,
        });
        if let Some(listener) = listener {
            tokio::spawn(transport::serve(listener, Arc::clone(&cluster)));
        }
        tokio::spawn(register(
            Arc::clone(&cluster),
            options.info,
            options.cluster_id,
        ));
        tokio::spawn(add_learners(Arc::clone(&cluster)));
        tokio::spawn(probe_brokers(Arc::clone(&cluster)));
        Ok(cluster)
    }

    /// Resolves with the reason once the cluster refused this broker's registration (its
    /// sequencer is not the cluster's); the broker then stops. Pending forever otherwise.
    pub async fn refused(&self) -> String {
        let mut rx = self.refused.subscribe();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Whether broker `id` is live, as Kafka's Metadata means it (KRaft fences a broker
    /// whose heartbeats stop for broker.session.timeout.ms): this broker itself, and every
    /// broker whose transport answered within the session timeout. Each broker probes the
    /// others every 500 ms, so the view is this broker's own. During the first session
    /// timeout after start, before probes could answer, every broker counts as live.
    pub fn is_live(&self, id: i32) -> bool {
        let Ok(node) = u64::try_from(id) else {
            return false;
        };
        node == self.node_id
            || self.started.elapsed() < self.session_timeout
            || self.transport.answered_within(node, self.session_timeout)
    }

    /// The applied cluster metadata.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.watch.state.borrow())
    }

    /// The metadata leader (Kafka's active controller), if known.
    pub fn controller(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Where peers' frontier probes go (set once, when the broker starts its driver).
    pub fn set_frontier_peer(&self, peer: Arc<dyn FrontierPeer>) {
        let _ = self.frontier.set(peer);
    }

    pub fn register_group(&self, key: GroupKey, raft: PartitionRaft) {
        if let Ok(mut g) = self.groups.write() {
            g.insert(key, raft);
        }
    }

    pub fn unregister_group(&self, key: &GroupKey) {
        if let Ok(mut g) = self.groups.write() {
            g.remove(key);
        }
    }

    fn group(&self, key: &GroupKey) -> Option<PartitionRaft> {
        self.groups.read().ok()?.get(key).cloned()
    }

    /// Raft address of node `id`: its registration, else the seed list.
    pub fn raft_addr(&self, id: u64) -> Option<String> {
        let state = self.state();
        i32::try_from(id)
            .ok()
            .and_then(|i| state.brokers.get(&i))
            .map(|b| b.raft_addr.clone())
            .or_else(|| self.seeds.get(&id).cloned())
    }

    /// Commits `cmd` in the metadata group (here or on the leader) and waits until this
    /// broker has applied it.
    pub async fn write(&self, cmd: MetaCommand) -> Result<MetaReply, ClusterError> {
        let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
        let mut seed_turn = 0usize;
        loop {
            let leader = match self.write_local(cmd.clone()).await {
                Ok((reply, index)) => {
                    self.wait_applied(index).await;
                    return Ok(reply);
                }
                Err(ForwardError::NotLeader(leader)) => leader,
                Err(ForwardError::Failed(e)) => return Err(ClusterError::Raft(e)),
            };
            // Unknown leader (an election, or this broker is not a voter): ask the seeds in
            // turn; a seed that is not the leader names it.
            let target = leader.filter(|l| *l != self.node_id).or_else(|| {
                let others: Vec<u64> = self
                    .seeds
                    .keys()
                    .copied()
                    .filter(|s| *s != self.node_id)
                    .collect();
                seed_turn += 1;
                others.get(seed_turn % others.len().max(1)).copied()
            });
            if let Some(target) = target {
                if let Some(reply) = self.forward(target, &cmd).await {
                    return Ok(reply);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NoQuorum(WRITE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn forward(&self, target: u64, cmd: &MetaCommand) -> Option<MetaReply> {
        let addr = self.raft_addr(target)?;
        let request = Request::MetaWrite(cmd.clone());
        match self
            .transport
            .call(target, &addr, &request, FORWARD_TTL)
            .await
        {
            Ok(Response::MetaWrite(Ok((reply, index)))) => {
                self.wait_applied(index).await;
                Some(reply)
            }
            Ok(other) => {
                tracing::debug!(target, answer = ?other, "metadata write not taken");
                None
            }
            Err(e) => {
                tracing::debug!(target, error = %e, "metadata write forward failed");
                None
            }
        }
    }

    /// Proposes `cmd` through this node's Raft; returns the reply and its log index.
    async fn write_local(&self, cmd: MetaCommand) -> Result<(MetaReply, u64), ForwardError> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader(f.leader_id))
            }
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        }
    }

    /// Waits (bounded) until this broker's metadata has caught up with `index`.
    async fn wait_applied(&self, index: u64) {
        let mut applied = self.watch.applied.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|a| *a >= index)).await;
    }
}

impl Handler for Cluster {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Append(key, rpc) => match self.group(&key) {
                Some(raft) => Response::Append(raft.append_entries(rpc).await),
                None => Response::NoGroup,
            },
            Request::Vote(key, rpc) => match self.group(&key) {
                Some(raft) => Response::Vote(raft.vote(rpc).await),
                None => Response::NoGroup,
            },
            Request::Snapshot(key, rpc) => match self.group(&key) {
                Some(raft) => Response::Snapshot(raft.install_snapshot(rpc).await),
                None => Response::NoGroup,
            },
            Request::MetaAppend(rpc) => Response::Append(self.raft.append_entries(rpc).await),
            Request::MetaVote(rpc) => Response::Vote(self.raft.vote(rpc).await),
            Request::MetaSnapshot(rpc) => Response::Snapshot(self.raft.install_snapshot(rpc).await),
            Request::MetaWrite(cmd) => Response::MetaWrite(self.write_local(cmd).await),
            Request::Frontier(probe) => match self.frontier.get() {
                Some(peer) => Response::Frontier(peer.on_probe(probe)),
                None => Response::NoGroup,
            },
            Request::Ping => Response::Pong,
            Request::PreVote(key, rpc) => match self.group(&key) {
                Some(raft) => Response::PreVote(raft_support::answer_pre_vote(&raft, &rpc).await),
                None => Response::NoGroup,
            },
            Request::MetaPreVote(rpc) => {
                Response::PreVote(raft_support::answer_pre_vote(&self.raft, &rpc).await)
            }
        }
    }
}

/// Registers this broker (its listeners and Raft address) until the cluster has taken it,
/// and again whenever the registration in the metadata differs (e.g. after a restart with
/// new addresses).
async fn register(cluster: Arc<Cluster>, info: BrokerInfo, cluster_id: String) {
    let mut state = cluster.watch.state.clone();
    loop {
        let current = state.borrow_and_update().brokers.get(&info.id).cloned();
        if current.as_ref() != Some(&info) {
            let cmd = MetaCommand::RegisterBroker {
                info: info.clone(),
                cluster_id: cluster_id.clone(),
            };
            match cluster.write(cmd).await {
                Ok(MetaReply {
                    rejected: Some(Rejection::SequencerMismatch(why)),
                    ..
                }) => {
                    tracing::error!(id = info.id, reason = %why, "the cluster refused this broker");
                    cluster.refused.send_replace(Some(why));
                    return;
                }
                Ok(MetaReply {
                    rejected: Some(other),
                    ..
                }) => {
                    tracing::warn!(reason = %other, "broker registration refused; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Ok(_) => tracing::info!(id = info.id, "registered in the cluster metadata"),
                Err(e) => {
                    tracing::warn!(error = %e, "broker registration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Probes every other registered broker each PROBE_INTERVAL; an answer marks it live
/// (`Transport::answered_within`). Each probe runs on its own task, so a paused broker that
/// times out does not delay the others.
async fn probe_brokers(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = cluster.state();
        for b in state.brokers.values() {
            let Ok(id) = u64::try_from(b.id) else {
                continue;
            };
            if id == cluster.node_id {
                continue;
            }
            let transport = Arc::clone(&cluster.transport);
            let addr = b.raft_addr.clone();
            tokio::spawn(async move {
                let probe = transport.call(id, &addr, &Request::Ping, PROBE_INTERVAL * 2);
                if let Err(e) = probe.await {
                    tracing::trace!(peer = id, error = %e, "liveness probe failed");
                }
            });
        }
    }
}

/// On the metadata leader: adds registered brokers that are not seeds as learners, so they
/// receive the metadata log.
async fn add_learners(cluster: Arc<Cluster>) {
    let mut state = cluster.watch.state.clone();
    loop {
        let is_leader = cluster.controller() == Some(cluster.node_id);
        if is_leader {
            let brokers = state.borrow_and_update().brokers.clone();
            let members: Vec<u64> = cluster
                .raft
                .metrics()
                .borrow()
                .membership_config
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            for (id, b) in brokers {
                let id = id as u64;
                if !members.contains(&id) {
                    let node = BasicNode::new(&b.raft_addr);
                    match cluster.raft.add_learner(id, node, false).await {
                        Ok(_) => tracing::info!(id, "added broker as metadata learner"),
                        Err(e) => tracing::warn!(id, error = %e, "cannot add metadata learner"),
                    }
                }
            }
        }
        // Re-check on metadata changes, and now and then for leadership changes.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(2), state.changed()).await {
            return;
        }
    }
}
