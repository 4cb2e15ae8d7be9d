//! COMPATIBILITY.md is the table of every Kafka API key with the versions this broker serves.
//! This test asks a real broker (in a temporary directory, through its own request path) for
//! ApiVersions and requires the answer and the table to agree exactly, and every API key
//! kafka-protocol knows to have a row, so neither the document nor the code can drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use broker::broker::Broker;
use broker::config::{Args, BrokerConfig};
use broker::metrics::Metrics;

/// A row of the table: key → (name, advertised versions or None for "not served").
type Table = BTreeMap<i16, (String, Option<(i16, i16)>)>;

fn parse_versions(cell: &str) -> Result<Option<(i16, i16)>, String> {
    let cell = cell.trim();
    if cell == "—" {
        return Ok(None);
    }
    let (lo, hi) = cell.split_once('–').unwrap_or((cell, cell));
    let num = |s: &str| {
        s.trim()
            .parse::<i16>()
            .map_err(|_| format!("bad version range '{cell}'"))
    };
    Ok(Some((num(lo)?, num(hi)?)))
}

fn read_table() -> Table {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../COMPATIBILITY.md");
    let text = std::fs::read_to_string(path).expect("COMPATIBILITY.md at the repository root");
    let mut table = Table::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | key | API | versions | state |
        if cells.len() < 5 {
            continue;
        }
        let Ok(key) = cells[1].parse::<i16>() else {
            continue;
        };
        let versions = parse_versions(cells[3]).unwrap_or_else(|e| panic!("row {key}: {e}"));
        let old = table.insert(key, (cells[2].to_string(), versions));
        assert!(old.is_none(), "COMPATIBILITY.md has two rows for key {key}");
    }
    table
}

async fn api_versions(broker: &Arc<Broker>) -> ApiVersionsResponse {
    let version = 3;
    let mut body = BytesMut::new();
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("compat-test"))
        .with_client_software_version(StrBytes::from_static_str("1"))
        .encode(&mut body, version)
        .expect("encode");
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(version)
        .with_correlation_id(5);
    let reply = broker::api::start(
        broker,
        broker::broker::EXTERNAL,
        header,
        ApiKey::ApiVersions,
        body.freeze(),
    )
    .await
    .expect("request accepted");
    let frame = reply
        .await
        .expect("handler task")
        .expect("response encodes")
        .expect("a response");
    let mut buf = Bytes::from(frame.to_vec()).slice(4..);
    ResponseHeader::decode(&mut buf, 0).expect("header");
    ApiVersionsResponse::decode(&mut buf, version).expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_table_matches_api_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig::from_args(Args::parse_from([
        "broker",
        "--data-dir",
        dir.path().to_str().expect("utf8"),
    ]))
    .expect("config");
    let broker = Broker::open(config, Arc::new(Metrics::new()))
        .await
        .expect("broker opens");
    let answer: BTreeMap<i16, (i16, i16)> = api_versions(&broker)
        .await
        .api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect();
    let table = read_table();
    let mut problems = Vec::new();
    for key in ApiKey::iter() {
        let code = key as i16;
        match table.get(&code) {
            None => problems.push(format!("key {code} ({key:?}) has no row")),
            Some((name, _)) if *name != format!("{key:?}") => {
                problems.push(format!("key {code} is {key:?}, the table says '{name}'"))
            }
            Some((_, versions)) if versions.as_ref() != answer.get(&code) => {
                problems.push(format!(
                    "key {code} ({key:?}): table says {versions:?}, ApiVersions says {:?}",
                    answer.get(&code)
                ))
            }
            Some(_) => {}
        }
    }
    for code in answer.keys() {
        if !table.contains_key(code) {
            problems.push(format!(
                "ApiVersions advertises key {code}, the table has no row"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "COMPATIBILITY.md and ApiVersions differ:\n{}",
        problems.join("\n")
    );
}
