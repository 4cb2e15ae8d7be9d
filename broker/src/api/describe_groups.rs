//! DescribeGroups: state, protocol and members (with metadata and assignment when Stable).

use std::sync::Arc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;

pub async fn handle(
    broker: &Arc<Broker>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut out = DescribedGroup::default().with_group_id(id.clone());
        let described = match coordinator(broker) {
            None => Err(E::CoordinatorNotAvailable.code()),
            Some(c) => c.describe(id.as_str()),
        };
        match described {
            Err(code) => {
                super::note_error(broker, "DescribeGroups", code);
                out.error_code = code;
            }
            Ok(None) => {
                out.group_state = StrBytes::from_static_str("Dead");
                if version >= 6 {
                    // KIP-1043: v6 reports a missing group as an error.
                    out.error_code = E::GroupIdNotFound.code();
                    out.error_message = super::message(format!("group {} not found", id.as_str()));
                }
            }
            Ok(Some(g)) => {
                out.group_state = StrBytes::from_static_str(g.state.name());
                out.protocol_type = StrBytes::from_string(g.protocol_type);
                out.protocol_data = StrBytes::from_string(g.protocol);
                out.members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let member = DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id))
                            .with_client_id(StrBytes::from_string(m.client_id))
                            .with_client_host(StrBytes::from_string(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment);
                        if version >= 4 {
                            member.with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                        } else {
                            member
                        }
                    })
                    .collect();
            }
        }
        resp.groups.push(out);
    }
    resp
}
