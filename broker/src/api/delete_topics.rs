//! DeleteTopics: by name (all versions) or by topic id (v6+).

use std::sync::Arc;

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut targets: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in targets.drain(..) {
        let resolved = match (&name, id.is_nil()) {
            (Some(n), _) => Some(n.as_str().to_string()),
            (None, false) => broker
                .topic_by_id(id.as_bytes())
                .map(|t| t.record.name.clone()),
            (None, true) => None,
        };
        let mut result = DeletableTopicResult::default().with_name(name.clone());
        if version >= 6 {
            result.topic_id = id;
        }
        match resolved {
            None => {
                let code = if id.is_nil() {
                    ResponseError::InvalidRequest.code()
                } else {
                    ResponseError::UnknownTopicId.code()
                };
                result = result.with_error_code(code);
            }
            Some(n) => match broker.delete_topic(&n).await {
                Ok(deleted_id) => {
                    result.name = Some(TopicName(StrBytes::from_string(n)));
                    if version >= 6 {
                        result.topic_id = uuid::Uuid::from_bytes(deleted_id);
                    }
                }
                Err(e) => {
                    result.error_code = super::create_topics::error_code(&e);
                    if version >= 5 {
                        result.error_message = super::message(e.to_string());
                    }
                }
            },
        }
        super::note_error(broker, "DeleteTopics", result.error_code);
        resp.responses.push(result);
    }
    resp
}
