//! One handler per Kafka API. Each takes the decoded request and returns the response body;
//! this module decodes, dispatches, encodes and times them.

mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod fetch;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::protocol::{decode_body, encode_response, FrameError};

pub use api_versions::fallback_response;

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
        ApiKey::DescribeConfigs => serve!(describe_configs),
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
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeCluster => "DescribeCluster",
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
