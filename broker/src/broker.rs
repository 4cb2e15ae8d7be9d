//! Broker state: the cluster membership, the topics this broker knows (from the metadata
//! Raft group) and the partition replicas it hosts, the sequencer client.
//!
//! Topics are created, deleted and grown by committing a command to the metadata group;
//! every broker then reconciles: it opens the replicas the metadata assigns to it and closes
//! (and deletes) the ones whose topic is gone. A reporter task tells the metadata which
//! partitions this broker leads, with their epoch and ISR.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use openraft::BasicNode;
use tokio::sync::{Notify, Semaphore};

use crate::cluster::metadata::ConfigTarget;
use crate::cluster::metadata::{
    BrokerInfo, ClusterState, Endpoint, MetaCommand, PartitionReport, PartitionState, Rejection,
};
use crate::cluster::wire::GroupKey;
use crate::cluster::{Cluster, ClusterError, ClusterOptions, RaftTiming};
use crate::config::{BrokerConfig, SequencerKind};
use crate::frontier_driver::Frontier;
use crate::metrics::Metrics;
use crate::partition::{Partition, PartitionEnv, PartitionSpec};
use crate::ring_sequencer::{ConfigSource, RingOptions, RingSequencer};
use crate::sequencer::{LocalSequencer, Sequencer, SequencerClient};
use crate::storage::health::StorageFailure;
use crate::storage::meta::{MetaError, MetaStore, TopicRecord};
use crate::topic_config::{self, ConfigOp, DynamicConfigs};

/// How long topic creation waits for the new partitions to elect leaders.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(10);
/// How often the reporter checks leadership and ISR of local partitions.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Most partitions a single topic may have, and in the whole cluster.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;
pub const MAX_PARTITIONS_TOTAL: usize = 20_000;

/// Names of the Kafka listeners (a connection's listener decides the addresses Metadata
/// advertises).
pub const EXTERNAL: &str = "external";
pub const INTERNAL: &str = "internal";

tokio::task_local! {
    /// The listener the request being handled arrived on.
    pub static LISTENER: &'static str;
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("metadata store: {0}")]
    Meta(#[from] MetaError),
    #[error("partition: {0}")]
    Partition(#[from] crate::partition::PartitionError),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("the cluster did not apply the change in time")]
    Timeout,
    #[error("{0}")]
    InvalidRequest(String),
}

pub struct Topic {
    pub record: TopicRecord,
    /// This broker's replica of each partition (`None`: hosted elsewhere, or it could not be
    /// opened: then it is in `unopened`).
    pub partitions: Vec<Option<Arc<Partition>>>,
    /// Replicas this broker hosts that failed to open (offline, as after a storage error).
    pub unopened: BTreeMap<i32, StorageFailure>,
}

impl Topic {
    /// This broker's replica of partition `index`, if it hosts one.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .and_then(Option::as_ref)
    }

    /// This broker's replica, or the error Kafka gives for a partition it cannot serve:
    /// unknown partition, NOT_LEADER_OR_FOLLOWER when another broker hosts it, and
    /// KAFKA_STORAGE_ERROR when its replica here is offline after a storage error.
    pub fn local(&self, index: i32) -> Result<&Arc<Partition>, ResponseError> {
        if index < 0 || index >= self.record.partitions {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        if self.unopened.contains_key(&index) {
            return Err(ResponseError::KafkaStorageError);
        }
        let p = self
            .partition(index)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        if p.is_offline() {
            return Err(ResponseError::KafkaStorageError);
        }
        Ok(p)
    }

    /// This broker's offline replicas of the topic, with the reason.
    pub fn offline_replicas(&self) -> Vec<(i32, StorageFailure)> {
        let running = self
            .partitions
            .iter()
            .flatten()
            .filter_map(|p| p.storage_failure().map(|f| (p.index, f.clone())));
        let mut out: Vec<(i32, StorageFailure)> = self
            .unopened
            .iter()
            .map(|(i, f)| (*i, f.clone()))
            .chain(running)
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Replica broker ids of partition `index` (records of single-broker versions have
    /// none: the partition lives on `me`).
    pub fn replicas(&self, index: i32, me: i32) -> Vec<i32> {
        replicas_of(&self.record, index, me)
    }
}

fn replicas_of(record: &TopicRecord, index: i32, me: i32) -> Vec<i32> {
    usize::try_from(index)
        .ok()
        .and_then(|i| record.replicas.get(i))
        .cloned()
        .unwrap_or_else(|| vec![me])
}

/// A broker as Metadata / DescribeCluster advertise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedBroker {
    pub id: i32,
    pub host: String,
    pub port: u16,
    /// See `Cluster::is_live`; Kafka calls the others fenced.
    pub live: bool,
}

/// Who leads a partition, as this broker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// -1: no leader known.
    pub leader: i32,
    pub epoch: i32,
    pub isr: Vec<i32>,
}

impl LeaderView {
    /// The view without offline replicas: out of the ISR, and no leader while the last
    /// known one is offline (its successor has not been heard of yet).
    fn without(mut self, offline: &BTreeSet<i32>) -> Self {
        if offline.contains(&self.leader) {
            self.leader = -1;
        }
        self.isr.retain(|b| !offline.contains(b));
        self
    }
}

pub struct Broker {
    pub config: BrokerConfig,
    pub meta: Arc<MetaStore>,
    pub metrics: Arc<Metrics>,
    /// This broker's own id, used until the cluster metadata has one.
    local_cluster_id: String,
    /// Notified whenever any partition's high watermark advances (wakes long polls).
    pub data_arrived: Arc<Notify>,
    /// Bytes of request frames held in memory at once, across all connections.
    pub inflight_bytes: Arc<Semaphore>,
    pub cluster: Arc<Cluster>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    sequencer: SequencerClient,
    /// Serializes reconciliation (opening and closing replicas).
    admin: tokio::sync::Mutex<()>,
    /// The group coordinator (consumer groups), set by `group::offsets_topic::start`.
    pub groups: std::sync::OnceLock<Arc<crate::group::Coordinator>>,
    /// The dynamic broker configs the local partitions' settings were computed with.
    applied_dynamic: std::sync::Mutex<DynamicConfigs>,
    /// This broker's block of producer ids (InitProducerId).
    pub producer_ids: crate::producer_ids::ProducerIds,
    /// The stable frontier of the global order (read_committed).
    pub frontier: Arc<Frontier>,
}

impl Broker {
    /// Opens the data directory, joins the cluster, opens the replicas this broker hosts and
    /// starts their Raft groups.
    pub async fn open(
        config: BrokerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, BrokerError> {
        std::fs::create_dir_all(config.data_dir.join("topics"))?;
        let meta = Arc::new(MetaStore::open(&config.data_dir.join("meta"))?);
        // Brokers of one cluster derive the same id from the seed list, so every broker
        // reports it even before it has applied the metadata that records it.
        let local_cluster_id = if config.seeds.is_empty() {
            meta.cluster_id()?
        } else {
            seeds_cluster_id(&config.seeds)
        };
        let cluster = start_cluster(&config, Arc::clone(&meta), &local_cluster_id).await?;
        // A member of a cluster restarted with another sequencer must not lead (and number)
        // anything: the metadata it already holds says so before its new registration is
        // refused.
        if let Some(why) = cluster
            .state()
            .sequencer_conflict(config.broker_id(), Some(config.sequencer))
        {
            return Err(BrokerError::InvalidConfig(why));
        }
        let data_arrived = Arc::new(Notify::new());
        // The sequencer must start above every stored offset; partitions open first with a
        // sequencer client whose numbers are only requested once they lead.
        let legacy = meta.topics()?;
        let floor = scan_max_offset(&config, &cluster.state(), &legacy)?;
        let sequencer = start_sequencer(&config, &meta, floor, &metrics).await?;
        let client =
            SequencerClient::start(sequencer, config.sequencer_window, Arc::clone(&metrics));
        let frontier = Frontier::new(config.node_id, config.frontier, Arc::clone(&metrics));
        // Before it answers any peer: which partitions exist and who votes in them.
        frontier.set_cluster(&cluster.state());
        frontier.start(Arc::clone(&cluster), client.clone(), floor);
        let inflight = (config.max_frame_bytes * 4).max(256 << 20);
        let broker = Arc::new(Self {
            inflight_bytes: Arc::new(Semaphore::new(inflight.min(Semaphore::MAX_PERMITS))),
            config,
            meta,
            metrics,
            local_cluster_id,
            data_arrived,
            cluster,
            topics: RwLock::new(BTreeMap::new()),
            sequencer: client,
            admin: tokio::sync::Mutex::new(()),
            applied_dynamic: std::sync::Mutex::new(DynamicConfigs::new()),
            groups: std::sync::OnceLock::new(),
            producer_ids: crate::producer_ids::ProducerIds::default(),
            frontier,
        });
        let state = broker.cluster.state();
        broker.reconcile(&state).await;
        tokio::spawn(run_reconciler(Arc::downgrade(&broker)));
        tokio::spawn(run_reporter(Arc::downgrade(&broker)));
        tokio::spawn(crate::cleaner::run(Arc::downgrade(&broker)));
        tokio::spawn(run_retention(Arc::downgrade(&broker)));
        if broker.config.seeds.is_empty() {
            // A cluster of one: be ready to create topics when `open` returns.
            broker.wait_registered(Duration::from_secs(10)).await;
            broker.import_legacy_topics(legacy).await?;
            for topic in broker.topics() {
                broker.wait_for_leaders(&topic).await;
            }
        }
        Ok(broker)
    }

    /// The cluster id: the metadata's, or this broker's own before the cluster has one.
    pub fn cluster_id(&self) -> String {
        self.cluster
            .state()
            .cluster_id
            .clone()
            .unwrap_or_else(|| self.local_cluster_id.clone())
    }

    async fn wait_registered(&self, limit: Duration) {
        let me = self.config.broker_id();
        let mut state = self.cluster.watch.state.clone();
        let _ = tokio::time::timeout(limit, state.wait_for(|s| s.brokers.contains_key(&me))).await;
    }

    /// Topics stored by single-broker versions (before the metadata group) move into it.
    async fn import_legacy_topics(&self, legacy: Vec<TopicRecord>) -> Result<(), BrokerError> {
        let me = self.config.broker_id();
        for mut record in legacy {
            if !self.cluster.state().topics.contains_key(&record.name) {
                record.replicas = (0..record.partitions).map(|_| vec![me]).collect();
                tracing::info!(topic = %record.name, "importing topic into the cluster metadata");
                self.cluster
                    .write(MetaCommand::CreateTopic(record.clone()))
                    .await?;
            }
            self.meta.delete_topic(&record.name)?;
        }
        Ok(())
    }

    fn env(&self, settings: topic_config::TopicSettings) -> PartitionEnv<'_> {
        PartitionEnv {
            node_id: self.config.node_id,
            data_dir: &self.config.data_dir,
            settings,
            meta: Arc::clone(&self.meta),
            sequencer: self.sequencer.clone(),
            data_arrived: Arc::clone(&self.data_arrived),
            cluster: Arc::clone(&self.cluster),
            timing: self.cluster.timing,
            duplicates: self.metrics.produce_duplicates.clone(),
            frontier: Arc::clone(&self.frontier),
            storage: self.metrics.storage.clone(),
        }
    }

    /// Brings the local replicas in line with the cluster metadata.
    async fn reconcile(&self, state: &ClusterState) {
        let _admin = self.admin.lock().await;
        self.frontier.set_cluster(state);
        for topic in self.topics() {
            let kept = state
                .topics
                .get(&topic.record.name)
                .is_some_and(|t| t.record.id == topic.record.id);
            if !kept {
                self.drop_topic(&topic).await;
            }
        }
        let dynamic_changed = self.applied_dynamic() != state.broker_configs;
        for t in state.topics.values() {
            let current = self.topic(&t.record.name);
            let unchanged = current.as_ref().is_some_and(|c| c.record == t.record);
            if unchanged {
                if let Some(c) = current.filter(|_| dynamic_changed) {
                    let settings = topic_config::settings(
                        &self.config,
                        &state.broker_configs,
                        &c.record.configs,
                    );
                    for p in c.partitions.iter().flatten() {
                        p.set_settings(settings);
                    }
                }
                continue;
            }
            let topic = self
                .open_replicas(&t.record, current.as_deref(), state)
                .await;
            self.insert_topic(topic);
        }
        if dynamic_changed {
            if let Ok(mut applied) = self.applied_dynamic.lock() {
                *applied = state.broker_configs.clone();
            }
        }
    }

    /// The dynamic broker configs the local partitions run with.
    fn applied_dynamic(&self) -> DynamicConfigs {
        self.applied_dynamic
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// The dynamic broker configs of the cluster as this broker last applied them.
    pub fn dynamic_configs(&self) -> DynamicConfigs {
        self.cluster.state().broker_configs.clone()
    }

    /// AlterConfigs / IncrementalAlterConfigs: validates the change against the current
    /// metadata, commits it through the metadata group and waits until this broker's
    /// partitions run with it (so a request right after the answer sees the new value).
    pub async fn alter_configs(
        &self,
        target: ConfigTarget,
        replace: bool,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let state = self.cluster.state();
        if let ConfigTarget::Broker(id) = &target {
            let known = id.is_empty()
                || id
                    .parse::<i32>()
                    .is_ok_and(|n| state.brokers.contains_key(&n) || n == self.config.broker_id());
            if !known {
                return Err(BrokerError::InvalidRequest(format!(
                    "broker '{id}' is not a broker of this cluster"
                )));
            }
        }
        let next = state
            .altered_configs(&target, replace, &ops)
            .map_err(config_rejection)?;
        if validate_only {
            return Ok(());
        }
        let reply = self
            .cluster
            .write(MetaCommand::AlterConfigs {
                target: target.clone(),
                replace,
                ops,
            })
            .await?;
        if let Some(r) = reply.rejected {
            return Err(config_rejection(r));
        }
        let applied = match &target {
            ConfigTarget::Topic(name) => {
                self.wait_for(|b| {
                    b.topic(name)
                        .filter(|t| t.record.configs == next)
                        .map(|_| ())
                })
                .await
            }
            ConfigTarget::Broker(id) => {
                self.wait_for(|b| {
                    (b.applied_dynamic().get(id).cloned().unwrap_or_default() == next).then_some(())
                })
                .await
            }
        };
        tracing::info!(target = ?target, "configs altered");
        applied.ok_or(BrokerError::Timeout)
    }

    async fn open_replicas(
        &self,
        record: &TopicRecord,
        current: Option<&Topic>,
        state: &ClusterState,
    ) -> Topic {
        let me = self.config.broker_id();
        let settings = topic_config::settings(&self.config, &state.broker_configs, &record.configs);
        let env = self.env(settings);
        let mut partitions = Vec::new();
        let mut unopened = BTreeMap::new();
        for index in 0..record.partitions {
            if let Some(f) = current.and_then(|c| c.unopened.get(&index)) {
                // Offline until a restart, like a replica that failed while open.
                unopened.insert(index, f.clone());
                partitions.push(None);
                continue;
            }
            if let Some(p) = current.and_then(|c| c.partition(index)) {
                p.set_settings(settings);
                partitions.push(Some(Arc::clone(p)));
                continue;
            }
            let replicas = replicas_of(record, index, me);
            if !replicas.contains(&me) {
                partitions.push(None);
                continue;
            }
            let group = group_name(record, index);
            let spec = PartitionSpec {
                topic: &record.name,
                index,
                group: &group,
                key: GroupKey {
                    topic_id: record.id,
                    partition: index,
                },
                voters: self.voters(&replicas, state),
                replicas,
            };
            let key = spec.key;
            let was_offline = state.offline_replicas(&record.id, index).contains(&me);
            match Partition::open(&env, spec).await {
                Ok(p) => {
                    partitions.push(Some(p));
                    if was_offline {
                        tracing::info!(topic = %record.name, partition = index, "replica opened again: online");
                        tokio::spawn(crate::offline::report(
                            Arc::clone(&self.cluster),
                            key,
                            me,
                            false,
                        ));
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %record.name, partition = index, error = %e, "cannot open partition replica: it stays offline");
                    self.metrics
                        .storage
                        .errors
                        .with_label_values(&["open"])
                        .inc();
                    self.metrics.storage.offline.inc();
                    let failure = StorageFailure {
                        op: "open",
                        error: e.to_string(),
                    };
                    unopened.insert(index, failure);
                    partitions.push(None);
                    if !was_offline {
                        tokio::spawn(crate::offline::report(
                            Arc::clone(&self.cluster),
                            key,
                            me,
                            true,
                        ));
                    }
                }
            }
        }
        Topic {
            record: record.clone(),
            partitions,
            unopened,
        }
    }

    /// Raft transport addresses of a partition's replicas.
    fn voters(&self, replicas: &[i32], state: &ClusterState) -> BTreeMap<u64, BasicNode> {
        replicas
            .iter()
            .map(|id| {
                let addr = state
                    .brokers
                    .get(id)
                    .map(|b| b.raft_addr.clone())
                    .or_else(|| self.cluster.raft_addr(*id as u64))
                    .unwrap_or_else(|| self.config.raft_advertised.clone());
                (*id as u64, BasicNode::new(addr))
            })
            .collect()
    }

    /// Closes and deletes this broker's replicas of a topic that no longer exists.
    async fn drop_topic(&self, topic: &Topic) {
        if let Ok(mut topics) = self.topics.write() {
            if topics
                .get(&topic.record.name)
                .is_some_and(|t| t.record.id == topic.record.id)
            {
                topics.remove(&topic.record.name);
            }
        }
        let opened = topic.partitions.iter().flatten();
        for p in opened.clone() {
            p.shutdown().await;
        }
        for _ in &topic.unopened {
            self.metrics.storage.offline.dec();
        }
        let indexes = opened
            .map(|p| p.index)
            .chain(topic.unopened.keys().copied());
        for index in indexes {
            let group = group_name(&topic.record, index);
            if let Err(e) = self.meta.delete_raft_group(&group) {
                tracing::warn!(group, error = %e, "cannot forget deleted partition's raft state");
            }
            let dir = self.config.data_dir.join(&group);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted partition");
                }
                _ => {}
            }
        }
        tracing::info!(topic = %topic.record.name, "deleted topic's local replicas");
    }

    fn insert_topic(&self, topic: Topic) {
        if let Ok(mut topics) = self.topics.write() {
            topics.insert(topic.record.name.clone(), Arc::new(topic));
        }
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().ok()?.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .ok()?
            .values()
            .find(|t| &t.record.id == id)
            .cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Leader, epoch and ISR of a partition: this broker's own Raft view when it hosts a
    /// replica that knows a leader at least as new as the metadata's, else the metadata.
    pub fn leader_view(&self, topic: &Topic, index: i32) -> LeaderView {
        let state = self.cluster.state();
        let reported = reported_states(&state, topic);
        let offline = self.offline_of(&state, topic, index);
        self.view_of(topic, index, nth(reported, index))
            .without(&offline)
    }

    /// `leader_view` of every partition of `topic`, reading the metadata once.
    pub fn leader_views(&self, topic: &Topic) -> Vec<LeaderView> {
        let state = self.cluster.state();
        let reported = reported_states(&state, topic);
        (0..topic.record.partitions)
            .map(|index| {
                let offline = self.offline_of(&state, topic, index);
                self.view_of(topic, index, nth(reported, index))
                    .without(&offline)
            })
            .collect()
    }

    /// Replicas of a partition offline after a storage error: as the metadata lists them,
    /// and this broker's own as soon as it knows (before the metadata has it).
    pub fn offline_replicas(&self, topic: &Topic, index: i32) -> BTreeSet<i32> {
        self.offline_of(&self.cluster.state(), topic, index)
    }

    fn offline_of(&self, state: &ClusterState, topic: &Topic, index: i32) -> BTreeSet<i32> {
        let mut offline = state.offline_replicas(&topic.record.id, index);
        if matches!(topic.local(index), Err(ResponseError::KafkaStorageError)) {
            offline.insert(self.config.broker_id());
        }
        offline
    }

    fn view_of(&self, topic: &Topic, index: i32, reported: Option<PartitionState>) -> LeaderView {
        let local = topic.partition(index).and_then(|p| p.known_leader());
        let from_metadata = |r: PartitionState| LeaderView {
            leader: r.leader,
            epoch: r.epoch.max(0),
            isr: r.isr,
        };
        match (local, reported) {
            (Some((_, epoch)), Some(r)) if epoch < r.epoch => from_metadata(r),
            (Some((leader, epoch)), r) => {
                let isr = match r {
                    Some(r) if r.leader == leader && r.epoch == epoch && !r.isr.is_empty() => r.isr,
                    _ => vec![leader],
                };
                LeaderView { leader, epoch, isr }
            }
            (None, Some(r)) => from_metadata(r),
            (None, None) => LeaderView {
                leader: -1,
                epoch: 0,
                isr: Vec::new(),
            },
        }
    }

    /// Every live broker (`Cluster::is_live`: this one, and those that answered its probes
    /// lately) with the address of the listener the current request arrived on. Kafka lists
    /// only live brokers, so clients do not spend connection attempts on dead ones.
    pub fn advertised_brokers(&self) -> Vec<(i32, String, u16)> {
        self.registered_brokers()
            .into_iter()
            .filter(|b| b.live)
            .map(|b| (b.id, b.host, b.port))
            .collect()
    }

    /// Every registered broker (and this one) with its address on the current request's
    /// listener and whether it is live; sorted by id.
    pub fn registered_brokers(&self) -> Vec<AdvertisedBroker> {
        let listener = LISTENER.try_with(|l| *l).unwrap_or(EXTERNAL);
        let state = self.cluster.state();
        let mut out: Vec<AdvertisedBroker> = state
            .brokers
            .values()
            .filter_map(|b| {
                let pick = |name: &str| b.endpoints.iter().find(|e| e.listener == name);
                pick(listener)
                    .or_else(|| pick(EXTERNAL))
                    .map(|e| AdvertisedBroker {
                        id: b.id,
                        host: e.host.clone(),
                        port: e.port,
                        live: self.cluster.is_live(b.id),
                    })
            })
            .collect();
        if !out.iter().any(|b| b.id == self.config.broker_id()) {
            let me = own_endpoints(&self.config);
            if let Some(e) = me
                .iter()
                .find(|e| e.listener == listener)
                .or_else(|| me.first())
            {
                out.push(AdvertisedBroker {
                    id: self.config.broker_id(),
                    host: e.host.clone(),
                    port: e.port,
                    live: true,
                });
            }
        }
        out.sort_by_key(|b| b.id);
        out
    }

    /// Validates a CreateTopics entry without creating anything. `replication_factor` -1
    /// means the broker default.
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        validate_topic_name(name)?;
        let state = self.cluster.state();
        if state.topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions(format!(
                "number of partitions {partitions} is outside 1..={MAX_PARTITIONS_PER_TOPIC}"
            )));
        }
        let total = state.partition_count();
        if total + partitions as usize > MAX_PARTITIONS_TOTAL {
            return Err(BrokerError::InvalidPartitions(format!(
                "the cluster already has {total} partitions; the limit is {MAX_PARTITIONS_TOTAL}"
            )));
        }
        let rf = self.replication_factor(replication_factor, &state);
        let brokers = state.brokers.len().max(1);
        if rf < 1 || rf as usize > brokers {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "replication factor {rf} is not possible: the cluster has {brokers} broker(s)"
            )));
        }
        topic_config::validate(configs).map_err(BrokerError::InvalidConfig)
    }

    /// The replication factor a request asking for `requested` gets (-1: the default,
    /// capped at the number of brokers).
    pub fn replication_factor(&self, requested: i16, state: &ClusterState) -> i16 {
        if requested == -1 {
            let brokers = i16::try_from(state.brokers.len().max(1)).unwrap_or(i16::MAX);
            self.config.default_replication_factor.min(brokers)
        } else {
            requested
        }
    }

    /// Creates a topic through the metadata group; `assignment` gives the replicas of each
    /// partition explicitly, otherwise they are placed to balance leaders.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.check_new_topic(name, partitions, replication_factor, &configs)?;
        let state = self.cluster.state();
        let replicas = match assignment {
            Some(a) => {
                state.check_assignment(&a).map_err(rejection)?;
                a
            }
            None => {
                let rf = self.replication_factor(replication_factor, &state);
                state
                    .place(partitions as usize, rf as usize)
                    .map_err(rejection)?
            }
        };
        let record = TopicRecord {
            name: name.to_string(),
            id: rand::random(),
            partitions: i32::try_from(replicas.len()).unwrap_or(i32::MAX),
            configs,
            replicas,
        };
        let id = record.id;
        let reply = self.cluster.write(MetaCommand::CreateTopic(record)).await?;
        if let Some(r) = reply.rejected {
            return Err(rejection(r));
        }
        tracing::info!(topic = name, partitions, "created topic");
        let topic = self
            .wait_for(|b| b.topic(name).filter(|t| t.record.id == id))
            .await
            .ok_or(BrokerError::Timeout)?;
        self.wait_for_leaders(&topic).await;
        Ok(topic)
    }

    /// Waits (bounded) until every partition of `topic` has a known leader.
    async fn wait_for_leaders(&self, topic: &Topic) {
        let all_led = |b: &Self| {
            b.leader_views(topic)
                .iter()
                .all(|v| v.leader >= 0)
                .then_some(())
        };
        if self.wait_for(all_led).await.is_none() {
            tracing::warn!(topic = %topic.record.name, "some partitions have no leader yet");
        }
    }

    /// Polls `probe` until it yields something, for at most LEADERSHIP_WAIT.
    async fn wait_for<T>(&self, probe: impl Fn(&Self) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + LEADERSHIP_WAIT;
        loop {
            if let Some(v) = probe(self) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<[u8; 16], BrokerError> {
        let id = self
            .cluster
            .state()
            .topics
            .get(name)
            .map(|t| t.record.id)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let reply = self
            .cluster
            .write(MetaCommand::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        if let Some(r) = reply.rejected {
            return Err(rejection(r));
        }
        self.wait_for(|b| {
            b.topic(name)
                .is_none_or(|t| t.record.id != id)
                .then_some(())
        })
        .await;
        tracing::info!(topic = name, "deleted topic");
        Ok(id)
    }

    pub fn check_new_partition_count(
        &self,
        name: &str,
        count: i32,
    ) -> Result<TopicRecord, BrokerError> {
        let state = self.cluster.state();
        let topic = state
            .topics
            .get(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let current = topic.record.partitions;
        if count <= current {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the new count must be larger, got {count}"
            )));
        }
        if count > MAX_PARTITIONS_PER_TOPIC
            || state.partition_count() + (count - current) as usize > MAX_PARTITIONS_TOTAL
        {
            return Err(BrokerError::InvalidPartitions(format!(
                "{count} partitions exceeds the limit ({MAX_PARTITIONS_PER_TOPIC} per topic, {MAX_PARTITIONS_TOTAL} in all)"
            )));
        }
        Ok(topic.record.clone())
    }

    /// Replica lists for a topic growing to `count` partitions: the operator's, checked
    /// (same replication factor as the topic, registered brokers), or placed.
    pub fn place_new_partitions(
        &self,
        record: &TopicRecord,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<Vec<Vec<i32>>, BrokerError> {
        let state = self.cluster.state();
        let rf = record.replicas.first().map_or(1, Vec::len);
        let new = (count - record.partitions) as usize;
        match assignment {
            None => state.place(new, rf).map_err(rejection),
            Some(a) => {
                if a.len() != new {
                    return Err(BrokerError::InvalidPartitions(format!(
                        "{} replica assignments given for {new} new partitions",
                        a.len()
                    )));
                }
                if a.iter().any(|r| r.len() != rf) {
                    return Err(BrokerError::InvalidReplicationFactor(format!(
                        "new partitions must have the topic's replication factor {rf}"
                    )));
                }
                state.check_assignment(&a).map_err(rejection)?;
                Ok(a)
            }
        }
    }

    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<Vec<Vec<i32>>>,
    ) -> Result<(), BrokerError> {
        let record = self.check_new_partition_count(name, count)?;
        let replicas = self.place_new_partitions(&record, count, assignment)?;
        let reply = self
            .cluster
            .write(MetaCommand::AddPartitions {
                name: name.to_string(),
                replicas,
            })
            .await?;
        if let Some(r) = reply.rejected {
            return Err(rejection(r));
        }
        let grown = self
            .wait_for(|b| b.topic(name).filter(|t| t.record.partitions >= count))
            .await
            .ok_or(BrokerError::Timeout)?;
        self.wait_for_leaders(&grown).await;
        tracing::info!(topic = name, count, "added partitions");
        Ok(())
    }

    pub async fn shutdown(&self) {
        for topic in self.topics() {
            for p in topic.partitions.iter().flatten() {
                p.shutdown().await;
            }
        }
        if let Err(e) = self.cluster.raft.shutdown().await {
            tracing::warn!(error = %e, "metadata raft shutdown");
        }
    }

    /// Tells the metadata which local partitions this broker leads (epoch, ISR), when that
    /// differs from what it says; every `rebalance` also takes back preferred leaderships.
    async fn report(&self) {
        let me = self.config.broker_id();
        let state = self.cluster.state();
        let mut reports = Vec::new();
        for topic in self.topics() {
            for p in topic.partitions.iter().flatten() {
                let Some((epoch, isr)) = p.refresh_isr(self.config.replica_lag_time_max) else {
                    continue;
                };
                let now = PartitionState {
                    leader: me,
                    epoch,
                    isr: isr.clone(),
                };
                let known = state.topic_by_id(&topic.record.id).and_then(|t| {
                    usize::try_from(p.index)
                        .ok()
                        .and_then(|i| t.partitions.get(i))
                });
                if known != Some(&now) {
                    reports.push(PartitionReport {
                        topic_id: topic.record.id,
                        partition: p.index,
                        leader: me,
                        epoch,
                        isr,
                    });
                }
            }
        }
        if reports.is_empty() {
            return;
        }
        let n = reports.len();
        if let Err(e) = self
            .cluster
            .write(MetaCommand::PartitionStates(reports))
            .await
        {
            tracing::warn!(partitions = n, error = %e, "cannot report partition leadership");
        }
    }

    async fn rebalance_leaders(&self) {
        for topic in self.topics() {
            for p in topic.partitions.iter().flatten() {
                p.reclaim_preferred_leadership().await;
            }
        }
    }
}

/// A cluster id derived from the seed list (ids and addresses).
fn seeds_cluster_id(seeds: &BTreeMap<u64, String>) -> String {
    let text: String = seeds
        .iter()
        .map(|(id, addr)| format!("{id}@{addr},"))
        .collect();
    let a = crc32c::crc32c(text.as_bytes());
    let b = crc32c::crc32c_append(a, b"gsn-cluster");
    let c = crc32c::crc32c_append(b, text.as_bytes());
    let d = crc32c::crc32c_append(c, b"gsn-cluster");
    let mut raw = [0u8; 16];
    for (i, word) in [a, b, c, d].iter().enumerate() {
        raw[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    crate::storage::meta::cluster_id_string(raw)
}

/// The metadata's partition states of `topic` (empty if the metadata does not know it).
fn reported_states<'a>(state: &'a ClusterState, topic: &Topic) -> &'a [PartitionState] {
    state
        .topic_by_id(&topic.record.id)
        .map_or(&[], |t| t.partitions.as_slice())
}

fn nth(states: &[PartitionState], index: i32) -> Option<PartitionState> {
    usize::try_from(index)
        .ok()
        .and_then(|i| states.get(i))
        .cloned()
}

fn config_rejection(r: Rejection) -> BrokerError {
    match r {
        Rejection::Invalid(m) => BrokerError::InvalidConfig(m),
        other => rejection(other),
    }
}

fn rejection(r: Rejection) -> BrokerError {
    match r {
        Rejection::TopicExists(n) => BrokerError::TopicExists(n),
        Rejection::UnknownTopic(n) => BrokerError::UnknownTopic(n),
        Rejection::Invalid(m) => BrokerError::InvalidReplicationFactor(m),
        Rejection::SequencerMismatch(m) => BrokerError::InvalidConfig(m),
    }
}

/// The Kafka listeners this broker advertises.
fn own_endpoints(config: &BrokerConfig) -> Vec<Endpoint> {
    let mut out = vec![Endpoint {
        listener: EXTERNAL.to_string(),
        host: config.advertised_host.clone(),
        port: config.advertised_port,
    }];
    if let Some((_, advertised)) = &config.internal {
        if let Some((host, port)) = advertised
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse().ok().map(|p| (h, p)))
        {
            out.push(Endpoint {
                listener: INTERNAL.to_string(),
                host: host.to_string(),
                port,
            });
        }
    }
    out
}

async fn start_cluster(
    config: &BrokerConfig,
    meta: Arc<MetaStore>,
    cluster_id: &str,
) -> Result<Arc<Cluster>, BrokerError> {
    let listener = if config.seeds.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(config.raft_listen)
                .await
                .map_err(|e| {
                    BrokerError::InvalidConfig(format!(
                        "cannot listen on {} (raft-listen): {e}",
                        config.raft_listen
                    ))
                })?,
        )
    };
    let seeds = if config.seeds.is_empty() {
        BTreeMap::from([(config.node_id, config.raft_advertised.clone())])
    } else {
        config.seeds.clone()
    };
    let options = ClusterOptions {
        node_id: config.node_id,
        seeds,
        info: BrokerInfo {
            id: config.broker_id(),
            raft_addr: config.raft_advertised.clone(),
            endpoints: own_endpoints(config),
            sequencer: Some(config.sequencer),
        },
        cluster_id: cluster_id.to_string(),
        timing: RaftTiming {
            heartbeat_ms: config.raft_heartbeat_ms,
            election_min_ms: config.raft_election_ms,
        },
        session_timeout: config.broker_session_timeout,
    };
    Ok(Cluster::start(options, meta, listener).await?)
}

async fn start_sequencer(
    config: &BrokerConfig,
    meta: &Arc<MetaStore>,
    floor: u64,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Sequencer>, BrokerError> {
    Ok(match config.sequencer {
        SequencerKind::Local => Arc::new(LocalSequencer::open(Arc::clone(meta), floor)?),
        SequencerKind::Ring => Arc::new(
            RingSequencer::start(
                ConfigSource::Controllers(config.ring_controllers.clone()),
                config.ring_listen,
                config.node_id,
                floor,
                RingOptions::default(),
                Arc::clone(metrics),
            )
            .await
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?,
        ),
    })
}

/// Re-runs reconciliation whenever the applied metadata changes.
async fn run_reconciler(broker: std::sync::Weak<Broker>) {
    let Some(mut state) = broker.upgrade().map(|b| b.cluster.watch.state.clone()) else {
        return;
    };
    while state.changed().await.is_ok() {
        let current = Arc::clone(&state.borrow_and_update());
        let Some(b) = broker.upgrade() else { return };
        b.reconcile(&current).await;
        b.apply_low_watermarks(&current);
    }
}

async fn run_reporter(broker: std::sync::Weak<Broker>) {
    let mut last_rebalance = Instant::now();
    loop {
        tokio::time::sleep(REPORT_INTERVAL).await;
        let Some(b) = broker.upgrade() else { return };
        b.note_metadata_raft();
        b.report().await;
        let every = b.config.leader_rebalance_interval;
        if !every.is_zero() && last_rebalance.elapsed() >= every {
            last_rebalance = Instant::now();
            b.rebalance_leaders().await;
        }
    }
}

impl Broker {
    /// The metadata group's term and leader, for `/metrics`.
    fn note_metadata_raft(&self) {
        let (term, leader) = {
            let m = self.cluster.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader)
        };
        self.metrics
            .metadata_term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        self.metrics
            .metadata_leader
            .set(leader.and_then(|l| i64::try_from(l).ok()).unwrap_or(-1));
    }

    /// Raises the log start of every local replica to its DeleteRecords low watermark.
    fn apply_low_watermarks(&self, state: &ClusterState) {
        for topic in self.topics() {
            let Some(t) = state.topic_by_id(&topic.record.id) else {
                continue;
            };
            for (index, lw) in &t.low_watermarks {
                if let Some(p) = topic.partition(*index) {
                    p.apply_low_watermark(*lw);
                }
            }
        }
    }
}

/// Applies retention to every local replica each `--log-retention-check-interval-ms`, and
/// counts what the purges deleted.
async fn run_retention(broker: std::sync::Weak<Broker>) {
    loop {
        let Some(every) = broker
            .upgrade()
            .map(|b| b.config.log_retention_check_interval)
        else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(b) = broker.upgrade() else { return };
        let now = crate::raft::log_store::now_ms();
        b.apply_low_watermarks(&b.cluster.state());
        for topic in b.topics() {
            for p in topic.partitions.iter().flatten() {
                p.enforce_retention(now).await;
                let (segments, bytes) = p.take_deleted();
                b.metrics.log_segments_deleted.inc_by(segments);
                b.metrics.log_bytes_deleted.inc_by(bytes);
            }
        }
    }
}

/// Raft group name and directory of a partition; the topic id keeps a re-created topic of
/// the same name from meeting the old one's leftovers.
pub fn group_name(record: &TopicRecord, index: i32) -> String {
    let id: String = record
        .id
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("topics/{}-{index}.{id}", record.name)
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let invalid = |reason| {
        Err(BrokerError::InvalidTopicName {
            name: name.chars().take(300).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("name is empty");
    }
    if name.len() > 249 {
        return invalid("name is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Highest offset in any stored partition (read before Raft starts).
fn scan_max_offset(
    config: &BrokerConfig,
    state: &ClusterState,
    legacy: &[TopicRecord],
) -> Result<u64, BrokerError> {
    let mut max = 0i64;
    let records = state.topics.values().map(|t| &t.record).chain(legacy);
    for record in records {
        for index in 0..record.partitions {
            let dir = config.data_dir.join(group_name(record, index));
            if !dir.exists() {
                continue;
            }
            // A replica whose files cannot be read is left to its own open, which takes it
            // offline; the other replicas hold its data, so the broker still starts.
            match crate::storage::log::PartitionLog::open(&dir, config.log, &Default::default()) {
                Ok(log) => max = max.max(log.end_offset().unwrap_or(0)),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot read partition log");
                }
            }
        }
    }
    Ok(max.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
