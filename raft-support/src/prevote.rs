//! Elections with a pre-vote round (Raft thesis §9.6) for openraft 0.9.
//!
//! openraft 0.9 raises a voter's term at every election timeout in which it hears no leader,
//! also while it cannot reach anybody. A node cut off from the network for 10 s comes back
//! with a term several elections ahead; its answers to the leader's heartbeats carry that
//! term, the leader steps down, and the group holds an election nobody needed (seen: term
//! 34 -> 44, a CreateTopics timing out meanwhile). Pre-vote is in openraft only from
//! 0.10 (`Config::enable_pre_vote`, alpha releases only), so it is done here:
//!
//! * openraft's own election timer is switched off (`Config::enable_elect = false`); an
//!   election driver task per node takes its place, timed like openraft's (a follower that
//!   heard its leader campaigns after the leader lease plus a random election timeout, a
//!   node without a leader after a random timeout, freshly drawn every round);
//! * when due, the node first asks every other voter whether it *would* grant a vote for the
//!   next term. A voter says yes only if it does not lead, its own leader lease has expired
//!   (it has not heard a leader within the lease: leader stickiness) and the candidate's log
//!   is at least as up to date as its own: the checks openraft makes for a real vote, with
//!   nothing persisted and no term changed anywhere. Only with a quorum of yeses (the node
//!   counts itself) does the driver call `trigger().elect()`.
//!
//! A node that cannot reach a quorum therefore never raises its term, and a node that can
//! reach one while a live leader exists is told no. Safety stays openraft's: this only
//! decides when to start an election, which Raft allows at any time. A failed round is
//! retried after a new random timeout; two candidates that collide draw again, so openraft
//! 0.9's lock-step split votes (see `split_vote`) do not arise for nodes with this driver.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::{Instant as _, LogId, Raft, RaftTypeConfig, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};

/// A leader or non-voter looks at its state again after this many leader leases even when
/// its server metrics did not change (they do on every change of state, vote or membership).
const IDLE_LEASES: u32 = 10;

/// "Would you vote for me in `next_term`?" Nothing is persisted by asking or answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: u64,
    pub next_term: u64,
    pub last_log_id: Option<LogId<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// The voter's current term (for logs).
    pub term: u64,
}

/// How a node asks one peer (the broker sends it over its Raft transport).
pub trait PreVoteNetwork<C: RaftTypeConfig<NodeId = u64>>: Clone + Send + Sync + 'static {
    fn pre_vote(
        &self,
        target: u64,
        node: C::Node,
        request: PreVoteRequest,
        ttl: Duration,
    ) -> impl Future<Output = Result<PreVoteResponse, String>> + Send;
}

/// What a voter knows when it is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterState {
    pub leading: bool,
    /// Its vote is committed (it follows a leader) and was refreshed within the lease.
    pub lease_held: bool,
    pub last_log_id: Option<LogId<u64>>,
}

/// The voter's decision: openraft's checks for a real vote, without the vote.
pub fn grant(voter: &VoterState, request: &PreVoteRequest) -> bool {
    !voter.leading && !voter.lease_held && request.last_log_id >= voter.last_log_id
}

/// Election timing taken from the node's openraft config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    /// openraft's leader lease: `election_timeout_max`.
    pub lease: Duration,
    pub timeout_min: Duration,
    pub timeout_max: Duration,
}

impl ElectionTiming {
    pub fn from_config(config: &openraft::Config) -> Self {
        let min = Duration::from_millis(config.election_timeout_min);
        let max = Duration::from_millis(config.election_timeout_max);
        Self {
            lease: max,
            timeout_min: min,
            timeout_max: max.max(min + Duration::from_millis(1)),
        }
    }

    /// A fresh random election timeout in [min, max).
    pub fn draw(&self) -> Duration {
        rand::thread_rng().gen_range(self.timeout_min..self.timeout_max)
    }

    /// How long until the node may campaign. `since_vote`: time since its vote last changed
    /// or was refreshed by a leader (None: not since it started); `committed`: that vote is a
    /// leader's; `since_attempt`: time since its last pre-vote round (None: none yet).
    pub fn due_in(
        &self,
        committed: bool,
        since_vote: Option<Duration>,
        since_attempt: Option<Duration>,
        timeout: Duration,
    ) -> Duration {
        let wait = if committed {
            self.lease + timeout
        } else {
            timeout
        };
        let by_vote = since_vote.map_or(Duration::ZERO, |s| wait.saturating_sub(s));
        let by_attempt = since_attempt.map_or(Duration::ZERO, |s| timeout.saturating_sub(s));
        by_vote.max(by_attempt)
    }
}

/// True when `granted` holds a majority of every voter set of a (possibly joint) config.
pub fn quorum(configs: &[BTreeSet<u64>], granted: &BTreeSet<u64>) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|voters| voters.intersection(granted).count() * 2 > voters.len())
}

/// What the node itself looks like, read from its Raft core.
#[derive(Debug, Clone, Copy)]
struct Look {
    state: ServerState,
    term: u64,
    committed: bool,
    since_vote: Option<Duration>,
}

async fn look<C: RaftTypeConfig<NodeId = u64>>(raft: &Raft<C>) -> Option<Look> {
    raft.with_raft_state(|st| Look {
        state: st.server_state,
        term: st.vote_ref().leader_id().term,
        committed: st.vote_ref().is_committed(),
        since_vote: st.vote_last_modified().map(|t| t.elapsed()),
    })
    .await
    .ok()
}

/// Answers a peer's pre-vote request (see the module doc). A node whose Raft core has
/// stopped says no.
pub async fn answer_pre_vote<C>(raft: &Raft<C>, request: &PreVoteRequest) -> PreVoteResponse
where
    C: RaftTypeConfig<NodeId = u64>,
{
    let lease = ElectionTiming::from_config(raft.config()).lease;
    let Some(me) = look(raft).await else {
        return PreVoteResponse {
            granted: false,
            term: 0,
        };
    };
    let voter = VoterState {
        leading: me.state == ServerState::Leader,
        lease_held: me.committed && me.since_vote.is_some_and(|s| s <= lease),
        last_log_id: raft.data_metrics().borrow().last_log,
    };
    let granted = grant(&voter, request);
    tracing::debug!(
        candidate = request.candidate,
        next_term = request.next_term,
        granted,
        ?voter,
        "pre-vote asked"
    );
    PreVoteResponse {
        granted,
        term: me.term,
    }
}

/// Starts the election driver of one Raft node, whose config must have
/// `enable_elect = false`. It ends when the node stops.
pub fn spawn_election_driver<C, N>(raft: Raft<C>, network: N) -> JoinHandle<()>
where
    C: RaftTypeConfig<NodeId = u64>,
    N: PreVoteNetwork<C>,
{
    tokio::spawn(drive(raft, network))
}

async fn drive<C, N>(raft: Raft<C>, network: N)
where
    C: RaftTypeConfig<NodeId = u64>,
    N: PreVoteNetwork<C>,
{
    let timing = ElectionTiming::from_config(raft.config());
    let id = raft.metrics().borrow().id;
    let mut changes = raft.server_metrics();
    let mut timeout = timing.draw();
    let mut last_attempt: Option<tokio::time::Instant> = None;
    loop {
        let Some(me) = look(&raft).await else {
            return;
        };
        let voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let wait = if me.state == ServerState::Leader || !voter {
            // Nothing to time: look again when the state, vote or membership changes (the
            // server metrics say so), or after a long while anyway.
            timing.lease * IDLE_LEASES
        } else {
            let since_attempt = last_attempt.map(|t| t.elapsed());
            timing.due_in(me.committed, me.since_vote, since_attempt, timeout)
        };
        if !wait.is_zero() {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        last_attempt = Some(tokio::time::Instant::now());
        timeout = timing.draw();
        if pre_vote_round(&raft, &network, id, me.term, timing.timeout_min).await {
            tracing::info!(node = id, group = %raft.config().cluster_name, term = me.term + 1, "pre-vote granted by a quorum: campaigning");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

/// Asks every other voter; true once a quorum (this node included) would grant.
async fn pre_vote_round<C, N>(
    raft: &Raft<C>,
    network: &N,
    id: u64,
    term: u64,
    ttl: Duration,
) -> bool
where
    C: RaftTypeConfig<NodeId = u64>,
    N: PreVoteNetwork<C>,
{
    let (configs, peers) = {
        let m = raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let peers: Vec<(u64, C::Node)> = membership
            .voter_ids()
            .filter(|v| *v != id)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.clone())))
            .collect();
        (membership.get_joint_config().clone(), peers)
    };
    let request = PreVoteRequest {
        candidate: id,
        next_term: term + 1,
        last_log_id: raft.data_metrics().borrow().last_log,
    };
    let mut granted = BTreeSet::from([id]);
    if quorum(&configs, &granted) {
        return true;
    }
    let mut asks = JoinSet::new();
    for (target, node) in peers {
        let network = network.clone();
        asks.spawn(async move {
            let answer = network.pre_vote(target, node, request, ttl).await;
            (target, answer)
        });
    }
    let mut refused = Vec::new();
    while let Some(joined) = asks.join_next().await {
        let Ok((target, answer)) = joined else {
            continue;
        };
        match answer {
            Ok(a) if a.granted => {
                granted.insert(target);
                if quorum(&configs, &granted) {
                    return true;
                }
            }
            Ok(a) => refused.push((target, format!("refused at term {}", a.term))),
            Err(e) => refused.push((target, e)),
        }
    }
    tracing::debug!(node = id, group = %raft.config().cluster_name, term, ?refused, "pre-vote without a quorum: not campaigning");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn ask(last: Option<LogId<u64>>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            next_term: 9,
            last_log_id: last,
        }
    }

    #[test]
    fn a_voter_grants_only_without_a_live_leader_and_to_an_up_to_date_log() {
        let free = VoterState {
            leading: false,
            lease_held: false,
            last_log_id: log(3, 10),
        };
        assert!(grant(&free, &ask(log(3, 10))));
        assert!(
            grant(&free, &ask(log(4, 2))),
            "a newer term wins over a longer log"
        );
        assert!(!grant(&free, &ask(log(3, 9))), "a shorter log is refused");
        assert!(
            !grant(&free, &ask(log(2, 50))),
            "an older last term is refused"
        );
        assert!(!grant(&free, &ask(None)));
        let following = VoterState {
            lease_held: true,
            ..free
        };
        assert!(!grant(&following, &ask(log(5, 99))), "leader stickiness");
        let leading = VoterState {
            leading: true,
            ..free
        };
        assert!(!grant(&leading, &ask(log(5, 99))));
        let empty = VoterState {
            leading: false,
            lease_held: false,
            last_log_id: None,
        };
        assert!(grant(&empty, &ask(None)));
    }

    #[test]
    fn quorum_of_every_voter_set() {
        let three = vec![BTreeSet::from([1, 2, 3])];
        assert!(!quorum(&three, &BTreeSet::from([1])));
        assert!(quorum(&three, &BTreeSet::from([1, 3])));
        assert!(quorum(&[BTreeSet::from([1])], &BTreeSet::from([1])));
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([3, 4, 5])];
        assert!(!quorum(&joint, &BTreeSet::from([1, 2, 3])));
        assert!(quorum(&joint, &BTreeSet::from([1, 3, 4])));
        assert!(!quorum(&[], &BTreeSet::from([1])));
    }

    fn timing() -> ElectionTiming {
        ElectionTiming::from_config(&openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..Default::default()
        })
    }

    #[test]
    fn a_follower_waits_out_the_lease_and_a_timeout_a_candidate_only_a_timeout() {
        let t = timing();
        let ms = Duration::from_millis;
        assert_eq!(t.lease, ms(1000));
        // Heard the leader 300 ms ago: lease + timeout from then.
        assert_eq!(t.due_in(true, Some(ms(300)), None, ms(600)), ms(1300));
        assert_eq!(t.due_in(true, Some(ms(1600)), None, ms(600)), ms(0));
        // No leader (an uncommitted vote): the timeout only.
        assert_eq!(t.due_in(false, Some(ms(200)), None, ms(600)), ms(400));
        // Just started (no vote time): at once, unless a round ran recently.
        assert_eq!(t.due_in(true, None, None, ms(600)), ms(0));
        assert_eq!(t.due_in(false, None, Some(ms(100)), ms(600)), ms(500));
        // A refused round is not repeated before a fresh timeout has passed.
        assert_eq!(
            t.due_in(true, Some(ms(5000)), Some(ms(50)), ms(700)),
            ms(650)
        );
    }

    #[test]
    fn every_round_draws_a_new_timeout_inside_the_configured_range() {
        let t = timing();
        let draws: BTreeSet<Duration> = (0..200).map(|_| t.draw()).collect();
        assert!(draws
            .iter()
            .all(|d| *d >= t.timeout_min && *d < t.timeout_max));
        assert!(draws.len() > 50, "draws differ from round to round");
    }
}
