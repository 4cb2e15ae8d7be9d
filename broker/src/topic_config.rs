//! Topic configs: the names the broker knows, their defaults, and which ones act today.
//!
//! segment.bytes and segment.ms shape each partition log now. The other names are accepted,
//! stored and reported with Kafka's defaults so clients that check them (Kafka Connect reads
//! cleanup.policy) work; retention, compaction and validation limits act in the configs issue.

use std::collections::BTreeMap;

use crate::config::{BrokerConfig, LogConfig};

/// Kafka's config type codes (DescribeConfigs v3+).
#[derive(Debug, Clone, Copy)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

pub struct TopicConfigDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub doc: &'static str,
    /// Validates a value; Err explains what is wrong.
    pub check: fn(&str) -> Result<(), String>,
}

fn long_at_least(min: i64) -> impl Fn(&str) -> Result<(), String> {
    move |v: &str| match v.parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("'{v}' must be an integer >= {min}")),
    }
}

fn check_long_min_neg1(v: &str) -> Result<(), String> {
    long_at_least(-1)(v)
}
fn check_long_min0(v: &str) -> Result<(), String> {
    long_at_least(0)(v)
}
fn check_long_min1(v: &str) -> Result<(), String> {
    long_at_least(1)(v)
}
fn check_segment_bytes(v: &str) -> Result<(), String> {
    match v.parse::<u64>() {
        Ok(n) if (1024..=u32::MAX as u64).contains(&n) => Ok(()),
        _ => Err(format!("'{v}' must be an integer in 1024..={}", u32::MAX)),
    }
}
fn check_cleanup_policy(v: &str) -> Result<(), String> {
    let ok = v
        .split(',')
        .map(str::trim)
        .all(|p| p == "delete" || p == "compact");
    if ok && !v.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("'{v}' must be a list of 'delete' and 'compact'"))
    }
}
fn check_timestamp_type(v: &str) -> Result<(), String> {
    match v {
        "CreateTime" | "LogAppendTime" => Ok(()),
        _ => Err(format!("'{v}' must be CreateTime or LogAppendTime")),
    }
}
fn check_compression(v: &str) -> Result<(), String> {
    match v {
        "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
        _ => Err(format!(
            "'{v}' must be one of producer, uncompressed, gzip, snappy, lz4, zstd"
        )),
    }
}
fn check_bool(v: &str) -> Result<(), String> {
    match v {
        "true" | "false" => Ok(()),
        _ => Err(format!("'{v}' must be true or false")),
    }
}

pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        config_type: ConfigType::List,
        doc: "delete and/or compact old segments",
        check: check_cleanup_policy,
    },
    TopicConfigDef {
        name: "compression.type",
        config_type: ConfigType::String,
        doc: "compression of stored batches; producer keeps what the producer sent",
        check: check_compression,
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        config_type: ConfigType::Long,
        doc: "how long tombstones are kept in compacted topics",
        check: check_long_min0,
    },
    TopicConfigDef {
        name: "max.message.bytes",
        config_type: ConfigType::Int,
        doc: "largest record batch accepted",
        check: check_long_min0,
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        config_type: ConfigType::String,
        doc: "CreateTime or LogAppendTime",
        check: check_timestamp_type,
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        config_type: ConfigType::Int,
        doc: "replicas that must acknowledge an acks=all write",
        check: check_long_min1,
    },
    TopicConfigDef {
        name: "retention.bytes",
        config_type: ConfigType::Long,
        doc: "partition size above which old segments are deleted (-1: no limit)",
        check: check_long_min_neg1,
    },
    TopicConfigDef {
        name: "retention.ms",
        config_type: ConfigType::Long,
        doc: "age above which old segments are deleted (-1: no limit)",
        check: check_long_min_neg1,
    },
    TopicConfigDef {
        name: "segment.bytes",
        config_type: ConfigType::Int,
        doc: "segment file size at which a new segment is rolled",
        check: check_segment_bytes,
    },
    TopicConfigDef {
        name: "segment.ms",
        config_type: ConfigType::Long,
        doc: "segment age at which a new segment is rolled",
        check: check_long_min1,
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        config_type: ConfigType::Boolean,
        doc: "never done: Raft elects only up-to-date replicas",
        check: check_bool,
    },
];

/// Kafka's defaults, with the log settings this broker was started with.
pub fn default_value(name: &str, broker: &BrokerConfig) -> Option<String> {
    Some(match name {
        "cleanup.policy" => "delete".into(),
        "compression.type" => "producer".into(),
        "delete.retention.ms" => "86400000".into(),
        "max.message.bytes" => "1048588".into(),
        "message.timestamp.type" => "CreateTime".into(),
        "min.insync.replicas" => "1".into(),
        "retention.bytes" => "-1".into(),
        "retention.ms" => "604800000".into(),
        "segment.bytes" => broker.log.segment_bytes.to_string(),
        "segment.ms" => broker.log.segment_ms.to_string(),
        "unclean.leader.election.enable" => "false".into(),
        _ => return None,
    })
}

/// Checks names and values of topic config overrides.
pub fn validate(configs: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in configs {
        let def = TOPIC_CONFIGS
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| format!("unknown topic config '{name}'"))?;
        (def.check)(value).map_err(|e| format!("invalid value for '{name}': {e}"))?;
    }
    Ok(())
}

/// Everything a partition needs to know about its topic's configs, with the broker's defaults
/// filled in. Partitions hold the current value (`Partition::settings`); the reconciler
/// replaces it when the topic's configs change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicSettings {
    pub log: LogConfig,
    /// Age above which whole old segments are deleted; -1: never.
    pub retention_ms: i64,
    /// Partition size above which whole old segments are deleted; -1: no limit.
    pub retention_bytes: i64,
    /// cleanup.policy contains `delete` (retention applies).
    pub cleanup_delete: bool,
    /// cleanup.policy contains `compact` (the cleaner keeps the latest value per key).
    pub cleanup_compact: bool,
    /// How long a compacted topic keeps tombstones.
    pub delete_retention_ms: i64,
    /// Largest record batch accepted (bytes).
    pub max_message_bytes: usize,
    /// Replicas that must be in sync for an acks=all write.
    pub min_insync_replicas: usize,
    /// message.timestamp.type=LogAppendTime: the broker stamps batches with its clock.
    pub log_append_time: bool,
}

fn parsed<T: std::str::FromStr>(configs: &BTreeMap<String, String>, name: &str, default: T) -> T {
    configs
        .get(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A topic's settings: its overrides, else the broker's defaults (Kafka's where the broker has
/// no flag).
pub fn settings(broker: &BrokerConfig, configs: &BTreeMap<String, String>) -> TopicSettings {
    let policy = configs
        .get("cleanup.policy")
        .map_or("delete", String::as_str);
    let has = |p: &str| policy.split(',').any(|x| x.trim() == p);
    TopicSettings {
        log: log_config(&broker.log, configs),
        retention_ms: parsed(configs, "retention.ms", 604_800_000),
        retention_bytes: parsed(configs, "retention.bytes", -1),
        cleanup_delete: has("delete"),
        cleanup_compact: has("compact"),
        delete_retention_ms: parsed(configs, "delete.retention.ms", 86_400_000),
        max_message_bytes: parsed(configs, "max.message.bytes", 1_048_588),
        min_insync_replicas: parsed(
            configs,
            "min.insync.replicas",
            usize::try_from(broker.min_insync_replicas).unwrap_or(1),
        ),
        log_append_time: configs
            .get("message.timestamp.type")
            .is_some_and(|v| v == "LogAppendTime"),
    }
}

/// The log settings of a topic: broker defaults with the topic's overrides applied.
pub fn log_config(broker: &LogConfig, configs: &BTreeMap<String, String>) -> LogConfig {
    let mut out = *broker;
    if let Some(v) = configs.get("segment.bytes").and_then(|v| v.parse().ok()) {
        out.segment_bytes = v;
    }
    if let Some(v) = configs.get("segment.ms").and_then(|v| v.parse().ok()) {
        out.segment_ms = v;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let mut c = BTreeMap::new();
        c.insert("cleanup.policy".to_string(), "compact".to_string());
        assert!(validate(&c).is_ok());
        c.insert("retention.ms".to_string(), "soon".to_string());
        assert!(validate(&c).unwrap_err().contains("retention.ms"));
        let mut u = BTreeMap::new();
        u.insert("no.such".to_string(), "1".to_string());
        assert!(validate(&u).unwrap_err().contains("no.such"));
    }

    #[test]
    fn overrides_shape_the_log() {
        let mut c = BTreeMap::new();
        c.insert("segment.bytes".to_string(), "4096".to_string());
        assert_eq!(log_config(&LogConfig::default(), &c).segment_bytes, 4096);
    }
}
