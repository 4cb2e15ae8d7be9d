//! Writes the seed corpus for `broker/fuzz` (target `decode_request`).
//!
//! Each seed is one request frame without its 4-byte length prefix: request header then body,
//! encoded by kafka-protocol (the codec the broker uses). Before a seed is written it is run
//! through the broker's own `parse_frame` (the `protocol` module is compiled in from
//! `broker/src/protocol` so this tool need not build the broker and RocksDB) and must come out
//! as a request that `RequestKind::decode` decodes: a seed the bounds walker rejects would
//! only teach the fuzzer the rejection path.
//!
//! Usage: `cargo run --release [-- OUT_DIR]` (default `../corpus/decode_request`).
//! Existing `seed-*` files in OUT_DIR are replaced; other files (crash reproducers found by
//! the fuzzer, for instance) are left alone.

#[allow(dead_code)]
#[path = "../../../src/protocol/mod.rs"]
mod protocol;

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{
    api_versions_request::ApiVersionsRequest, create_partitions_request as cp,
    create_topics_request as ct, delete_topics_request as dt, describe_cluster_request as dc,
    describe_configs_request as dcfg, fetch_request as fe, list_offsets_request as lo,
    metadata_request as md, offset_for_leader_epoch_request as ofle, produce_request as pr, ApiKey,
    BrokerId, RequestHeader, RequestKind, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use uuid::Uuid;

fn s(v: &'static str) -> StrBytes {
    StrBytes::from_static_str(v)
}

fn topic(v: &'static str) -> TopicName {
    TopicName(s(v))
}

fn id(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

/// Header + body, as `parse_frame` receives it.
fn frame<R: Request>(version: i16, body: &R, correlation_id: i32) -> Vec<u8> {
    let api = ApiKey::try_from(R::KEY).expect("known api");
    let mut header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("rdkafka")));
    if api.request_header_version(version) >= 2 && correlation_id % 2 == 1 {
        // Exercise the header's tagged-field section too.
        header = header.with_unknown_tagged_field(3, Bytes::from_static(b"hdr"));
    }
    let mut out = BytesMut::new();
    header
        .encode(&mut out, api.request_header_version(version))
        .expect("encode header");
    body.encode(&mut out, version)
        .unwrap_or_else(|e| panic!("encode {api:?} v{version}: {e}"));
    out.to_vec()
}

/// A v2 record batch of three small records (uncompressed), as a producer sends it.
fn record_batch() -> Bytes {
    let record = |i: i64, key: Option<&'static [u8]>, value: &'static [u8]| {
        let mut headers = IndexMap::new();
        if i == 1 {
            headers.insert(s("trace"), Some(Bytes::from_static(b"abc")));
            headers.insert(s("empty"), None);
        }
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: 4000,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: key.map(Bytes::from_static),
            value: Some(Bytes::from_static(value)),
            headers,
        }
    };
    let records = [
        record(0, Some(b"k0"), b"hello"),
        record(1, None, b"world"),
        record(2, Some(b"k2"), b""),
    ];
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode record batch");
    buf.freeze()
}

fn produce(v: i16) -> pr::ProduceRequest {
    let batch = record_batch();
    let partition = |i: i32, records: Option<Bytes>| {
        pr::PartitionProduceData::default()
            .with_index(i)
            .with_records(records)
    };
    let topic_data = |name, n| {
        let t = pr::TopicProduceData::default()
            .with_partition_data(vec![partition(0, Some(batch.clone())), partition(1, None)]);
        if v <= 12 {
            t.with_name(topic(name))
        } else {
            t.with_topic_id(id(n))
        }
    };
    pr::ProduceRequest::default()
        .with_transactional_id(if v == 9 {
            None
        } else {
            Some(TransactionalId(s("txn-1")))
        })
        .with_acks(-1)
        .with_timeout_ms(1500)
        .with_topic_data(vec![topic_data("orders", 1), topic_data("payments", 2)])
}

fn fetch(v: i16) -> fe::FetchRequest {
    let partition = |i: i32| {
        let mut p = fe::FetchPartition::default()
            .with_partition(i)
            .with_fetch_offset(1000 + i64::from(i))
            .with_partition_max_bytes(1 << 20);
        if v >= 9 {
            p = p.with_current_leader_epoch(4);
        }
        if v >= 12 {
            p = p.with_last_fetched_epoch(3);
        }
        if v >= 5 {
            p = p.with_log_start_offset(10);
        }
        if v >= 17 {
            p = p.with_replica_directory_id(id(9));
        }
        if v >= 18 {
            p = p.with_high_watermark(5000);
        }
        p
    };
    let fetch_topic = |name, n| {
        let t = fe::FetchTopic::default().with_partitions(vec![partition(0), partition(1)]);
        if v <= 12 {
            t.with_topic(topic(name))
        } else {
            t.with_topic_id(id(n))
        }
    };
    let mut req = fe::FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_isolation_level(1)
        .with_topics(vec![fetch_topic("orders", 1), fetch_topic("payments", 2)]);
    if v <= 14 {
        req = req.with_replica_id(BrokerId(-1));
    }
    if v >= 7 {
        let forgotten = fe::ForgottenTopic::default().with_partitions(vec![4, 5]);
        let forgotten = if v <= 12 {
            forgotten.with_topic(topic("gone"))
        } else {
            forgotten.with_topic_id(id(3))
        };
        req = req
            .with_session_id(77)
            .with_session_epoch(2)
            .with_forgotten_topics_data(vec![forgotten]);
    }
    if v >= 11 {
        req = req.with_rack_id(s("rack-a"));
    }
    if v >= 12 {
        req = req
            .with_cluster_id(Some(s("cluster-xyz")))
            .with_unknown_tagged_field(9, Bytes::from_static(b"unknown"));
    }
    if v >= 15 {
        req = req.with_replica_state(
            fe::ReplicaState::default()
                .with_replica_id(BrokerId(2))
                .with_replica_epoch(8),
        );
    }
    req
}

fn list_offsets(v: i16) -> lo::ListOffsetsRequest {
    let partition = |i: i32| {
        let p = lo::ListOffsetsPartition::default()
            .with_partition_index(i)
            .with_timestamp(-1);
        if v >= 4 {
            p.with_current_leader_epoch(6)
        } else {
            p
        }
    };
    let mut req = lo::ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![lo::ListOffsetsTopic::default()
            .with_name(topic("orders"))
            .with_partitions(vec![partition(0), partition(1)])]);
    if v >= 2 {
        req = req.with_isolation_level(1);
    }
    if v >= 10 {
        req = req.with_timeout_ms(3000);
    }
    req
}

fn metadata(v: i16) -> md::MetadataRequest {
    let mut second = md::MetadataRequestTopic::default().with_name(Some(topic("payments")));
    if v >= 10 {
        // From v10 a topic may be named by id only.
        second = second.with_topic_id(id(5)).with_name(None);
    }
    let mut req = md::MetadataRequest::default().with_topics(Some(vec![
        md::MetadataRequestTopic::default().with_name(Some(topic("orders"))),
        second,
    ]));
    if v >= 4 {
        req = req.with_allow_auto_topic_creation(v % 2 == 0);
    }
    if (8..=10).contains(&v) {
        req = req.with_include_cluster_authorized_operations(true);
    }
    if v >= 8 {
        req = req.with_include_topic_authorized_operations(true);
    }
    req
}

fn api_versions(v: i16) -> ApiVersionsRequest {
    let req = ApiVersionsRequest::default();
    if v >= 3 {
        req.with_client_software_name(s("librdkafka"))
            .with_client_software_version(s("2.6.1"))
    } else {
        req
    }
}

fn create_topics() -> ct::CreateTopicsRequest {
    ct::CreateTopicsRequest::default()
        .with_topics(vec![
            ct::CreatableTopic::default()
                .with_name(topic("orders"))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![ct::CreatableReplicaAssignment::default()
                    .with_partition_index(0)
                    .with_broker_ids(vec![BrokerId(1), BrokerId(2)])]),
            ct::CreatableTopic::default()
                .with_name(topic("payments"))
                .with_num_partitions(3)
                .with_replication_factor(2)
                .with_configs(vec![
                    ct::CreatableTopicConfig::default()
                        .with_name(s("cleanup.policy"))
                        .with_value(Some(s("compact"))),
                    ct::CreatableTopicConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(None),
                ]),
        ])
        .with_timeout_ms(30_000)
        .with_validate_only(true)
}

fn delete_topics(v: i16) -> dt::DeleteTopicsRequest {
    let req = dt::DeleteTopicsRequest::default().with_timeout_ms(30_000);
    if v >= 6 {
        req.with_topics(vec![
            dt::DeleteTopicState::default().with_name(Some(topic("orders"))),
            dt::DeleteTopicState::default()
                .with_name(None)
                .with_topic_id(id(4)),
        ])
    } else {
        req.with_topic_names(vec![topic("orders"), topic("payments")])
    }
}

fn offset_for_leader_epoch(v: i16) -> ofle::OffsetForLeaderEpochRequest {
    let req = ofle::OffsetForLeaderEpochRequest::default().with_topics(vec![
        ofle::OffsetForLeaderTopic::default()
            .with_topic(topic("orders"))
            .with_partitions(vec![ofle::OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(5)
                .with_leader_epoch(4)]),
    ]);
    if v >= 3 {
        req.with_replica_id(BrokerId(-1))
    } else {
        req
    }
}

fn describe_configs(v: i16) -> dcfg::DescribeConfigsRequest {
    let req = dcfg::DescribeConfigsRequest::default()
        .with_resources(vec![
            dcfg::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("orders"))
                .with_configuration_keys(Some(vec![s("retention.ms"), s("cleanup.policy")])),
            dcfg::DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s("1"))
                .with_configuration_keys(None),
        ])
        .with_include_synonyms(true);
    if v >= 3 {
        req.with_include_documentation(true)
    } else {
        req
    }
}

fn create_partitions() -> cp::CreatePartitionsRequest {
    cp::CreatePartitionsRequest::default()
        .with_topics(vec![
            cp::CreatePartitionsTopic::default()
                .with_name(topic("orders"))
                .with_count(6)
                .with_assignments(Some(vec![cp::CreatePartitionsAssignment::default()
                    .with_broker_ids(vec![BrokerId(1), BrokerId(2)])])),
            cp::CreatePartitionsTopic::default()
                .with_name(topic("payments"))
                .with_count(4)
                .with_assignments(None),
        ])
        .with_timeout_ms(30_000)
        .with_validate_only(false)
}

fn describe_cluster(v: i16) -> dc::DescribeClusterRequest {
    let req =
        dc::DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
    if v >= 2 {
        req.with_endpoint_type(1).with_include_fenced_brokers(true)
    } else {
        req
    }
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus/decode_request")
        });
    std::fs::create_dir_all(&out).expect("create corpus dir");
    for entry in std::fs::read_dir(&out).expect("read corpus dir") {
        let path = entry.expect("dir entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
        {
            std::fs::remove_file(&path).expect("remove old seed");
        }
    }

    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, v: i16, bytes: Vec<u8>| {
        seeds.push((format!("seed-{name}-v{v}"), bytes));
    };
    let mut corr = 0i32;
    let mut next = || {
        corr += 1;
        corr
    };
    for v in 0..=13 {
        add("metadata", v, frame(v, &metadata(v), next()));
    }
    for v in 0..=4 {
        add("api_versions", v, frame(v, &api_versions(v), next()));
    }
    for v in [3, 9, 13] {
        add("produce", v, frame(v, &produce(v), next()));
    }
    for v in [4, 12, 17, 18] {
        add("fetch", v, frame(v, &fetch(v), next()));
    }
    for v in [1, 10] {
        add("list_offsets", v, frame(v, &list_offsets(v), next()));
    }
    for v in [2, 7] {
        add("create_topics", v, frame(v, &create_topics(), next()));
    }
    for v in [1, 6] {
        add("delete_topics", v, frame(v, &delete_topics(v), next()));
    }
    for v in [2, 4] {
        add(
            "offset_for_leader_epoch",
            v,
            frame(v, &offset_for_leader_epoch(v), next()),
        );
    }
    for v in [1, 4] {
        add(
            "describe_configs",
            v,
            frame(v, &describe_configs(v), next()),
        );
    }
    for v in [0, 3] {
        add(
            "create_partitions",
            v,
            frame(v, &create_partitions(), next()),
        );
    }
    for v in [0, 2] {
        add(
            "describe_cluster",
            v,
            frame(v, &describe_cluster(v), next()),
        );
    }

    let mut total = 0;
    for (name, bytes) in &seeds {
        // Every seed must take the whole path the fuzz target exercises.
        match protocol::parse_frame(Bytes::from(bytes.clone())) {
            Ok(protocol::Parsed::Request {
                header,
                api,
                mut body,
            }) => {
                if let Err(e) = RequestKind::decode(api, &mut body, header.request_api_version) {
                    panic!("{name}: accepted by parse_frame but does not decode: {e}");
                }
            }
            other => panic!("{name}: not accepted by parse_frame: {other:?}"),
        }
        std::fs::write(out.join(name), bytes).expect("write seed");
        total += bytes.len();
    }
    println!(
        "wrote {} seeds ({total} bytes) to {}",
        seeds.len(),
        out.display()
    );
}
