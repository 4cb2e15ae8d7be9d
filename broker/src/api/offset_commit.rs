//! OffsetCommit: stores offsets (with their metadata string) once they are replicated in
//! `__consumer_offsets`. Partitions of unknown topics are refused here, as Kafka does.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;
use crate::group::state::{CommitOffset, CommitRequest};

pub async fn handle(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut codes: HashMap<(String, i32), i16> = HashMap::new();
    for t in &req.topics {
        let topic = broker.topic(t.name.as_str());
        for p in &t.partitions {
            let known = topic
                .as_ref()
                .is_some_and(|topic| (0..topic.record.partitions).contains(&p.partition_index));
            if known {
                offsets.push(CommitOffset {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
            } else {
                codes.insert(
                    (t.name.to_string(), p.partition_index),
                    E::UnknownTopicOrPartition.code(),
                );
            }
        }
    }
    if !offsets.is_empty() {
        let results = match coordinator(broker) {
            None => offsets
                .iter()
                .map(|o| {
                    (
                        o.topic.clone(),
                        o.partition,
                        E::CoordinatorNotAvailable.code(),
                    )
                })
                .collect(),
            Some(c) => {
                c.commit(CommitRequest {
                    group_id: req.group_id.to_string(),
                    generation: req.generation_id_or_member_epoch,
                    member_id: req.member_id.to_string(),
                    instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
                    offsets,
                })
                .await
            }
        };
        for (topic, partition, code) in results {
            codes.insert((topic, partition), code);
        }
    }
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = codes
                        .get(&(name.clone(), p.partition_index))
                        .copied()
                        .unwrap_or(E::UnknownServerError.code());
                    super::note_error(broker, "OffsetCommit", code);
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
