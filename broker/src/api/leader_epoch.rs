//! KIP-320 fencing of reads: Fetch (v9+), ListOffsets (v4+) and OffsetForLeaderEpoch (v2+)
//! name the leader epoch the client believes current, so a deposed leader that has not
//! noticed yet does not serve it, and a client with stale metadata learns it.

use kafka_protocol::ResponseError;

use crate::partition::Partition;

/// Kafka's check of a request's `current_leader_epoch` against this replica's epoch (its
/// Raft term): negative skips it; an older one is FENCED_LEADER_EPOCH (the client's metadata
/// is stale), a newer one UNKNOWN_LEADER_EPOCH (this replica is behind, e.g. a deposed leader
/// that has not heard of its successor). Both make clients refresh metadata and retry.
pub fn check(requested: i32, local: i32) -> Result<(), ResponseError> {
    if requested < 0 || requested == local {
        Ok(())
    } else if requested < local {
        Err(ResponseError::FencedLeaderEpoch)
    } else {
        Err(ResponseError::UnknownLeaderEpoch)
    }
}

/// The gate at the top of a read's per-partition handling, in Kafka's order: the epoch
/// check, then leadership (NOT_LEADER_OR_FOLLOWER).
pub fn check_leader(partition: &Partition, requested: i32) -> Result<(), ResponseError> {
    check(requested, partition.leader_epoch())?;
    if partition.is_leader() {
        Ok(())
    } else {
        Err(ResponseError::NotLeaderOrFollower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_checked_as_kafka_does() {
        assert_eq!(check(-1, 5), Ok(()), "-1: no check");
        assert_eq!(check(-7, 5), Ok(()));
        assert_eq!(check(5, 5), Ok(()));
        assert_eq!(check(4, 5), Err(ResponseError::FencedLeaderEpoch));
        assert_eq!(check(0, 5), Err(ResponseError::FencedLeaderEpoch));
        assert_eq!(check(6, 5), Err(ResponseError::UnknownLeaderEpoch));
    }
}
