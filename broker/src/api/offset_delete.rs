//! OffsetDelete: removes committed offsets of partitions the group does not consume.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;

pub async fn handle(
    broker: &Arc<Broker>,
    req: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    let mut codes: HashMap<(String, i32), i16> = HashMap::new();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let topic = broker.topic(t.name.as_str());
        for p in &t.partitions {
            let key = (t.name.to_string(), p.partition_index);
            if topic.is_some() {
                wanted.push(key);
            } else {
                codes.insert(key, E::UnknownTopicOrPartition.code());
            }
        }
    }
    let (error, results) = match coordinator(broker) {
        None => (E::CoordinatorNotAvailable.code(), Vec::new()),
        Some(c) => c.offset_delete(req.group_id.as_str(), wanted).await,
    };
    super::note_error(broker, "OffsetDelete", error);
    let mut resp = OffsetDeleteResponse::default().with_error_code(error);
    if error != 0 {
        return resp;
    }
    for (topic, partition, code) in results {
        codes.insert((topic, partition), code);
    }
    resp.topics = req
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
                        .unwrap_or(0);
                    super::note_error(broker, "OffsetDelete", code);
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    resp
}
