//! Producer ids for InitProducerId: unique in the cluster and across restarts. A broker
//! reserves blocks of ids through the metadata Raft group (`AllocateProducerIds`), keeps its
//! current block in memory and reserves the next one when it runs out, as Kafka's
//! ProducerIdManager does. Ids left in a block when the broker stops are never used.

use tokio::sync::Mutex;

use crate::cluster::metadata::MetaCommand;
use crate::cluster::Cluster;

/// Ids reserved per metadata write (Kafka's block size).
pub const BLOCK_SIZE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    #[error("cannot reserve producer ids: {0}")]
    Reserve(String),
}

/// This broker's current block: `next..end`.
#[derive(Default)]
pub struct ProducerIds {
    block: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// A producer id no broker of the cluster has handed out before.
    pub async fn next(&self, cluster: &Cluster) -> Result<i64, ProducerIdError> {
        // Held across the metadata write so only one block is reserved at a time.
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            *block = reserve(cluster).await?;
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }
}

async fn reserve(cluster: &Cluster) -> Result<(i64, i64), ProducerIdError> {
    let reply = cluster
        .write(MetaCommand::AllocateProducerIds { count: BLOCK_SIZE })
        .await
        .map_err(|e| ProducerIdError::Reserve(e.to_string()))?;
    if let Some(r) = reply.rejected {
        return Err(ProducerIdError::Reserve(r.to_string()));
    }
    let (first, end) = reply
        .producer_ids
        .ok_or_else(|| ProducerIdError::Reserve("metadata answered without a block".into()))?;
    tracing::info!(first, end, "reserved a block of producer ids");
    Ok((first, end))
}
