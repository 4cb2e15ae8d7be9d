//! `softswitch`: a software sequencer switch. It runs [`Pipeline`] (the same logic as
//! `p4/sequencer.p4`) over UDP, one packet at a time, inside the host loop of
//! [`sequencer_p4::host`] (idle-token pacing, optional link emulation), with Prometheus
//! metrics.
//!
//! The pipeline is owned by one task and never shared: the switch's state is exactly the
//! pipeline's registers, and it is lost when the process exits, as a switch's would be.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use prometheus::{
    Counter, Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use sequencer_p4::host::{self, Host, HostOptions, HostStats};
use sequencer_p4::pipeline::{Config, Pipeline, Stats};
use sequencer_p4::wire::{msg_type, status_flags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Software sequencer switch: the P4 sequencer pipeline over UDP"
)]
struct Args {
    /// This switch's id in the ring (the controller addresses Install by it).
    #[arg(long, env = "SOFTSWITCH_ID")]
    id: u16,
    /// UDP address to receive sequencer packets on (IPv4: the wire format carries IPv4).
    #[arg(long, env = "SOFTSWITCH_LISTEN", default_value = "127.0.0.1:7650")]
    listen: SocketAddr,
    /// Successor used when an Install does not name one.
    #[arg(long, env = "SOFTSWITCH_NEXT_HOP")]
    next_hop: Option<SocketAddr>,
    /// Ring controller address: receives the boot Status and alarms before the first Install.
    #[arg(long, env = "SOFTSWITCH_CONTROLLER")]
    controller: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "SOFTSWITCH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Incarnation id (default: random). Only for reproducing a run; two runs of one
    /// switch must never share it.
    #[arg(long, env = "SOFTSWITCH_BOOT")]
    boot: Option<u64>,
    /// Idle pacing: the head parks an idle token for at most this many microseconds (until
    /// a request arrives) instead of spinning it around the ring. 0 = never park.
    #[arg(long, env = "SOFTSWITCH_IDLE_HOLD_US", default_value_t = 1000)]
    idle_hold_us: u64,
    /// Idle pacing starts once the ring has been idle this many microseconds.
    #[arg(long, env = "SOFTSWITCH_IDLE_GRACE_US", default_value_t = 1000)]
    idle_grace_us: u64,
    /// Emulated link: delay every token forward by this many microseconds (benchmarks;
    /// microsecond precision by spinning while the delay runs). 0 = none.
    #[arg(long, env = "SOFTSWITCH_LINK_DELAY_US", default_value_t = 0)]
    link_delay_us: u64,
    /// Log format.
    #[arg(long, env = "SOFTSWITCH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn ipv4(name: &str, addr: SocketAddr) -> anyhow::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => {
            bail!("--{name} {addr}: the sequencer wire format carries IPv4 addresses only")
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let listen = ipv4("listen", args.listen)?;
    let boot = match args.boot {
        Some(0) => bail!("--boot 0: 0 is reserved for \"unknown\""),
        Some(b) => b,
        None => rand::random::<u64>() | 1,
    };
    let cfg = Config {
        switch_id: args.id,
        boot,
        controller: args.controller.map(|a| ipv4("controller", a)).transpose()?,
        default_successor: args.next_hop.map(|a| ipv4("next-hop", a)).transpose()?,
    };
    let sock = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot bind"))?;
    let metrics = Arc::new(Metrics::new()?);
    if let Some(addr) = args.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}: cannot bind"))?;
        tokio::spawn(serve_metrics(listener, Arc::clone(&metrics)));
    }
    let opts = HostOptions {
        idle_hold: Duration::from_micros(args.idle_hold_us),
        idle_grace: Duration::from_micros(args.idle_grace_us),
        link_delay: Duration::from_micros(args.link_delay_us),
    };
    tracing::info!(id = cfg.switch_id, boot = format!("{boot:#018x}"), %listen, ?cfg.default_successor,
        ?cfg.controller, ?opts, "softswitch up, nothing installed");
    run(sock, Host::new(Pipeline::new(cfg), opts), &metrics).await
}

/// The packet loop ([`host::serve`]) with metrics synced once a second.
async fn run(sock: UdpSocket, mut host: Host, metrics: &Metrics) -> anyhow::Result<()> {
    let mut synced = Synced {
        stats: Stats::default(),
        host: HostStats::default(),
        at: Instant::now(),
    };
    let shutdown = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "no signal handler; running until killed");
            std::future::pending::<()>().await;
        }
    };
    host::serve(
        &sock,
        &mut host,
        |h| metrics.sync(h, &mut synced),
        || metrics.send_errors.inc(),
        shutdown,
    )
    .await;
    tracing::info!("interrupted; the switch's state goes with it");
    Ok(())
}

/// The pipeline's counters at the last sync, for deltas and rates.
struct Synced {
    stats: Stats,
    host: HostStats,
    at: Instant,
}

struct Metrics {
    registry: Registry,
    epoch: IntGauge,
    sealed: IntGauge,
    token_visits: IntCounter,
    rotations: IntCounter,
    numbers: IntCounter,
    nonempty_visits: IntCounter,
    tickets: IntCounter,
    grants: IntCounter,
    rejects: IntCounter,
    tokens_dropped: IntCounter,
    rotations_per_sec: Gauge,
    numbers_per_sec: Gauge,
    batch_per_visit: Gauge,
    packets_in: IntCounterVec,
    decode_errors: IntCounter,
    send_errors: IntCounter,
    tokens_held: IntCounter,
    held_seconds: Counter,
}

/// Message types and their metric labels.
const PACKET_TYPES: &[(u8, &str)] = &[
    (msg_type::REQUEST, "request"),
    (msg_type::TICKET, "ticket"),
    (msg_type::GRANT, "grant"),
    (msg_type::REJECT, "reject"),
    (msg_type::ANNOUNCE, "announce"),
    (msg_type::TOKEN, "token"),
    (msg_type::SEAL, "seal"),
    (msg_type::INSTALL, "install"),
    (msg_type::INJECT, "inject"),
    (msg_type::PROBE, "probe"),
    (msg_type::STATUS, "status"),
    (msg_type::ALARM, "alarm"),
];

impl Metrics {
    fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> anyhow::Result<Gauge> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let int_gauge = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let packets_in = IntCounterVec::new(
            Opts::new(
                "seq_packets_in_total",
                "Sequencer packets received, by type",
            ),
            &["type"],
        )?;
        registry.register(Box::new(packets_in.clone()))?;
        Ok(Self {
            epoch: int_gauge("seq_epoch", "Installed epoch (0 = none since start)")?,
            sealed: int_gauge("seq_sealed", "1 if the installed epoch is sealed")?,
            token_visits: counter("seq_token_visits_total", "Token visits accepted")?,
            rotations: counter(
                "seq_token_rotations_total",
                "Token visits at the head switch (full rotations)",
            )?,
            numbers: counter(
                "seq_numbers_total",
                "Global numbers assigned at this switch",
            )?,
            nonempty_visits: counter(
                "seq_nonempty_visits_total",
                "Token visits that announced numbers",
            )?,
            tickets: counter("seq_tickets_total", "Requests given a new ticket")?,
            grants: counter(
                "seq_grants_total",
                "Retransmitted requests answered with their numbers",
            )?,
            rejects: counter("seq_rejects_total", "Requests rejected")?,
            tokens_dropped: counter(
                "seq_tokens_dropped_total",
                "Tokens of a newer epoch dropped (not installed)",
            )?,
            rotations_per_sec: gauge(
                "seq_token_rotations_per_second",
                "Rotations/s over the last second",
            )?,
            numbers_per_sec: gauge("seq_numbers_per_second", "Numbers/s over the last second")?,
            batch_per_visit: gauge(
                "seq_batch_per_visit",
                "Mean numbers per non-empty visit, last second",
            )?,
            decode_errors: counter("seq_decode_errors_total", "Packets dropped as undecodable")?,
            send_errors: counter("seq_send_errors_total", "Packets the OS refused to send")?,
            tokens_held: counter(
                "seq_tokens_held_total",
                "Idle tokens parked by the head (idle pacing)",
            )?,
            held_seconds: {
                let c = Counter::new(
                    "seq_token_held_seconds_total",
                    "Time idle tokens spent parked at the head",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            packets_in,
            registry,
        })
    }

    /// Copies the pipeline's and the host's counters into Prometheus and derives the
    /// per-second gauges.
    fn sync(&self, host: &Host, last: &mut Synced) {
        let pipeline = host.pipeline();
        let now = pipeline.stats();
        let prev = last.stats;
        let secs = last.at.elapsed().as_secs_f64().max(1e-3);
        self.token_visits
            .inc_by(now.token_visits - prev.token_visits);
        self.rotations.inc_by(now.rotations - prev.rotations);
        self.numbers.inc_by(now.numbers - prev.numbers);
        self.nonempty_visits
            .inc_by(now.nonempty_visits - prev.nonempty_visits);
        self.tickets.inc_by(now.tickets - prev.tickets);
        self.grants.inc_by(now.grants - prev.grants);
        self.rejects.inc_by(now.rejects - prev.rejects);
        self.tokens_dropped
            .inc_by(now.tokens_dropped - prev.tokens_dropped);
        let visits = now.nonempty_visits - prev.nonempty_visits;
        let numbers = now.numbers - prev.numbers;
        self.rotations_per_sec
            .set((now.rotations - prev.rotations) as f64 / secs);
        self.numbers_per_sec.set(numbers as f64 / secs);
        self.batch_per_visit.set(if visits == 0 {
            0.0
        } else {
            numbers as f64 / visits as f64
        });
        let h = host.stats();
        let hp = last.host;
        for (code, name) in PACKET_TYPES {
            let i = usize::from(*code);
            let (n, p) = (h.packets_in[i], hp.packets_in[i]);
            self.packets_in.with_label_values(&[name]).inc_by(n - p);
        }
        self.decode_errors
            .inc_by(h.decode_errors - hp.decode_errors);
        self.tokens_held.inc_by(h.tokens_held - hp.tokens_held);
        self.held_seconds
            .inc_by((h.held_time - hp.held_time).as_secs_f64());
        let status = pipeline.status();
        self.epoch.set(i64::from(status.epoch));
        self.sealed
            .set(i64::from(status.flags & status_flags::SEALED != 0));
        *last = Synced {
            stats: now,
            host: h,
            at: Instant::now(),
        };
    }

    fn render(&self) -> Vec<u8> {
        let mut body = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut body) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        body
    }
}

/// Most metrics connections served at once; more wait in the listen backlog.
const MAX_METRICS_CONNECTIONS: usize = 16;

/// A minimal HTTP/1.1 endpoint: `GET /metrics` and nothing else.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let served =
                tokio::time::timeout(Duration::from_secs(5), serve_one(stream, &metrics)).await;
            if !matches!(served, Ok(Ok(()))) {
                tracing::debug!("metrics request failed or timed out");
            }
            drop(permit);
        });
    }
}

async fn serve_one(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    // Read the request head, at most 4 KiB: only the request line matters.
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?")
    {
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", b"only /metrics is served\n".to_vec())
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}
