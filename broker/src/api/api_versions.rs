//! ApiVersions: what this broker serves, exactly.

use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::protocol::{encode_response, SUPPORTED};

pub async fn handle(
    _broker: &Arc<Broker>,
    _req: ApiVersionsRequest,
    _version: i16,
) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(advertised())
}

fn advertised() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, _min, max, advertised_min)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*advertised_min)
                .with_max_version(*max)
        })
        .collect()
}

/// The v0 answer to an ApiVersions request of a version we don't know: the client learns
/// our ranges and retries with one it can use.
pub fn fallback_response(correlation_id: i32) -> Result<BytesMut, String> {
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(advertised());
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}
