//! Breaking repeated split votes.
//!
//! openraft 0.9 draws a node's election timeout once, when the node starts, and checks it
//! only on its tick (every 1.5 heartbeat intervals). Two voters whose ticks line up (nodes
//! created by the same event, such as a partition's replicas applying the same CreateTopics
//! entry, or replicas started together) and whose timeouts round up to the same tick
//! campaign at the same moment every round: each votes for itself, refuses the other, and
//! the group has no leader for as long as the alignment lasts. Seen: two controller replicas
//! split every 604 ms for 10 s after their leader died.
//!
//! The watchdog notices a node that has stayed a candidate without a leader for several
//! election timeouts, waits a random part of a tick and campaigns once, off the tick. The
//! other voter is still a candidate of the previous term with an uncommitted vote, so it
//! grants the higher term, and the group has a leader again. Safety is Raft's own: this only
//! starts an election, which any node may do at any time.

use std::time::Duration;

use openraft::{Raft, RaftTypeConfig, ServerState};
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// When the watchdog looks and when it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitVoteTiming {
    /// How often the node's state is read.
    pub poll: Duration,
    /// A candidate without a leader for this long is presumed to be splitting votes.
    pub stuck_after: Duration,
    /// openraft's tick; the campaign starts at a random point inside one.
    pub tick: Duration,
}

impl SplitVoteTiming {
    /// Derived from the group's Raft config: stuck after three of the longest election
    /// timeouts (at least two full failed rounds), polled twice in that time.
    pub fn from_config(config: &openraft::Config) -> Self {
        let stuck_after = Duration::from_millis(config.election_timeout_max.saturating_mul(3));
        Self {
            poll: stuck_after / 2,
            stuck_after,
            tick: Duration::from_millis((config.heartbeat_interval.saturating_mul(3) / 2).max(1)),
        }
    }
}

/// What the watchdog does after one look at the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A leader is known, or the node is not campaigning: nothing to watch.
    Healthy,
    /// Campaigning without a leader since the given moment; not for long enough yet.
    Watching(Instant),
    /// Campaigning without a leader for `stuck_after` or longer: campaign off the tick.
    Campaign,
}

/// The decision, apart from the clock and the node so it can be tested directly.
pub fn judge(
    state: ServerState,
    has_leader: bool,
    candidate_since: Option<Instant>,
    now: Instant,
    stuck_after: Duration,
) -> Verdict {
    if state != ServerState::Candidate || has_leader {
        return Verdict::Healthy;
    }
    let since = candidate_since.unwrap_or(now);
    if now.saturating_duration_since(since) >= stuck_after {
        Verdict::Campaign
    } else {
        Verdict::Watching(since)
    }
}

/// Starts the watchdog for one Raft node, timed from the node's own config. It ends by
/// itself when the node shuts down.
pub fn spawn_split_vote_breaker<C>(raft: Raft<C>) -> JoinHandle<()>
where
    C: RaftTypeConfig,
{
    let timing = SplitVoteTiming::from_config(raft.config());
    tokio::spawn(watch(raft, timing))
}

async fn watch<C: RaftTypeConfig>(raft: Raft<C>, timing: SplitVoteTiming) {
    let metrics = raft.metrics();
    let mut since = None;
    loop {
        tokio::time::sleep(timing.poll).await;
        // The metrics sender lives in the Raft core: closed means the node has stopped.
        if metrics.has_changed().is_err() {
            return;
        }
        let (state, has_leader) = {
            let m = metrics.borrow();
            (m.state, m.current_leader.is_some())
        };
        match judge(state, has_leader, since, Instant::now(), timing.stuck_after) {
            Verdict::Healthy => since = None,
            Verdict::Watching(s) => since = Some(s),
            Verdict::Campaign => {
                since = None;
                let tick_ms = u64::try_from(timing.tick.as_millis()).unwrap_or(u64::MAX);
                let offset = rand::thread_rng().gen_range(0..tick_ms.max(1));
                tokio::time::sleep(Duration::from_millis(offset)).await;
                if metrics.borrow().current_leader.is_some() {
                    continue;
                }
                tracing::info!(
                    node = %metrics.borrow().id,
                    term = metrics.borrow().current_term,
                    "no leader after repeated elections: campaigning off the tick"
                );
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUCK: Duration = Duration::from_secs(3);

    #[test]
    fn a_node_with_a_leader_is_healthy() {
        let now = Instant::now();
        for state in [
            ServerState::Leader,
            ServerState::Follower,
            ServerState::Learner,
            ServerState::Candidate,
        ] {
            assert_eq!(judge(state, true, None, now, STUCK), Verdict::Healthy);
        }
    }

    #[test]
    fn a_leaderless_follower_is_left_to_its_own_timeout() {
        let now = Instant::now();
        let since = now.checked_sub(STUCK * 2);
        assert_eq!(
            judge(ServerState::Follower, false, since, now, STUCK),
            Verdict::Healthy
        );
        assert_eq!(
            judge(ServerState::Learner, false, since, now, STUCK),
            Verdict::Healthy
        );
    }

    #[test]
    fn a_candidate_is_watched_then_nudged() {
        let start = Instant::now();
        let first = judge(ServerState::Candidate, false, None, start, STUCK);
        assert_eq!(first, Verdict::Watching(start));
        let later = start + STUCK - Duration::from_millis(1);
        assert_eq!(
            judge(ServerState::Candidate, false, Some(start), later, STUCK),
            Verdict::Watching(start)
        );
        assert_eq!(
            judge(
                ServerState::Candidate,
                false,
                Some(start),
                start + STUCK,
                STUCK
            ),
            Verdict::Campaign
        );
    }

    #[test]
    fn timing_follows_the_raft_config() {
        let config = openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        };
        let t = SplitVoteTiming::from_config(&config);
        assert_eq!(t.stuck_after, Duration::from_millis(2400));
        assert_eq!(t.poll, Duration::from_millis(1200));
        assert_eq!(t.tick, Duration::from_millis(150));
    }
}
