//! openraft glue shared by the broker's Raft groups and the ring controller.
//!
//! [`split_vote`]: openraft 0.9 can leave a group without a leader for good when two voters
//! campaign in lock-step; a watchdog task per Raft node breaks the tie.

pub mod split_vote;

pub use split_vote::{spawn_split_vote_breaker, SplitVoteTiming};
