//! `kafka-bench produce`: the kafka-producer-perf-test equivalent.
//!
//! A ThreadedProducer enqueues records as fast as librdkafka accepts them (or
//! at `--throughput`); its polling thread runs the delivery callback, which
//! records each record's send→ack latency.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::json;

use crate::client::{apply_overrides, base_config, ensure_topic, error_to_stderr, log_to_stderr};
use crate::report::{Latency, Progress, Rate};
use crate::CommonArgs;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Partitions to create the topic with if it does not exist.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor used only when creating the topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Payload bytes per record (no key).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub record_size: u64,
    #[arg(long, default_value = "1", value_parser = ["0", "1", "all", "-1"])]
    pub acks: String,
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub compression: String,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Max bytes per partition batch (librdkafka batch.size).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: u64,
    /// Max in-flight requests per broker connection.
    #[arg(long, default_value_t = 5)]
    pub in_flight: u32,
    /// Target records/s; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub throughput: u64,
}

/// What the delivery callback accumulates. One mutex is fine: only the
/// producer's polling thread writes, and the main thread reads at the end.
struct Deliveries {
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

struct ProduceContext {
    /// Epoch for the per-record send timestamp carried in the delivery opaque
    /// (nanoseconds since `epoch` as usize: no allocation per record).
    epoch: Instant,
    deliveries: Mutex<Deliveries>,
}

impl ProduceContext {
    fn now_ns(&self) -> usize {
        self.epoch.elapsed().as_nanos() as usize
    }
    fn snapshot(&self) -> (u64, u64) {
        let d = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        (d.acked, d.failed)
    }
}

impl ClientContext for ProduceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_to_stderr(level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        error_to_stderr(error, reason);
    }
}

impl ProducerContext for ProduceContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        let now_ns = self.now_ns();
        let mut d = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                d.acked += 1;
                let us = (now_ns.saturating_sub(sent_ns) / 1000) as u64;
                d.latency_us.saturating_record(us);
            }
            Err((e, _)) => {
                d.failed += 1;
                if d.first_error.is_none() {
                    d.first_error = Some(e.to_string());
                }
            }
        }
    }
}

/// Random bytes generated once. Records take consecutive, non-overlapping
/// slices of a pool larger than any batch, so neither a per-record nor a
/// cross-record (whole-batch) compressor finds redundancy: reusing a single
/// payload, as kafka-producer-perf-test does, lets lz4/zstd shrink a batch of
/// identical records to almost nothing and inflates MB/s.
struct Payload {
    pool: Vec<u8>,
    size: usize,
    slots: usize,
}

impl Payload {
    fn new(size: usize, min_pool: usize) -> Payload {
        let slots = min_pool.div_ceil(size).max(1);
        let mut pool = vec![0u8; slots * size];
        // splitmix64: fast, and its output is incompressible for our purposes.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ (size as u64);
        for chunk in pool.chunks_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Payload { pool, size, slots }
    }

    fn get(&self, i: u64) -> &[u8] {
        let start = (i % self.slots as u64) as usize * self.size;
        &self.pool[start..start + self.size]
    }
}

pub fn run(args: &ProduceArgs) -> Result<()> {
    let common = &args.common;
    let timeout = Duration::from_secs(common.timeout_s);

    let partitions = ensure_topic(
        common,
        args.partitions,
        args.replication_factor,
        timeout.min(Duration::from_secs(30)),
    )?;

    let mut cfg = base_config(common);
    cfg.set("acks", &args.acks)
        .set("compression.type", &args.compression)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_size.to_string())
        .set(
            "max.in.flight.requests.per.connection",
            args.in_flight.to_string(),
        )
        // Idempotence needs InitProducerId; keep the plain produce path unless
        // asked for with --set enable.idempotence=true.
        .set("enable.idempotence", "false")
        // librdkafka fails undelivered records itself within our time bound.
        .set("message.timeout.ms", (common.timeout_s * 1000).to_string());
    apply_overrides(&mut cfg, common);

    let context = ProduceContext {
        epoch: Instant::now(),
        deliveries: Mutex::new(Deliveries {
            acked: 0,
            failed: 0,
            first_error: None,
            // Fixed 1 µs..1 h range: no resizing on the hot path, and
            // saturating_record clamps anything outside it.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .context("creating latency histogram")?,
        }),
    };
    let producer: ThreadedProducer<ProduceContext> = cfg
        .create_with_context(context)
        .context("creating producer")?;

    let record_size = args.record_size as usize;
    let pool_bytes = (64usize << 20).max(4 * args.batch_size as usize);
    let payload = Payload::new(record_size, pool_bytes);

    let mut progress = Progress::new("produce");
    let mut enqueued: u64 = 0;
    let mut timed_out = false;
    let start = Instant::now();
    let deadline = start + timeout;

    'records: for i in 0..common.records {
        if args.throughput > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.throughput as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        // Retry while librdkafka's local queue is full; the polling thread
        // frees space as acks arrive. Each attempt takes a fresh timestamp so
        // latency is send→ack, not time spent waiting for queue space.
        loop {
            let record = BaseRecord::<(), [u8], usize>::with_opaque_to(
                &common.topic,
                producer.context().now_ns(),
            )
            .payload(payload.get(i));
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if Instant::now() >= deadline {
                        timed_out = true;
                        break 'records;
                    }
                    thread::sleep(Duration::from_micros(500));
                }
                // Anything else (e.g. record larger than message.max.bytes) is
                // a local, permanent error: fail fast instead of repeating it.
                Err((e, _)) => bail!("enqueueing record {i} failed: {e}"),
            }
        }
        enqueued += 1;
        if i.is_multiple_of(1024) {
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            let (acked, _) = producer.context().snapshot();
            progress.tick(acked, acked * args.record_size);
        }
    }

    let remaining = deadline.saturating_duration_since(Instant::now());
    if producer.flush(remaining).is_err() {
        timed_out = true;
        // Fail what is still queued so it shows up as errors, not silence.
        producer.purge(PurgeConfig::default().queue().inflight());
        let _ = producer.flush(Duration::from_secs(2));
    }
    // flush() returns once the last delivery report is dequeued, possibly
    // while the polling thread is still inside the callback: wait briefly
    // until every enqueued record is accounted for.
    let settle = Instant::now() + Duration::from_secs(2);
    while {
        let (acked, failed) = producer.context().snapshot();
        acked + failed < enqueued && Instant::now() < settle
    } {
        thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();

    let d = producer
        .context()
        .deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rate = Rate {
        records: d.acked,
        bytes: d.acked * args.record_size,
        elapsed,
    };
    let latency = Latency::from_micros(&d.latency_us);
    let not_sent = common.records - enqueued;

    if common.json {
        println!(
            "{}",
            json!({
                "mode": "produce",
                "topic": common.topic,
                "partitions": partitions,
                "record_size": args.record_size,
                "acks": args.acks,
                "compression": args.compression,
                "linger_ms": args.linger_ms,
                "batch_size": args.batch_size,
                "in_flight": args.in_flight,
                "requested": common.records,
                "acked": d.acked,
                "errors": d.failed,
                "not_sent": not_sent,
                "timed_out": timed_out,
                "first_error": d.first_error,
                "throughput": rate.json(),
                "latency": latency.map(|l| l.json()),
            })
        );
    } else {
        println!(
            "produce {:?}: {} partitions, {} B records, acks={}, compression={}",
            common.topic, partitions, args.record_size, args.acks, args.compression
        );
        println!("{}", rate.human());
        match latency {
            Some(l) => println!("{} (send→ack)", l.human()),
            None => println!("latency: no records acknowledged"),
        }
        println!(
            "errors: {} failed deliveries, {} never sent{}",
            d.failed,
            not_sent,
            if timed_out { " (hit --timeout-s)" } else { "" }
        );
        if let Some(e) = &d.first_error {
            println!("first error: {e}");
        }
    }

    if d.failed > 0 || not_sent > 0 || timed_out {
        bail!(
            "{} of {} records not acknowledged",
            common.records - d.acked,
            common.records
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_slices_are_distinct_and_sized() {
        let p = Payload::new(100, 1000);
        assert_eq!(p.slots, 10);
        assert_eq!(p.get(0).len(), 100);
        assert_ne!(p.get(0), p.get(1));
        assert_eq!(p.get(3), p.get(13));
        // Odd sizes (not a multiple of 8) still fill the pool.
        let q = Payload::new(7, 20);
        assert_eq!(q.pool.len(), 21);
        assert!(q.get(2).iter().any(|&b| b != 0));
    }
}
