//! Taking a partition replica offline after a storage error (see `storage::health`).
//!
//! A supervisor task per replica waits for the first storage error: openraft stopping the
//! replica's Raft core on one (`RaftMetrics::running_state` = `Fatal::StorageError`), or a read
//! outside Raft reporting one. It then logs what failed, takes the replica off the transport
//! (peers' Raft sees it unreachable), stops its Raft node if the error did not already (so the
//! other replicas elect a leader among themselves), and writes `ReplicaStorage { offline }` to
//! the cluster metadata, which takes it out of the ISR everywhere and lists it in Metadata's
//! `offline_replicas`. It stays offline until the broker restarts and opens it again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::cluster::metadata::MetaCommand;
use crate::cluster::wire::GroupKey;
use crate::cluster::Cluster;
use crate::partition::Partition;

/// Longest pause between attempts to tell the metadata about a replica.
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Watches one replica until it goes offline (then acts) or is dropped.
pub async fn supervise(partition: Weak<Partition>) {
    let Some((health, mut metrics)) = partition.upgrade().map(|p| (p.health(), p.raft_metrics()))
    else {
        return;
    };
    loop {
        let fatal = metrics.borrow_and_update().running_state.clone().err();
        if let Some(fatal) = fatal {
            // A normal stop (shutdown, topic deleted) is no failure: nothing to do.
            if !health.fail_from_raft(&fatal) && !health.is_offline() {
                return;
            }
            break;
        }
        tokio::select! {
            _ = health.offline() => break,
            changed = metrics.changed() => if changed.is_err() && !health.is_offline() {
                return;
            },
        }
    }
    if let Some(p) = partition.upgrade() {
        take_offline(&p).await;
    }
}

async fn take_offline(p: &Partition) {
    let (op, error) = p
        .storage_failure()
        .map(|f| (f.op, f.error.clone()))
        .unwrap_or(("unknown", String::new()));
    tracing::error!(
        topic = %p.topic,
        partition = p.index,
        op,
        error = %error,
        "partition replica offline after a storage error: it stops serving and leading; \
         the other replicas go on; restart the broker once the disk is fixed"
    );
    p.stop_serving().await;
    let broker = p.node_id();
    report(Arc::clone(p.cluster()), p.key, broker, true).await;
}

/// Tells the cluster metadata that this broker's replica of `key` is offline (or online
/// again), retrying until the metadata group takes it or refuses it (topic gone).
pub async fn report(cluster: Arc<Cluster>, key: GroupKey, broker: i32, offline: bool) {
    let cmd = MetaCommand::ReplicaStorage {
        topic_id: key.topic_id,
        partition: key.partition,
        broker,
        offline,
    };
    let mut pause = Duration::from_millis(200);
    loop {
        match cluster.write(cmd.clone()).await {
            Ok(reply) => {
                if let Some(r) = reply.rejected {
                    tracing::debug!(partition = key.partition, reason = %r, "replica state not recorded");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(partition = key.partition, offline, error = %e, "cannot record the replica's storage state yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REPORT_BACKOFF_MAX);
            }
        }
    }
}
