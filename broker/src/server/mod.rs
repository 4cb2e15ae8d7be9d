//! The Kafka listener: accepts connections up to the configured limit.

mod connection;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::broker::Broker;

/// Accepts connections until `shutdown` turns true.
/// `name` is the listener's name (`broker::EXTERNAL` or `broker::INTERNAL`): Metadata on its
/// connections advertises that listener's addresses.
pub async fn serve(
    listener: TcpListener,
    name: &'static str,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(broker.config.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, limit = broker.config.max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            broker.metrics.connections.inc();
            connection::run(stream, peer, name, Arc::clone(&broker)).await;
            broker.metrics.connections.dec();
            drop(slot);
        });
    }
}
