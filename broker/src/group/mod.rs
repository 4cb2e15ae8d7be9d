//! Consumer groups (Kafka's classic protocol): the coordinator and where it keeps its state.
//!
//! * [`state`]: the group state machine, pure (requests + time in, answers + writes out).
//! * [`store`]: the records of `__consumer_offsets` and the [`store::GroupLog`] trait the
//!   coordinator writes them through.
//! * [`coordinator`]: runs one state machine per offsets-topic partition this broker leads,
//!   loads it from the log when leadership arrives, drops it when leadership goes, sends
//!   writes to the log and answers long polls.
//! * [`offsets_topic`]: the broker side: the topic, its partitions' leadership and logs, and
//!   the coordinator's address for FindCoordinator.
//!
//! The api handlers (`api/find_coordinator.rs`, `api/join_group.rs`, …) only translate
//! between Kafka messages and these types.

pub mod coordinator;
pub mod offsets_topic;
pub mod state;
pub mod store;

use crate::config::ConfigError;

pub use coordinator::Coordinator;

/// Kafka's internal topic for offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's `offset.metadata.max.bytes` default.
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;
/// Groups one broker coordinates at most (over all its offsets partitions).
pub const MAX_GROUPS: usize = 100_000;
/// Kafka's `offsets.commit.timeout.ms` default: a write not replicated by then fails.
pub const COMMIT_TIMEOUT_MS: u64 = 5000;

/// Group coordinator settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub initial_rebalance_delay_ms: i64,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// Members (and members told to rejoin with their new id) per group.
    pub max_size: usize,
    /// Groups per offsets partition.
    pub max_groups: usize,
    pub offset_metadata_max_bytes: usize,
    pub offsets_partitions: i32,
    pub offsets_replication_factor: i16,
    pub commit_timeout_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_size: 1000,
            max_groups: MAX_GROUPS / 16,
            offset_metadata_max_bytes: OFFSET_METADATA_MAX_BYTES,
            offsets_partitions: 16,
            offsets_replication_factor: 3,
            commit_timeout_ms: COMMIT_TIMEOUT_MS,
        }
    }
}

/// Command-line / environment / file options of the group coordinator.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct GroupArgs {
    /// How long an empty group waits for more members before its first rebalance
    /// (group.initial.rebalance.delay.ms). Default 3000.
    #[arg(long, env = "BROKER_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a member may ask for (group.min.session.timeout.ms).
    /// Default 6000.
    #[arg(long, env = "BROKER_GROUP_MIN_SESSION_TIMEOUT_MS")]
    pub group_min_session_timeout_ms: Option<u32>,
    /// Largest session timeout a member may ask for (group.max.session.timeout.ms).
    /// Default 1800000.
    #[arg(long, env = "BROKER_GROUP_MAX_SESSION_TIMEOUT_MS")]
    pub group_max_session_timeout_ms: Option<u32>,
    /// Most members per group (group.max.size). Default 1000.
    #[arg(long, env = "BROKER_GROUP_MAX_SIZE")]
    pub group_max_size: Option<usize>,
    /// Partitions of __consumer_offsets when it is created (offsets.topic.num.partitions).
    /// Default 16.
    #[arg(long, env = "BROKER_OFFSETS_TOPIC_NUM_PARTITIONS")]
    pub offsets_topic_num_partitions: Option<i32>,
    /// Replication factor of __consumer_offsets (offsets.topic.replication.factor), capped at
    /// the number of brokers when the topic is created. Default 3.
    #[arg(long, env = "BROKER_OFFSETS_TOPIC_REPLICATION_FACTOR")]
    pub offsets_topic_replication_factor: Option<i16>,
}

impl GroupArgs {
    /// These values, with `fallback`'s where these have none (flags/env over the file).
    pub fn or(self, fallback: GroupArgs) -> GroupArgs {
        GroupArgs {
            group_initial_rebalance_delay_ms: self
                .group_initial_rebalance_delay_ms
                .or(fallback.group_initial_rebalance_delay_ms),
            group_min_session_timeout_ms: self
                .group_min_session_timeout_ms
                .or(fallback.group_min_session_timeout_ms),
            group_max_session_timeout_ms: self
                .group_max_session_timeout_ms
                .or(fallback.group_max_session_timeout_ms),
            group_max_size: self.group_max_size.or(fallback.group_max_size),
            offsets_topic_num_partitions: self
                .offsets_topic_num_partitions
                .or(fallback.offsets_topic_num_partitions),
            offsets_topic_replication_factor: self
                .offsets_topic_replication_factor
                .or(fallback.offsets_topic_replication_factor),
        }
    }

    /// Validated settings; a bad value names its option.
    pub fn resolve(&self) -> Result<GroupConfig, ConfigError> {
        let invalid = |name, reason: String| Err(ConfigError::Invalid { name, reason });
        let d = GroupConfig::default();
        let delay = self
            .group_initial_rebalance_delay_ms
            .unwrap_or(d.initial_rebalance_delay_ms as u64);
        if delay > 3_600_000 {
            return invalid(
                "group-initial-rebalance-delay-ms",
                format!("{delay} is above one hour"),
            );
        }
        let min = self
            .group_min_session_timeout_ms
            .unwrap_or(d.min_session_timeout_ms as u32);
        let max = self
            .group_max_session_timeout_ms
            .unwrap_or(d.max_session_timeout_ms as u32);
        if min == 0 || min > max || max > i32::MAX as u32 {
            return invalid(
                "group-min-session-timeout-ms",
                format!("need 1 <= min ({min}) <= max ({max}) <= {}", i32::MAX),
            );
        }
        let max_size = self.group_max_size.unwrap_or(d.max_size);
        if !(1..=100_000).contains(&max_size) {
            return invalid(
                "group-max-size",
                format!("{max_size} is outside 1..=100000"),
            );
        }
        let partitions = self
            .offsets_topic_num_partitions
            .unwrap_or(d.offsets_partitions);
        if !(1..=1000).contains(&partitions) {
            return invalid(
                "offsets-topic-num-partitions",
                format!("{partitions} is outside 1..=1000"),
            );
        }
        let rf = self
            .offsets_topic_replication_factor
            .unwrap_or(d.offsets_replication_factor);
        if rf < 1 {
            return invalid(
                "offsets-topic-replication-factor",
                format!("{rf} is below 1"),
            );
        }
        Ok(GroupConfig {
            initial_rebalance_delay_ms: delay as i64,
            min_session_timeout_ms: min as i32,
            max_session_timeout_ms: max as i32,
            max_size,
            max_groups: (MAX_GROUPS / partitions as usize).max(1),
            offsets_partitions: partitions,
            offsets_replication_factor: rf,
            ..d
        })
    }
}

/// Milliseconds since the epoch (the coordinator's clock; the state machine gets it as input).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafkas_and_bad_values_name_their_flag() {
        let d = GroupArgs::default().resolve().expect("defaults are valid");
        assert_eq!(d.initial_rebalance_delay_ms, 3000);
        assert_eq!(
            (d.min_session_timeout_ms, d.max_session_timeout_ms),
            (6000, 1_800_000)
        );
        assert_eq!(
            (d.offsets_partitions, d.offsets_replication_factor),
            (16, 3)
        );
        for (args, name) in [
            (
                GroupArgs {
                    group_max_size: Some(0),
                    ..GroupArgs::default()
                },
                "group-max-size",
            ),
            (
                GroupArgs {
                    group_min_session_timeout_ms: Some(10_000),
                    group_max_session_timeout_ms: Some(5_000),
                    ..GroupArgs::default()
                },
                "group-min-session-timeout-ms",
            ),
            (
                GroupArgs {
                    offsets_topic_num_partitions: Some(0),
                    ..GroupArgs::default()
                },
                "offsets-topic-num-partitions",
            ),
        ] {
            let err = args.resolve().expect_err("invalid");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn flags_beat_the_file() {
        let flags = GroupArgs {
            group_initial_rebalance_delay_ms: Some(5),
            ..GroupArgs::default()
        };
        let file = GroupArgs {
            group_initial_rebalance_delay_ms: Some(7),
            group_max_size: Some(9),
            ..GroupArgs::default()
        };
        let c = flags.or(file).resolve().expect("valid");
        assert_eq!((c.initial_rebalance_delay_ms, c.max_size), (5, 9));
    }
}
