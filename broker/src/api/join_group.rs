//! JoinGroup: long-polls until the group's join phase completes (or answers at once with an
//! error, MEMBER_ID_REQUIRED, or the current generation).

use std::sync::Arc;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use super::ClientInfo;
use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;
use crate::group::state::{JoinRequest, JoinResponse};

pub async fn handle(
    broker: &Arc<Broker>,
    req: JoinGroupRequest,
    version: i16,
    client: ClientInfo,
) -> JoinGroupResponse {
    let member_id = req.member_id.to_string();
    let result = match coordinator(broker) {
        None => JoinResponse::error(&member_id, E::CoordinatorNotAvailable.code()),
        Some(c) => {
            c.join(JoinRequest {
                group_id: req.group_id.to_string(),
                member_id,
                instance_id: req.group_instance_id.map(|s| s.to_string()),
                client_id: client.client_id,
                client_host: client.host,
                session_timeout_ms: req.session_timeout_ms,
                // v0 has no rebalance timeout: Kafka uses the session timeout.
                rebalance_timeout_ms: if version >= 1 {
                    req.rebalance_timeout_ms
                } else {
                    req.session_timeout_ms
                },
                protocol_type: req.protocol_type.to_string(),
                protocols: req
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
                require_known_member_id: version >= 4,
            })
            .await
        }
    };
    // MEMBER_ID_REQUIRED is part of the protocol, not a failure.
    if result.error != E::MemberIdRequired.code() {
        super::note_error(broker, "JoinGroup", result.error);
    }
    let mut resp = JoinGroupResponse::default()
        .with_error_code(result.error)
        .with_generation_id(result.generation)
        .with_leader(StrBytes::from_string(result.leader))
        .with_member_id(StrBytes::from_string(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|m| {
                    let out = JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_metadata(m.metadata);
                    if version >= 5 {
                        out.with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                    } else {
                        out
                    }
                })
                .collect(),
        );
    if version >= 7 {
        resp.protocol_type = result.protocol_type.map(StrBytes::from_string);
        resp.protocol_name = result.protocol_name.map(StrBytes::from_string);
    } else {
        // Not nullable before v7.
        resp.protocol_name = Some(StrBytes::from_string(
            result.protocol_name.unwrap_or_default(),
        ));
    }
    resp
}
