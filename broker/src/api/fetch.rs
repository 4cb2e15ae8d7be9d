//! Fetch: whole stored batches, read from segment files without decoding them.
//!
//! A long poll waits on the broker-wide "data arrived" notification (fired when any high
//! watermark, the frontier or a stable offset moves) until min_bytes are available or
//! max_wait_ms passes; no timer polling.
//!
//! read_committed (isolation_level 1) reads below the partition's last stable offset, the
//! frontier of the global order (`frontier_driver`): only batches below it, then, when
//! nothing else lies below it, a COMMIT marker up to it, so a quiet partition's position
//! moves up to the frontier too. A leader that has no stable offset yet keeps the fetch
//! waiting and answers OFFSET_NOT_AVAILABLE (retriable) when the wait is over.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;

use crate::broker::{Broker, Topic};
use crate::partition::Partition;
use crate::storage::batch;

/// Upper bound on a fetch's wait, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Upper bound on a fetch response, whatever the client asks.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

pub async fn handle(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = u64::try_from(req.min_bytes).unwrap_or(0);
    let committed = version >= 4 && req.isolation_level == READ_COMMITTED;
    loop {
        // Register interest before reading so an append between the read and the wait
        // still wakes us. Only read_committed fetches wait for the frontier too: it moves
        // every millisecond under load, which read_uncommitted need not hear of.
        let notified = broker.data_arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let moved = broker.frontier.moved();
        tokio::pin!(moved);
        moved.as_mut().enable();
        let waited_out = tokio::time::Instant::now() >= deadline;
        let (resp, bytes) = read_all(broker, &req, version, waited_out);
        if bytes >= min_bytes || waited_out || has_errors(&resp) {
            count_out(broker, &resp);
            return resp;
        }
        let woken = async {
            if committed {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = &mut moved => {}
                }
            } else {
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            let (resp, _) = read_all(broker, &req, version, true);
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
/// `last_pass`: the wait is over, so a read_committed partition without a stable offset
/// gets its error now.
fn read_all(
    broker: &Broker,
    req: &FetchRequest,
    version: i16,
    last_pass: bool,
) -> (FetchResponse, u64) {
    let committed = version >= 4 && req.isolation_level == READ_COMMITTED;
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
            let read = PartitionRead {
                index: p.partition,
                current_leader_epoch: p.current_leader_epoch,
                offset: p.fetch_offset,
                budget,
                first: total == 0,
                committed,
                last_pass,
            };
            let data = read_partition(broker, topic.as_deref(), version, read);
            total += data.records.as_ref().map_or(0, |r| r.len() as u64);
            out.partitions.push(data);
        }
        resp.responses.push(out);
    }
    (resp, total)
}

const READ_COMMITTED: i8 = 1;

/// One partition of a fetch.
struct PartitionRead {
    index: i32,
    current_leader_epoch: i32,
    offset: i64,
    /// Bytes this partition may add to the response.
    budget: u64,
    /// First partition with data: its first batch goes out whole whatever the limits.
    first: bool,
    committed: bool,
    last_pass: bool,
}

fn read_partition(
    broker: &Broker,
    topic: Option<&Topic>,
    version: i16,
    read: PartitionRead,
) -> PartitionData {
    let PartitionRead {
        index,
        current_leader_epoch,
        offset,
        budget,
        first,
        committed,
        last_pass,
    } = read;
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
    if let Err(e) = super::leader_epoch::check_leader(partition, current_leader_epoch) {
        return empty.with_error_code(e.code());
    }
    let hw = partition.high_watermark();
    let stable = broker.frontier.stable_offset(partition.key);
    let mut data = empty.with_high_watermark(hw).with_last_stable_offset(hw);
    if version >= 5 {
        data.log_start_offset = partition.log_start_offset();
    }
    // The log end is only needed (and read) above the high watermark.
    let log_end = if offset > hw {
        partition
            .with_log(|l| l.end_offset())
            .ok()
            .flatten()
            .unwrap_or(hw)
    } else {
        hw
    };
    // A read_committed position moves up to the stable offset of the leader it read from,
    // past this log's end; another broker's frontier may be ahead of this one's for a
    // moment (a new leader). Every such position lies at or below a number already handed
    // out, so offsets up to the newest number this broker knows of are in range (empty
    // until records arrive above them); only beyond that is an offset out of range.
    let handed_out = broker.frontier.newest().map_or(0, |g| g.saturating_add(1));
    let end = log_end.max(stable.unwrap_or(0)).max(handed_out);
    match fetch_position(offset, partition.log_start_offset(), hw, end) {
        FetchPosition::OutOfRange => {
            return data.with_error_code(ResponseError::OffsetOutOfRange.code())
        }
        FetchPosition::NotCommittedYet if !committed => return data,
        FetchPosition::NotCommittedYet | FetchPosition::Readable => {}
    }
    if committed {
        let Some(stable) = stable else {
            // Cannot tell yet what is final: nothing, and a retriable error once the wait
            // is over.
            let data = data.with_last_stable_offset(-1);
            return if last_pass {
                data.with_error_code(ResponseError::OffsetNotAvailable.code())
            } else {
                data
            };
        };
        data = data
            .with_last_stable_offset(stable)
            .with_aborted_transactions(Some(Vec::new()));
        return read_committed(partition, topic, data, offset, budget, first, stable);
    }
    if budget == 0 && !first {
        return data;
    }
    match partition.read(offset, budget.max(1)) {
        Ok(Some(r)) => data.with_records(Some(r.bytes)),
        Ok(None) => data,
        Err(e) => storage_error(topic, index, data, &e),
    }
}

fn storage_error(
    topic: &Topic,
    index: i32,
    data: PartitionData,
    e: &std::io::Error,
) -> PartitionData {
    tracing::error!(topic = %topic.record.name, partition = index, error = %e, "fetch read failed");
    data.with_error_code(ResponseError::KafkaStorageError.code())
}

/// The batches of `partition` from `offset` that lie below `stable`, followed by a COMMIT
/// marker up to `stable` when nothing else lies below it.
fn read_committed(
    partition: &Partition,
    topic: &Topic,
    data: PartitionData,
    offset: i64,
    budget: u64,
    first: bool,
    stable: i64,
) -> PartitionData {
    if offset >= stable || (budget == 0 && !first) {
        return data;
    }
    let read = match partition.read_below(offset, budget.max(1), stable) {
        Ok(r) => r,
        Err(e) => return storage_error(topic, partition.index, data, &e),
    };
    let (mut out, next) = match read {
        Some(r) => {
            let next = last_offset(&r.bytes).map_or(offset, |l| l + 1);
            (BytesMut::from(&r.bytes[..]), next.max(offset))
        }
        None => (BytesMut::new(), offset),
    };
    if next < stable {
        // More below `stable` than the budget let through: the next fetch gets it.
        match partition.read_below(next, 1, stable) {
            Ok(Some(_)) => return data.with_records(Some(out.freeze())),
            Ok(None) => {}
            Err(e) => return storage_error(topic, partition.index, data, &e),
        }
        // No leader epoch (-1): the marker is no stored record, and clients validate their
        // position after a leader change by the epoch of the last batch they read
        // (KIP-320); a position past the log's end would look truncated.
        let marker = batch::commit_marker(next, stable - 1, -1, now_ms());
        out.extend_from_slice(&marker);
    }
    data.with_records(Some(out.freeze()))
}

/// The last offset of the last whole batch in `data`.
fn last_offset(mut data: &[u8]) -> Option<i64> {
    let mut last = None;
    while let Ok(span) = batch::read_span(data) {
        if span.total_len > data.len() {
            break;
        }
        last = Some(span.last_offset);
        data = &data[span.total_len..];
    }
    last
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where a fetch offset lies, by Kafka's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchPosition {
    /// From the log start up to the high watermark: committed batches can be read.
    Readable,
    /// Above the high watermark, up to the log end (the offset after the leader's last
    /// batch): a valid position with nothing to read yet. A new leader's high watermark can
    /// lag its predecessor's for a moment; consumers positioned there must wait, not reset.
    NotCommittedYet,
    /// Below the log start or beyond the log end: OFFSET_OUT_OF_RANGE.
    OutOfRange,
}

fn fetch_position(offset: i64, log_start: i64, hw: i64, log_end: i64) -> FetchPosition {
    if offset < log_start || offset > log_end.max(hw) {
        FetchPosition::OutOfRange
    } else if offset > hw {
        FetchPosition::NotCommittedYet
    } else {
        FetchPosition::Readable
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_only_outside_log_start_and_log_end() {
        use FetchPosition::*;
        // Log start 100, high watermark 200, leader's log end 260.
        let at = |offset| fetch_position(offset, 100, 200, 260);
        assert_eq!(at(99), OutOfRange);
        assert_eq!(at(100), Readable);
        assert_eq!(at(200), Readable, "at the high watermark: an empty read");
        assert_eq!(at(201), NotCommittedYet);
        assert_eq!(
            at(260),
            NotCommittedYet,
            "the log end itself is a valid position"
        );
        assert_eq!(at(261), OutOfRange);
        // Log start 0 on a fresh partition (GSN offsets below the first batch never existed).
        assert_eq!(fetch_position(0, 0, 0, 0), Readable);
        assert_eq!(fetch_position(1, 0, 0, 0), OutOfRange);
        // A log end below the high watermark (an emptied log) never narrows the range.
        assert_eq!(fetch_position(150, 0, 150, 0), Readable);
    }
}
