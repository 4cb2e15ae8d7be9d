//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::coordinator;

pub async fn handle(
    broker: &Arc<Broker>,
    req: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let code = match coordinator(broker) {
        None => E::CoordinatorNotAvailable.code(),
        Some(c) => c.heartbeat(
            req.group_id.as_str(),
            req.member_id.as_str(),
            req.group_instance_id.as_deref(),
            req.generation_id,
        ),
    };
    // REBALANCE_IN_PROGRESS is how members learn of a rebalance, not a failure.
    if code != E::RebalanceInProgress.code() {
        super::note_error(broker, "Heartbeat", code);
    }
    HeartbeatResponse::default().with_error_code(code)
}
