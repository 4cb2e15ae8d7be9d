//! kafka-bench: a small load generator in the spirit of kafka-producer-perf-test
//! and kafka-consumer-perf-test, driven through librdkafka (the `rdkafka` crate)
//! so the broker is measured against a real, widely deployed client.

mod client;
mod consume;
mod produce;
mod report;
mod visibility;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kafka-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Produce N records of a fixed size and report throughput and send→ack latency.
    Produce(produce::ProduceArgs),
    /// Read N records from the beginning of every partition and report throughput.
    Consume(consume::ConsumeArgs),
    /// Acknowledgement → delivery latency: an ordered read_committed reader (the global
    /// order) next to a read_uncommitted consumer, at a fixed produce rate.
    Visibility(visibility::VisibilityArgs),
}

/// Flags shared by both modes.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Broker address, HOST:PORT (comma-separated list allowed).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to produce to / consume from.
    #[arg(long)]
    pub topic: String,
    /// Number of records to produce / consume.
    #[arg(long)]
    pub records: u64,
    /// Time bound in seconds. produce: sending plus the final flush (topic
    /// setup has its own 30 s bound); consume: idle time without a new record
    /// (see also --max-duration-s). Keeps a stuck broker from hanging scripts.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Print exactly one JSON line with the results on stdout (for scripts);
    /// progress and warnings still go to stderr.
    #[arg(long)]
    pub json: bool,
    /// Extra librdkafka property, KEY=VALUE; repeatable, applied last so it
    /// overrides anything kafka-bench sets (e.g. --set debug=broker,protocol).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub extra: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Produce(args) => produce::run(&args),
        Mode::Consume(args) => consume::run(&args),
        Mode::Visibility(args) => visibility::run(&args),
    }
}
