//! Metadata: brokers, topics and partitions; creates missing topics when asked and allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::{Broker, BrokerError, Topic};

pub async fn handle(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let c = &broker.config;
    // Fields a version lacks must keep their defaults, or encoding fails.
    let brokers = broker
        .advertised_brokers()
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect();
    let mut resp = MetadataResponse::default().with_brokers(brokers);
    if version >= 1 {
        resp.controller_id = BrokerId(
            broker
                .cluster
                .controller()
                .and_then(|id| i32::try_from(id).ok())
                .unwrap_or(-1),
        );
    }
    if version >= 2 {
        resp.cluster_id = Some(StrBytes::from_string(broker.cluster_id()));
    }
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let wanted = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let Some(wanted) = wanted else {
        resp.topics = broker
            .topics()
            .iter()
            .map(|t| describe(broker, t, version))
            .collect();
        return resp;
    };
    // Versions before 4 have no flag: they always ask for auto-creation.
    let allow_create = (version < 4 || req.allow_auto_topic_creation) && c.auto_create_topics;
    for t in wanted {
        let entry = match (&t.name, t.topic_id.is_nil()) {
            (Some(name), _) => by_name(broker, name, allow_create, version).await,
            (None, false) => match broker.topic_by_id(t.topic_id.as_bytes()) {
                Some(topic) => describe(broker, &topic, version),
                None => error_topic(None, t.topic_id, ResponseError::UnknownTopicId),
            },
            (None, true) => error_topic(None, t.topic_id, ResponseError::InvalidRequest),
        };
        super::note_error(broker, "Metadata", entry.error_code);
        resp.topics.push(entry);
    }
    resp
}

async fn by_name(
    broker: &Arc<Broker>,
    name: &TopicName,
    allow_create: bool,
    version: i16,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.topic(name.as_str()) {
        return describe(broker, &topic, version);
    }
    if !allow_create {
        return error_topic(
            Some(name.clone()),
            uuid::Uuid::nil(),
            ResponseError::UnknownTopicOrPartition,
        );
    }
    if name.as_str() == crate::group::OFFSETS_TOPIC {
        // Created by the group coordinator, with its own partition count and configs.
        let created = match crate::group::offsets_topic::coordinator(broker) {
            Some(c) => c.ensure_partition_of("").await.is_ok(),
            None => false,
        };
        return match broker.topic(name.as_str()).filter(|_| created) {
            Some(topic) => describe(broker, &topic, version),
            None => error_topic(
                Some(name.clone()),
                uuid::Uuid::nil(),
                ResponseError::LeaderNotAvailable,
            ),
        };
    }
    let partitions = broker.config.num_partitions;
    match broker
        .create_topic(name.as_str(), partitions, -1, BTreeMap::new(), None)
        .await
    {
        Ok(topic) => describe(broker, &topic, version),
        // Another request created it first.
        Err(BrokerError::TopicExists(_)) => match broker.topic(name.as_str()) {
            Some(topic) => describe(broker, &topic, version),
            None => error_topic(
                Some(name.clone()),
                uuid::Uuid::nil(),
                ResponseError::LeaderNotAvailable,
            ),
        },
        Err(BrokerError::InvalidTopicName { .. }) => error_topic(
            Some(name.clone()),
            uuid::Uuid::nil(),
            ResponseError::InvalidTopicException,
        ),
        Err(e) => {
            tracing::warn!(topic = name.as_str(), error = %e, "auto-creation failed");
            error_topic(
                Some(name.clone()),
                uuid::Uuid::nil(),
                ResponseError::UnknownServerError,
            )
        }
    }
}

fn error_topic(
    name: Option<TopicName>,
    id: uuid::Uuid,
    error: ResponseError,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_topic_id(id)
        .with_error_code(error.code())
}

/// A topic's metadata: replicas from the assignment, leader/epoch/ISR as this broker knows
/// them (see `Broker::leader_view`). As in Kafka, a partition whose leader is not a live
/// broker (not in the broker list) has no leader: LEADER_NOT_AVAILABLE, leader -1, its epoch
/// kept; replicas that are not live are also listed as offline (v5+).
pub fn describe(broker: &Broker, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let me = broker.config.broker_id();
    let live_set: BTreeSet<i32> = broker.advertised_brokers().iter().map(|b| b.0).collect();
    let live = |id: &i32| live_set.contains(id);
    let partitions = (0..topic.record.partitions)
        .zip(broker.leader_views(topic))
        .map(|(index, view)| {
            let leader = if view.leader >= 0 && live(&view.leader) {
                view.leader
            } else {
                -1
            };
            let error = if leader < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            let ids = |list: Vec<i32>| list.into_iter().map(BrokerId).collect::<Vec<_>>();
            let replicas = topic.replicas(index, me);
            let offline: Vec<i32> = replicas.iter().copied().filter(|r| !live(r)).collect();
            let mut out = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_error_code(error)
                .with_leader_id(BrokerId(leader))
                .with_replica_nodes(ids(replicas))
                .with_isr_nodes(ids(view.isr));
            // offline_replicas exists from v5 on: replicas on brokers that are not live, and
            // replicas out after a storage error.
            if version >= 5 {
                let mut all: BTreeSet<i32> = offline.into_iter().collect();
                all.extend(broker.offline_replicas(topic, index));
                out.offline_replicas = ids(all.into_iter().collect());
            }
            if version >= 7 {
                out.with_leader_epoch(view.epoch)
            } else {
                out
            }
        })
        .collect();
    let out = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            topic.record.name.clone(),
        ))))
        .with_partitions(partitions)
        .with_is_internal(version >= 1 && topic.record.name == crate::group::OFFSETS_TOPIC)
        .with_topic_authorized_operations(i32::MIN);
    if version >= 10 {
        out.with_topic_id(super::uuid_of(&topic.record.id))
    } else {
        out
    }
}
