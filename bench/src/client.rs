//! Pieces shared by both modes: librdkafka configuration, log forwarding and
//! topic metadata / creation.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::CommonArgs;

/// Forwards librdkafka's own log lines and global errors to stderr. Without
/// this they go to the `log` crate, which has no logger installed here, and a
/// broker that refuses connections would look like a silent hang.
pub struct StderrLogContext;

impl ClientContext for StderrLogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_stderr(level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        error_to_stderr(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for StderrLogContext {}

pub fn log_to_stderr(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    eprintln!("librdkafka {level:?} {fac}: {msg}");
}

pub fn error_to_stderr(error: KafkaError, reason: &str) {
    // Connection failures are already logged (with the address) by
    // log_to_stderr; repeating them per reconnect attempt only adds noise.
    if let KafkaError::Global(
        RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
    ) = error
    {
        return;
    }
    eprintln!("librdkafka error: {error}: {reason}");
}

/// Base configuration for every client. librdkafka filters by `log_level`
/// itself; Warning shows connection trouble without per-request noise.
pub fn base_config(common: &CommonArgs) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &common.bootstrap)
        .set("client.id", "kafka-bench")
        .set_log_level(RDKafkaLogLevel::Warning);
    cfg
}

/// Applies the user's `--set` overrides; called last so they always win.
pub fn apply_overrides(cfg: &mut ClientConfig, common: &CommonArgs) {
    for (k, v) in &common.extra {
        cfg.set(k, v);
        // The crate applies its own log level after creating the client, so
        // `--set debug=...` alone would be filtered out at Warning.
        if k == "debug" {
            cfg.set_log_level(RDKafkaLogLevel::Debug);
        }
    }
}

/// Returns the topic's partition count once metadata shows every partition
/// with a leader, polling until `wait` has passed. Partitions without a leader
/// would make produce/fetch requests fail, so they count as "not ready".
pub fn wait_for_topic<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    wait: Duration,
) -> Result<i32> {
    let deadline = Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let status = match client.fetch_metadata(Some(topic), remaining.max(Duration::from_secs(1)))
        {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                None => Err("topic not in metadata response".to_string()),
                Some(t) if t.error().is_some() => Err(format!("topic error {:?}", t.error())),
                Some(t) if t.partitions().is_empty() => Err("topic has no partitions".to_string()),
                Some(t) => match t
                    .partitions()
                    .iter()
                    .find(|p| p.leader() < 0 || p.error().is_some())
                {
                    Some(p) => Err(format!(
                        "partition {} not ready (leader {}, error {:?})",
                        p.id(),
                        p.leader(),
                        p.error()
                    )),
                    None => Ok(t.partitions().len() as i32),
                },
            },
            Err(e) => Err(format!("metadata request failed: {e}")),
        };
        match status {
            Ok(n) => return Ok(n),
            Err(why) if Instant::now() >= deadline => {
                bail!("topic {topic:?} not usable after {wait:?}: {why}")
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Creates the topic if it does not exist and returns its partition count.
/// Always tries CreateTopics first (and accepts TopicAlreadyExists) rather
/// than probing metadata, because a metadata probe can auto-create the topic
/// with the broker's default partition count.
pub fn ensure_topic(
    common: &CommonArgs,
    partitions: i32,
    replication: i32,
    wait: Duration,
) -> Result<i32> {
    let mut cfg = base_config(common);
    apply_overrides(&mut cfg, common);
    let admin: AdminClient<StderrLogContext> = cfg
        .create_with_context(StderrLogContext)
        .context("creating admin client")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    let new_topic = NewTopic::new(
        &common.topic,
        partitions,
        TopicReplication::Fixed(replication),
    );
    // A broker without CreateTopics support answers at once; only an
    // unresponsive one makes this wait, so a short bound is enough.
    let create_wait = wait.min(Duration::from_secs(10));
    let opts = AdminOptions::new()
        .request_timeout(Some(create_wait))
        .operation_timeout(Some(create_wait));
    let created = rt.block_on(admin.create_topics([&new_topic], &opts));

    // Keep the CreateTopics outcome for the error message: if metadata never
    // shows the topic, this is usually the real reason.
    let create_note = match created {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => None,
            Some(Err((_, code))) => Some(format!("CreateTopics returned {code:?}")),
            None => Some("CreateTopics returned no result".to_string()),
        },
        Err(e) => Some(format!("CreateTopics failed: {e}")),
    };
    if let Some(note) = &create_note {
        eprintln!(
            "warning: {note}; checking whether {:?} exists anyway",
            common.topic
        );
    }

    let n = wait_for_topic(admin.inner(), &common.topic, wait).with_context(|| {
        create_note.unwrap_or_else(|| "topic was created but never became ready".to_string())
    })?;
    if n != partitions {
        eprintln!(
            "warning: topic {:?} has {n} partitions, not the {partitions} requested (it already existed?)",
            common.topic
        );
    }
    Ok(n)
}
