//! Fetch: whole stored batches, read from segment files without decoding them.
//!
//! A long poll waits on the broker-wide "data arrived" notification (fired when any high
//! watermark moves) until min_bytes are available or max_wait_ms passes; no timer polling.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;

use crate::broker::{Broker, Topic};
use crate::storage::batch;

/// Upper bound on a fetch's wait, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Upper bound on a fetch response, whatever the client asks.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

pub async fn handle(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = u64::try_from(req.min_bytes).unwrap_or(0);
    loop {
        // Register interest before reading so an append between the read and the wait
        // still wakes us.
        let notified = broker.data_arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (resp, bytes) = read_all(broker, &req, version);
        let waited_out = tokio::time::Instant::now() >= deadline;
        if bytes >= min_bytes || waited_out || has_errors(&resp) {
            count_out(broker, &resp);
            return resp;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let (resp, _) = read_all(broker, &req, version);
            count_out(broker, &resp);
            return resp;
        }
    }
}

fn has_errors(resp: &FetchResponse) -> bool {
    resp.responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .any(|p| p.error_code != 0)
}

/// One pass over the requested partitions; returns the response and the bytes it carries.
fn read_all(broker: &Broker, req: &FetchRequest, version: i16) -> (FetchResponse, u64) {
    let response_max = u64::try_from(req.max_bytes)
        .unwrap_or(0)
        .clamp(1, MAX_RESPONSE_BYTES);
    let mut total = 0u64;
    let mut resp = FetchResponse::default();
    for t in &req.topics {
        let topic = if version >= 13 {
            broker.topic_by_id(t.topic_id.as_bytes())
        } else {
            broker.topic(t.topic.as_str())
        };
        // v13+ names topics by id only; keep the resolved name for metrics (not encoded).
        let name = topic.as_ref().map_or_else(
            || t.topic.clone(),
            |tp| {
                kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_string(tp.record.name.clone()),
                )
            },
        );
        let mut out = FetchableTopicResponse::default()
            .with_topic(name)
            .with_topic_id(t.topic_id);
        for p in &t.partitions {
            let part_max = u64::try_from(p.partition_max_bytes).unwrap_or(0);
            // KIP-74: the first batch of the response is returned even when over the limits.
            let budget = if total == 0 {
                part_max.min(response_max).max(1)
            } else {
                part_max.min(response_max.saturating_sub(total))
            };
            let data = read_partition(
                topic.as_deref(),
                version,
                p.partition,
                p.fetch_offset,
                budget,
                total == 0,
            );
            total += data.records.as_ref().map_or(0, |r| r.len() as u64);
            out.partitions.push(data);
        }
        resp.responses.push(out);
    }
    (resp, total)
}

fn read_partition(
    topic: Option<&Topic>,
    version: i16,
    index: i32,
    offset: i64,
    budget: u64,
    first: bool,
) -> PartitionData {
    let empty = PartitionData::default()
        .with_partition_index(index)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
        // An empty record set, never null: librdkafka rejects a null one.
        .with_records(Some(Bytes::new()));
    let unknown = if version >= 13 {
        ResponseError::UnknownTopicId
    } else {
        ResponseError::UnknownTopicOrPartition
    };
    let Some(topic) = topic else {
        return empty.with_error_code(unknown.code());
    };
    let partition = match topic.local(index) {
        Ok(p) => p,
        Err(e) => return empty.with_error_code(e.code()),
    };
    if !partition.is_leader() {
        return empty.with_error_code(ResponseError::NotLeaderOrFollower.code());
    }
    let hw = partition.high_watermark();
    let mut data = empty.with_high_watermark(hw).with_last_stable_offset(hw);
    if version >= 5 {
        data.log_start_offset = partition.log_start_offset();
    }
    if offset < partition.log_start_offset() || offset > hw {
        return data.with_error_code(ResponseError::OffsetOutOfRange.code());
    }
    if budget == 0 && !first {
        return data;
    }
    match partition.read(offset, budget.max(1)) {
        Ok(Some(r)) => data.with_records(Some(r.bytes)),
        Ok(None) => data,
        Err(e) => {
            tracing::error!(topic = %topic.record.name, partition = index, error = %e, "fetch read failed");
            data.with_error_code(ResponseError::KafkaStorageError.code())
        }
    }
}

/// Bytes and records sent, per topic.
fn count_out(broker: &Broker, resp: &FetchResponse) {
    for t in &resp.responses {
        let name = t.topic.as_str();
        for p in &t.partitions {
            super::note_error(broker, "Fetch", p.error_code);
            let Some(records) = &p.records else { continue };
            if records.is_empty() {
                continue;
            }
            broker
                .metrics
                .bytes_out
                .with_label_values(&[name])
                .inc_by(records.len() as u64);
            broker
                .metrics
                .records_out
                .with_label_values(&[name])
                .inc_by(count_records(records));
        }
    }
}

fn count_records(mut data: &[u8]) -> u64 {
    let mut n = 0;
    while let Ok(span) = batch::read_span(data) {
        n += (span.last_offset - span.base_offset + 1) as u64;
        data = data.get(span.total_len..).unwrap_or(&[]);
    }
    n
}
