//! The broker side of the group coordinator: `__consumer_offsets` as this broker sees it.
//!
//! This file is the seam to the rest of the broker (topics, partitions, leadership,
//! advertised addresses). Everything the coordinator needs from the broker goes through
//! [`BrokerOffsetsTopic`] (the [`OffsetsTopic`] trait) and [`PartitionGroupLog`] (the
//! [`GroupLog`] trait); FindCoordinator asks [`coordinator_address`].

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};

use super::coordinator::{Coordinator, OffsetsTopic};
use super::store::{Ack, BoxFuture, GroupLog, LogError};
use super::OFFSETS_TOPIC;
use crate::broker::{Broker, BrokerError};
use crate::partition::{Acks, AppendError, Partition};

/// Topic configs of `__consumer_offsets`, as Kafka creates it.
pub fn topic_configs() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), "104857600".to_string()),
    ])
}

/// Starts the group coordinator of `broker` (call once, after `Broker::open`).
pub fn start(broker: &Arc<Broker>) {
    let config = broker.config.groups.clone();
    let topic = Arc::new(BrokerOffsetsTopic {
        broker: Arc::downgrade(broker),
        partitions: config.offsets_partitions,
    });
    let coordinator = Coordinator::new(config, topic);
    coordinator.start();
    if broker.groups.set(coordinator).is_err() {
        tracing::warn!("group coordinator started twice; keeping the first");
    }
}

pub struct BrokerOffsetsTopic {
    broker: Weak<Broker>,
    /// Partition count used when this broker creates the topic.
    partitions: i32,
}

impl OffsetsTopic for BrokerOffsetsTopic {
    fn partitions(&self) -> Option<i32> {
        let broker = self.broker.upgrade()?;
        let topic = broker.topic(OFFSETS_TOPIC)?;
        Some(topic.record.partitions)
    }

    fn create(&self) -> BoxFuture<'_, Result<i32, String>> {
        Box::pin(async move {
            let broker = self
                .broker
                .upgrade()
                .ok_or_else(|| "broker is shutting down".to_string())?;
            // offsets.topic.replication.factor, capped at the number of brokers.
            let brokers =
                i16::try_from(broker.cluster.state().brokers.len().max(1)).unwrap_or(i16::MAX);
            let rf = broker.config.groups.offsets_replication_factor.min(brokers);
            match broker
                .create_topic(OFFSETS_TOPIC, self.partitions, rf, topic_configs(), None)
                .await
            {
                Ok(topic) => {
                    tracing::info!(
                        partitions = topic.record.partitions,
                        "created {OFFSETS_TOPIC}"
                    );
                    Ok(topic.record.partitions)
                }
                Err(BrokerError::TopicExists(_)) => broker
                    .topic(OFFSETS_TOPIC)
                    .map(|t| t.record.partitions)
                    .ok_or_else(|| format!("{OFFSETS_TOPIC} exists but is not open yet")),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn led_partition(&self, p: i32) -> Option<(i32, Arc<dyn GroupLog>)> {
        let broker = self.broker.upgrade()?;
        let topic = broker.topic(OFFSETS_TOPIC)?;
        let partition = topic.partition(p)?;
        if !partition.is_leader() {
            return None;
        }
        let log: Arc<dyn GroupLog> = Arc::new(PartitionGroupLog(Arc::clone(partition)));
        Some((partition.leader_epoch(), log))
    }
}

/// (broker id, host, port) of the coordinator for offsets partition `p`: its leader, at the
/// address of the listener the request came in on. `None` while the partition has no
/// leader this broker knows of.
pub fn coordinator_address(broker: &Broker, p: i32) -> Option<(i32, String, i32)> {
    let topic = broker.topic(OFFSETS_TOPIC)?;
    let leader = broker.leader_view(&topic, p).leader;
    if leader < 0 {
        return None;
    }
    broker
        .advertised_brokers()
        .into_iter()
        .find(|(id, _, _)| *id == leader)
        .map(|(id, host, port)| (id, host, i32::from(port)))
}

/// The coordinator, if started.
pub fn coordinator(broker: &Broker) -> Option<&Arc<Coordinator>> {
    broker.groups.get()
}

/// A partition of `__consumer_offsets` as the coordinator's log.
pub struct PartitionGroupLog(pub Arc<Partition>);

fn append_error(e: AppendError) -> LogError {
    match e {
        AppendError::NotLeader => LogError::NotLeader,
        AppendError::ShuttingDown => LogError::Unavailable("partition is shutting down".into()),
        AppendError::Sequencer(s) | AppendError::Storage(s) => LogError::Unavailable(s),
        // The coordinator's batches carry no producer id; kept total for the compiler.
        AppendError::Sequence(e) => LogError::Unavailable(e.to_string()),
    }
}

impl GroupLog for PartitionGroupLog {
    fn append(&self, batch: BytesMut, records: u64) -> BoxFuture<'_, Result<Ack, LogError>> {
        Box::pin(async move {
            let rx = self
                .0
                .enqueue(batch, records, Acks::All)
                .await
                .map_err(append_error)?;
            let ack: Ack = Box::pin(async move {
                match rx.await {
                    Ok(r) => r.map_err(append_error),
                    Err(_) => Err(LogError::NotLeader),
                }
            });
            Ok(ack)
        })
    }

    fn read(&self, offset: i64, max_bytes: u64) -> Result<Option<Bytes>, LogError> {
        self.0
            .read(offset, max_bytes)
            .map(|r| r.map(|r| r.bytes))
            .map_err(|e| LogError::Read(e.to_string()))
    }

    fn high_watermark(&self) -> i64 {
        self.0.high_watermark()
    }

    fn end_offset(&self) -> i64 {
        self.0
            .with_log(|l| l.end_offset().unwrap_or(0))
            .unwrap_or(0)
    }
}
