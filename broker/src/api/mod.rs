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

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::protocol::{decode_body, encode_response, FrameError};

pub use api_versions::fallback_response;

/// Handles one parsed request. `Ok(None)` means no response is sent (Produce with acks=0).
pub async fn dispatch(
    broker: &Arc<Broker>,
    header: RequestHeader,
    api: ApiKey,
    mut body: Bytes,
) -> Result<Option<BytesMut>, FrameError> {
    let version = header.request_api_version;
    let cid = header.correlation_id;
    let started = Instant::now();
    let encode = |r: Result<BytesMut, String>| r.map_err(FrameError::BadHeader);
    macro_rules! serve {
        ($module:ident) => {{
            let request = decode_body(&mut body, version)?;
            let response = $module::handle(broker, request, version).await;
            Some(encode(encode_response(api, version, cid, &response))?)
        }};
    }
    let out = match api {
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
            match produce::handle(broker, request, version).await {
                Some(response) => Some(encode(encode_response(api, version, cid, &response))?),
                None => None,
            }
        }
        other => return Err(FrameError::UnknownApi(other as i16)),
    };
    broker
        .metrics
        .request_seconds
        .with_label_values(&[api_name(api)])
        .observe(started.elapsed().as_secs_f64());
    Ok(out)
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
