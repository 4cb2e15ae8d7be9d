//! Broker configuration: flags, `BROKER_*` environment variables and an optional TOML file.
//!
//! Precedence is flag > environment > file > default. Every value is validated at start so a
//! wrong value stops the process with a message naming it, instead of failing later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// When the log is fsynced relative to acknowledging writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushPolicy {
    /// fsync before an entry counts as persisted: acks=all survives power loss.
    Always,
    /// fsync every `flush_interval_ms`: acks=all survives a process crash, not power loss.
    Interval,
}

/// Where global sequence numbers come from. Also recorded in the cluster metadata (each
/// broker's registration and the cluster's own), so it is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SequencerKind {
    /// In-process counter with a lease in the metadata store (single broker).
    Local,
    /// The switch ring (`sequencer-p4`), configured by the ring controllers.
    Ring,
}

impl std::fmt::Display for SequencerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SequencerKind::Local => "local",
            SequencerKind::Ring => "ring",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for the broker: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Values a config file may set; every field optional so flags and env can override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    node_id: Option<u64>,
    listen: Option<SocketAddr>,
    advertised_host: Option<String>,
    advertised_port: Option<u16>,
    data_dir: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    num_partitions: Option<i32>,
    auto_create_topics: Option<bool>,
    segment_bytes: Option<u64>,
    segment_ms: Option<u64>,
    index_interval_bytes: Option<u64>,
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    flush_policy: Option<FlushPolicy>,
    flush_interval_ms: Option<u64>,
    sequencer_window_us: Option<u64>,
    sequencer: Option<SequencerKind>,
    ring_controllers: Option<String>,
    ring_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    internal_listen: Option<SocketAddr>,
    internal_advertised: Option<String>,
    raft_listen: Option<SocketAddr>,
    raft_advertised: Option<String>,
    seeds: Option<String>,
    default_replication_factor: Option<i16>,
    min_insync_replicas: Option<i32>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_ms: Option<u64>,
    replica_lag_time_max_ms: Option<u64>,
    leader_rebalance_interval_ms: Option<u64>,
    log_retention_check_interval_ms: Option<u64>,
    frontier_round_gap_us: Option<u64>,
    frontier_idle_round_ms: Option<u64>,
    frontier_probe_timeout_ms: Option<u64>,
    broker_session_timeout_ms: Option<u64>,
    // Consumer groups (crate::group::GroupArgs).
    group_initial_rebalance_delay_ms: Option<u64>,
    group_min_session_timeout_ms: Option<u32>,
    group_max_session_timeout_ms: Option<u32>,
    group_max_size: Option<usize>,
    offsets_topic_num_partitions: Option<i32>,
    offsets_topic_replication_factor: Option<i16>,
    // Log cleaner (crate::cleaner::CleanerArgs).
    log_cleaner_backoff_ms: Option<u64>,
    log_cleaner_min_cleanable_ratio: Option<f64>,
    log_cleaner_max_keys: Option<usize>,
}

/// Command line (and environment) of the `broker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "broker",
    version,
    about = "Kafka-wire-compatible broker whose offsets are global sequence numbers"
)]
pub struct Args {
    /// TOML file with any of the options below (kebab-case keys).
    #[arg(long, env = "BROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// This broker's id (reported in Metadata, used as the Raft node id).
    #[arg(long, env = "BROKER_NODE_ID")]
    pub node_id: Option<u64>,
    /// Kafka listener address. Default 0.0.0.0:9092.
    #[arg(long, env = "BROKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Host name clients are told to connect to. Default localhost.
    #[arg(long, env = "BROKER_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to. Default: the listen port.
    #[arg(long, env = "BROKER_ADVERTISED_PORT")]
    pub advertised_port: Option<u16>,
    /// Directory for segment files and the metadata store. Default ./data.
    #[arg(long, env = "BROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Prometheus endpoint (GET /metrics). Default 0.0.0.0:9100.
    #[arg(long, env = "BROKER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Partitions of auto-created topics (Kafka's num.partitions). Default 1.
    #[arg(long, env = "BROKER_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// Create topics named in Metadata requests (auto.create.topics.enable). Default true.
    #[arg(long, env = "BROKER_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Roll a segment at this size (segment.bytes). Default 1 GiB.
    #[arg(long, env = "BROKER_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Roll a segment at this age (segment.ms). Default 7 days.
    #[arg(long, env = "BROKER_SEGMENT_MS")]
    pub segment_ms: Option<u64>,
    /// Bytes of log between sparse offset-index entries (index.interval.bytes). Default 4096.
    #[arg(long, env = "BROKER_INDEX_INTERVAL_BYTES")]
    pub index_interval_bytes: Option<u64>,
    /// Largest request frame accepted (socket.request.max.bytes). Default 100 MiB.
    #[arg(long, env = "BROKER_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Most client connections served at once. Default 10000.
    #[arg(long, env = "BROKER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// always: fsync before acknowledging; interval: fsync every flush-interval-ms.
    #[arg(long, env = "BROKER_FLUSH_POLICY", value_enum)]
    pub flush_policy: Option<FlushPolicy>,
    /// Period of the background fsync under --flush-policy interval. Default 1000.
    #[arg(long, env = "BROKER_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// How long the sequencer client gathers requests from all partitions into one. Default 0
    /// (send at once; requests arriving while one is in flight are batched into the next).
    #[arg(long, env = "BROKER_SEQUENCER_WINDOW_US")]
    pub sequencer_window_us: Option<u64>,
    /// Source of global sequence numbers: local (in-process) or ring (switch ring). Default
    /// local.
    #[arg(long, env = "BROKER_SEQUENCER", value_enum)]
    pub sequencer: Option<SequencerKind>,
    /// Ring controller admin addresses (host:port,...), asked for `GET /ring`. Required with
    /// --sequencer ring.
    #[arg(long, env = "BROKER_RING_CONTROLLERS")]
    pub ring_controllers: Option<String>,
    /// UDP address the ring client binds (requests go out, announcements come back).
    /// Default 0.0.0.0:0.
    #[arg(long, env = "BROKER_RING_LISTEN")]
    pub ring_listen: Option<SocketAddr>,
    /// Log output format.
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A second Kafka listener, e.g. for clients inside a container network. Metadata answers
    /// each connection with the addresses of the listener it arrived on.
    #[arg(long, env = "BROKER_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// host:port advertised for the internal listener. Default: the advertised host and the
    /// internal listen port.
    #[arg(long, env = "BROKER_INTERNAL_ADVERTISED")]
    pub internal_advertised: Option<String>,
    /// Broker-to-broker Raft transport address (only with --seeds). Default 0.0.0.0:9093.
    #[arg(long, env = "BROKER_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// host:port other brokers reach this broker's Raft transport at. Default: the address
    /// this node has in --seeds, else the advertised host and the Raft listen port.
    #[arg(long, env = "BROKER_RAFT_ADVERTISED")]
    pub raft_advertised: Option<String>,
    /// Metadata quorum voters as id@host:port,... (Raft transport addresses). Without it the
    /// broker is a cluster of one.
    #[arg(long, env = "BROKER_SEEDS")]
    pub seeds: Option<String>,
    /// Replication factor of auto-created topics and of CreateTopics asking for -1 (capped
    /// at the number of brokers). Default 3.
    #[arg(long, env = "BROKER_DEFAULT_REPLICATION_FACTOR")]
    pub default_replication_factor: Option<i16>,
    /// Broker default of min.insync.replicas. Default 1.
    #[arg(long, env = "BROKER_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<i32>,
    /// Raft heartbeat interval of the metadata and partition groups. Default 100.
    #[arg(long, env = "BROKER_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Minimum Raft election timeout (the maximum is twice this). Default 500.
    #[arg(long, env = "BROKER_RAFT_ELECTION_MS")]
    pub raft_election_ms: Option<u64>,
    /// A follower that has not caught up for this long leaves the ISR
    /// (replica.lag.time.max.ms). Default 10000.
    #[arg(long, env = "BROKER_REPLICA_LAG_TIME_MAX_MS")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// How often a preferred replica that is caught up but not leading takes the leadership
    /// back (auto.leader.rebalance). 0 disables. Default 30000.
    #[arg(long, env = "BROKER_LEADER_REBALANCE_INTERVAL_MS")]
    pub leader_rebalance_interval_ms: Option<u64>,
    /// How often each broker applies retention.ms / retention.bytes to its replicas
    /// (Kafka's log.retention.check.interval.ms). Default 300000.
    #[arg(long, env = "BROKER_LOG_RETENTION_CHECK_INTERVAL_MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Least time between two frontier rounds while something changes (microseconds):
    /// lower means read_committed sees records sooner, at more messages per second.
    /// Default 1000.
    #[arg(long, env = "BROKER_FRONTIER_ROUND_GAP_US")]
    pub frontier_round_gap_us: Option<u64>,
    /// A frontier round runs at least this often even when nothing changed. Default 1000.
    #[arg(long, env = "BROKER_FRONTIER_IDLE_ROUND_MS")]
    pub frontier_idle_round_ms: Option<u64>,
    /// A peer that has not answered a frontier probe after this long counts as refusing.
    /// Default 500.
    #[arg(long, env = "BROKER_FRONTIER_PROBE_TIMEOUT_MS")]
    pub frontier_probe_timeout_ms: Option<u64>,
    /// A broker whose Raft transport has not answered this broker's probes for this long is
    /// not listed in Metadata/DescribeCluster (Kafka's broker.session.timeout.ms); partitions
    /// it leads report LEADER_NOT_AVAILABLE. Default 9000, at least 1000.
    #[arg(long, env = "BROKER_BROKER_SESSION_TIMEOUT_MS")]
    pub broker_session_timeout_ms: Option<u64>,
    #[command(flatten)]
    pub groups: crate::group::GroupArgs,
    #[command(flatten)]
    pub cleaner: crate::cleaner::CleanerArgs,
}

/// The validated configuration the broker runs with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub data_dir: PathBuf,
    pub metrics_listen: SocketAddr,
    pub num_partitions: i32,
    pub auto_create_topics: bool,
    pub log: LogConfig,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub sequencer_window: Duration,
    pub sequencer: SequencerKind,
    /// Controller admin addresses (only used with `SequencerKind::Ring`).
    pub ring_controllers: Vec<String>,
    pub ring_listen: SocketAddr,
    pub log_format: LogFormat,
    /// Second Kafka listener and the host:port it advertises.
    pub internal: Option<(SocketAddr, String)>,
    pub raft_listen: SocketAddr,
    /// How peers reach this broker's Raft transport.
    pub raft_advertised: String,
    /// Metadata voters (node id -> Raft address); empty: a cluster of one.
    pub seeds: BTreeMap<u64, String>,
    pub default_replication_factor: i16,
    pub min_insync_replicas: i32,
    pub raft_heartbeat_ms: u64,
    pub raft_election_ms: u64,
    pub replica_lag_time_max: Duration,
    /// Zero: never rebalance leaders.
    pub leader_rebalance_interval: Duration,
    /// How often retention runs (at least 10 ms).
    pub log_retention_check_interval: Duration,
    /// Timing of the frontier's rounds.
    pub frontier: frontier::Options,
    /// Brokers silent this long are not listed as live.
    pub broker_session_timeout: Duration,
    /// Consumer groups.
    pub groups: crate::group::GroupConfig,
    /// Log compaction.
    pub cleaner: crate::cleaner::CleanerConfig,
}

/// Settings of a partition log (the broker's flags, with topic-level overrides applied by
/// `topic_config::settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u64,
    pub flush_policy: FlushPolicy,
    pub flush_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            flush_policy: FlushPolicy::Always,
            flush_interval: Duration::from_millis(1000),
        }
    }
}

/// Upper bounds that keep a typo from becoming an outage.
const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;
const MIN_SEGMENT_BYTES: u64 = 1024;

impl BrokerConfig {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9092)));
        let defaults = LogConfig::default();
        let log = LogConfig {
            segment_bytes: args
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(defaults.segment_bytes),
            segment_ms: args
                .segment_ms
                .or(file.segment_ms)
                .unwrap_or(defaults.segment_ms),
            index_interval_bytes: args
                .index_interval_bytes
                .or(file.index_interval_bytes)
                .unwrap_or(defaults.index_interval_bytes),
            flush_policy: args
                .flush_policy
                .or(file.flush_policy)
                .unwrap_or(defaults.flush_policy),
            flush_interval: Duration::from_millis(
                args.flush_interval_ms
                    .or(file.flush_interval_ms)
                    .unwrap_or(1000),
            ),
        };
        let groups = args
            .groups
            .or(crate::group::GroupArgs {
                group_initial_rebalance_delay_ms: file.group_initial_rebalance_delay_ms,
                group_min_session_timeout_ms: file.group_min_session_timeout_ms,
                group_max_session_timeout_ms: file.group_max_session_timeout_ms,
                group_max_size: file.group_max_size,
                offsets_topic_num_partitions: file.offsets_topic_num_partitions,
                offsets_topic_replication_factor: file.offsets_topic_replication_factor,
            })
            .resolve()?;
        let cleaner = args
            .cleaner
            .or(crate::cleaner::CleanerArgs {
                log_cleaner_backoff_ms: file.log_cleaner_backoff_ms,
                log_cleaner_min_cleanable_ratio: file.log_cleaner_min_cleanable_ratio,
                log_cleaner_max_keys: file.log_cleaner_max_keys,
            })
            .resolve()?;
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        let seeds = parse_seeds(args.seeds.as_deref().or(file.seeds.as_deref()))?;
        let advertised_host = args
            .advertised_host
            .or(file.advertised_host)
            .unwrap_or_else(|| "localhost".to_string());
        let raft_listen = args
            .raft_listen
            .or(file.raft_listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9093)));
        let raft_advertised = args
            .raft_advertised
            .or(file.raft_advertised)
            .or_else(|| seeds.get(&node_id).cloned())
            .unwrap_or_else(|| format!("{advertised_host}:{}", raft_listen.port()));
        let internal = match args.internal_listen.or(file.internal_listen) {
            None => None,
            Some(addr) => Some((
                addr,
                args.internal_advertised
                    .or(file.internal_advertised)
                    .unwrap_or_else(|| format!("{advertised_host}:{}", addr.port())),
            )),
        };
        let config = Self {
            groups,
            cleaner,
            node_id,
            listen,
            advertised_host,
            advertised_port: args
                .advertised_port
                .or(file.advertised_port)
                .unwrap_or(listen.port()),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9100))),
            num_partitions: args.num_partitions.or(file.num_partitions).unwrap_or(1),
            auto_create_topics: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            log,
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(100 << 20),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            sequencer_window: Duration::from_micros(
                args.sequencer_window_us
                    .or(file.sequencer_window_us)
                    .unwrap_or(0),
            ),
            sequencer: args
                .sequencer
                .or(file.sequencer)
                .unwrap_or(SequencerKind::Local),
            ring_controllers: args
                .ring_controllers
                .or(file.ring_controllers)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            ring_listen: args
                .ring_listen
                .or(file.ring_listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            internal,
            raft_listen,
            raft_advertised,
            seeds,
            default_replication_factor: args
                .default_replication_factor
                .or(file.default_replication_factor)
                .unwrap_or(3),
            min_insync_replicas: args
                .min_insync_replicas
                .or(file.min_insync_replicas)
                .unwrap_or(1),
            raft_heartbeat_ms: args
                .raft_heartbeat_ms
                .or(file.raft_heartbeat_ms)
                .unwrap_or(100),
            raft_election_ms: args
                .raft_election_ms
                .or(file.raft_election_ms)
                .unwrap_or(500),
            replica_lag_time_max: Duration::from_millis(
                args.replica_lag_time_max_ms
                    .or(file.replica_lag_time_max_ms)
                    .unwrap_or(10_000),
            ),
            leader_rebalance_interval: Duration::from_millis(
                args.leader_rebalance_interval_ms
                    .or(file.leader_rebalance_interval_ms)
                    .unwrap_or(30_000),
            ),
            log_retention_check_interval: Duration::from_millis(
                args.log_retention_check_interval_ms
                    .or(file.log_retention_check_interval_ms)
                    .unwrap_or(300_000)
                    .max(10),
            ),
            frontier: frontier::Options {
                min_round_gap_us: args
                    .frontier_round_gap_us
                    .or(file.frontier_round_gap_us)
                    .unwrap_or(1_000),
                idle_round_every_us: args
                    .frontier_idle_round_ms
                    .or(file.frontier_idle_round_ms)
                    .unwrap_or(1_000)
                    .saturating_mul(1_000),
                probe_timeout_us: args
                    .frontier_probe_timeout_ms
                    .or(file.frontier_probe_timeout_ms)
                    .unwrap_or(500)
                    .saturating_mul(1_000),
            },
            broker_session_timeout: Duration::from_millis(
                args.broker_session_timeout_ms
                    .or(file.broker_session_timeout_ms)
                    .unwrap_or(9_000),
            ),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: String| Err(ConfigError::Invalid { name, reason });
        let f = self.frontier;
        if !(100..=1_000_000).contains(&f.min_round_gap_us) {
            return invalid(
                "frontier-round-gap-us",
                format!("{} is outside 100..=1000000", f.min_round_gap_us),
            );
        }
        if !(10_000..=60_000_000).contains(&f.idle_round_every_us) {
            return invalid(
                "frontier-idle-round-ms",
                format!("{} is outside 10..=60000", f.idle_round_every_us / 1_000),
            );
        }
        if !(10_000..=60_000_000).contains(&f.probe_timeout_us) {
            return invalid(
                "frontier-probe-timeout-ms",
                format!("{} is outside 10..=60000", f.probe_timeout_us / 1_000),
            );
        }
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&self.num_partitions) {
            return invalid(
                "num-partitions",
                format!(
                    "{} is outside 1..={MAX_PARTITIONS_PER_TOPIC}",
                    self.num_partitions
                ),
            );
        }
        if self.log.segment_bytes < MIN_SEGMENT_BYTES || self.log.segment_bytes > u32::MAX as u64 {
            return invalid(
                "segment-bytes",
                format!(
                    "{} is outside {MIN_SEGMENT_BYTES}..={}",
                    self.log.segment_bytes,
                    u32::MAX
                ),
            );
        }
        if self.log.segment_ms == 0 {
            return invalid("segment-ms", "must be at least 1".into());
        }
        if self.log.index_interval_bytes == 0 {
            return invalid("index-interval-bytes", "must be at least 1".into());
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > i32::MAX as usize {
            return invalid(
                "max-frame-bytes",
                format!("{} is outside 1024..={}", self.max_frame_bytes, i32::MAX),
            );
        }
        if self.max_connections == 0 {
            return invalid("max-connections", "must be at least 1".into());
        }
        if self.log.flush_interval.is_zero() {
            return invalid("flush-interval-ms", "must be at least 1".into());
        }
        if self.advertised_host.is_empty() {
            return invalid("advertised-host", "must not be empty".into());
        }
        if self.sequencer == SequencerKind::Ring {
            if self.ring_controllers.is_empty() {
                return invalid(
                    "ring-controllers",
                    "--sequencer ring needs at least one controller host:port".into(),
                );
            }
            if let Some(bad) = self.ring_controllers.iter().find(|a| !a.contains(':')) {
                return invalid("ring-controllers", format!("`{bad}` is not host:port"));
            }
        }
        // Any seed other than this broker makes it part of a cluster of several brokers, even
        // when the list names a single (other) broker: this one then joins as a learner and
        // hosts replicas, and a local counter here would hand out offsets the others use.
        if let Some(other) = self.seeds.keys().find(|id| **id != self.node_id) {
            if self.sequencer != SequencerKind::Ring {
                return invalid(
                    "sequencer",
                    format!(
                        "--seeds names broker {other}, so this broker joins a cluster of \
                         several brokers, which needs --sequencer ring: local counters on \
                         different brokers would hand out the same offsets"
                    ),
                );
            }
        }
        if self.broker_session_timeout < Duration::from_secs(1) {
            return invalid(
                "broker-session-timeout-ms",
                "must be at least 1000 (brokers are probed every 500 ms)".into(),
            );
        }
        if self.default_replication_factor < 1 {
            return invalid("default-replication-factor", "must be at least 1".into());
        }
        if self.min_insync_replicas < 1 {
            return invalid("min-insync-replicas", "must be at least 1".into());
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_ms <= self.raft_heartbeat_ms {
            return invalid(
                "raft-election-ms",
                format!(
                    "{} must exceed the heartbeat interval ({} ms, also non-zero)",
                    self.raft_election_ms, self.raft_heartbeat_ms
                ),
            );
        }
        if self.node_id > i32::MAX as u64 {
            return invalid(
                "node-id",
                format!("{} does not fit a Kafka broker id (i32)", self.node_id),
            );
        }
        Ok(())
    }

    /// Broker id as Kafka encodes it.
    pub fn broker_id(&self) -> i32 {
        // validate() guarantees the id fits.
        self.node_id as i32
    }
}

/// Parses `id@host:port,...`.
fn parse_seeds(list: Option<&str>) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut seeds = BTreeMap::new();
    for item in list.unwrap_or("").split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let bad = |reason: &str| ConfigError::Invalid {
            name: "seeds",
            reason: format!("`{item}`: {reason} (expected id@host:port)"),
        };
        let (id, addr) = item.split_once('@').ok_or_else(|| bad("no '@'"))?;
        let id: u64 = id.parse().map_err(|_| bad("the id is not a number"))?;
        if !addr.contains(':') {
            return Err(bad("the address has no port"));
        }
        if seeds.insert(id, addr.to_string()).is_some() {
            return Err(bad("the id appears twice"));
        }
    }
    Ok(seeds)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<BrokerConfig, ConfigError> {
        let mut full = vec!["broker"];
        full.extend_from_slice(argv);
        BrokerConfig::from_args(Args::parse_from(full))
    }

    #[test]
    fn defaults_just_work() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.listen.port(), 9092);
        assert_eq!(c.advertised_port, 9092);
        assert_eq!(c.num_partitions, 1);
        assert_eq!(c.log.flush_policy, FlushPolicy::Always);
    }

    #[test]
    fn wrong_value_names_the_option() {
        let err = parse(&["--num-partitions", "0"]).expect_err("0 partitions is invalid");
        assert!(err.to_string().contains("num-partitions"), "{err}");
    }

    #[test]
    fn file_values_are_overridden_by_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "num-partitions = 4\nnode-id = 7\n").expect("write");
        let c = parse(&[
            "--config",
            path.to_str().expect("utf8"),
            "--num-partitions",
            "2",
        ])
        .expect("valid");
        assert_eq!(c.num_partitions, 2);
        assert_eq!(c.node_id, 7);
    }

    #[test]
    fn unknown_file_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "num-partiton = 4\n").expect("write");
        assert!(parse(&["--config", path.to_str().expect("utf8")]).is_err());
    }

    #[test]
    fn cluster_flags() {
        let c = parse(&[
            "--node-id",
            "2",
            "--seeds",
            "1@b1:9093, 2@b2:9093,3@b3:9093",
            "--sequencer",
            "ring",
            "--ring-controllers",
            "c:9700",
            "--internal-listen",
            "0.0.0.0:19092",
            "--internal-advertised",
            "b2:19092",
        ])
        .expect("valid");
        assert_eq!(c.seeds.len(), 3);
        assert_eq!(c.raft_advertised, "b2:9093");
        assert_eq!(c.internal.as_ref().map(|i| i.1.as_str()), Some("b2:19092"));
        let err = parse(&["--seeds", "1@b1:9093,2@b2:9093"]).expect_err("needs the ring");
        assert!(err.to_string().contains("sequencer"), "{err}");
        let err = parse(&["--seeds", "1@b1"]).expect_err("no port");
        assert!(err.to_string().contains("seeds"), "{err}");
        let single = parse(&[]).expect("defaults");
        assert!(single.seeds.is_empty());
        assert_eq!(single.raft_advertised, "localhost:9093");
    }

    #[test]
    fn any_other_seed_needs_the_ring() {
        // One seed that is another broker: this broker joins that cluster as a learner.
        let err = parse(&["--node-id", "2", "--seeds", "1@b1:9093"])
            .expect_err("joining another broker needs the ring");
        assert!(err.to_string().contains("--sequencer ring"), "{err}");
        assert!(err.to_string().contains("broker 1"), "{err}");
        // Seeds naming only this broker: a cluster of one, the local counter is fine.
        let alone = parse(&["--node-id", "1", "--seeds", "1@b1:9093"]).expect("cluster of one");
        assert_eq!(alone.sequencer, SequencerKind::Local);
        assert!(parse(&[]).is_ok(), "no seeds: a cluster of one");
        let joined = parse(&[
            "--node-id",
            "2",
            "--seeds",
            "1@b1:9093",
            "--sequencer",
            "ring",
            "--ring-controllers",
            "c:9700",
        ])
        .expect("with the ring");
        assert_eq!(joined.raft_advertised, "localhost:9093");
    }

    #[test]
    fn ring_sequencer_flags() {
        assert_eq!(
            parse(&[]).expect("defaults").sequencer,
            SequencerKind::Local
        );
        let err = parse(&["--sequencer", "ring"]).expect_err("ring needs controllers");
        assert!(err.to_string().contains("ring-controllers"), "{err}");
        let c = parse(&[
            "--sequencer",
            "ring",
            "--ring-controllers",
            "127.0.0.1:7700, 127.0.0.1:7701",
            "--ring-listen",
            "127.0.0.1:0",
        ])
        .expect("valid");
        assert_eq!(c.sequencer, SequencerKind::Ring);
        assert_eq!(c.ring_controllers, vec!["127.0.0.1:7700", "127.0.0.1:7701"]);
        assert_eq!(c.ring_listen.port(), 0);
    }
}
