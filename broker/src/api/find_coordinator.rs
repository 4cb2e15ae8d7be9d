//! FindCoordinator: the coordinator of a group is the leader of its `__consumer_offsets`
//! partition (created here on first use, as Kafka does). v4+ asks for many keys at once.

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use crate::broker::Broker;
use crate::group::offsets_topic::{coordinator, coordinator_address};

const GROUP_KEY: i8 = 0;
const TRANSACTION_KEY: i8 = 1;

pub async fn handle(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        let result = find(broker, req.key_type, key.as_str()).await;
        if let Err((code, _)) = &result {
            super::note_error(broker, "FindCoordinator", *code);
        }
        found.push((key, result));
    }
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = found
            .into_iter()
            .map(|(key, result)| {
                let c = Coordinator::default().with_key(key);
                match result {
                    Ok((id, host, port)) => c
                        .with_node_id(BrokerId(id))
                        .with_host(StrBytes::from_string(host))
                        .with_port(port),
                    Err((code, message)) => c
                        .with_node_id(BrokerId(-1))
                        .with_host(StrBytes::default())
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(super::message(message)),
                }
            })
            .collect();
        return resp;
    }
    match found.pop().map(|(_, r)| r) {
        Some(Ok((id, host, port))) => {
            resp.node_id = BrokerId(id);
            resp.host = StrBytes::from_string(host);
            resp.port = port;
        }
        Some(Err((code, message))) => {
            resp.error_code = code;
            resp.node_id = BrokerId(-1);
            resp.port = -1;
            if version >= 1 {
                resp.error_message = super::message(message);
            }
        }
        None => resp.error_code = E::InvalidRequest.code(),
    }
    resp
}

type Found = Result<(i32, String, i32), (i16, String)>;

async fn find(broker: &Arc<Broker>, key_type: i8, key: &str) -> Found {
    match key_type {
        GROUP_KEY => {}
        TRANSACTION_KEY => {
            return Err((
                E::CoordinatorNotAvailable.code(),
                "transactions are not supported by this broker".into(),
            ))
        }
        other => {
            return Err((
                E::InvalidRequest.code(),
                format!("unknown coordinator key type {other}"),
            ))
        }
    }
    let unavailable = |m: String| (E::CoordinatorNotAvailable.code(), m);
    let c =
        coordinator(broker).ok_or_else(|| unavailable("group coordinator not started".into()))?;
    let p = c.ensure_partition_of(key).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot create the offsets topic");
        unavailable(format!("offsets topic unavailable: {e}"))
    })?;
    coordinator_address(broker, p)
        .ok_or_else(|| unavailable(format!("offsets partition {p} has no leader yet")))
}
