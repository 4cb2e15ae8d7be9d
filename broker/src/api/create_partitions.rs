//! CreatePartitions: grow a topic. Existing partitions and their offsets are untouched.

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use crate::broker::{Broker, BrokerError};

pub async fn handle(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    let me = broker.config.broker_id();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let bad_assignment = t
            .assignments
            .iter()
            .flatten()
            .any(|a| a.broker_ids.len() != 1 || a.broker_ids.iter().any(|b| b.0 != me));
        let outcome = if bad_assignment {
            Err(BrokerError::InvalidReplicationFactor(format!(
                "new partitions can only be assigned to broker {me}, the only broker"
            )))
        } else if req.validate_only {
            broker.check_new_partition_count(&name, t.count).map(|_| ())
        } else {
            broker.add_partitions(&name, t.count).await
        };
        let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if let Err(e) = outcome {
            let code = super::create_topics::error_code(&e);
            super::note_error(broker, "CreatePartitions", code);
            result = result
                .with_error_code(code)
                .with_error_message(super::message(e.to_string()));
        }
        resp.results.push(result);
    }
    resp
}
