//! Ring sequencer benchmark: broker-side `RingSequencer` clients against a ring of N
//! software switches on 127.0.0.1 — in-process (the softswitch's host loop in tokio tasks)
//! or real `softswitch` processes — for each ring size and request batch size. Reports
//! reservations/s, numbers/s and reserve() latency p50/p99.
//!
//! cargo run --release -p broker --example ring_bench -- \
//!     --sizes 1,2,4,8 --batches 1,64,1024 --concurrency 1,8 --hop-delay-us 10 --secs 3
//!
//! * `--clients K`: K ring clients (broker ids 0..K, so their home switches spread over the
//!   ring; `--clients 0` = one per switch), each with `--concurrency` reservations in flight.
//! * `--hop-delay-us D`: every token forward waits D µs (emulated switch link; the host
//!   loop's microsecond-precise link emulation, `softswitch --link-delay-us`).
//! * `--idle-hold-us H` (default 1000, 0 = off) / `--idle-grace-us G` (default 1000): idle
//!   pacing, as the softswitch flags of the same names.
//! * `--softswitch PATH`: run the switches as `softswitch` processes (PATH is the binary).
//! * `--idle-secs S`: instead of the load table, the idle cost: CPU per switch process over
//!   S seconds of an idle ring (from /proc/PID/stat; needs `--softswitch`), then the
//!   latency of `--probes` single reservations each made after 20-50 ms of idleness.

#[path = "../tests/support/ring_harness.rs"]
mod ring_harness;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::metrics::Metrics;
use broker::ring_sequencer::{ConfigSource, RingOptions, RingSequencer};
use broker::sequencer::Sequencer;
use ring_harness::{FakeController, HostOptions, SoftRing};

fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn list(args: &[String], name: &str, default: &str) -> Vec<u64> {
    let raw = flag(args, name).unwrap_or(default);
    raw.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: `{v}` is not a number"))
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

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let get = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    (get(14).unwrap_or(0.0) + get(15).unwrap_or(0.0)) / ticks_per_sec
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Setup {
    host: HostOptions,
    softswitch: Option<PathBuf>,
}

impl Setup {
    async fn ring(&self, n: u16) -> SoftRing {
        match &self.softswitch {
            Some(bin) => {
                let extra = vec![
                    "--idle-hold-us".to_string(),
                    self.host.idle_hold.as_micros().to_string(),
                    "--idle-grace-us".to_string(),
                    self.host.idle_grace.as_micros().to_string(),
                    "--link-delay-us".to_string(),
                    self.host.link_delay.as_micros().to_string(),
                ];
                SoftRing::spawn(bin, n, &extra).await
            }
            None => SoftRing::start(n, self.host).await,
        }
    }
}

async fn client(ctrl: &FakeController, broker_id: u64) -> Arc<RingSequencer> {
    Arc::new(
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
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = list(&args, "--sizes", "1,2,4");
    let setup = Setup {
        host: HostOptions {
            idle_hold: Duration::from_micros(list(&args, "--idle-hold-us", "1000")[0]),
            idle_grace: Duration::from_micros(list(&args, "--idle-grace-us", "1000")[0]),
            link_delay: Duration::from_micros(list(&args, "--hop-delay-us", "0")[0]),
        },
        softswitch: flag(&args, "--softswitch").map(PathBuf::from),
    };
    if let Some(secs) = flag(&args, "--idle-secs") {
        let secs: u64 = secs.parse().expect("--idle-secs: a number");
        let probes = list(&args, "--probes", "200")[0];
        idle(&setup, &sizes, Duration::from_secs(secs), probes).await;
        return;
    }
    let batches = list(&args, "--batches", "1,64,1024");
    let concs = list(&args, "--concurrency", "1,8");
    let secs = Duration::from_secs(list(&args, "--secs", "3")[0]);
    let clients_arg = list(&args, "--clients", "1")[0];
    println!(
        "| N | clients | batch | in flight per client | hop delay µs | reservations/s | numbers/s | p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for &batch in &batches {
            for &conc in &concs {
                let ring = setup.ring(n as u16).await;
                let ctrl = FakeController::start().await;
                let cfg = ring.install(1, 1_000, 1 << 50, 1 << 28).await;
                ring.inject(1).await;
                ctrl.set(cfg);
                let clients = if clients_arg == 0 { n } else { clients_arg };
                let mut seqs = Vec::new();
                for broker_id in 0..clients {
                    let seq = client(&ctrl, broker_id).await;
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
                    "| {n} | {clients} | {batch} | {conc} | {} | {:.0} | {:.0} | {} | {} |",
                    setup.host.link_delay.as_micros(),
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

/// CPU of an idle ring, then the latency of reservations made after idleness.
async fn idle(setup: &Setup, sizes: &[u64], window: Duration, probes: u64) {
    let ticks = clock_ticks();
    println!(
        "| N | idle hold µs | CPU per switch, % of a core (each switch) | first reserve after idle p50 / p99 / max µs | back-to-back p50 µs |"
    );
    println!("|---|---|---|---|---|");
    for &n in sizes {
        let ring = setup.ring(n as u16).await;
        let ctrl = FakeController::start().await;
        let cfg = ring.install(1, 1_000, 1 << 50, 1 << 28).await;
        ring.inject(1).await;
        ctrl.set(cfg);
        // Settle, then measure an idle window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pids: Vec<u32> = if ring.pids.is_empty() {
            vec![std::process::id()]
        } else {
            ring.pids.clone()
        };
        let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p, ticks)).collect();
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu: Vec<String> = pids
            .iter()
            .zip(&before)
            .map(|(p, b)| format!("{:.1}", 100.0 * (cpu_seconds(*p, ticks) - b) / secs))
            .collect();
        // Clients spread over the ring, one reservation at a time after a pause.
        let mut seqs = Vec::new();
        for broker_id in 0..n {
            let seq = client(&ctrl, broker_id).await;
            seq.reserve(1).await.expect("warm-up");
            seqs.push(seq);
        }
        let mut after_idle = Vec::new();
        for i in 0..probes {
            // 20-50 ms of silence: longer than the grace, so the head has parked the token.
            let pause = 20 + (i * 7919) % 31;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let seq = &seqs[(i % n) as usize];
            let t = Instant::now();
            seq.reserve(1).await.expect("reserve after idle");
            after_idle.push(t.elapsed().as_micros() as u64);
        }
        let mut warm = Vec::new();
        for i in 0..probes {
            let seq = &seqs[(i % n) as usize];
            let t = Instant::now();
            seq.reserve(1).await.expect("reserve");
            warm.push(t.elapsed().as_micros() as u64);
        }
        after_idle.sort_unstable();
        warm.sort_unstable();
        println!(
            "| {n} | {} | {} | {} / {} / {} | {} |",
            setup.host.idle_hold.as_micros(),
            cpu.join(", "),
            pct(&after_idle, 0.5),
            pct(&after_idle, 0.99),
            after_idle.last().copied().unwrap_or(0),
            pct(&warm, 0.5),
        );
    }
}
