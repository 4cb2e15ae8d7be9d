//! SyncGroup: the leader hands in the assignment; every member long-polls for its share,
//! which is sent once the assignment is stored in `__consumer_offsets`.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;
use crate::group::state::{SyncRequest, SyncResponse};

pub async fn handle(
    broker: &Arc<Broker>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let result = match coordinator(broker) {
        None => SyncResponse::error(E::CoordinatorNotAvailable.code()),
        Some(c) => {
            c.sync(SyncRequest {
                group_id: req.group_id.to_string(),
                generation: req.generation_id,
                member_id: req.member_id.to_string(),
                instance_id: req.group_instance_id.map(|s| s.to_string()),
                protocol_type: req.protocol_type.map(|s| s.to_string()),
                protocol_name: req.protocol_name.map(|s| s.to_string()),
                assignments: req
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id.to_string(), a.assignment))
                    .collect(),
            })
            .await
        }
    };
    super::note_error(broker, "SyncGroup", result.error);
    let mut resp = SyncGroupResponse::default()
        .with_error_code(result.error)
        .with_assignment(result.assignment);
    if version >= 5 {
        resp.protocol_type = result.protocol_type.map(StrBytes::from_string);
        resp.protocol_name = result.protocol_name.map(StrBytes::from_string);
    }
    resp
}
