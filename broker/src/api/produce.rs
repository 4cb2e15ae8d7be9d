//! Produce: validate each partition's record batch, give it GSNs, append it through Raft.
//!
//! All partitions of a request are queued first and awaited afterwards, so their sequencer
//! tickets and Raft appends overlap.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use crate::broker::{Broker, Topic};
use crate::partition::{Acks, AppendError};
use crate::producer_state::SequenceError;
use crate::storage::batch::{self, BatchError};
use crate::storage::records::RecordsError;

/// Upper bound on a produce request's own timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The append's acknowledgement and the log append time given to the batch (-1: CreateTime).
type Pending = Result<(oneshot::Receiver<Result<i64, AppendError>>, i64), i16>;

/// A produce request whose batches are queued at their partitions, awaiting acknowledgement.
pub struct Queued {
    topics: Vec<(TopicProduceResponse, Vec<(i32, Pending)>)>,
    acks: Option<Acks>,
    timeout_ms: i32,
    version: i16,
}

/// Validates every partition's batch and queues it at its partition, in request order.
/// The connection runs this before reading its next request, so requests pipelined on one
/// connection are appended in the order they were sent (as Kafka, which handles one request
/// per connection at a time, guarantees); only the waiting for acks overlaps.
pub async fn queue_all(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Queued {
    let acks = match req.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let mut topics: Vec<(TopicProduceResponse, Vec<(i32, Pending)>)> = Vec::new();
    for td in req.topic_data {
        let topic = if version >= 13 {
            broker.topic_by_id(td.topic_id.as_bytes())
        } else {
            broker.topic(td.name.as_str())
        };
        let unknown = if version >= 13 {
            ResponseError::UnknownTopicId
        } else if crate::broker::validate_topic_name(td.name.as_str()).is_err() {
            // A name no topic can have: answer as Metadata and CreateTopics do for it.
            ResponseError::InvalidTopicException
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let mut parts = Vec::new();
        for pd in td.partition_data {
            let pending = match (&topic, acks) {
                (_, None) => Err(ResponseError::InvalidRequiredAcks.code()),
                (None, _) => Err(unknown.code()),
                (Some(topic), Some(acks)) => queue(broker, topic, pd.index, pd.records, acks).await,
            };
            parts.push((pd.index, pending));
        }
        let mut head = TopicProduceResponse::default().with_name(td.name);
        if version >= 13 {
            head.topic_id = td.topic_id;
        }
        topics.push((head, parts));
    }
    Queued {
        topics,
        acks,
        timeout_ms: req.timeout_ms,
        version,
    }
}

/// Waits for the queued batches; `None` for acks=0 (no response is sent).
pub async fn finish(broker: &Arc<Broker>, queued: Queued) -> Option<ProduceResponse> {
    let Queued {
        topics: queued,
        acks,
        timeout_ms,
        version,
    } = queued;
    if acks == Some(Acks::None) {
        return None;
    }
    let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)).min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut resp = ProduceResponse::default();
    for (mut head, parts) in queued {
        let topic = broker.topic(head.name.as_str());
        for (index, pending) in parts {
            let mut append_time = -1;
            // Kafka answers -1 with an error and the partition's log start offset otherwise.
            let log_start = topic
                .as_ref()
                .and_then(|t| t.local(index).ok())
                .map_or(-1, |p| p.log_start_offset());
            let result = match pending {
                Err(code) => Err(code),
                Ok((rx, time)) => {
                    append_time = time;
                    match tokio::time::timeout_at(deadline, rx).await {
                        Err(_) => Err(ResponseError::RequestTimedOut.code()),
                        Ok(Err(_)) => Err(ResponseError::NotLeaderOrFollower.code()),
                        Ok(Ok(r)) => r.map_err(append_error_code),
                    }
                    .map_err(|code| storage_error_instead(topic.as_deref(), index, code))
                }
            };
            head.partition_responses.push(
                partition_response(broker, index, result, version, log_start)
                    .with_log_append_time_ms(append_time),
            );
        }
        resp.responses.push(head);
    }
    Some(resp)
}

/// A batch that was waiting when its replica went offline (the Raft node stopped under it,
/// so the appender said "not leader") is answered as Kafka answers for an offline log
/// directory: KAFKA_STORAGE_ERROR.
fn storage_error_instead(topic: Option<&Topic>, index: i32, code: i16) -> i16 {
    let offline =
        topic.is_some_and(|t| matches!(t.local(index), Err(ResponseError::KafkaStorageError)));
    if offline && code == ResponseError::NotLeaderOrFollower.code() {
        ResponseError::KafkaStorageError.code()
    } else {
        code
    }
}

fn partition_response(
    broker: &Broker,
    index: i32,
    result: Result<i64, i16>,
    version: i16,
    log_start: i64,
) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default()
        .with_index(index)
        .with_log_append_time_ms(-1);
    if version >= 5 {
        r.log_start_offset = if result.is_ok() { log_start } else { -1 };
    }
    match result {
        Ok(base) => r.with_base_offset(base),
        Err(code) => {
            super::note_error(broker, "Produce", code);
            r.with_error_code(code).with_base_offset(-1)
        }
    }
}

/// Validates one partition's records and queues them; Err is a Kafka error code.
async fn queue(
    broker: &Broker,
    topic: &Topic,
    index: i32,
    records: Option<Bytes>,
    acks: Acks,
) -> Pending {
    let partition = topic.local(index).map_err(|e| e.code())?;
    if topic.record.name == crate::group::OFFSETS_TOPIC {
        // Only the group coordinator writes there (Kafka: "Cannot append to internal topic").
        return Err(ResponseError::InvalidTopicException.code());
    }
    let records = records.ok_or(ResponseError::InvalidRecord.code())?;
    let settings = partition.settings();
    if records.len() > settings.max_message_bytes {
        return Err(ResponseError::MessageTooLarge.code());
    }
    let header = batch::verify_produce_records(&records).map_err(|e| {
        tracing::debug!(topic = %topic.record.name, partition = index, error = %e, "rejected batch");
        batch_error_code(&e)
    })?;
    let require_keys = partition.settings().cleanup_compact;
    crate::storage::records::verify(&records, &header, require_keys).map_err(|e| {
        tracing::debug!(topic = %topic.record.name, partition = index, error = %e, "rejected records");
        records_error_code(&e)
    })?;
    check_producer_fields(&records)?;
    let count =
        u64::try_from(header.record_count).map_err(|_| ResponseError::InvalidRecord.code())?;
    if acks == Acks::All && partition.in_sync_count() < settings.min_insync_replicas {
        return Err(ResponseError::NotEnoughReplicas.code());
    }
    let name = topic.record.name.as_str();
    broker
        .metrics
        .bytes_in
        .with_label_values(&[name])
        .inc_by(records.len() as u64);
    broker
        .metrics
        .records_in
        .with_label_values(&[name])
        .inc_by(count);
    // The request's buffer is shared; the stamped copy is the one that is stored.
    let mut owned = BytesMut::from(&records[..]);
    let append_time = if settings.log_append_time {
        let now = crate::raft::log_store::now_ms();
        batch::set_log_append_time(&mut owned, now);
        now
    } else {
        -1
    };
    partition
        .enqueue(owned, count, acks)
        .await
        .map(|rx| (rx, append_time))
        .map_err(append_error_code)
}

/// Idempotence fields Kafka refuses before any sequence check: a producer id without a
/// sequence (INVALID_RECORD), and transactional batches (transactions are not served; the
/// same error InitProducerId gives a transactional id).
fn check_producer_fields(records: &[u8]) -> Result<(), i16> {
    let Some(f) = batch::producer_fields(records) else {
        return Ok(());
    };
    if f.attributes & batch::ATTR_TRANSACTIONAL != 0 {
        return Err(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    if f.producer_id >= 0 && f.base_sequence < 0 {
        return Err(ResponseError::InvalidRecord.code());
    }
    Ok(())
}

fn batch_error_code(e: &BatchError) -> i16 {
    match e {
        BatchError::Truncated { .. }
        | BatchError::BadLength(_)
        | BatchError::CrcMismatch { .. } => ResponseError::CorruptMessage.code(),
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
        BatchError::BadRecordCount { .. }
        | BatchError::NotOneBatch(_)
        | BatchError::ControlBatch => ResponseError::InvalidRecord.code(),
    }
}

fn records_error_code(e: &RecordsError) -> i16 {
    match e {
        RecordsError::UnknownCodec(_) => ResponseError::UnsupportedCompressionType.code(),
        RecordsError::Decompress(_) | RecordsError::TooLarge => {
            ResponseError::CorruptMessage.code()
        }
        RecordsError::Malformed { .. }
        | RecordsError::OffsetDelta { .. }
        | RecordsError::TrailingBytes { .. }
        | RecordsError::MissingKey { .. } => ResponseError::InvalidRecord.code(),
    }
}

fn append_error_code(e: AppendError) -> i16 {
    match e {
        AppendError::NotLeader | AppendError::ShuttingDown => {
            ResponseError::NotLeaderOrFollower.code()
        }
        AppendError::Sequencer(_) => ResponseError::RequestTimedOut.code(),
        AppendError::Storage(_) => ResponseError::KafkaStorageError.code(),
        AppendError::Sequence(SequenceError::InvalidEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch.code()
        }
        AppendError::Sequence(SequenceError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber.code()
        }
    }
}
