//! LeaveGroup: one member (v0–v2) or a batch of members by id or group.instance.id (v3+).

use std::sync::Arc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;
use crate::group::state::{LeaveResult, MemberIdentity};

pub async fn handle(
    broker: &Arc<Broker>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members = if version >= 3 {
        req.members
            .into_iter()
            .map(|m| MemberIdentity {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![MemberIdentity {
            member_id: req.member_id.to_string(),
            instance_id: None,
        }]
    };
    let result = match coordinator(broker) {
        None => LeaveResult {
            error: E::CoordinatorNotAvailable.code(),
            members: Vec::new(),
        },
        Some(c) => c.leave(req.group_id.as_str(), members),
    };
    super::note_error(broker, "LeaveGroup", result.error);
    let mut resp = LeaveGroupResponse::default();
    if version >= 3 {
        resp.error_code = result.error;
        resp.members = result
            .members
            .into_iter()
            .map(|(m, code)| {
                super::note_error(broker, "LeaveGroup", code);
                MemberResponse::default()
                    .with_member_id(StrBytes::from_string(m.member_id))
                    .with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                    .with_error_code(code)
            })
            .collect();
    } else {
        // One member: its error is the request's.
        let member_error = result.members.first().map_or(0, |(_, c)| *c);
        resp.error_code = if result.error != 0 {
            result.error
        } else {
            member_error
        };
    }
    resp
}
