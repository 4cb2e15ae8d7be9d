//! Every served version of every consumer-group API, through the broker's own request path
//! (bounds check → decode → handler → encode) on a real broker in a temporary directory:
//! each answer decodes at its version and says what Kafka would.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use kafka_protocol::ResponseError as E;

use broker::broker::Broker;
use broker::config::{Args, BrokerConfig};
use broker::metrics::Metrics;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn clamp<R: Request>(v: i16) -> i16 {
    v.clamp(R::VERSIONS.min, R::VERSIONS.max)
}

async fn call<R: Request>(broker: &Arc<Broker>, req: &R, version: i16) -> R::Response {
    let api = ApiKey::try_from(R::KEY).expect("api key");
    let mut body = BytesMut::new();
    req.encode(&mut body, version).expect("encode request");
    broker::protocol::bounds::check_request_body(R::KEY, version, &body).expect("bounds");
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(17)
        .with_client_id(Some(s("versions-test")));
    let reply = broker::api::start(broker, broker::broker::EXTERNAL, header, api, body.freeze())
        .await
        .expect("request accepted");
    let frame = reply
        .await
        .expect("handler task")
        .expect("response encodes")
        .expect("a response");
    let mut buf = Bytes::from(frame.to_vec()).slice(4..);
    let header = ResponseHeader::decode(&mut buf, api.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, 17);
    R::Response::decode(&mut buf, version).expect("response decodes at its version")
}

async fn open() -> (tempfile::TempDir, Arc<Broker>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig::from_args(Args::parse_from([
        "broker",
        "--data-dir",
        dir.path().to_str().expect("utf8"),
        "--group-initial-rebalance-delay-ms",
        "0",
        "--group-min-session-timeout-ms",
        "1000",
        "--offsets-topic-num-partitions",
        "3",
    ]))
    .expect("config");
    let broker = Broker::open(config, Arc::new(Metrics::new()))
        .await
        .expect("broker opens");
    broker::group::offsets_topic::start(&broker);
    broker
        .create_topic("t", 2, -1, BTreeMap::new(), None)
        .await
        .expect("topic");
    wait_loaded(&broker).await;
    (dir, broker)
}

/// Waits (bounded) until the coordinator serves every group the test uses: FindCoordinator
/// creates the offsets topic, whose partitions then load in the background (JoinGroup would
/// answer COORDINATOR_LOAD_IN_PROGRESS meanwhile, which real clients retry).
async fn wait_loaded(broker: &Arc<Broker>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for v in 0..=9 {
        let group = format!("group-v{v}");
        let find = FindCoordinatorRequest::default().with_key(s(&group));
        assert_eq!(call(broker, &find, 0).await.error_code, 0);
        loop {
            let fetch = OffsetFetchRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_topics(None);
            let code = call(broker, &fetch, 7).await.error_code;
            if code == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{group}: coordinator not serving after 30 s (error {code})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_of_every_group_api() {
    let (_dir, broker) = open().await;
    for v in 0..=9i16 {
        let group = format!("group-v{v}");
        let gid = GroupId(s(&group));

        // FindCoordinator: this broker (v4+: for each key).
        let fv = clamp::<FindCoordinatorRequest>(v);
        let mut req = FindCoordinatorRequest::default();
        if fv >= 4 {
            req.coordinator_keys = vec![s(&group), s("other")];
        } else {
            req.key = s(&group);
        }
        let r = call(&broker, &req, fv).await;
        if fv >= 4 {
            assert_eq!(r.coordinators.len(), 2);
            assert!(r
                .coordinators
                .iter()
                .all(|c| c.error_code == 0 && c.node_id.0 == 1));
        } else {
            assert_eq!((r.error_code, r.node_id.0), (0, 1), "FindCoordinator v{fv}");
        }
        // Transactions have no coordinator here.
        if fv >= 1 {
            let mut req = FindCoordinatorRequest::default().with_key_type(1);
            if fv >= 4 {
                req.coordinator_keys = vec![s("txn")];
            } else {
                req.key = s("txn");
            }
            let r = call(&broker, &req, fv).await;
            let code = if fv >= 4 {
                r.coordinators[0].error_code
            } else {
                r.error_code
            };
            assert_eq!(code, E::CoordinatorNotAvailable.code());
        }

        // JoinGroup: v4+ first hands out the member id.
        let jv = clamp::<JoinGroupRequest>(v);
        let join = |member: &str| {
            let mut req = JoinGroupRequest::default()
                .with_group_id(gid.clone())
                .with_session_timeout_ms(30_000)
                .with_member_id(s(member))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"meta"))]);
            if jv >= 1 {
                req.rebalance_timeout_ms = 30_000;
            }
            req
        };
        let mut r = call(&broker, &join(""), jv).await;
        if jv >= 4 {
            assert_eq!(r.error_code, E::MemberIdRequired.code(), "JoinGroup v{jv}");
            let id = r.member_id.to_string();
            r = call(&broker, &join(&id), jv).await;
        }
        assert_eq!((r.error_code, r.generation_id), (0, 1), "JoinGroup v{jv}");
        assert_eq!(r.leader, r.member_id);
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
        let member = r.member_id.clone();

        // SyncGroup: the leader's assignment comes back.
        let sv = clamp::<SyncGroupRequest>(v);
        let mut req = SyncGroupRequest::default()
            .with_group_id(gid.clone())
            .with_generation_id(1)
            .with_member_id(member.clone())
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(member.clone())
                .with_assignment(Bytes::from_static(b"assigned"))]);
        if sv >= 5 {
            req.protocol_type = Some(s("consumer"));
            req.protocol_name = Some(s("range"));
        }
        let r = call(&broker, &req, sv).await;
        assert_eq!(r.error_code, 0, "SyncGroup v{sv}");
        assert_eq!(r.assignment, Bytes::from_static(b"assigned"));

        // Heartbeat: fine; a stranger is unknown; an old generation is illegal.
        let hv = clamp::<HeartbeatRequest>(v);
        let hb = |member: StrBytes, generation| {
            HeartbeatRequest::default()
                .with_group_id(gid.clone())
                .with_generation_id(generation)
                .with_member_id(member)
        };
        assert_eq!(
            call(&broker, &hb(member.clone(), 1), hv).await.error_code,
            0
        );
        let unknown = call(&broker, &hb(s("stranger"), 1), hv).await.error_code;
        assert_eq!(unknown, E::UnknownMemberId.code());
        let old = call(&broker, &hb(member.clone(), 0), hv).await.error_code;
        assert_eq!(old, E::IllegalGeneration.code());

        // OffsetCommit with metadata, then OffsetFetch returns it.
        let cv = clamp::<OffsetCommitRequest>(v);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid.clone())
            .with_generation_id_or_member_epoch(1)
            .with_member_id(member.clone())
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(4242)
                        .with_committed_metadata(Some(s("meta-data")))]),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("missing")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()]),
            ]);
        let r = call(&broker, &req, cv).await;
        assert_eq!(
            r.topics[0].partitions[0].error_code, 0,
            "OffsetCommit v{cv}"
        );
        assert_eq!(
            r.topics[1].partitions[0].error_code,
            E::UnknownTopicOrPartition.code()
        );

        let ov = clamp::<OffsetFetchRequest>(v);
        let (offset, metadata) = if ov >= 8 {
            let req = OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid.clone())
                    .with_topics(None),
                OffsetFetchRequestGroup::default().with_group_id(GroupId(s("nobody"))),
            ]);
            let r = call(&broker, &req, ov).await;
            assert_eq!(r.groups.len(), 2);
            let p = &r.groups[0].topics[0].partitions[0];
            (p.committed_offset, p.metadata.clone())
        } else {
            let req = OffsetFetchRequest::default()
                .with_group_id(gid.clone())
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![0, 1])]));
            let r = call(&broker, &req, ov).await;
            assert_eq!(r.topics[0].partitions[0].committed_offset, -1);
            let p = &r.topics[0].partitions[1];
            (p.committed_offset, p.metadata.clone())
        };
        assert_eq!(offset, 4242, "OffsetFetch v{ov}");
        assert_eq!(metadata.as_deref(), Some("meta-data"));

        // DescribeGroups and ListGroups.
        let dv = clamp::<DescribeGroupsRequest>(v);
        let req =
            DescribeGroupsRequest::default().with_groups(vec![gid.clone(), GroupId(s("none"))]);
        let r = call(&broker, &req, dv).await;
        assert_eq!(
            r.groups[0].group_state.as_str(),
            "Stable",
            "DescribeGroups v{dv}"
        );
        assert_eq!(
            r.groups[0].members[0].member_assignment,
            Bytes::from_static(b"assigned")
        );
        assert_eq!(r.groups[0].members[0].client_id.as_str(), "versions-test");
        let missing = if dv >= 6 {
            E::GroupIdNotFound.code()
        } else {
            0
        };
        assert_eq!(r.groups[1].error_code, missing);
        assert_eq!(r.groups[1].group_state.as_str(), "Dead");

        let lv = clamp::<ListGroupsRequest>(v);
        let r = call(&broker, &ListGroupsRequest::default(), lv).await;
        let listed = r.groups.iter().find(|g| g.group_id == gid).expect("listed");
        assert_eq!(listed.protocol_type.as_str(), "consumer");
        if lv >= 4 {
            assert_eq!(listed.group_state.as_str(), "Stable");
            let req = ListGroupsRequest::default().with_states_filter(vec![s("Empty")]);
            let r = call(&broker, &req, lv).await;
            assert!(!r.groups.iter().any(|g| g.group_id == gid));
        }

        // OffsetDelete while the group consumes "t" is refused for "t".
        let req = OffsetDeleteRequest::default()
            .with_group_id(gid.clone())
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(1)
                ])]);
        let r = call(&broker, &req, 0).await;
        assert_eq!(r.error_code, 0);
        assert_eq!(
            r.topics[0].partitions[0].error_code, 0,
            "not subscribed: meta is no consumer subscription"
        );

        // LeaveGroup, then DeleteGroups.
        let gv = clamp::<LeaveGroupRequest>(v);
        let mut req = LeaveGroupRequest::default().with_group_id(gid.clone());
        if gv >= 3 {
            req.members = vec![
                MemberIdentity::default().with_member_id(member.clone()),
                MemberIdentity::default().with_member_id(s("ghost")),
            ];
        } else {
            req.member_id = member.clone();
        }
        let r = call(&broker, &req, gv).await;
        assert_eq!(r.error_code, 0, "LeaveGroup v{gv}");
        if gv >= 3 {
            assert_eq!(r.members[0].error_code, 0);
            assert_eq!(r.members[1].error_code, E::UnknownMemberId.code());
        }

        let xv = clamp::<DeleteGroupsRequest>(v);
        let req =
            DeleteGroupsRequest::default().with_groups_names(vec![gid.clone(), GroupId(s("none"))]);
        let r = call(&broker, &req, xv).await;
        assert_eq!(r.results[0].error_code, 0, "DeleteGroups v{xv}");
        assert_eq!(r.results[1].error_code, E::GroupIdNotFound.code());
    }
    broker.shutdown().await;
}
