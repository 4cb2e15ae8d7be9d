//! `kafka-bench visibility`: how long after its acknowledgement a record becomes visible.
//!
//! One producer sends numbered records at a fixed rate round-robin over the partitions of one
//! topic (acks=all) and notes when each is acknowledged. Two consumers read the same
//! partitions at the same time, from the end at the start of the run:
//! * read_committed, ordered: the README's recipe (buffer per partition, emit in offset order
//!   what lies below the smallest position) notes when each record is *emitted*;
//! * read_uncommitted: notes when each record arrives.
//!
//! The report gives, p50/p99/max: send → acknowledgement; send → delivery and
//! acknowledgement → delivery for each consumer (a consumer can see a record before the
//! producer's acknowledgement arrives: those count as 0); and, per record, how much later the
//! ordered reader emitted it than the read_uncommitted consumer received it (the cost of
//! waiting for the frontier). The ordered reader also checks that its output strictly
//! increases and that nothing arrives below what it emitted.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use serde_json::json;

use crate::client::{apply_overrides, base_config, ensure_topic, StderrLogContext};
use crate::report::Latency;
use crate::CommonArgs;

#[derive(Args, Debug)]
pub struct VisibilityArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
    /// Records per second the producer sends.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Payload bytes per record (at least 8: the record's number).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
    pub record_size: u64,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

/// Nanoseconds since the run's epoch, per record number (0: not yet).
struct Times(Vec<AtomicU64>);

impl Times {
    fn new(n: u64) -> Self {
        Self((0..n).map(|_| AtomicU64::new(0)).collect())
    }
    fn set(&self, i: u64, ns: u64) {
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.0.get(i)) {
            let _ = slot.compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
    fn count(&self) -> usize {
        self.0
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count()
    }
}

struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

struct AckContext {
    clock: Arc<Clock>,
    acked: Arc<Times>,
    failed: AtomicU64,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, number: usize) {
        match result {
            Ok(_) => self.acked.set(number as u64, self.clock.ns()),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn number_of(payload: Option<&[u8]>) -> Option<u64> {
    let bytes: [u8; 8] = payload?.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn consumer(
    common: &CommonArgs,
    isolation: &str,
    partitions: i32,
) -> Result<BaseConsumer<StderrLogContext>> {
    let mut cfg = base_config(common);
    cfg.set("group.id", format!("visibility-{isolation}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "100");
    apply_overrides(&mut cfg, common);
    let c: BaseConsumer<StderrLogContext> = cfg
        .create_with_context(StderrLogContext)
        .context("creating consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&common.topic, p, Offset::End)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Most records taken from the consumer between two reads of its positions.
const POLL_BATCH: usize = 10_000;

/// What the ordered reader saw besides the delivery times.
#[derive(Default)]
struct OrderCheck {
    emitted: u64,
    not_increasing: u64,
    late: u64,
}

fn read_ordered(
    c: &BaseConsumer<StderrLogContext>,
    clock: &Clock,
    seen: &Times,
    stop: &AtomicBool,
) -> Result<OrderCheck> {
    let mut check = OrderCheck::default();
    let mut buffered: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut last_emitted = i64::MIN;
    while !stop.load(Ordering::Relaxed) {
        // Drain what has arrived, then read the positions once: `position()` copies the whole
        // assignment under librdkafka's locks, and once per record it, not the frontier,
        // limited this reader to ~20,000 records/s.
        let mut wait = Duration::from_millis(20);
        for _ in 0..POLL_BATCH {
            let Some(m) = c.poll(wait) else { break };
            wait = Duration::ZERO;
            let m = m?;
            if m.offset() <= last_emitted {
                check.late += 1;
            }
            if let Some(n) = number_of(m.payload()) {
                buffered.push(Reverse((m.offset(), n)));
            }
        }
        let positions = c.position()?;
        let low = positions
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .min()
            .unwrap_or(-1);
        if low < 0 {
            continue;
        }
        let now = clock.ns();
        while let Some(Reverse((offset, n))) = buffered.peek().copied() {
            if offset >= low {
                break;
            }
            buffered.pop();
            if offset <= last_emitted {
                check.not_increasing += 1;
            }
            last_emitted = offset;
            check.emitted += 1;
            seen.set(n, now);
        }
    }
    Ok(check)
}

fn read_unordered(
    c: &BaseConsumer<StderrLogContext>,
    clock: &Clock,
    seen: &Times,
    stop: &AtomicBool,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        if let Some(m) = c.poll(Duration::from_millis(20)) {
            let m = m?;
            if let Some(n) = number_of(m.payload()) {
                seen.set(n, clock.ns());
            }
        }
    }
    Ok(())
}

fn latency(acked: &Times, seen: &Times) -> Result<(Histogram<u64>, u64)> {
    // 1 µs to 10 min, 3 significant digits (saturating_record would clamp to the bounds of
    // an auto-resizing histogram).
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    let mut missing = 0;
    for i in 0..acked.0.len() {
        let (a, s) = (acked.get(i), seen.get(i));
        if a == 0 {
            continue;
        }
        if s == 0 {
            missing += 1;
            continue;
        }
        h.saturating_record(s.saturating_sub(a) / 1_000);
    }
    Ok((h, missing))
}

pub fn run(args: &VisibilityArgs) -> Result<()> {
    let common = &args.common;
    let partitions = ensure_topic(
        common,
        args.partitions,
        args.replication_factor,
        Duration::from_secs(30),
    )?;
    let n = common.records;
    let clock = Arc::new(Clock(Instant::now()));
    let acked = Arc::new(Times::new(n));
    let sent = Times::new(n);
    let ordered_seen = Arc::new(Times::new(n));
    let plain_seen = Arc::new(Times::new(n));
    let stop = Arc::new(AtomicBool::new(false));

    let ordered = consumer(common, "read_committed", partitions)?;
    let plain = consumer(common, "read_uncommitted", partitions)?;
    let ordered_thread = {
        let (clock, seen, stop) = (
            Arc::clone(&clock),
            Arc::clone(&ordered_seen),
            Arc::clone(&stop),
        );
        thread::spawn(move || read_ordered(&ordered, &clock, &seen, &stop))
    };
    let plain_thread = {
        let (clock, seen, stop) = (
            Arc::clone(&clock),
            Arc::clone(&plain_seen),
            Arc::clone(&stop),
        );
        thread::spawn(move || read_unordered(&plain, &clock, &seen, &stop))
    };
    // Let both consumers fetch their start positions before the first record.
    thread::sleep(Duration::from_secs(3));

    let mut cfg = base_config(common);
    cfg.set("acks", "all")
        .set("linger.ms", args.linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000");
    apply_overrides(&mut cfg, common);
    let context = AckContext {
        clock: Arc::clone(&clock),
        acked: Arc::clone(&acked),
        failed: AtomicU64::new(0),
    };
    let producer: ThreadedProducer<AckContext> = cfg
        .create_with_context(context)
        .context("creating producer")?;
    let mut payload = vec![0u8; usize::try_from(args.record_size).unwrap_or(8)];
    let start = Instant::now();
    let per_record = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    for i in 0..n {
        let due = start + per_record.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        payload[..8].copy_from_slice(&i.to_le_bytes());
        sent.set(i, clock.ns());
        let partition = (i % partitions as u64) as i32;
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&common.topic, i as usize)
                .payload(&payload[..])
                .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let sent_s = start.elapsed().as_secs_f64();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(common.timeout_s))
        .context("flushing")?;
    let deadline = Instant::now() + Duration::from_secs(common.timeout_s);
    while (ordered_seen.count() < acked.count() || plain_seen.count() < acked.count())
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let check = ordered_thread
        .join()
        .map_err(|_| anyhow::anyhow!("ordered reader panicked"))??;
    plain_thread
        .join()
        .map_err(|_| anyhow::anyhow!("read_uncommitted consumer panicked"))??;

    let failed = rdkafka::producer::Producer::context(&producer)
        .failed
        .load(Ordering::Relaxed);
    let (ordered_h, ordered_missing) = latency(&acked, &ordered_seen)?;
    let (plain_h, plain_missing) = latency(&acked, &plain_seen)?;
    let (produce_h, _) = latency(&sent, &acked)?;
    let (ordered_from_send, _) = latency(&sent, &ordered_seen)?;
    let (plain_from_send, _) = latency(&sent, &plain_seen)?;
    let (frontier_wait, _) = latency(&plain_seen, &ordered_seen)?;
    let lat = |h: &Histogram<u64>| Latency::from_micros(h).map(|l| l.json());
    let result = json!({
        "mode": "visibility",
        "records": n,
        "acked": acked.count(),
        "failed": failed,
        "rate_target": args.rate,
        "rate_sent": (n as f64 / sent_s).round(),
        "partitions": partitions,
        "send_to_ack": lat(&produce_h),
        "ack_to_ordered_delivery": lat(&ordered_h),
        "ack_to_read_uncommitted_delivery": lat(&plain_h),
        "send_to_ordered_delivery": lat(&ordered_from_send),
        "send_to_read_uncommitted_delivery": lat(&plain_from_send),
        "ordered_after_read_uncommitted": lat(&frontier_wait),
        "read_committed_missing": ordered_missing,
        "read_uncommitted_missing": plain_missing,
        "ordered_emitted": check.emitted,
        "ordered_not_increasing": check.not_increasing,
        "ordered_late": check.late,
    });
    if common.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    if check.not_increasing > 0 || check.late > 0 {
        bail!(
            "the ordered reader saw {} out-of-order emissions and {} late records",
            check.not_increasing,
            check.late
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_numbers_round_trip_through_the_payload() {
        let mut p = vec![0u8; 16];
        p[..8].copy_from_slice(&42u64.to_le_bytes());
        assert_eq!(number_of(Some(&p)), Some(42));
        assert_eq!(number_of(Some(&p[..7])), None);
        assert_eq!(number_of(None), None);
    }

    #[test]
    fn latency_counts_from_the_acknowledgement_and_clamps_early_arrivals() {
        let acked = Times::new(3);
        let seen = Times::new(3);
        acked.set(0, 1_000_000);
        seen.set(0, 3_000_000);
        acked.set(1, 5_000_000);
        seen.set(1, 4_000_000); // seen before the ack arrived
        acked.set(2, 6_000_000); // never seen
        let (h, missing) = latency(&acked, &seen).expect("histogram");
        assert_eq!(missing, 1);
        assert_eq!(h.len(), 2);
        assert_eq!(h.max(), 2_000);
        assert_eq!(h.min(), 0);
    }
}
