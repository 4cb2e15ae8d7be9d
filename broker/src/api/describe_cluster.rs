//! DescribeCluster: the live brokers (`Broker::advertised_brokers`) and the metadata leader
//! (the controller).

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::Broker;

/// Kafka's endpoint types: 1 = brokers, 2 = controllers.
const ENDPOINT_BROKERS: i8 = 1;

pub async fn handle(
    broker: &Arc<Broker>,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let controller = broker
        .cluster
        .controller()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(-1);
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id()))
        .with_controller_id(BrokerId(controller))
        .with_cluster_authorized_operations(i32::MIN);
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return resp
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(super::message("only broker endpoints are described"));
    }
    // Live brokers only, as Kafka; v2 asks for the fenced (here: not live) ones as well.
    let fenced_too = version >= 2 && req.include_fenced_brokers;
    resp.brokers = broker
        .registered_brokers()
        .into_iter()
        .filter(|b| b.live || fenced_too)
        .map(|b| {
            let out = DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host))
                .with_port(i32::from(b.port));
            if version >= 2 {
                out.with_is_fenced(!b.live)
            } else {
                out
            }
        })
        .collect();
    resp
}
