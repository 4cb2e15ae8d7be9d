//! Broker state: topics, their partitions, the sequencer client, and the metadata store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::config::{BrokerConfig, LogConfig, SequencerKind};
use crate::metrics::Metrics;
use crate::partition::{Partition, PartitionEnv};
use crate::ring_sequencer::{ConfigSource, RingOptions, RingSequencer};
use crate::sequencer::{LocalSequencer, Sequencer, SequencerClient};
use crate::storage::meta::{MetaError, MetaStore, TopicRecord};
use crate::topic_config;

/// How long topic creation waits for new partitions to elect their leader.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(10);
/// Most partitions a single topic may have, and in all.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;
pub const MAX_PARTITIONS_TOTAL: usize = 20_000;

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
}

pub struct Topic {
    pub record: TopicRecord,
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

pub struct Broker {
    pub config: BrokerConfig,
    pub meta: Arc<MetaStore>,
    pub metrics: Arc<Metrics>,
    pub cluster_id: String,
    /// Notified whenever any partition's high watermark advances (wakes long polls).
    pub data_arrived: Arc<Notify>,
    /// Bytes of request frames held in memory at once, across all connections.
    pub inflight_bytes: Arc<Semaphore>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    sequencer: SequencerClient,
    /// Serializes topic creation, deletion and growth.
    admin: tokio::sync::Mutex<()>,
    /// The group coordinator (consumer groups), set by `group::offsets_topic::start`.
    pub groups: std::sync::OnceLock<Arc<crate::group::Coordinator>>,
}

impl Broker {
    /// Opens the data directory, recovers every partition and starts its Raft group.
    pub async fn open(
        config: BrokerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, BrokerError> {
        std::fs::create_dir_all(config.data_dir.join("topics"))?;
        let meta = Arc::new(MetaStore::open(&config.data_dir.join("meta"))?);
        let cluster_id = meta.cluster_id()?;
        let records = meta.topics()?;
        let data_arrived = Arc::new(Notify::new());
        // The sequencer must start above every stored offset; partitions open first with a
        // sequencer client whose numbers are only requested once they lead.
        let floor = scan_max_offset(&config, &records)?;
        let sequencer: Arc<dyn Sequencer> = match config.sequencer {
            SequencerKind::Local => Arc::new(LocalSequencer::open(Arc::clone(&meta), floor)?),
            SequencerKind::Ring => Arc::new(
                RingSequencer::start(
                    ConfigSource::Controllers(config.ring_controllers.clone()),
                    config.ring_listen,
                    config.node_id,
                    floor,
                    RingOptions::default(),
                    Arc::clone(&metrics),
                )
                .await
                .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?,
            ),
        };
        let client =
            SequencerClient::start(sequencer, config.sequencer_window, Arc::clone(&metrics));
        let inflight = (config.max_frame_bytes * 4).max(256 << 20);
        let broker = Arc::new(Self {
            inflight_bytes: Arc::new(Semaphore::new(inflight.min(Semaphore::MAX_PERMITS))),
            config,
            meta,
            metrics,
            cluster_id,
            data_arrived,
            topics: RwLock::new(BTreeMap::new()),
            sequencer: client,
            admin: tokio::sync::Mutex::new(()),
            groups: std::sync::OnceLock::new(),
        });
        for record in records {
            let topic = broker.open_topic(record, 0).await?;
            broker.insert_topic(topic);
        }
        Ok(broker)
    }

    fn env(&self, log_config: LogConfig) -> PartitionEnv<'_> {
        PartitionEnv {
            node_id: self.config.node_id,
            advertised: format!(
                "{}:{}",
                self.config.advertised_host, self.config.advertised_port
            ),
            data_dir: &self.config.data_dir,
            log_config,
            meta: Arc::clone(&self.meta),
            sequencer: self.sequencer.clone(),
            data_arrived: Arc::clone(&self.data_arrived),
        }
    }

    /// Opens partitions `existing..record.partitions` plus reuses none: callers pass 0 for a
    /// whole topic.
    async fn open_topic(&self, record: TopicRecord, from: i32) -> Result<Topic, BrokerError> {
        let log_config = topic_config::log_config(&self.config.log, &record.configs);
        let env = self.env(log_config);
        let mut partitions = Vec::new();
        for index in from..record.partitions {
            let group = group_name(&record, index);
            partitions.push(Partition::open(&env, &record.name, index, &group).await?);
        }
        for p in &partitions {
            if !p.wait_for_leadership(LEADERSHIP_WAIT).await {
                tracing::warn!(topic = %record.name, partition = p.index, "partition has no leader yet");
            }
        }
        Ok(Topic { record, partitions })
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

    fn partition_count(&self) -> usize {
        self.topics().iter().map(|t| t.partitions.len()).sum()
    }

    /// Validates a CreateTopics entry without creating anything.
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        validate_topic_name(name)?;
        if self.topic(name).is_some() {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions(format!(
                "number of partitions {partitions} is outside 1..={MAX_PARTITIONS_PER_TOPIC}"
            )));
        }
        if self.partition_count() + partitions as usize > MAX_PARTITIONS_TOTAL {
            return Err(BrokerError::InvalidPartitions(format!(
                "this broker already hosts {} partitions; the limit is {MAX_PARTITIONS_TOTAL}",
                self.partition_count()
            )));
        }
        if replication_factor != 1 {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "replication factor {replication_factor} is not possible: the cluster has 1 broker"
            )));
        }
        topic_config::validate(configs).map_err(BrokerError::InvalidConfig)
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock().await;
        self.check_new_topic(name, partitions, 1, &configs)?;
        let record = TopicRecord {
            name: name.to_string(),
            id: rand::random(),
            partitions,
            configs,
        };
        let topic = self.open_topic(record.clone(), 0).await?;
        // Persist last: a crash before this leaves only directories that no record names.
        self.meta.put_topic(&record)?;
        self.insert_topic(topic);
        tracing::info!(topic = name, partitions, "created topic");
        self.topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<[u8; 16], BrokerError> {
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        self.meta.delete_topic(name)?;
        if let Ok(mut topics) = self.topics.write() {
            topics.remove(name);
        }
        for p in &topic.partitions {
            p.shutdown().await;
            let group = group_name(&topic.record, p.index);
            self.meta.delete_raft_group(&group)?;
            let dir = self.config.data_dir.join(&group);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted partition");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.record.id)
    }

    pub fn check_new_partition_count(
        &self,
        name: &str,
        count: i32,
    ) -> Result<Arc<Topic>, BrokerError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let current = topic.record.partitions;
        if count <= current {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic '{name}' has {current} partitions; the new count must be larger, got {count}"
            )));
        }
        if count > MAX_PARTITIONS_PER_TOPIC
            || self.partition_count() + (count - current) as usize > MAX_PARTITIONS_TOTAL
        {
            return Err(BrokerError::InvalidPartitions(format!(
                "{count} partitions exceeds the limit ({MAX_PARTITIONS_PER_TOPIC} per topic, {MAX_PARTITIONS_TOTAL} in all)"
            )));
        }
        Ok(topic)
    }

    pub async fn add_partitions(&self, name: &str, count: i32) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let topic = self.check_new_partition_count(name, count)?;
        let mut record = topic.record.clone();
        let from = record.partitions;
        record.partitions = count;
        let grown = self.open_topic(record.clone(), from).await?;
        self.meta.put_topic(&record)?;
        let mut partitions = topic.partitions.clone();
        partitions.extend(grown.partitions);
        self.insert_topic(Topic { record, partitions });
        tracing::info!(topic = name, count, "added partitions");
        Ok(())
    }

    pub async fn shutdown(&self) {
        for topic in self.topics() {
            for p in &topic.partitions {
                p.shutdown().await;
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
fn scan_max_offset(config: &BrokerConfig, records: &[TopicRecord]) -> Result<u64, BrokerError> {
    let mut max = 0i64;
    for record in records {
        for index in 0..record.partitions {
            let dir = config.data_dir.join(group_name(record, index));
            if !dir.exists() {
                continue;
            }
            let log =
                crate::storage::log::PartitionLog::open(&dir, config.log, &Default::default())?;
            max = max.max(log.end_offset().unwrap_or(0));
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
