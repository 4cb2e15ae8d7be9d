//! DescribeConfigs: every topic or broker config with its value in effect, where it comes
//! from and (v1+, on request) every synonym in precedence order, as Kafka reports them.

use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::config::FlushPolicy;
use crate::topic_config::{self, ConfigType, Source, Synonym};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

struct Entry {
    name: &'static str,
    read_only: bool,
    config_type: ConfigType,
    doc: &'static str,
    /// Highest precedence first; the first is the value in effect.
    synonyms: Vec<Synonym>,
}

pub async fn handle(
    broker: &Arc<Broker>,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let entries = match r.resource_type {
            RESOURCE_TOPIC => match broker.cluster.state().topics.get(&name) {
                Some(topic) => Ok(topic_entries(broker, &topic.record.configs)),
                None => Err((
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic '{name}' does not exist"),
                )),
            },
            RESOURCE_BROKER if name.is_empty() || name == broker.config.broker_id().to_string() => {
                Ok(broker_entries(broker))
            }
            RESOURCE_BROKER => Err((
                ResponseError::InvalidRequest,
                format!("this is broker {}, not '{name}'", broker.config.broker_id()),
            )),
            other => Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} is not described here"),
            )),
        };
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        match entries {
            Ok(entries) => {
                let keys = r.configuration_keys.as_ref();
                result.configs = entries
                    .into_iter()
                    .filter(|e| keys.is_none_or(|k| k.iter().any(|k| k.as_str() == e.name)))
                    .map(|e| to_result(e, version, req.include_synonyms, req.include_documentation))
                    .collect();
            }
            Err((error, text)) => {
                super::note_error(broker, "DescribeConfigs", error.code());
                result = result
                    .with_error_code(error.code())
                    .with_error_message(super::message(text));
            }
        }
        resp.results.push(result);
    }
    resp
}

fn to_result(e: Entry, version: i16, synonyms: bool, docs: bool) -> DescribeConfigsResourceResult {
    let first = e.synonyms.first();
    let mut out = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(first.map(|s| StrBytes::from_string(s.value.clone())))
        .with_read_only(e.read_only)
        .with_config_source(first.map_or(Source::Default, |s| s.source) as i8);
    if version >= 3 {
        out.config_type = e.config_type as i8;
    }
    if version >= 1 && synonyms {
        out.synonyms = e
            .synonyms
            .iter()
            .map(|s| {
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_string(s.name.clone()))
                    .with_value(Some(StrBytes::from_string(s.value.clone())))
                    .with_source(s.source as i8)
            })
            .collect();
    }
    if version >= 3 && docs {
        out.documentation = Some(StrBytes::from_static_str(e.doc));
    }
    out
}

fn topic_entries(
    broker: &Broker,
    overrides: &std::collections::BTreeMap<String, String>,
) -> Vec<Entry> {
    let dynamic = broker.dynamic_configs();
    topic_config::TOPIC_CONFIGS
        .iter()
        .map(|def| Entry {
            name: def.name,
            read_only: false,
            config_type: def.config_type,
            doc: def.doc,
            synonyms: topic_config::synonyms(def.name, Some(overrides), &dynamic, &broker.config),
        })
        .collect()
}

/// The dynamic broker configs (defaults of the topic configs), with their synonyms.
fn dynamic_broker_entries(broker: &Broker) -> Vec<Entry> {
    let dynamic = broker.dynamic_configs();
    topic_config::BROKER_SYNONYMS
        .iter()
        .filter_map(|(topic, name)| {
            let def = topic_config::TOPIC_CONFIGS
                .iter()
                .find(|d| d.name == *topic)?;
            Some(Entry {
                name,
                read_only: false,
                config_type: def.config_type,
                doc: def.doc,
                synonyms: topic_config::synonyms(topic, None, &dynamic, &broker.config),
            })
        })
        .collect()
}

fn broker_entries(broker: &Broker) -> Vec<Entry> {
    let c = &broker.config;
    let fixed = |name: &'static str, value: String, config_type, doc| Entry {
        name,
        read_only: true,
        config_type,
        doc,
        synonyms: vec![Synonym {
            name: name.to_string(),
            value,
            source: Source::StaticBroker,
        }],
    };
    let flush = match c.log.flush_policy {
        FlushPolicy::Always => "1".to_string(),
        FlushPolicy::Interval => i64::MAX.to_string(),
    };
    let mut out = vec![
        fixed(
            "broker.id",
            c.broker_id().to_string(),
            ConfigType::Int,
            "this broker's id",
        ),
        fixed(
            "advertised.listeners",
            format!("PLAINTEXT://{}:{}", c.advertised_host, c.advertised_port),
            ConfigType::List,
            "address clients are told to use",
        ),
        fixed(
            "listeners",
            format!("PLAINTEXT://{}", c.listen),
            ConfigType::List,
            "address the broker listens on",
        ),
        fixed(
            "log.dirs",
            c.data_dir.display().to_string(),
            ConfigType::String,
            "data directory",
        ),
        fixed(
            "num.partitions",
            c.num_partitions.to_string(),
            ConfigType::Int,
            "partitions of auto-created topics",
        ),
        fixed(
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "create topics named in Metadata requests",
        ),
        fixed(
            "log.index.interval.bytes",
            c.log.index_interval_bytes.to_string(),
            ConfigType::Int,
            "bytes between offset index entries",
        ),
        fixed(
            "log.flush.interval.messages",
            flush,
            ConfigType::Long,
            "1: fsync before acknowledging",
        ),
        fixed(
            "log.flush.interval.ms",
            c.log.flush_interval.as_millis().to_string(),
            ConfigType::Long,
            "background fsync period under the interval policy",
        ),
        fixed(
            "socket.request.max.bytes",
            c.max_frame_bytes.to_string(),
            ConfigType::Int,
            "largest request frame",
        ),
        fixed(
            "max.connections",
            c.max_connections.to_string(),
            ConfigType::Int,
            "most client connections",
        ),
        fixed(
            "default.replication.factor",
            c.default_replication_factor.to_string(),
            ConfigType::Int,
            "replicas of auto-created topics",
        ),
    ];
    out.extend(dynamic_broker_entries(broker));
    out
}
