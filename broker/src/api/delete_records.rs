//! DeleteRecords: moves a partition's log start offset (Kafka's low watermark) up. The
//! request goes to the partition leader; the new low watermark is replicated through the
//! cluster metadata (`MetaCommand::DeleteRecords`), so every replica raises its log start
//! and deletes the segments entirely below it (through the same snapshot + purge path as
//! retention), and a later leader keeps it.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::broker::{Broker, Topic};
use crate::cluster::metadata::{MetaCommand, Rejection};

/// Longest wait for one partition's deletion, whatever the request asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Used when the request gives no positive timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Kafka's "delete up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn handle(
    broker: &Arc<Broker>,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let timeout = u64::try_from(req.timeout_ms)
        .ok()
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
        .min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut resp = DeleteRecordsResponse::default();
    for t in req.topics {
        let topic = broker.topic(t.name.0.as_str());
        let mut partitions = Vec::new();
        for p in t.partitions {
            let result = match &topic {
                None => Err(ResponseError::UnknownTopicOrPartition.code()),
                Some(topic) => delete(broker, topic, p.partition_index, p.offset, deadline).await,
            };
            let (low_watermark, code) = match result {
                Ok(lw) => (lw, 0),
                Err(code) => {
                    super::note_error(broker, "DeleteRecords", code);
                    (-1, code)
                }
            };
            partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(low_watermark)
                    .with_error_code(code),
            );
        }
        resp.topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    resp
}

/// Deletes the records of one partition below `offset`; returns the new low watermark.
async fn delete(
    broker: &Arc<Broker>,
    topic: &Topic,
    index: i32,
    offset: i64,
    deadline: tokio::time::Instant,
) -> Result<i64, i16> {
    let partition = topic.local(index).map_err(|e| e.code())?;
    if !partition.is_leader() {
        return Err(ResponseError::NotLeaderOrFollower.code());
    }
    let hw = partition.high_watermark();
    let target = if offset == HIGH_WATERMARK { hw } else { offset };
    if target < 0 || target > hw {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    if target <= partition.log_start_offset() {
        return Ok(partition.log_start_offset());
    }
    let cmd = MetaCommand::DeleteRecords {
        name: topic.record.name.clone(),
        topic_id: topic.record.id,
        partition: index,
        low_watermark: target,
    };
    let reply = match tokio::time::timeout_at(deadline, broker.cluster.write(cmd)).await {
        Err(_) => return Err(ResponseError::RequestTimedOut.code()),
        Ok(Err(e)) => {
            tracing::warn!(topic = %topic.record.name, partition = index, error = %e, "DeleteRecords: metadata write failed");
            return Err(ResponseError::RequestTimedOut.code());
        }
        Ok(Ok(reply)) => reply,
    };
    match reply.rejected {
        None => {}
        Some(Rejection::UnknownTopic(_)) => {
            return Err(ResponseError::UnknownTopicOrPartition.code())
        }
        Some(other) => {
            tracing::warn!(topic = %topic.record.name, partition = index, reason = %other, "DeleteRecords refused");
            return Err(ResponseError::UnknownServerError.code());
        }
    }
    // The metadata applied it here; raise at once and delete what lies below now rather than
    // at the next retention pass.
    partition.apply_low_watermark(target);
    partition
        .enforce_retention(crate::raft::log_store::now_ms())
        .await;
    Ok(partition.log_start_offset())
}
