//! Kafka framing and request headers, kept apart from sockets so it can be tested on bytes.
//!
//! A frame is a 4-byte big-endian length and that many bytes. The request header is decoded
//! by hand far enough to learn the API key, version and correlation id (kafka-protocol's own
//! helper panics on frames shorter than 4 bytes), then the body is checked by `bounds`
//! before kafka-protocol decodes it (its array decoders pre-allocate from wire lengths).

pub mod bounds;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// (API, lowest version served, highest version served, lowest version advertised).
/// Produce is advertised from v0, as Kafka 4 does (KAFKA-18659): older librdkafka refuses to
/// compress unless it sees Produce v0-v2, yet always sends v3+ when offered. A request below
/// the served minimum is refused like any unsupported version.
pub const SUPPORTED: &[(ApiKey, i16, i16, i16)] = &[
    (ApiKey::Produce, 3, 13, 0),
    (ApiKey::Fetch, 4, 18, 4),
    (ApiKey::ListOffsets, 1, 10, 1),
    (ApiKey::Metadata, 0, 13, 0),
    (ApiKey::ApiVersions, 0, 4, 0),
    (ApiKey::CreateTopics, 2, 7, 2),
    (ApiKey::DeleteTopics, 1, 6, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 4, 2),
    (ApiKey::DescribeConfigs, 1, 4, 1),
    (ApiKey::AlterConfigs, 0, 2, 0),
    (ApiKey::IncrementalAlterConfigs, 0, 1, 0),
    (ApiKey::CreatePartitions, 0, 3, 0),
    (ApiKey::DescribeCluster, 0, 2, 0),
    (ApiKey::DescribeLogDirs, 1, 4, 1),
    (ApiKey::DeleteRecords, 0, 2, 0),
    // Consumer groups (classic protocol).
    (ApiKey::OffsetCommit, 2, 9, 2),
    (ApiKey::OffsetFetch, 1, 9, 1),
    (ApiKey::FindCoordinator, 0, 6, 0),
    (ApiKey::JoinGroup, 0, 9, 0),
    (ApiKey::Heartbeat, 0, 4, 0),
    (ApiKey::LeaveGroup, 0, 5, 0),
    (ApiKey::SyncGroup, 0, 5, 0),
    (ApiKey::DescribeGroups, 0, 6, 0),
    (ApiKey::ListGroups, 0, 5, 0),
    (ApiKey::DeleteGroups, 0, 2, 0),
    (ApiKey::OffsetDelete, 0, 0, 0),
    // Idempotent producers (transactions are not served).
    (ApiKey::InitProducerId, 0, 5, 0),
];

/// The served version range of an API, if it is served at all.
pub fn served_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, ..)| *k == key)
        .map(|(_, min, max, _)| (*min, *max))
}

/// Smallest possible request: api key, api version, correlation id.
const MIN_REQUEST: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("API {api:?} version {version} is not supported (served: {served})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        served: String,
    },
    #[error("malformed request header: {0}")]
    BadHeader(String),
    #[error("request body rejected: {0}")]
    Bounds(#[from] bounds::BoundsError),
}

/// What the connection should do with a frame.
#[derive(Debug)]
pub enum Parsed {
    /// A request to dispatch: header, API and the (bounds-checked) body.
    Request {
        header: RequestHeader,
        api: ApiKey,
        body: Bytes,
    },
    /// ApiVersions at a version we don't know: answer v0 with UNSUPPORTED_VERSION.
    ApiVersionsFallback { correlation_id: i32 },
}

/// Parses one frame (without its length prefix).
pub fn parse_frame(frame: Bytes) -> Result<Parsed, FrameError> {
    if frame.len() < MIN_REQUEST {
        return Err(FrameError::TooShort(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(api_key).map_err(|_| FrameError::UnknownApi(api_key))?;
    let Some((min, max)) = served_versions(api) else {
        return Err(FrameError::UnknownApi(api_key));
    };
    if !(min..=max).contains(&version) {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::ApiVersionsFallback { correlation_id });
        }
        return Err(FrameError::UnsupportedVersion {
            api,
            version,
            served: format!("{min}..={max}"),
        });
    }
    let mut rest = frame;
    let header = RequestHeader::decode(&mut rest, api.request_header_version(version))
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    bounds::check_request_body(api_key, version, &rest)?;
    Ok(Parsed::Request {
        header,
        api,
        body: rest,
    })
}

/// Decodes a request body that `parse_frame` accepted.
pub fn decode_body<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, FrameError> {
    T::decode(body, version).map_err(|e| FrameError::BadHeader(format!("body: {e}")))
}

/// Encodes a response frame: length prefix, response header, body.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, String> {
    let header_version = if api == ApiKey::ApiVersions {
        // ApiVersions responses always use header v0, even for flexible versions.
        0
    } else {
        api.response_header_version(version)
    };
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut out, version).map_err(|e| e.to_string())?;
    let len = i32::try_from(out.len() - 4).map_err(|_| "response larger than 2 GiB".to_string())?;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame<T: Encodable>(api: ApiKey, version: i16, body: &T) -> Bytes {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut out, api.request_header_version(version))
            .expect("encode header");
        body.encode(&mut out, version).expect("encode body");
        out.freeze()
    }

    #[test]
    fn short_frames_are_errors_not_panics() {
        for n in 0..MIN_REQUEST {
            assert!(matches!(
                parse_frame(Bytes::from(vec![0u8; n])),
                Err(FrameError::TooShort(_))
            ));
        }
    }

    #[test]
    fn unknown_api_and_bad_versions() {
        let mut f = vec![0x27, 0x0f, 0, 0, 0, 0, 0, 1];
        assert!(matches!(
            parse_frame(Bytes::from(f.clone())),
            Err(FrameError::UnknownApi(9999))
        ));
        f[0..2].copy_from_slice(&3i16.to_be_bytes());
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            parse_frame(Bytes::from(f.clone())),
            Err(FrameError::UnsupportedVersion { .. })
        ));
        f[0..2].copy_from_slice(&18i16.to_be_bytes());
        assert!(matches!(
            parse_frame(Bytes::from(f)),
            Ok(Parsed::ApiVersionsFallback { correlation_id: 1 })
        ));
    }

    #[test]
    fn every_served_version_parses() {
        for v in 0..=4 {
            let f = frame(ApiKey::ApiVersions, v, &ApiVersionsRequest::default());
            assert!(
                matches!(parse_frame(f), Ok(Parsed::Request { .. })),
                "ApiVersions v{v}"
            );
        }
        for v in 0..=13 {
            let f = frame(
                ApiKey::Metadata,
                v,
                &MetadataRequest::default().with_topics(Some(vec![])),
            );
            match parse_frame(f) {
                Ok(Parsed::Request { header, .. }) => assert_eq!(header.correlation_id, 42),
                other => panic!("Metadata v{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn api_versions_response_uses_header_v0() {
        let body = kafka_protocol::messages::ApiVersionsResponse::default();
        let out = encode_response(ApiKey::ApiVersions, 3, 7, &body).expect("encode");
        // length, correlation id, then the body's error code right away (no tagged header byte).
        assert_eq!(&out[4..8], &7i32.to_be_bytes());
        assert_eq!(&out[8..10], &0i16.to_be_bytes());
    }

    /// Deterministic fuzzing of the whole decode path (frame → header → bounds → body):
    /// random frames and single-byte mutations of valid ones never panic, and whatever passes
    /// the bounds check decodes or errors without over-allocating.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut seeds: Vec<Bytes> = (0..=13)
            .map(|v| {
                frame(
                    ApiKey::Metadata,
                    v,
                    &MetadataRequest::default().with_topics(None),
                )
            })
            .collect();
        seeds.push(frame(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        ));
        for i in 0..20_000u32 {
            let candidate = if i % 2 == 0 {
                let len = (next() % 64) as usize;
                let mut raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if raw.len() >= 4 && i % 4 == 0 {
                    // Keep a served API key and version so the body reaches the bounds check.
                    let (api, min, _, _) = SUPPORTED[(next() as usize) % SUPPORTED.len()];
                    raw[0..2].copy_from_slice(&(api as i16).to_be_bytes());
                    raw[2..4].copy_from_slice(&(min + (next() % 3) as i16).to_be_bytes());
                }
                Bytes::from(raw)
            } else {
                let seed = &seeds[(next() as usize) % seeds.len()];
                let mut raw = seed.to_vec();
                let at = (next() as usize) % raw.len();
                raw[at] = next() as u8;
                Bytes::from(raw)
            };
            if let Ok(Parsed::Request {
                header,
                api,
                mut body,
            }) = parse_frame(candidate)
            {
                let _ = kafka_protocol::messages::RequestKind::decode(
                    api,
                    &mut body,
                    header.request_api_version,
                );
            }
        }
    }
}
