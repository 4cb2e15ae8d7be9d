//! One handler per Kafka API. Each takes the decoded request and returns the response body;
//! this module decodes, dispatches, encodes and times them.

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_log_dirs;
mod fetch;
mod incremental_alter_configs;
mod init_producer_id;
mod leader_epoch;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;
// Consumer groups (see crate::group).
mod delete_groups;
mod describe_groups;
mod find_coordinator;
mod heartbeat;
mod join_group;
mod leave_group;
mod list_groups;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod sync_group;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::protocol::{decode_body, encode_response, FrameError};

pub use api_versions::fallback_response;

tokio::task_local! {
    /// The client's address, set by the connection around its read loop (JoinGroup
    /// records it as the member's client host).
    pub static PEER: std::net::SocketAddr;
}

/// Who sent a request, as group membership records it.
pub struct ClientInfo {
    pub client_id: String,
    /// Kafka's format: "/" and the IP address.
    pub host: String,
}

impl ClientInfo {
    fn of(header: &RequestHeader) -> Self {
        let id = header.client_id.as_deref().unwrap_or("");
        let mut end = id.len().min(crate::group::state::MAX_ID_BYTES);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        ClientInfo {
            client_id: id[..end].to_string(),
            host: PEER
                .try_with(|p| format!("/{}", p.ip()))
                .unwrap_or_default(),
        }
    }
}

/// A request's answer in the making: the connection's writer awaits these in arrival order.
pub type Reply = JoinHandle<Result<Option<BytesMut>, FrameError>>;

/// Starts one parsed request. Decoding, and for Produce the queueing of its batches at their
/// partitions, happen here, before the connection reads its next request, so requests of one
/// connection take effect in the order they were sent. The rest runs on its own task.
pub async fn start(
    broker: &Arc<Broker>,
    listener: &'static str,
    header: RequestHeader,
    api: ApiKey,
    mut body: Bytes,
) -> Result<Reply, FrameError> {
    let version = header.request_api_version;
    let cid = header.correlation_id;
    let started = Instant::now();
    let b = Arc::clone(broker);
    macro_rules! serve {
        ($module:ident) => {{
            let request = decode_body(&mut body, version)?;
            tokio::spawn(crate::broker::LISTENER.scope(listener, async move {
                let response = $module::handle(&b, request, version).await;
                let out =
                    encode_response(api, version, cid, &response).map_err(FrameError::BadHeader)?;
                observe(&b, api, started);
                Ok(Some(out))
            }))
        }};
    }
    // Handlers that also need to know the client (group membership).
    macro_rules! serve_client {
        ($module:ident) => {{
            let request = decode_body(&mut body, version)?;
            let client = ClientInfo::of(&header);
            tokio::spawn(async move {
                let response = $module::handle(&b, request, version, client).await;
                let out =
                    encode_response(api, version, cid, &response).map_err(FrameError::BadHeader)?;
                observe(&b, api, started);
                Ok(Some(out))
            })
        }};
    }
    Ok(match api {
        ApiKey::ApiVersions => serve!(api_versions),
        ApiKey::Metadata => serve!(metadata),
        ApiKey::CreateTopics => serve!(create_topics),
        ApiKey::DeleteTopics => serve!(delete_topics),
        ApiKey::CreatePartitions => serve!(create_partitions),
        ApiKey::Fetch => serve!(fetch),
        ApiKey::ListOffsets => serve!(list_offsets),
        ApiKey::OffsetForLeaderEpoch => serve!(offset_for_leader_epoch),
        ApiKey::DescribeCluster => serve!(describe_cluster),
        ApiKey::DescribeLogDirs => serve!(describe_log_dirs),
        ApiKey::DeleteRecords => serve!(delete_records),
        ApiKey::DescribeConfigs => serve!(describe_configs),
        ApiKey::AlterConfigs => serve!(alter_configs),
        ApiKey::IncrementalAlterConfigs => serve!(incremental_alter_configs),
        ApiKey::FindCoordinator => serve!(find_coordinator),
        ApiKey::JoinGroup => serve_client!(join_group),
        ApiKey::SyncGroup => serve!(sync_group),
        ApiKey::Heartbeat => serve!(heartbeat),
        ApiKey::LeaveGroup => serve!(leave_group),
        ApiKey::OffsetCommit => serve!(offset_commit),
        ApiKey::OffsetFetch => serve!(offset_fetch),
        ApiKey::ListGroups => serve!(list_groups),
        ApiKey::DescribeGroups => serve!(describe_groups),
        ApiKey::DeleteGroups => serve!(delete_groups),
        ApiKey::OffsetDelete => serve!(offset_delete),
        ApiKey::InitProducerId => serve!(init_producer_id),
        ApiKey::Produce => {
            let request = decode_body(&mut body, version)?;
            let queued = produce::queue_all(broker, request, version).await;
            tokio::spawn(async move {
                let out = match produce::finish(&b, queued).await {
                    Some(response) => Some(
                        encode_response(api, version, cid, &response)
                            .map_err(FrameError::BadHeader)?,
                    ),
                    None => None,
                };
                observe(&b, api, started);
                Ok(out)
            })
        }
        other => return Err(FrameError::UnknownApi(other as i16)),
    })
}

fn observe(broker: &Broker, api: ApiKey, started: Instant) {
    broker
        .metrics
        .request_seconds
        .with_label_values(&[api_name(api)])
        .observe(started.elapsed().as_secs_f64());
}

pub fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::InitProducerId => "InitProducerId",
        _ => "Other",
    }
}

/// Counts a non-zero error code returned by `api`.
fn note_error(broker: &Broker, api: &'static str, code: i16) {
    if code != 0 {
        broker
            .metrics
            .request_errors
            .with_label_values(&[api, &code.to_string()])
            .inc();
    }
}

fn message(text: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(text.into()))
}

fn uuid_of(id: &[u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*id)
}
