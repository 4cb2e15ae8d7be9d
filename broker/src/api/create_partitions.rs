//! CreatePartitions: grow a topic. Existing partitions and their offsets are untouched.

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let assignment: Option<Vec<Vec<i32>>> = t.assignments.as_ref().map(|list| {
            list.iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect()
        });
        let outcome = if req.validate_only {
            broker
                .check_new_partition_count(&name, t.count)
                .and_then(|record| broker.place_new_partitions(&record, t.count, assignment))
                .map(|_| ())
        } else {
            broker.add_partitions(&name, t.count, assignment).await
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
