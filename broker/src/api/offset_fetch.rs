//! OffsetFetch: committed offsets with their metadata; one group (v1–v7) or many (v8+).
//! Partitions without a committed offset answer -1 and empty metadata.

use std::sync::Arc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;
use crate::group::state::FetchedOffset;

type Wanted = Option<Vec<(String, Vec<i32>)>>;

/// One partition's answer: (partition, offset, leader epoch, metadata, error).
type Row = (i32, i64, i32, String, i16);

fn fetch(broker: &Broker, group: &str, wanted: Wanted) -> Result<Vec<(String, Vec<Row>)>, i16> {
    let c = coordinator(broker).ok_or(E::CoordinatorNotAvailable.code())?;
    let rows = c.fetch_offsets(group, wanted)?;
    Ok(by_topic(rows))
}

fn by_topic(rows: Vec<FetchedOffset>) -> Vec<(String, Vec<Row>)> {
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    for (topic, partition, value) in rows {
        let row = match value {
            Some(v) => (partition, v.offset, v.leader_epoch, v.metadata, 0),
            None => (partition, -1, -1, String::new(), 0),
        };
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, rows)) => rows.push(row),
            None => out.push((topic, vec![row])),
        }
    }
    out
}

pub async fn handle(
    broker: &Arc<Broker>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        for g in req.groups {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            match fetch(broker, g.group_id.as_str(), wanted) {
                Ok(topics) => {
                    out.topics = topics
                        .into_iter()
                        .map(|(name, rows)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(name)))
                                .with_partitions(
                                    rows.into_iter()
                                        .map(|(p, o, e, m, code)| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(o)
                                                .with_committed_leader_epoch(e)
                                                .with_metadata(Some(StrBytes::from_string(m)))
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                }
                Err(code) => {
                    super::note_error(broker, "OffsetFetch", code);
                    out.error_code = code;
                }
            }
            resp.groups.push(out);
        }
        return resp;
    }
    let requested: Wanted = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let group = GroupId::from(req.group_id.0.clone());
    let topics = match fetch(broker, group.as_str(), requested.clone()) {
        Ok(topics) => topics,
        Err(code) => {
            super::note_error(broker, "OffsetFetch", code);
            if version >= 2 {
                resp.error_code = code;
                return resp;
            }
            // v1 has no group-level error: every requested partition carries it.
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| {
                    (
                        t,
                        ps.into_iter()
                            .map(|p| (p, -1, -1, String::new(), code))
                            .collect(),
                    )
                })
                .collect()
        }
    };
    resp.topics = topics
        .into_iter()
        .map(|(name, rows)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(
                    rows.into_iter()
                        .map(|(p, o, e, m, code)| {
                            let out = OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_metadata(Some(StrBytes::from_string(m)))
                                .with_error_code(code);
                            if version >= 5 {
                                out.with_committed_leader_epoch(e)
                            } else {
                                out
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    resp
}
