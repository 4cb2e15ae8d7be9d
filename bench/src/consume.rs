//! `kafka-bench consume`: the kafka-consumer-perf-test equivalent.
//!
//! Uses a BaseConsumer with a manual assign() of every partition from the
//! beginning: the broker has no group coordinator yet, so subscribe() (which
//! needs JoinGroup/SyncGroup) is not an option.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::client::{apply_overrides, base_config, wait_for_topic, StderrLogContext};
use crate::report::{round3, Progress, Rate};
use crate::CommonArgs;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// librdkafka wants a group.id even for assign(); nothing is committed.
    #[arg(long, default_value = "kafka-bench")]
    pub group_id: String,
    /// Max bytes per fetch response (fetch.max.bytes).
    #[arg(long, default_value_t = 52_428_800)]
    pub fetch_max_bytes: u64,
    /// Max bytes per partition per fetch (max.partition.fetch.bytes).
    #[arg(long, default_value_t = 1_048_576)]
    pub max_partition_fetch_bytes: u64,
    /// Broker waits for this many bytes before answering (fetch.min.bytes).
    #[arg(long, default_value_t = 1)]
    pub fetch_min_bytes: u64,
    /// Broker's max wait for fetch.min.bytes (fetch.wait.max.ms).
    #[arg(long, default_value_t = 500)]
    pub fetch_wait_max_ms: u64,
    /// Client-side prefetch buffer limit in KiB (queued.max.messages.kbytes).
    #[arg(long, default_value_t = 65_536)]
    pub queued_max_kbytes: u64,
    /// Prefetch target per partition in records (queued.min.messages).
    #[arg(long, default_value_t = 100_000)]
    pub queued_min_messages: u64,
    /// Pause before re-fetching a partition whose prefetch queue was full
    /// (fetch.queue.backoff.ms).
    // librdkafka's default of 1000 ms starves a fast reader of small records:
    // 100 B records reach queued.min.messages in ~10 MB, then the fetcher
    // sleeps a full second (measured here: 5-8x fewer records/s than with
    // 10 ms; 0 was worse than 10).
    #[arg(long, default_value_t = 10)]
    pub fetch_queue_backoff_ms: u64,
    /// Hard cap on the whole run, even if records keep trickling in.
    #[arg(long, default_value_t = 600)]
    pub max_duration_s: u64,
}

pub fn run(args: &ConsumeArgs) -> Result<()> {
    let common = &args.common;
    let idle_limit = Duration::from_secs(common.timeout_s);
    let max_duration = Duration::from_secs(args.max_duration_s);

    let mut cfg = base_config(common);
    cfg.set("group.id", &args.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", args.fetch_max_bytes.to_string())
        .set(
            "max.partition.fetch.bytes",
            args.max_partition_fetch_bytes.to_string(),
        )
        .set("fetch.min.bytes", args.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", args.fetch_wait_max_ms.to_string())
        .set(
            "queued.max.messages.kbytes",
            args.queued_max_kbytes.to_string(),
        )
        .set("queued.min.messages", args.queued_min_messages.to_string())
        .set(
            "fetch.queue.backoff.ms",
            args.fetch_queue_backoff_ms.to_string(),
        );
    apply_overrides(&mut cfg, common);
    let consumer: BaseConsumer<StderrLogContext> = cfg
        .create_with_context(StderrLogContext)
        .context("creating consumer")?;

    // The consumer never creates topics: reading a topic that does not exist
    // is a usage error, reported after a bounded wait.
    let partitions = wait_for_topic(
        consumer.client(),
        &common.topic,
        idle_limit.min(Duration::from_secs(30)),
    )?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&common.topic, p, Offset::Beginning)
            .context("building assignment")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;

    let start = Instant::now();
    let mut last_record = start;
    let mut first_record: Option<Duration> = None;
    let mut records: u64 = 0;
    let mut bytes: u64 = 0;
    let mut errors: u64 = 0;
    let mut first_error: Option<String> = None;
    let mut progress = Progress::new("consume");
    let mut stop_reason = "records";

    while records < common.records {
        let now = Instant::now();
        if now - last_record >= idle_limit {
            stop_reason = "idle timeout";
            break;
        }
        if now - start >= max_duration {
            stop_reason = "max duration";
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(msg)) => {
                records += 1;
                bytes += (msg.payload_len() + msg.key_len()) as u64;
                last_record = Instant::now();
                first_record.get_or_insert(last_record - start);
                if records.is_multiple_of(4096) {
                    progress.tick(records, bytes);
                }
            }
            // Fetch errors are usually transient in librdkafka (it retries);
            // count them, show the first few, and let the idle bound decide.
            Some(Err(e)) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("consume error: {e}");
                }
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    // Throughput runs from assign() to the last record, like
    // kafka-consumer-perf-test: it includes the first fetch round trip but
    // not the idle wait at the end.
    let rate = Rate {
        records,
        bytes,
        elapsed: last_record - start,
    };
    let first_ms = first_record.map(|d| round3(d.as_secs_f64() * 1000.0));

    if common.json {
        println!(
            "{}",
            json!({
                "mode": "consume",
                "topic": common.topic,
                "partitions": partitions,
                "requested": common.records,
                "stop_reason": stop_reason,
                "first_record_ms": first_ms,
                "errors": errors,
                "first_error": first_error,
                "throughput": rate.json(),
            })
        );
    } else {
        println!("consume {:?}: {} partitions", common.topic, partitions);
        println!("{}", rate.human());
        match first_ms {
            Some(ms) => println!("first record after {ms:.3} ms; stopped on: {stop_reason}"),
            None => println!("no records received; stopped on: {stop_reason}"),
        }
        println!("errors: {errors}");
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }

    if records < common.records {
        bail!(
            "consumed {records} of {} records ({stop_reason})",
            common.records
        );
    }
    Ok(())
}
