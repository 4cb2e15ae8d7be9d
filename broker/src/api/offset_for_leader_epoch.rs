//! OffsetForLeaderEpoch: where a leader epoch (Raft term) ends, for consumer truncation checks.

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let topic = broker.topic(t.topic.as_str());
        let mut out = OffsetForLeaderTopicResult::default().with_topic(t.topic.clone());
        for p in t.partitions {
            let base = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let local = topic
                .as_ref()
                .ok_or(ResponseError::UnknownTopicOrPartition)
                .and_then(|tp| tp.local(p.partition));
            let result = match local {
                Err(e) => base.with_error_code(e.code()),
                Ok(part) if !part.is_leader() => {
                    base.with_error_code(ResponseError::NotLeaderOrFollower.code())
                }
                Ok(part) => {
                    let current = part.leader_epoch();
                    if p.current_leader_epoch > current {
                        base.with_error_code(ResponseError::UnknownLeaderEpoch.code())
                    } else if p.current_leader_epoch >= 0 && p.current_leader_epoch < current {
                        base.with_error_code(ResponseError::FencedLeaderEpoch.code())
                    } else if p.leader_epoch >= current {
                        base.with_leader_epoch(current)
                            .with_end_offset(part.high_watermark())
                    } else {
                        match part.with_log(|l| l.end_of_epoch(p.leader_epoch)) {
                            Ok(Some((epoch, end))) => {
                                base.with_leader_epoch(epoch).with_end_offset(end)
                            }
                            Ok(None) => base,
                            Err(_) => base.with_error_code(ResponseError::KafkaStorageError.code()),
                        }
                    }
                }
            };
            super::note_error(broker, "OffsetForLeaderEpoch", result.error_code);
            out.partitions.push(result);
        }
        resp.topics.push(out);
    }
    resp
}
