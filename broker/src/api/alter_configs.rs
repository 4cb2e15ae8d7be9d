//! AlterConfigs: replaces the whole set of dynamic configs of a topic or broker resource.
//! The change is committed through the metadata group (see `Broker::alter_configs`); the
//! resource logic here is shared with IncrementalAlterConfigs.

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::ResponseError;

use crate::broker::{Broker, BrokerError};
use crate::cluster::metadata::ConfigTarget;
use crate::topic_config::ConfigOp;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// An error code and message for one resource.
pub type Outcome = (i16, Option<String>);

pub async fn handle(
    broker: &Arc<Broker>,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let names: Vec<(i8, String)> = req
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.to_string()))
        .collect();
    let duplicates = duplicated(&names);
    let mut resp = AlterConfigsResponse::default();
    for r in req.resources {
        let key = (r.resource_type, r.resource_name.to_string());
        let ops: Result<Vec<ConfigOp>, String> = r
            .configs
            .iter()
            .map(|c| match &c.value {
                Some(v) => Ok(ConfigOp::Set(c.name.to_string(), v.to_string())),
                None => Err(format!("null value for '{}'", c.name.as_str())),
            })
            .collect();
        let (code, text) = if duplicates.contains(&key) {
            invalid_request("the resource appears more than once in the request")
        } else {
            match ops {
                Ok(ops) => alter_resource(broker, &key, true, ops, req.validate_only).await,
                Err(e) => invalid_request(&e),
            }
        };
        super::note_error(broker, "AlterConfigs", code);
        resp.responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(text.and_then(super::message))
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    resp
}

/// Resources named more than once (Kafka answers each with INVALID_REQUEST).
pub fn duplicated(names: &[(i8, String)]) -> BTreeSet<(i8, String)> {
    let mut seen = BTreeSet::new();
    names
        .iter()
        .filter(|n| !seen.insert((*n).clone()))
        .cloned()
        .collect()
}

pub fn invalid_request(text: &str) -> Outcome {
    (ResponseError::InvalidRequest.code(), Some(text.to_string()))
}

/// Checks and applies `ops` to one resource; `replace` makes them the whole new set.
pub async fn alter_resource(
    broker: &Broker,
    (resource_type, name): &(i8, String),
    replace: bool,
    ops: Vec<ConfigOp>,
    validate_only: bool,
) -> Outcome {
    let mut seen = BTreeSet::new();
    if let Some(dup) = ops.iter().find(|op| !seen.insert(op.name().to_string())) {
        return invalid_request(&format!("config '{}' appears more than once", dup.name()));
    }
    let target = match *resource_type {
        RESOURCE_TOPIC => ConfigTarget::Topic(name.clone()),
        RESOURCE_BROKER => ConfigTarget::Broker(name.clone()),
        other => {
            return invalid_request(&format!(
                "resource type {other} cannot be altered (topics: 2, brokers: 4)"
            ))
        }
    };
    match broker
        .alter_configs(target, replace, ops, validate_only)
        .await
    {
        Ok(()) => (0, None),
        Err(e) => {
            let code = match &e {
                BrokerError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition.code(),
                BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
                BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest.code(),
                other => super::create_topics::error_code(other),
            };
            tracing::info!(resource = %name, error = %e, "config change refused");
            (code, Some(e.to_string()))
        }
    }
}
