//! InitProducerId: a new producer id for an idempotent producer.
//!
//! As Kafka's TransactionCoordinator does for a null transactional id, every request gets a
//! NEW producer id with epoch 0; the producer id and epoch a v3+ request carries are ignored
//! (they only matter for transactional ids). Ids come from this broker's block of ids
//! reserved through the metadata Raft group (`producer_ids`), so they are unique in the
//! cluster and across restarts.
//!
//! Transactions are not served: a transactional id is answered with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which every client treats as fatal (not retried),
//! so a transactional producer fails at once instead of retrying forever. An empty
//! transactional id is INVALID_REQUEST, as in Kafka.

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::broker::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let code = match req.transactional_id.as_deref().map(|t| t.as_str()) {
        None => match broker.producer_ids.next(&broker.cluster).await {
            Ok(id) => {
                broker.metrics.producer_ids.inc();
                return InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "InitProducerId: no producer id available");
                ResponseError::CoordinatorNotAvailable.code()
            }
        },
        Some("") => ResponseError::InvalidRequest.code(),
        Some(id) => {
            tracing::warn!(
                transactional_id = %id,
                "InitProducerId for a transactional id refused: transactions are not served"
            );
            ResponseError::TransactionalIdAuthorizationFailed.code()
        }
    };
    super::note_error(broker, "InitProducerId", code);
    InitProducerIdResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}
