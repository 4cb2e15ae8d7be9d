//! ListGroups: the groups this broker coordinates, filtered by state (v4+) and type (v5+).

use std::sync::Arc;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;

/// Every group here speaks the classic protocol.
const GROUP_TYPE: &str = "classic";

pub async fn handle(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let Some(c) = coordinator(broker) else {
        return ListGroupsResponse::default().with_error_code(E::CoordinatorNotAvailable.code());
    };
    let (error, groups) = c.list();
    super::note_error(broker, "ListGroups", error);
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types_ok = req.types_filter.is_empty()
        || req
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case(GROUP_TYPE));
    let groups = groups
        .into_iter()
        .filter(|g| {
            types_ok && (states.is_empty() || states.contains(&g.state.name().to_lowercase()))
        })
        .map(|g| {
            let mut out = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type));
            if version >= 4 {
                out.group_state = StrBytes::from_static_str(g.state.name());
            }
            if version >= 5 {
                out.group_type = StrBytes::from_static_str(GROUP_TYPE);
            }
            out
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error)
        .with_groups(groups)
}
