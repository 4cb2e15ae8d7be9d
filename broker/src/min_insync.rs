//! acks=all waits for `min.insync.replicas` copies, not only for a Raft majority.
//!
//! A Raft commit means a majority of the partition's replicas hold the batch. Kafka's
//! acks=all promises that at least `min.insync.replicas` replicas (the leader included) hold
//! it; with replication factor 3 and `min.insync.replicas=3` a majority (2) is not enough.
//! After the commit, the acknowledgement therefore also waits until openraft's leader metrics
//! show enough replicas whose matched log index reached the entry. A matched index is
//! persisted on that replica: followers answer AppendEntries after their log flush, and the
//! leader counts itself once its own flush is done. The produce request's timeout bounds the
//! wait (the client gets REQUEST_TIMED_OUT); a leader change answers NOT_LEADER_OR_FOLLOWER.

use openraft::{BasicNode, RaftMetrics, ServerState};
use tokio::sync::{oneshot, watch};

use crate::partition::AppendError;

type Metrics = RaftMetrics<u64, BasicNode>;

/// Where the copies of one Raft entry stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    Enough,
    /// This many replicas hold the entry so far.
    Short(usize),
    /// This replica no longer leads in the entry's term: it cannot tell.
    NotLeader,
}

/// Counts, on the leader of `term`, the replicas (itself included) whose log holds entry
/// `index`. A number of copies no larger than a Raft majority is implied by the commit.
pub fn assess(m: &Metrics, term: u64, index: u64, wanted: usize) -> Copies {
    let voters = m.membership_config.membership().voter_ids().count();
    if wanted <= voters / 2 + 1 {
        return Copies::Enough;
    }
    if m.state != ServerState::Leader || m.current_term != term {
        return Copies::NotLeader;
    }
    let Some(replication) = &m.replication else {
        return Copies::NotLeader;
    };
    let have = replication
        .values()
        .filter(|matched| matched.as_ref().is_some_and(|l| l.index >= index))
        .count();
    if have >= wanted {
        Copies::Enough
    } else {
        Copies::Short(have)
    }
}

/// Waits until `wanted` replicas hold the committed entry (`term`, `index`). Every wake-up
/// is a change of the Raft metrics; the wait ends when the produce request stops listening
/// (its timeout) or this replica stops leading.
pub async fn wait_for_copies(
    metrics: &mut watch::Receiver<Metrics>,
    term: u64,
    index: u64,
    wanted: usize,
    reply: &mut oneshot::Sender<Result<i64, AppendError>>,
) -> Result<(), AppendError> {
    loop {
        let copies = assess(&metrics.borrow_and_update(), term, index, wanted);
        match copies {
            Copies::Enough => return Ok(()),
            Copies::NotLeader => return Err(AppendError::NotLeader),
            Copies::Short(_) => {}
        }
        tokio::select! {
            _ = reply.closed() => return Err(AppendError::ShuttingDown),
            r = metrics.changed() => if r.is_err() { return Err(AppendError::ShuttingDown) },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    fn leader(term: u64, voters: &[u64], matched: &[(u64, Option<u64>)]) -> Metrics {
        let mut m = Metrics::new_initial(1);
        m.state = ServerState::Leader;
        m.current_term = term;
        let ids: BTreeSet<u64> = voters.iter().copied().collect();
        let nodes: BTreeMap<u64, BasicNode> =
            ids.iter().map(|id| (*id, BasicNode::default())).collect();
        let membership = Membership::new(vec![ids], nodes);
        m.membership_config = std::sync::Arc::new(StoredMembership::new(None, membership));
        m.replication = Some(
            matched
                .iter()
                .map(|(id, index)| {
                    let log = index.map(|i| LogId::new(CommittedLeaderId::new(term, 1), i));
                    (*id, log)
                })
                .collect(),
        );
        m
    }

    #[test]
    fn waits_for_min_insync_copies_beyond_a_majority() {
        // RF 3: the leader and one follower hold entry 10, the third replica is behind.
        let m = leader(4, &[1, 2, 3], &[(1, Some(12)), (2, Some(10)), (3, Some(7))]);
        assert_eq!(
            assess(&m, 4, 10, 2),
            Copies::Enough,
            "a majority: the commit"
        );
        assert_eq!(assess(&m, 4, 10, 3), Copies::Short(2));
        assert_eq!(assess(&m, 4, 7, 3), Copies::Enough);
        let none = leader(4, &[1, 2, 3], &[(1, Some(12)), (2, Some(10)), (3, None)]);
        assert_eq!(assess(&none, 4, 10, 3), Copies::Short(2));
        // RF 5 with min.insync.replicas 4.
        let five = leader(
            2,
            &[1, 2, 3, 4, 5],
            &[
                (1, Some(9)),
                (2, Some(9)),
                (3, Some(9)),
                (4, Some(3)),
                (5, None),
            ],
        );
        assert_eq!(assess(&five, 2, 9, 3), Copies::Enough);
        assert_eq!(assess(&five, 2, 9, 4), Copies::Short(3));
    }

    #[test]
    fn a_new_term_or_follower_cannot_confirm() {
        let m = leader(4, &[1, 2, 3], &[(1, Some(12)), (2, Some(10)), (3, Some(7))]);
        assert_eq!(
            assess(&m, 3, 10, 3),
            Copies::NotLeader,
            "entry of an older term"
        );
        let mut follower = m.clone();
        follower.state = ServerState::Follower;
        follower.replication = None;
        assert_eq!(assess(&follower, 4, 10, 3), Copies::NotLeader);
    }
}
