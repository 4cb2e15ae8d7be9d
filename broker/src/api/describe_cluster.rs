//! DescribeCluster: this broker is the whole cluster and its controller.

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
    let c = &broker.config;
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(c.broker_id()))
        .with_cluster_authorized_operations(i32::MIN);
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return resp
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(super::message("only broker endpoints are described"));
    }
    resp.brokers = vec![DescribeClusterBroker::default()
        .with_broker_id(BrokerId(c.broker_id()))
        .with_host(StrBytes::from_string(c.advertised_host.clone()))
        .with_port(i32::from(c.advertised_port))];
    resp
}
