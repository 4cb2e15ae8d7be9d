//! OffsetForLeaderEpoch: where a leader epoch (Raft term) ends, for consumer truncation checks
//! (librdkafka and kafka-python validate their position with it after a leader change: an
//! end offset below the position, or -1, makes them seek back or reset). With GSN offsets an
//! epoch ends at the offset after its last batch; the leader's own epoch at its log end
//! (`storage::log::epoch_end`).

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
            let gate = local.and_then(|part| {
                super::leader_epoch::check_leader(part, p.current_leader_epoch).map(|()| part)
            });
            let result = match gate {
                Err(e) => base.with_error_code(e.code()),
                Ok(part) => {
                    let current = part.leader_epoch();
                    let hw = part.high_watermark();
                    match part.with_log(|l| l.end_of_epoch(p.leader_epoch, current, hw)) {
                        Ok(Some((epoch, end))) => {
                            base.with_leader_epoch(epoch).with_end_offset(end)
                        }
                        Ok(None) => base,
                        Err(_) => base.with_error_code(ResponseError::KafkaStorageError.code()),
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
