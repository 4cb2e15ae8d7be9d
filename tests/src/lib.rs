//! Helpers for tests that run the real `broker` binary as a child process.
//!
//! [`Broker::start`] spawns the binary on free loopback ports with a fresh
//! temporary data directory and waits until its Kafka port accepts
//! connections. The process is SIGKILLed when the [`Broker`] is dropped. If
//! the test is panicking at that point, the tail of the broker's stderr is
//! printed (libtest shows it with the failure) and the data directory is kept.
//!
//! The binary is taken from `$BROKER_BIN`, else
//! `${CARGO_TARGET_DIR:-/var/cache/gsn/target}/release/broker`. A missing
//! binary is an error, never a silent skip.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where CI keeps its target directory when `CARGO_TARGET_DIR` is not set.
pub const DEFAULT_TARGET_DIR: &str = "/var/cache/gsn/target";

/// How long a starting broker may take to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The broker binary to test, and a description of where the path came from.
pub fn broker_bin() -> (PathBuf, String) {
    if let Some(p) = std::env::var_os("BROKER_BIN").filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), "BROKER_BIN".to_string());
    }
    match std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => (
            PathBuf::from(dir).join("release").join("broker"),
            "$CARGO_TARGET_DIR/release/broker".to_string(),
        ),
        None => (
            PathBuf::from(DEFAULT_TARGET_DIR)
                .join("release")
                .join("broker"),
            format!("{DEFAULT_TARGET_DIR}/release/broker (CARGO_TARGET_DIR unset)"),
        ),
    }
}

/// Ports handed to brokers come from the span below the kernel's ephemeral range: a port
/// found by binding to 0 and closing is ephemeral, and any outgoing connection may take it
/// before the broker binds it. Below the range only explicit binds compete.
const PORT_SPAN: u16 = 12_000;
/// Next candidate, as an offset into the span (u32::MAX: not started yet).
static NEXT_PORT: AtomicU32 = AtomicU32::new(u32::MAX);

/// `n` distinct loopback ports, free for TCP and UDP right now, below the ephemeral range
/// when the machine's range allows it, never the same twice in this process.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let Some((lo, hi)) = port_range() else {
        return ephemeral_ports(n);
    };
    let span = u32::from(hi - lo);
    // A start that differs per process keeps parallel test binaries apart.
    let start = std::process::id().wrapping_mul(7919) % span;
    let _ = NEXT_PORT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        let offset = NEXT_PORT.fetch_add(1, Ordering::SeqCst) % span;
        let port = lo + u16::try_from(offset).context("port offset")?;
        if bindable(port) {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    bail!("no {n} free ports in {lo}..{hi}")
}

/// `[lo, hi)` below the ephemeral range, or None when the range leaves no room.
fn port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let eph_lo = text
        .as_deref()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|w| w.parse::<u16>().ok())
        .unwrap_or(32768);
    let lo = eph_lo.saturating_sub(PORT_SPAN).max(1024);
    (eph_lo.saturating_sub(lo) >= 1000).then_some((lo, eph_lo))
}

/// Nobody holds `port` on 127.0.0.1, for TCP or UDP.
fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn ephemeral_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to find a free port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A running broker process (see the module docs).
pub struct Broker {
    child: Option<Child>,
    binary: PathBuf,
    /// Kafka listener port on 127.0.0.1.
    pub port: u16,
    /// Prometheus `/metrics` port on 127.0.0.1.
    pub metrics_port: u16,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    extra_args: Vec<(String, String)>,
}

impl Broker {
    /// Start a broker with default flags.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Start a broker with extra `--flag value` pairs, e.g.
    /// `[("num-partitions", "3")]`.
    pub fn start_with(extra_args: &[(&str, &str)]) -> Result<Self> {
        let (binary, source) = broker_bin();
        if !binary.is_file() {
            bail!(
                "broker binary not found at {} (from {source}). Build it first with \
                 `cargo build --release -p broker`, or point BROKER_BIN at it.",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("gsn-system-test-")
            .tempdir()
            .context("creating a temporary directory")?;
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir)?;
        let log_path = dir.path().join("broker.stderr.log");
        let ports = free_ports(2)?;
        let mut broker = Broker {
            child: None,
            binary,
            port: ports[0],
            metrics_port: ports[1],
            data_dir,
            log_path,
            dir: Some(dir),
            extra_args: extra_args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--node-id",
            "1",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--advertised-host",
            "127.0.0.1",
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{}", self.metrics_port),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in &self.extra_args {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        args
    }

    fn spawn(&mut self) -> Result<()> {
        let args = self.args();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(log, "\n===== {} {}", self.binary.display(), args.join(" "))?;
        let child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(READY_TIMEOUT)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "broker exited with {status} before accepting connections; stderr tail:\n{}",
                    self.log_tail(60)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "broker did not accept connections on {addr} within {timeout:?}; stderr tail:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of the running broker, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the broker process is running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL the broker and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the broker and wait up to `timeout` for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("broker is not running");
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", child.id());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the broker again with the same ports, flags and data directory
    /// (SIGKILLing it first if it is still running).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// The last `lines` lines of the broker's stderr (all restarts appended).
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let crashed = !self.is_alive() && self.child.is_some();
        self.kill9();
        if std::thread::panicking() || crashed {
            let kept = self.dir.take().map(|d| d.keep());
            eprintln!(
                "----- broker stderr tail ({}; files kept in {:?}) -----\n{}\n-----",
                self.log_path.display(),
                kept,
                self.log_tail(80)
            );
        }
    }
}
