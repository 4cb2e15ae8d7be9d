//! CreateTopics.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::{Broker, BrokerError};
use crate::topic_config;

pub async fn handle(
    broker: &Arc<Broker>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let partitions = if t.num_partitions == -1 {
            broker.config.num_partitions
        } else {
            t.num_partitions
        };
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
            })
            .collect();
        // Explicit assignments fix the partition count and replication factor.
        let assignment = (!t.assignments.is_empty()).then(|| assignments(&t.assignments));
        let (partitions, rf) = match &assignment {
            Some(Ok(a)) => (
                i32::try_from(a.len()).unwrap_or(i32::MAX),
                a.first()
                    .map_or(-1, |r| i16::try_from(r.len()).unwrap_or(i16::MAX)),
            ),
            _ => (partitions, t.replication_factor),
        };
        let checked = match assignment {
            Some(Err(e)) => Err(e),
            other => broker
                .check_new_topic(&name, partitions, rf, &configs)
                .map(|()| other.and_then(Result::ok)),
        };
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(_) if req.validate_only => Ok(None),
            Ok(assignment) => broker
                .create_topic(&name, partitions, rf, configs, assignment)
                .await
                .map(Some),
        };
        match outcome {
            Ok(created) => {
                let (n, topic_configs, id, replicas) = match &created {
                    Some(topic) => (
                        topic.record.partitions,
                        topic.record.configs.clone(),
                        topic.record.id,
                        topic.record.replicas.first().map_or(1, Vec::len),
                    ),
                    None => (
                        partitions,
                        BTreeMap::new(),
                        [0u8; 16],
                        broker.replication_factor(rf, &broker.cluster.state()) as usize,
                    ),
                };
                if version >= 5 {
                    result = result
                        .with_num_partitions(n)
                        .with_replication_factor(i16::try_from(replicas).unwrap_or(i16::MAX));
                    result.configs = Some(describe(broker, &topic_configs));
                }
                if version >= 7 {
                    result.topic_id = super::uuid_of(&id);
                }
            }
            Err(e) => {
                let code = error_code(&e);
                super::note_error(broker, "CreateTopics", code);
                result = result.with_error_code(code);
                if version >= 1 {
                    result.error_message = super::message(e.to_string());
                }
            }
        }
        resp.topics.push(result);
    }
    resp
}

/// Operator-given replica lists, which must name partitions 0..n in order.
fn assignments(
    list: &[kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment],
) -> Result<Vec<Vec<i32>>, BrokerError> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            if a.partition_index != i as i32 {
                return Err(BrokerError::InvalidPartitions(format!(
                    "replica assignments must list partitions 0..n in order; found partition {} at position {i}",
                    a.partition_index
                )));
            }
            Ok(a.broker_ids.iter().map(|b| b.0).collect())
        })
        .collect()
}

pub fn error_code(e: &BrokerError) -> i16 {
    match e {
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists.code(),
        BrokerError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition.code(),
        BrokerError::InvalidTopicName { .. } => ResponseError::InvalidTopicException.code(),
        BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor.code(),
        BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        BrokerError::Meta(_) | BrokerError::Partition(_) | BrokerError::Io(_) => {
            ResponseError::KafkaStorageError.code()
        }
        BrokerError::Cluster(_) | BrokerError::Timeout => ResponseError::RequestTimedOut.code(),
        BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest.code(),
    }
}

/// Every topic config with its effective value, as CreateTopics v5+ reports them.
fn describe(broker: &Broker, overrides: &BTreeMap<String, String>) -> Vec<CreatableTopicConfigs> {
    let dynamic = broker.dynamic_configs();
    topic_config::TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let first = topic_config::synonyms(def.name, Some(overrides), &dynamic, &broker.config)
                .into_iter()
                .next();
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(def.name))
                .with_value(
                    first
                        .as_ref()
                        .map(|s| StrBytes::from_string(s.value.clone())),
                )
                .with_config_source(first.map_or(5, |s| s.source as i8))
        })
        .collect()
}
