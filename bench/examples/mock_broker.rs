//! librdkafka's built-in mock broker on a loopback port, for smoke-testing
//! kafka-bench end to end while the real broker is not runnable:
//!
//!   cargo run --release -p bench --example mock_broker -- --topic t --partitions 4 &
//!   kafka-bench produce --bootstrap <printed address> --topic t ...
//!
//! Its numbers say nothing about any real broker (it is an in-memory test
//! double); they only show the tool works and roughly where the client side
//! tops out.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rdkafka::mocking::MockCluster;

#[derive(Parser)]
struct Args {
    /// Topics to pre-create (repeatable); others are auto-created on demand.
    #[arg(long)]
    topic: Vec<String>,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Exit after this many seconds, so a forgotten mock never lingers.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = MockCluster::new(1).context("starting mock cluster")?;
    for topic in &args.topic {
        cluster
            .create_topic(topic, args.partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    println!("{}", cluster.bootstrap_servers());
    std::thread::sleep(Duration::from_secs(args.seconds));
    Ok(())
}
