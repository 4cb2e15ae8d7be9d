//! ordered-reader: prints the records of a set of topics in the cluster's global (GSN)
//! order, live, over librdkafka. The recipe of the read_committed contract: assign every
//! partition of the topics, read with isolation.level=read_committed, buffer per
//! partition, and after every poll emit (in offset order) every buffered record below the
//! minimum of the partitions' positions (`merge.rs`).
//!
//! `--check` is for tests: a record that arrives below what was already emitted (LATE),
//! an offset delivered twice (DUP) or an offset reset by the client (RESET) is reported on
//! stderr and makes the exit status 3.

mod format;
mod merge;
mod start;

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use format::{Fields, Format};
use merge::{Arrival, Merger};
use start::Start;

/// Exit status when `--check` saw a LATE, DUP or RESET.
const EXIT_CHECK_FAILED: u8 = 3;
/// Messages taken from librdkafka per round before positions are read and records emitted.
const POLL_BATCH: usize = 10_000;
/// At most one re-seek per this interval after offset resets (see `recover_from_reset`).
const RESET_RESEEK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "ordered-reader",
    version,
    about = "Prints the records of a set of topics \
in global (GSN) order, as they become final (isolation.level=read_committed)."
)]
struct Cli {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(short = 'b', long = "brokers", default_value = "localhost:9092")]
    brokers: String,
    /// A topic to read (repeatable); every partition of every topic is read, including
    /// partitions added while running.
    #[arg(short = 't', long = "topic", required = true)]
    topics: Vec<String>,
    /// Where to start: beginning, end, s@<unix ms> (first record at or after it), or an
    /// offset (a GSN: the same point of the global order in every partition).
    #[arg(short = 'o', long = "offset", default_value = "beginning")]
    start: Start,
    /// Exit once caught up: every partition's position at its end offset and nothing
    /// left to print.
    #[arg(short = 'e', long = "exit")]
    exit_at_end: bool,
    /// Output format per record, like kcat -f: %o offset, %t topic, %p partition, %k key,
    /// %s value, %T timestamp, %K/%S key/value size, \n \t escapes.
    #[arg(short = 'f', long = "format", default_value = "%o %t %p %k %s\\n")]
    format: String,
    /// Records held in memory waiting for the global order; at this many, partitions that
    /// are ahead are paused until half of it is printed.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_buffered: u64,
    /// Test mode: exit with status 3 if any record arrived below what was already printed
    /// (LATE), an offset came twice (DUP) or the client reset an offset (RESET); each is
    /// reported on stderr when it happens.
    #[arg(long)]
    check: bool,
    /// librdkafka property KEY=VALUE (repeatable; applied last, e.g.
    /// -X isolation.level=read_uncommitted).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_kv)]
    extra: Vec<(String, String)>,
    /// How often to look for partitions added to the topics, ms.
    #[arg(long, default_value_t = 5000)]
    metadata_refresh_ms: u64,
    /// How long to wait for the topics to exist at start, seconds.
    #[arg(long, default_value_t = 30)]
    topic_wait_s: u64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// librdkafka's log lines and global errors go to stderr (connection trouble under a
/// fault is visible, never silent). End-of-partition and offset-reset events arrive here
/// too (as global errors, without their partition): they are noted for the main loop.
#[derive(Default)]
struct ReaderContext {
    eof: AtomicBool,
    resets: AtomicU64,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        eprintln!("librdkafka {level:?} {fac}: {msg}");
    }
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::PartitionEOF) => self.eof.store(true, Ordering::SeqCst),
            Some(RDKafkaErrorCode::AutoOffsetReset) => {
                self.resets.fetch_add(1, Ordering::SeqCst);
                eprintln!("RESET the client would have reset an offset: {reason}");
            }
            _ => eprintln!("librdkafka error: {error}: {reason}"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

type Partition = (String, i32);

/// A record waiting for the global order.
struct Held {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
}

#[derive(Default)]
struct Counts {
    emitted: u64,
    first: Option<i64>,
    late: u64,
    duplicate: u64,
    resets: u64,
}

struct Reader {
    cli: Cli,
    consumer: BaseConsumer<ReaderContext>,
    merger: Merger<Partition, Held>,
    format: Format,
    out: BufWriter<io::Stdout>,
    counts: Counts,
    last_reseek: Option<Instant>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_signals(stop.clone()) {
        eprintln!("ordered-reader: cannot watch signals: {e:#}");
        return ExitCode::FAILURE;
    }
    match Reader::new(cli).and_then(|r| r.run(&stop)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ordered-reader: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT/SIGTERM end the run cleanly: the summary is printed and `--check` decides the
/// exit status.
fn watch_signals(stop: Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the signal runtime")?;
    // Registered here, before main goes on, so a signal sent right after start counts.
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            stop.store(true, Ordering::SeqCst);
        })
        .context("spawning the signal thread")?;
    Ok(())
}

impl Reader {
    fn new(cli: Cli) -> Result<Reader> {
        let format = Format::parse(&cli.format).context("bad --format")?;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &cli.brokers)
            .set("group.id", format!("ordered-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // A reset would skip or replay records: reported (RESET) instead of made.
            .set("auto.offset.reset", "error")
            // Bounded prefetch: librdkafka's own queue, next to --max-buffered.
            .set("queued.max.messages.kbytes", "16384")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &cli.extra {
            cfg.set(k, v);
        }
        let consumer = cfg
            .create_with_context(ReaderContext::default())
            .context("creating the consumer")?;
        Ok(Reader {
            cli,
            consumer,
            merger: Merger::new(),
            format,
            out: BufWriter::new(io::stdout()),
            counts: Counts::default(),
            last_reseek: None,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> Result<ExitCode> {
        let deadline = Instant::now() + Duration::from_secs(self.cli.topic_wait_s);
        while self.assign_new_partitions(self.cli.start)? == 0 {
            if Instant::now() >= deadline {
                bail!(
                    "topics {:?} have no partitions (do they exist?)",
                    self.cli.topics
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        let refresh = Duration::from_millis(self.cli.metadata_refresh_ms);
        let mut last_refresh = Instant::now();
        let mut last_record = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let round = self.poll_round(Duration::from_millis(100));
            if round.records > 0 {
                last_record = Instant::now();
            }
            self.update_positions()?;
            self.emit()?;
            self.apply_flow()?;
            if last_refresh.elapsed() >= refresh {
                self.assign_new_partitions(Start::Beginning)?;
                last_refresh = Instant::now();
            }
            let idle = last_record.elapsed() >= Duration::from_secs(1);
            if self.cli.exit_at_end && (round.eof || idle) && self.caught_up()? {
                break;
            }
        }
        self.finish()
    }

    /// Assigns the topics' partitions not assigned yet, from `start`; returns how many
    /// partitions are assigned in all.
    fn assign_new_partitions(&mut self, start: Start) -> Result<usize> {
        let mut new = Vec::new();
        for topic in &self.cli.topics {
            let md = match self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
            {
                Ok(md) => md,
                Err(e) => {
                    eprintln!("ordered-reader: metadata for {topic}: {e}");
                    continue;
                }
            };
            for t in md.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    let key = (topic.clone(), p.id());
                    if !self.merger.is_assigned(&key) {
                        new.push(key);
                    }
                }
            }
        }
        if !new.is_empty() {
            let starts = self.start_offsets(&new, start)?;
            let mut tpl = TopicPartitionList::new();
            for ((topic, p), offset) in new.iter().zip(&starts) {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))
                    .context("building the assignment")?;
            }
            self.consumer
                .incremental_assign(&tpl)
                .context("assigning partitions")?;
            for (key, offset) in new.into_iter().zip(starts) {
                self.merger.assign_at(key, offset);
            }
        }
        Ok(self.merger.partitions().count())
    }

    /// Each partition's first offset to read, resolved here rather than by librdkafka:
    /// the merge needs it as the partition's position until the consumer knows one (a
    /// quiet partition read from its end delivers nothing to learn it from).
    fn start_offsets(&self, parts: &[Partition], start: Start) -> Result<Vec<i64>> {
        let wait = Duration::from_secs(30);
        let mut by_time = BTreeMap::new();
        if let Start::Timestamp(ms) = start {
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in parts {
                tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                    .context("building the timestamp query")?;
            }
            let found = self
                .consumer
                .offsets_for_times(tpl, wait)
                .context("looking up offsets for the start timestamp")?;
            for e in found.elements() {
                by_time.insert((e.topic().to_string(), e.partition()), e.offset());
            }
        }
        let mut out = Vec::with_capacity(parts.len());
        for (topic, p) in parts {
            let watermarks = || {
                self.consumer
                    .fetch_watermarks(topic, *p, wait)
                    .with_context(|| format!("offsets of {topic}/{p}"))
            };
            out.push(match start {
                Start::Beginning => watermarks()?.0,
                Start::End => watermarks()?.1,
                Start::Offset(o) => o,
                // No record that late (Offset::End): start at the end.
                Start::Timestamp(_) => match by_time.get(&(topic.clone(), *p)) {
                    Some(Offset::Offset(o)) => *o,
                    _ => watermarks()?.1,
                },
            });
        }
        Ok(out)
    }

    fn poll_round(&mut self, wait: Duration) -> Round {
        let mut round = Round::default();
        let mut timeout = wait;
        for _ in 0..POLL_BATCH {
            let Some(result) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            match result {
                Ok(msg) => {
                    round.records += 1;
                    let key = (msg.topic().to_string(), msg.partition());
                    let held = Held {
                        key: msg.key().map(<[u8]>::to_vec),
                        value: msg.payload().map(<[u8]>::to_vec),
                        timestamp: msg.timestamp().to_millis(),
                    };
                    self.arrive(key, msg.offset(), held);
                }
                Err(KafkaError::PartitionEOF(_)) => round.eof = true,
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) => {
                    self.counts.resets += 1;
                    eprintln!("RESET the client would have reset an offset: {e}");
                    self.recover_from_reset();
                }
                Err(e) => eprintln!("ordered-reader: consumer error: {e}"),
            }
        }
        let ctx = self.consumer.context();
        round.eof |= ctx.eof.swap(false, Ordering::SeqCst);
        let resets = ctx.resets.swap(0, Ordering::SeqCst);
        if resets > 0 {
            self.counts.resets += resets;
            self.recover_from_reset();
        }
        round
    }

    fn arrive(&mut self, key: Partition, offset: i64, held: Held) {
        let (topic, partition) = (key.0.clone(), key.1);
        match self.merger.push(key, offset, held) {
            Arrival::Buffered | Arrival::Redelivered => {}
            Arrival::Late {
                watermark,
                last_emitted,
            } => {
                self.counts.late += 1;
                let last = last_emitted.map_or("none".to_string(), |o| o.to_string());
                eprintln!(
                    "LATE topic={topic} partition={partition} offset={offset} \
                     watermark={watermark} last_emitted={last}"
                );
            }
            Arrival::Duplicate { other } => {
                self.counts.duplicate += 1;
                eprintln!(
                    "DUP topic={topic} partition={partition} offset={offset} \
                     also_in={}/{}",
                    other.0, other.1
                );
            }
        }
    }

    /// With auto.offset.reset=error librdkafka stops fetching the partition it could not
    /// continue, and refuses a seek there; the error does not say which partition. So every
    /// partition is assigned again at the position the merge holds for it (its consumer
    /// position, or where it started), at most once per second: reading goes on, the
    /// RESET stays counted.
    fn recover_from_reset(&mut self) {
        if self
            .last_reseek
            .is_some_and(|t| t.elapsed() < RESET_RESEEK_INTERVAL)
        {
            return;
        }
        self.last_reseek = Some(Instant::now());
        // Positions as of now: records delivered in this round lie below them.
        if let Err(e) = self.update_positions() {
            eprintln!("ordered-reader: {e:#}");
        }
        let mut all = TopicPartitionList::new();
        let mut at = TopicPartitionList::new();
        for ((topic, p), position) in self.merger.positions() {
            all.add_partition(&topic, p);
            let offset = position.map_or(Offset::Beginning, Offset::Offset);
            if at.add_partition_offset(&topic, p, offset).is_err() {
                return;
            }
        }
        let result = self
            .consumer
            .incremental_unassign(&all)
            .and_then(|()| self.consumer.incremental_assign(&at));
        if let Err(e) = result {
            eprintln!("ordered-reader: assigning again after a reset failed: {e}");
        }
    }

    fn update_positions(&mut self) -> Result<()> {
        let positions = self.consumer.position().context("reading positions")?;
        for e in positions.elements() {
            let position = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            self.merger
                .set_position(&(e.topic().to_string(), e.partition()), position);
        }
        Ok(())
    }

    fn emit(&mut self) -> Result<()> {
        let ready = self.merger.drain_ready();
        if ready.is_empty() {
            return Ok(());
        }
        for ((topic, partition), offset, held) in &ready {
            let fields = Fields {
                topic,
                partition: *partition,
                offset: *offset,
                key: held.key.as_deref(),
                value: held.value.as_deref(),
                timestamp: held.timestamp,
            };
            self.format
                .write(&mut self.out, &fields)
                .context("writing to stdout")?;
        }
        self.out.flush().context("writing to stdout")?;
        self.counts.emitted += ready.len() as u64;
        self.counts.first = self.counts.first.or(ready.first().map(|r| r.1));
        Ok(())
    }

    fn apply_flow(&mut self) -> Result<()> {
        let limit = usize::try_from(self.cli.max_buffered).unwrap_or(usize::MAX);
        let flow = self.merger.flow(limit);
        if !flow.pause.is_empty() {
            self.consumer
                .pause(&to_tpl(&flow.pause))
                .context("pausing partitions")?;
        }
        if !flow.resume.is_empty() {
            self.consumer
                .resume(&to_tpl(&flow.resume))
                .context("resuming partitions")?;
        }
        Ok(())
    }

    /// Every partition's position is at its end offset (the last stable offset under
    /// read_committed) and nothing waits to be printed.
    fn caught_up(&self) -> Result<bool> {
        if self.merger.buffered() > 0 {
            return Ok(false);
        }
        let positions: BTreeMap<Partition, Option<i64>> = self.merger.positions().collect();
        for ((topic, p), position) in positions {
            let Some(position) = position else {
                return Ok(false);
            };
            // Under read_committed the end is the last stable offset, which librdkafka's
            // ListOffsets asks for; a quiet partition's position reaches it too.
            let (_, high) = self
                .consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .with_context(|| format!("end offset of {topic}/{p}"))?;
            if position < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn finish(mut self) -> Result<ExitCode> {
        self.out.flush().context("writing to stdout")?;
        let c = &self.counts;
        let range = match (c.first, self.merger.last_emitted()) {
            (Some(a), Some(b)) => format!("offsets {a}..={b}"),
            _ => "nothing".to_string(),
        };
        let watermark = self
            .merger
            .watermark()
            .map_or("none".to_string(), |w| w.to_string());
        eprintln!(
            "ordered-reader: emitted {} records ({range}), watermark {watermark}, \
             {} buffered, late {}, duplicate {}, resets {}",
            c.emitted,
            self.merger.buffered(),
            c.late,
            c.duplicate,
            c.resets
        );
        let failed = c.late + c.duplicate + c.resets > 0;
        Ok(if self.cli.check && failed {
            ExitCode::from(EXIT_CHECK_FAILED)
        } else {
            ExitCode::SUCCESS
        })
    }
}

#[derive(Default)]
struct Round {
    records: usize,
    eof: bool,
}

fn to_tpl(parts: &[Partition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in parts {
        tpl.add_partition(topic, *p);
    }
    tpl
}
