//! IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT of single configs of a topic or
//! broker resource, applied atomically by the metadata group.

use std::sync::Arc;

use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::alter_configs::{alter_resource, duplicated, invalid_request};
use crate::broker::Broker;
use crate::topic_config::ConfigOp;

pub async fn handle(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let names: Vec<(i8, String)> = req
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.to_string()))
        .collect();
    let duplicates = duplicated(&names);
    let mut resp = IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let key = (r.resource_type, r.resource_name.to_string());
        let ops: Result<Vec<ConfigOp>, String> = r.configs.iter().map(to_op).collect();
        let (code, text) = if duplicates.contains(&key) {
            invalid_request("the resource appears more than once in the request")
        } else {
            match ops {
                Ok(ops) => alter_resource(broker, &key, false, ops, req.validate_only).await,
                Err(e) => invalid_request(&e),
            }
        };
        super::note_error(broker, "IncrementalAlterConfigs", code);
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

/// Kafka's operation codes: 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT.
fn to_op(c: &AlterableConfig) -> Result<ConfigOp, String> {
    let name = c.name.to_string();
    let value = || {
        c.value
            .as_ref()
            .map(|v| v.to_string())
            .ok_or_else(|| format!("null value for '{name}'"))
    };
    Ok(match c.config_operation {
        0 => ConfigOp::Set(name.clone(), value()?),
        1 => ConfigOp::Delete(name),
        2 => ConfigOp::Append(name.clone(), value()?),
        3 => ConfigOp::Subtract(name.clone(), value()?),
        other => return Err(format!("unknown config operation {other} for '{name}'")),
    })
}
