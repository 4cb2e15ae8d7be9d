//! DeleteGroups: removes empty groups and their offsets (tombstones in `__consumer_offsets`).

use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, GroupId};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;

pub async fn handle(
    broker: &Arc<Broker>,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let ids: Vec<String> = req.groups_names.iter().map(|g| g.to_string()).collect();
    let results = match coordinator(broker) {
        None => ids
            .into_iter()
            .map(|g| (g, E::CoordinatorNotAvailable.code()))
            .collect(),
        Some(c) => c.delete_groups(ids).await,
    };
    // Answer in request order.
    let results = req
        .groups_names
        .into_iter()
        .map(|g| {
            let code = results
                .iter()
                .find(|(id, _)| id.as_str() == g.as_str())
                .map_or(E::UnknownServerError.code(), |(_, c)| *c);
            super::note_error(broker, "DeleteGroups", code);
            DeletableGroupResult::default()
                .with_group_id(GroupId(StrBytes::from_string(g.to_string())))
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
