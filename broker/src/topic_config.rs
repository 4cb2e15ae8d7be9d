//! Topic and dynamic broker configs: the names the broker knows, their defaults, where a value
//! comes from (Kafka's precedence), and the settings a partition acts on.
//!
//! A topic config's value is, in order: the topic's override, the dynamic config of this
//! broker, the cluster-wide dynamic default (both set with AlterConfigs on a BROKER resource
//! and replicated by the metadata group), the broker's static flag, Kafka's default.

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
        "producer" => Ok(()),
        "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Err(format!(
            "'{v}' is not supported: batches are stored as the producer compressed them \
             (only 'producer')"
        )),
        _ => Err(format!(
            "'{v}' must be one of producer, uncompressed, gzip, snappy, lz4, zstd"
        )),
    }
}
fn check_unclean(v: &str) -> Result<(), String> {
    match v {
        "false" => Ok(()),
        "true" => Err(
            "unclean leader election is never done: Raft elects only replicas \
                       that hold every committed record"
                .into(),
        ),
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
        check: check_unclean,
    },
];

/// Kafka's defaults of the topic configs (before any broker setting).
pub fn kafka_default(name: &str) -> Option<&'static str> {
    Some(match name {
        "cleanup.policy" => "delete",
        "compression.type" => "producer",
        "delete.retention.ms" => "86400000",
        "max.message.bytes" => "1048588",
        "message.timestamp.type" => "CreateTime",
        "min.insync.replicas" => "1",
        "retention.bytes" => "-1",
        "retention.ms" => "604800000",
        "segment.bytes" => "1073741824",
        "segment.ms" => "604800000",
        "unclean.leader.election.enable" => "false",
        _ => return None,
    })
}

/// The broker-level name of each topic config (Kafka's synonyms); these are the broker
/// configs that AlterConfigs may change at run time.
pub const BROKER_SYNONYMS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("compression.type", "compression.type"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// The broker-level synonym of a topic config.
pub fn broker_name(topic_name: &str) -> Option<&'static str> {
    BROKER_SYNONYMS
        .iter()
        .find(|(t, _)| *t == topic_name)
        .map(|(_, b)| *b)
}

/// The topic config a dynamic broker config stands for.
pub fn topic_name_of(broker_name: &str) -> Option<&'static str> {
    BROKER_SYNONYMS
        .iter()
        .find(|(_, b)| *b == broker_name)
        .map(|(t, _)| *t)
}

/// The value the broker was started with, for configs that have a flag.
pub fn static_value(topic_name: &str, broker: &BrokerConfig) -> Option<String> {
    Some(match topic_name {
        "segment.bytes" => broker.log.segment_bytes.to_string(),
        "segment.ms" => broker.log.segment_ms.to_string(),
        "min.insync.replicas" => broker.min_insync_replicas.to_string(),
        _ => return None,
    })
}

/// Dynamic broker configs as the metadata group holds them: resource name ("" for the
/// cluster-wide default, else a broker id) → broker config name → value.
pub type DynamicConfigs = BTreeMap<String, BTreeMap<String, String>>;

/// Where a config value comes from (Kafka's DescribeConfigs config_source codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Topic = 1,
    DynamicBroker = 2,
    DynamicDefault = 3,
    StaticBroker = 4,
    Default = 5,
}

/// One candidate value of a config: its value, where it comes from and under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym {
    pub name: String,
    pub value: String,
    pub source: Source,
}

/// Every value that applies to topic config `name`, highest precedence first; the first one
/// is in effect. `overrides` is None when describing a broker (no topic level).
pub fn synonyms(
    name: &str,
    overrides: Option<&BTreeMap<String, String>>,
    dynamic: &DynamicConfigs,
    broker: &BrokerConfig,
) -> Vec<Synonym> {
    let mut out = Vec::new();
    if let Some(v) = overrides.and_then(|o| o.get(name)) {
        out.push(Synonym {
            name: name.to_string(),
            value: v.clone(),
            source: Source::Topic,
        });
    }
    let Some(bname) = broker_name(name) else {
        return out;
    };
    let dynamic_at = |resource: &str, source| {
        dynamic
            .get(resource)
            .and_then(|m| m.get(bname))
            .map(|v| Synonym {
                name: bname.to_string(),
                value: v.clone(),
                source,
            })
    };
    out.extend(dynamic_at(
        &broker.broker_id().to_string(),
        Source::DynamicBroker,
    ));
    out.extend(dynamic_at("", Source::DynamicDefault));
    if let Some(v) = static_value(name, broker) {
        out.push(Synonym {
            name: bname.to_string(),
            value: v,
            source: Source::StaticBroker,
        });
    }
    if let Some(v) = kafka_default(name) {
        out.push(Synonym {
            name: bname.to_string(),
            value: v.to_string(),
            source: Source::Default,
        });
    }
    out
}

/// The value of topic config `name` in effect for a topic with `overrides`.
pub fn effective(
    name: &str,
    overrides: &BTreeMap<String, String>,
    dynamic: &DynamicConfigs,
    broker: &BrokerConfig,
) -> Option<String> {
    synonyms(name, Some(overrides), dynamic, broker)
        .into_iter()
        .next()
        .map(|s| s.value)
}

/// One change of an AlterConfigs / IncrementalAlterConfigs request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigOp {
    Set(String, String),
    Delete(String),
    /// Adds items to a list config (cleanup.policy) unless present.
    Append(String, String),
    /// Removes items from a list config.
    Subtract(String, String),
}

impl ConfigOp {
    pub fn name(&self) -> &str {
        match self {
            Self::Set(n, _) | Self::Delete(n) | Self::Append(n, _) | Self::Subtract(n, _) => n,
        }
    }
}

fn is_list(name: &str) -> bool {
    name == "cleanup.policy" || name == "log.cleanup.policy"
}

fn list_items(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Applies `ops` to a config set (`replace`: start from an empty set, as AlterConfigs does).
/// APPEND/SUBTRACT start from `current_value(name)`, the value in effect, as Kafka does.
pub fn apply_ops(
    current: &BTreeMap<String, String>,
    replace: bool,
    ops: &[ConfigOp],
    current_value: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = if replace {
        BTreeMap::new()
    } else {
        current.clone()
    };
    for op in ops {
        let name = op.name();
        if matches!(op, ConfigOp::Append(..) | ConfigOp::Subtract(..)) && !is_list(name) {
            return Err(format!(
                "'{name}' is not a list: APPEND and SUBTRACT need a list config"
            ));
        }
        match op {
            ConfigOp::Set(n, v) => {
                out.insert(n.clone(), v.clone());
            }
            ConfigOp::Delete(n) => {
                out.remove(n);
            }
            ConfigOp::Append(n, v) => {
                let base = out
                    .get(n)
                    .cloned()
                    .or_else(|| current_value(n))
                    .unwrap_or_default();
                let mut items = list_items(&base);
                for item in list_items(v) {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                out.insert(n.clone(), items.join(","));
            }
            ConfigOp::Subtract(n, v) => {
                let base = out
                    .get(n)
                    .cloned()
                    .or_else(|| current_value(n))
                    .unwrap_or_default();
                let gone = list_items(v);
                let items: Vec<String> = list_items(&base)
                    .into_iter()
                    .filter(|i| !gone.contains(i))
                    .collect();
                out.insert(n.clone(), items.join(","));
            }
        }
    }
    Ok(out)
}

/// Checks names and values of dynamic broker configs (the broker-level synonyms).
pub fn validate_broker(configs: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in configs {
        let topic = topic_name_of(name).ok_or_else(|| {
            format!(
                "'{name}' cannot be changed at run time (dynamic broker configs: {})",
                dynamic_names()
            )
        })?;
        let def = TOPIC_CONFIGS
            .iter()
            .find(|d| d.name == topic)
            .ok_or_else(|| format!("unknown config '{name}'"))?;
        (def.check)(value).map_err(|e| format!("invalid value for '{name}': {e}"))?;
    }
    Ok(())
}

fn dynamic_names() -> String {
    BROKER_SYNONYMS
        .iter()
        .map(|(_, b)| *b)
        .collect::<Vec<_>>()
        .join(", ")
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

/// A topic's settings: each config's value in effect (see `synonyms` for the precedence).
pub fn settings(
    broker: &BrokerConfig,
    dynamic: &DynamicConfigs,
    overrides: &BTreeMap<String, String>,
) -> TopicSettings {
    let configs: BTreeMap<String, String> = TOPIC_CONFIGS
        .iter()
        .filter_map(|d| {
            Some((
                d.name.to_string(),
                effective(d.name, overrides, dynamic, broker)?,
            ))
        })
        .collect();
    let configs = &configs;
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

    fn broker() -> BrokerConfig {
        use clap::Parser;
        BrokerConfig::from_args(crate::config::Args::parse_from([
            "broker",
            "--node-id",
            "2",
        ]))
        .expect("config")
    }

    #[test]
    fn precedence_is_topic_then_this_broker_then_cluster_then_static_then_default() {
        let b = broker();
        let mut dynamic = DynamicConfigs::new();
        let mut topic = BTreeMap::new();
        let first = |topic: &BTreeMap<String, String>, d: &DynamicConfigs| {
            synonyms("retention.ms", Some(topic), d, &b)[0].clone()
        };
        assert_eq!(first(&topic, &dynamic).source, Source::Default);
        assert_eq!(first(&topic, &dynamic).value, "604800000");
        dynamic.insert(
            "".into(),
            [("log.retention.ms".to_string(), "3".to_string())].into(),
        );
        assert_eq!(first(&topic, &dynamic).source, Source::DynamicDefault);
        // Another broker's dynamic config does not apply here.
        dynamic.insert(
            "7".into(),
            [("log.retention.ms".to_string(), "9".to_string())].into(),
        );
        assert_eq!(first(&topic, &dynamic).value, "3");
        dynamic.insert(
            "2".into(),
            [("log.retention.ms".to_string(), "2".to_string())].into(),
        );
        assert_eq!(first(&topic, &dynamic).source, Source::DynamicBroker);
        topic.insert("retention.ms".into(), "1".into());
        let all = synonyms("retention.ms", Some(&topic), &dynamic, &b);
        let sources: Vec<Source> = all.iter().map(|s| s.source).collect();
        assert_eq!(
            sources,
            vec![
                Source::Topic,
                Source::DynamicBroker,
                Source::DynamicDefault,
                Source::Default
            ]
        );
        assert_eq!(all[1].name, "log.retention.ms");
        // Settings take the value in effect; segment.bytes has a static flag.
        assert_eq!(settings(&b, &dynamic, &topic).retention_ms, 1);
        let seg = synonyms("segment.bytes", Some(&BTreeMap::new()), &dynamic, &b);
        assert_eq!(seg[0].source, Source::StaticBroker);
    }

    #[test]
    fn incremental_ops_on_lists_and_scalars() {
        let current: BTreeMap<String, String> =
            [("retention.ms".to_string(), "5".to_string())].into();
        let default = |_: &str| Some("delete".to_string());
        let out = apply_ops(
            &current,
            false,
            &[
                ConfigOp::Append("cleanup.policy".into(), "compact,delete".into()),
                ConfigOp::Delete("retention.ms".into()),
            ],
            default,
        )
        .expect("valid");
        assert_eq!(out["cleanup.policy"], "delete,compact");
        assert!(!out.contains_key("retention.ms"));
        let err = apply_ops(
            &current,
            false,
            &[ConfigOp::Subtract("retention.ms".into(), "5".into())],
            default,
        );
        assert!(err.unwrap_err().contains("not a list"));
        let replaced = apply_ops(
            &current,
            true,
            &[ConfigOp::Set("segment.ms".into(), "10".into())],
            default,
        )
        .expect("valid");
        assert_eq!(replaced.len(), 1);
        assert!(
            validate_broker(&[("log.retention.ms".to_string(), "x".to_string())].into()).is_err()
        );
        assert!(
            validate_broker(&[("log.retention.ms".to_string(), "10".to_string())].into()).is_ok()
        );
        assert!(validate_broker(&[("retention.ms".to_string(), "10".to_string())].into()).is_err());
    }

    #[test]
    fn overrides_shape_the_log() {
        let mut c = BTreeMap::new();
        c.insert("segment.bytes".to_string(), "4096".to_string());
        assert_eq!(log_config(&LogConfig::default(), &c).segment_bytes, 4096);
    }
}
