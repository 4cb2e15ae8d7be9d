//! ListOffsets: earliest, latest, by timestamp, and the record with the largest timestamp.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(
    broker: &Arc<Broker>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    // READ_COMMITTED (v2+): LATEST is the last stable offset, the frontier of the global
    // order, like Fetch's.
    let committed = version >= 2 && req.isolation_level == 1;
    for t in req.topics {
        let topic = broker.topic(t.name.as_str());
        let mut out = ListOffsetsTopicResponse::default().with_name(t.name.clone());
        for p in t.partitions {
            let base = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let local = topic
                .as_ref()
                .ok_or(ResponseError::UnknownTopicOrPartition)
                .and_then(|t| t.local(p.partition_index));
            let gate = local.and_then(|part| {
                super::leader_epoch::check_leader(part, p.current_leader_epoch).map(|()| part)
            });
            let result = match gate {
                Err(e) => base.with_error_code(e.code()),
                Ok(part) => match lookup(broker, part, p.timestamp, committed) {
                    Ok((offset, timestamp)) => {
                        let found = base.with_offset(offset).with_timestamp(timestamp);
                        // leader_epoch exists from v4 on; older versions must keep the default.
                        if version >= 4 {
                            found.with_leader_epoch(part.leader_epoch())
                        } else {
                            found
                        }
                    }
                    Err(code) => base.with_error_code(code),
                },
            };
            super::note_error(broker, "ListOffsets", result.error_code);
            out.partitions.push(result);
        }
        resp.topics.push(out);
    }
    resp
}

/// (offset, timestamp) for one query; -1 offset when no record qualifies.
fn lookup(
    broker: &Broker,
    part: &Partition,
    query: i64,
    committed: bool,
) -> Result<(i64, i64), i16> {
    let storage = |e: std::io::Error| {
        tracing::error!(topic = %part.topic, partition = part.index, error = %e, "list offsets failed");
        part.note_storage_error("read log", &e);
        ResponseError::KafkaStorageError.code()
    };
    match query {
        LATEST | LATEST_TIERED if committed => broker
            .frontier
            .stable_offset(part.key)
            .map(|stable| (stable, -1))
            .ok_or(ResponseError::OffsetNotAvailable.code()),
        LATEST | LATEST_TIERED => Ok((part.high_watermark(), -1)),
        EARLIEST | EARLIEST_LOCAL => Ok((part.log_start_offset(), -1)),
        MAX_TIMESTAMP => {
            let found = part.with_log(|l| l.max_timestamp()).map_err(storage)?;
            match found {
                None => Ok((-1, -1)),
                Some((ts, batch_base)) => {
                    let batch = part
                        .with_log(|l| l.read_batch_by_time(ts))
                        .map_err(storage)?
                        .map_err(storage)?;
                    let offset = batch
                        .and_then(|b| first_record_at_or_after(b, ts))
                        .map_or(batch_base, |(o, _)| o);
                    Ok((offset, ts))
                }
            }
        }
        t if t >= 0 => {
            let batch = part
                .with_log(|l| l.read_batch_by_time(t))
                .map_err(storage)?
                .map_err(storage)?;
            let hw = part.high_watermark();
            match batch.and_then(|b| first_record_at_or_after(b, t)) {
                Some((offset, ts)) if offset < hw => Ok((offset, ts)),
                _ => Ok((-1, -1)),
            }
        }
        _ => Err(ResponseError::InvalidRequest.code()),
    }
}

/// Decodes one stored batch (decompressing it) to find the first record with timestamp >= t.
fn first_record_at_or_after(batch: bytes::Bytes, t: i64) -> Option<(i64, i64)> {
    let mut buf = batch;
    let set = RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= t)
        .map(|r| (r.offset, r.timestamp))
}
