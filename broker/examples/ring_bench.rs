//! Ring sequencer benchmark: one broker-side `RingSequencer` against an in-process ring of
//! N software switches on 127.0.0.1 (the `sequencer_p4` pipeline, one tokio task and UDP
//! socket each), for each ring size and request batch size. Reports reservations/s,
//! numbers/s and reserve() latency p50/p99.
//!
//! cargo run --release -p broker --example ring_bench -- \
//!     --sizes 1,2,4 --batches 1,64,1024 --concurrency 1,8 --hop-delay-ms 0 --secs 3
//!
//! `--clients K` runs K ring clients (broker ids 0..K, so their home switches spread over
//! the ring; `--clients 0` = one per switch), each with `--concurrency` reservations in
//! flight.
//!
//! `--hop-delay-ms` delays every token forward (emulated link); tokio timers have 1 ms
//! granularity, so sub-millisecond links are not emulated: 0 forwards at once (the token
//! then spins as fast as loopback UDP allows).

#[path = "../tests/support/ring_harness.rs"]
mod ring_harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::metrics::Metrics;
use broker::ring_sequencer::{ConfigSource, RingOptions, RingSequencer};
use broker::sequencer::Sequencer;
use ring_harness::{FakeController, SoftRing};

fn list(args: &[String], flag: &str, default: &str) -> Vec<u64> {
    let raw = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default);
    raw.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: `{v}` is not a number"))
        })
        .collect()
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = list(&args, "--sizes", "1,2,4");
    let batches = list(&args, "--batches", "1,64,1024");
    let concs = list(&args, "--concurrency", "1,8");
    let hop = Duration::from_millis(list(&args, "--hop-delay-ms", "0")[0]);
    let secs = Duration::from_secs(list(&args, "--secs", "3")[0]);
    let clients_arg = list(&args, "--clients", "1")[0];
    println!(
        "| N | clients | batch | in flight per client | hop delay | reservations/s | numbers/s | p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for &batch in &batches {
            for &conc in &concs {
                let ring = SoftRing::start(n as u16, hop).await;
                let ctrl = FakeController::start().await;
                let cfg = ring.install(1, 1_000, 1 << 50, 1 << 20).await;
                ring.inject(1).await;
                ctrl.set(cfg);
                let clients = if clients_arg == 0 { n } else { clients_arg };
                let mut seqs = Vec::new();
                for broker_id in 0..clients {
                    let seq = Arc::new(
                        RingSequencer::start(
                            ConfigSource::Controllers(vec![ctrl.addr.to_string()]),
                            "127.0.0.1:0".parse().expect("addr"),
                            broker_id,
                            0,
                            RingOptions::default(),
                            Arc::new(Metrics::new()),
                        )
                        .await
                        .expect("ring client"),
                    );
                    // Warm up (first config, first visit).
                    seq.reserve(batch).await.expect("warm-up reserve");
                    seqs.push(seq);
                }
                let start = Instant::now();
                let mut tasks = Vec::new();
                for seq in &seqs {
                    for _ in 0..conc {
                        let seq = Arc::clone(seq);
                        tasks.push(tokio::spawn(async move {
                            let mut lat = Vec::new();
                            while start.elapsed() < secs {
                                let t = Instant::now();
                                if seq.reserve(batch).await.is_ok() {
                                    lat.push(t.elapsed().as_micros() as u64);
                                }
                            }
                            lat
                        }));
                    }
                }
                let mut lat = Vec::new();
                for t in tasks {
                    lat.extend(t.await.expect("join"));
                }
                let elapsed = start.elapsed().as_secs_f64();
                lat.sort_unstable();
                let res = lat.len() as f64 / elapsed;
                println!(
                    "| {n} | {clients} | {batch} | {conc} | {} ms | {:.0} | {:.0} | {} | {} |",
                    hop.as_millis(),
                    res,
                    res * batch as f64,
                    pct(&lat, 0.50),
                    pct(&lat, 0.99),
                );
                drop(seqs);
                drop(ring);
                drop(ctrl);
            }
        }
    }
}
