//! openraft glue shared by the broker's Raft groups and the ring controller.
//!
//! [`split_vote`]: openraft 0.9 can leave a group without a leader for good when two voters
//! campaign in lock-step; a watchdog task per Raft node breaks the tie.
//!
//! [`prevote`]: openraft 0.9 has no pre-vote, so a node cut off from the network raises its
//! term while alone and forces an election when it comes back; an election driver with a
//! pre-vote round replaces openraft's own election timer.

pub mod prevote;
pub mod split_vote;

pub use prevote::{
    answer_pre_vote, spawn_election_driver, PreVoteNetwork, PreVoteRequest, PreVoteResponse,
};
pub use split_vote::{spawn_split_vote_breaker, SplitVoteTiming};
