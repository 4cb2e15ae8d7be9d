//! [`Sequencer`] over the switch ring (`sequencer-p4/PROTOCOL.md`, "Issuing numbers").
//!
//! One reservation is one `Request` to the broker's home switch. The switch answers with a
//! `Ticket` (local offsets, resolved at its next token visit), and the numbers become known
//! when the matching `Announce` (or, after a lost announcement, a `Grant`) arrives. The
//! protocol logic is [`sequencer_p4::client::Core`], a socket-free state machine (packets and
//! clock in, packets and completions out) that `sequencer-p4`'s deterministic simulation
//! also drives; [`RingSequencer`] runs it from one tokio task that owns the UDP socket, and
//! adds what needs I/O: `GET /ring` from the controllers and Prometheus metrics.
//!
//! A ring whose per-request limit W is below the broker's per-batch record limit
//! ([`MAX_RECORDS_PER_BATCH`]) is refused: a Kafka batch needs consecutive numbers, which
//! only one ring request gives, so such a ring could not number the largest valid batch.
//! At start that is an error ([`RingError::Refused`]); a later epoch with a small W makes
//! reservations fail with the same explanation until a usable epoch is published.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use sequencer_p4::client::{Action, ClientOptions, ClientStats, Core, DoneKind};
use sequencer_p4::config::RingConfig;
use sequencer_p4::wire::{Message, MAX_PACKET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::sequencer::{ReserveFuture, Sequencer, SequencerError};
use crate::storage::batch::MAX_RECORDS_PER_BATCH;

/// Tunables of the ring client. Defaults suit a loopback or rack-local ring.
#[derive(Debug, Clone)]
pub struct RingOptions {
    /// Retransmit a request that has been neither resolved nor rejected for this long. A
    /// ticket waits up to one token rotation, so this must exceed a rotation.
    pub rto: Duration,
    /// A reservation that has not completed in this time fails (`Unavailable`).
    pub deadline: Duration,
    /// Most reservations in flight at once; more fail at once (`Unavailable`).
    pub max_pending: usize,
    /// Most distinct requests (req_ids) one reservation may send before it fails.
    pub max_requests_per_reservation: usize,
    /// After this many sends of one request without an answer, ask the controllers for the
    /// configuration: the home switch may be dead and the ring reconfigured without it.
    pub refetch_after_sends: u32,
    /// Connect + request + response time limit of one `GET /ring`.
    pub fetch_timeout: Duration,
    /// Least time between two configuration fetches (one in flight at most).
    pub min_fetch_interval: Duration,
    /// Refuse a ring whose W (numbers per request) is below this. Default: the largest
    /// batch the broker accepts, so every valid batch can be numbered.
    pub min_max_visit: u32,
    /// After this long with nothing in flight, a new request also probes the head switch to
    /// release an idle-parked token ([`ClientOptions::idle_nudge`]).
    pub idle_nudge: Duration,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(50),
            deadline: Duration::from_secs(10),
            max_pending: 1024,
            max_requests_per_reservation: 64,
            refetch_after_sends: 4,
            fetch_timeout: Duration::from_secs(2),
            min_fetch_interval: Duration::from_millis(20),
            min_max_visit: MAX_RECORDS_PER_BATCH as u32,
            idle_nudge: Duration::from_millis(1),
        }
    }
}

impl RingOptions {
    /// The protocol core's part of the options.
    pub fn core(&self) -> ClientOptions {
        ClientOptions {
            rto: self.rto,
            deadline: self.deadline,
            max_pending: self.max_pending,
            max_requests_per_reservation: self.max_requests_per_reservation,
            refetch_after_sends: self.refetch_after_sends,
            min_max_visit: self.min_max_visit,
            idle_nudge: self.idle_nudge,
        }
    }
}

/// Where the ring configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// Controller admin addresses (`host:port`), tried in order with `GET /ring`.
    Controllers(Vec<String>),
    /// A configuration that never changes (tests, fixed rings).
    Fixed(RingConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("no ring controller configured")]
    NoControllers,
    #[error("ring controller {addr}: {reason}")]
    Fetch { addr: String, reason: String },
    #[error("the ring is not usable by this broker: {0}")]
    Refused(String),
    #[error("cannot bind the ring client socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Largest `GET /ring` response accepted (head + body).
const MAX_HTTP_RESPONSE: usize = 1 << 20;

/// Fetches the current configuration: the first controller that answers wins.
pub async fn fetch_config(
    source: &ConfigSource,
    timeout: Duration,
) -> Result<RingConfig, RingError> {
    let addrs = match source {
        ConfigSource::Fixed(cfg) => return Ok(cfg.clone()),
        ConfigSource::Controllers(addrs) => addrs,
    };
    let mut last = RingError::NoControllers;
    for addr in addrs {
        match tokio::time::timeout(timeout, http_get_ring(addr)).await {
            Ok(Ok(cfg)) => return Ok(cfg),
            Ok(Err(reason)) => {
                last = RingError::Fetch {
                    addr: addr.clone(),
                    reason,
                }
            }
            Err(_) => {
                last = RingError::Fetch {
                    addr: addr.clone(),
                    reason: format!("no answer within {timeout:?}"),
                }
            }
        }
    }
    Err(last)
}

/// A deliberately tiny HTTP/1.1 client: one GET, `Connection: close`, body delimited by
/// Content-Length or EOF (no chunked encoding), everything bounded by [`MAX_HTTP_RESPONSE`].
/// The caller bounds the time.
async fn http_get_ring(addr: &str) -> Result<RingConfig, String> {
    let mut sock = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!("GET /ring HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = sock
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        if resp.len() + n > MAX_HTTP_RESPONSE {
            return Err(format!("response larger than {MAX_HTTP_RESPONSE} bytes"));
        }
        resp.extend_from_slice(&chunk[..n]);
        if let Some(body) = complete_body(&resp) {
            return parse_ring_response(&resp[..body]);
        }
    }
    parse_ring_response(&resp)
}

/// Length of the whole response once head and Content-Length body are in, if they are.
fn complete_body(resp: &[u8]) -> Option<usize> {
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&resp[..head_end]).ok()?;
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    let total = head_end.checked_add(len)?;
    (resp.len() >= total).then_some(total)
}

fn parse_ring_response(resp: &[u8]) -> Result<RingConfig, String> {
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("response ended inside the header")?;
    let head = std::str::from_utf8(&resp[..head_end]).map_err(|_| "header is not UTF-8")?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("answered `{status}`"));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("chunked responses are not supported".into());
    }
    let body = &resp[head_end + 4..];
    serde_json::from_slice(body).map_err(|e| format!("body is not a RingConfig: {e}"))
}

/// Copies the core's counters into Prometheus (deltas since the last call).
fn sync_metrics(core: &Core, last: &mut ClientStats, metrics: &Metrics) {
    let now = core.stats();
    metrics.ring_holes.inc_by(now.holes - last.holes);
    metrics
        .ring_retransmits
        .inc_by(now.retransmits - last.retransmits);
    metrics.ring_reissues.inc_by(now.reissues - last.reissues);
    metrics.ring_busy.inc_by(now.busy - last.busy);
    if let Some(c) = core.config() {
        metrics.ring_epoch.set(i64::from(c.epoch));
    }
    *last = now;
}

enum Cmd {
    Reserve(u64, oneshot::Sender<Result<u64, SequencerError>>),
}

/// The ring client: a handle to the task that owns the socket and the [`Core`].
pub struct RingSequencer {
    tx: mpsc::Sender<Cmd>,
    max_batch: Arc<AtomicU64>,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RingSequencer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RingSequencer {
    /// Binds `listen`, fetches the configuration once (a failure is logged, and retried
    /// when the first reservation arrives) and starts the client task.
    pub async fn start(
        source: ConfigSource,
        listen: SocketAddr,
        broker_id: u64,
        floor: u64,
        opts: RingOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RingError> {
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|source| RingError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| RingError::Bind {
            addr: listen,
            source,
        })?;
        // Random per process start, so a restarted broker never matches its old requests.
        let client: u64 = rand::random();
        let mut core = Core::new(client, broker_id, floor, opts.core());
        // Until the ring says what W is: the least W this broker accepts.
        let max_batch = Arc::new(AtomicU64::new(u64::from(opts.min_max_visit.max(1))));
        match fetch_config(&source, opts.fetch_timeout).await {
            Ok(cfg) => {
                core.check_config(&cfg).map_err(RingError::Refused)?;
                tracing::info!(
                    epoch = cfg.epoch,
                    members = cfg.members.len(),
                    max_visit = cfg.max_visit,
                    "ring configuration"
                );
                max_batch.store(u64::from(cfg.max_visit), Ordering::Relaxed);
                core.on_config(cfg, Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "no ring configuration yet; will retry"),
        }
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(
            core,
            socket,
            source,
            rx,
            Arc::clone(&max_batch),
            opts,
            metrics,
        ));
        Ok(Self {
            tx,
            max_batch,
            local_addr,
            task,
        })
    }

    /// The UDP address requests are sent from (and announcements come to).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Sequencer for RingSequencer {
    fn reserve(&self, count: u64) -> ReserveFuture<'_> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Cmd::Reserve(count, reply))
                .await
                .map_err(|_| SequencerError::Unavailable("ring client stopped".into()))?;
            rx.await.map_err(|_| {
                SequencerError::Unavailable("ring client dropped the request".into())
            })?
        })
    }

    fn max_batch(&self) -> u64 {
        self.max_batch.load(Ordering::Relaxed).max(1)
    }
}

async fn run(
    mut core: Core,
    socket: UdpSocket,
    source: ConfigSource,
    mut rx: mpsc::Receiver<Cmd>,
    max_batch: Arc<AtomicU64>,
    opts: RingOptions,
    metrics: Arc<Metrics>,
) {
    let mut synced = ClientStats::default();
    let mut waiters: HashMap<u64, (u64, oneshot::Sender<Result<u64, SequencerError>>)> =
        HashMap::new();
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let mut tick = tokio::time::interval((opts.rto / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (cfg_tx, mut cfg_rx) = mpsc::channel::<Result<RingConfig, RingError>>(1);
    let mut fetching = false;
    let mut last_fetch: Option<Instant> = None;
    loop {
        let actions = tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::Reserve(count, reply)) => {
                    let (id, actions) = core.start(count, Instant::now());
                    waiters.insert(id, (count, reply));
                    actions
                }
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((len, _from)) => match Message::decode(&buf[..len]) {
                    Ok(msg) => core.on_packet(&msg, Instant::now()),
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable ring packet dropped");
                        Vec::new()
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "ring socket receive error");
                    Vec::new()
                }
            },
            _ = tick.tick() => core.on_tick(Instant::now()),
            Some(res) = cfg_rx.recv() => {
                fetching = false;
                match res {
                    Ok(cfg) => {
                        let actions = core.on_config(cfg, Instant::now());
                        if let Some(c) = core.config() {
                            max_batch.store(u64::from(c.max_visit), Ordering::Relaxed);
                        }
                        actions
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ring configuration fetch failed");
                        Vec::new()
                    }
                }
            }
        };
        for action in actions {
            match action {
                Action::Send(to, msg) => {
                    if let Err(e) = socket.send_to(&msg.to_bytes(), to).await {
                        // Retransmission covers it.
                        tracing::debug!(%to, error = %e, "ring send failed");
                    }
                }
                Action::Done(id, res, kind) => {
                    if let Some((count, reply)) = waiters.remove(&id) {
                        let res = res.map_err(|e| match kind {
                            DoneKind::TooMany => SequencerError::TooMany(count),
                            DoneKind::Ok | DoneKind::Unavailable | DoneKind::Refused => {
                                SequencerError::Unavailable(e)
                            }
                        });
                        let _ = reply.send(res);
                    }
                }
                Action::FetchConfig => {
                    let due = last_fetch.is_none_or(|t| t.elapsed() >= opts.min_fetch_interval);
                    if !fetching && due {
                        fetching = true;
                        last_fetch = Some(Instant::now());
                        metrics.ring_config_fetches.inc();
                        let source = source.clone();
                        let tx = cfg_tx.clone();
                        let timeout = opts.fetch_timeout;
                        tokio::spawn(async move {
                            let _ = tx.send(fetch_config(&source, timeout).await).await;
                        });
                    }
                }
            }
        }
        sync_metrics(&core, &mut synced, &metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequencer_p4::config::RingMember;
    use std::net::SocketAddrV4;

    fn ring(epoch: u32, base: u64, max_visit: u32) -> RingConfig {
        RingConfig {
            epoch,
            base,
            limit: base + (1 << 30),
            max_visit,
            members: (0..2)
                .map(|i| RingMember {
                    switch_id: i,
                    addr: SocketAddrV4::new([127, 0, 0, 1].into(), 7000 + i),
                    boot: 1,
                })
                .collect(),
            head: 0,
        }
    }

    #[test]
    fn http_response_parsing() {
        let cfg = ring(4, 10, 100);
        let body = serde_json::to_vec(&cfg).expect("json");
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend_from_slice(&body);
        assert_eq!(complete_body(&resp), Some(resp.len()));
        assert_eq!(complete_body(&resp[..resp.len() - 1]), None);
        assert_eq!(parse_ring_response(&resp), Ok(cfg));
        assert!(parse_ring_response(b"HTTP/1.1 503 Unavailable\r\n\r\n").is_err());
        assert!(parse_ring_response(b"HTTP/1.1 200 OK\r\n\r\n{garbage").is_err());
        assert!(parse_ring_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn default_options_refuse_a_ring_that_cannot_number_the_largest_batch() {
        let opts = RingOptions::default();
        assert_eq!(opts.min_max_visit, 1_000_000);
        let core = Core::new(1, 0, 0, opts.core());
        let why = core
            .check_config(&ring(1, 0, 65_536))
            .expect_err("W = 65536 is too small");
        assert!(why.contains("65536") && why.contains("1000000"), "{why}");
        assert!(core.check_config(&ring(1, 0, 1_000_000)).is_ok());
    }

    #[tokio::test]
    async fn start_fails_on_a_small_w_and_serves_max_batch_from_a_good_one() {
        let start = |w| {
            RingSequencer::start(
                ConfigSource::Fixed(ring(1, 0, w)),
                "127.0.0.1:0".parse().expect("addr"),
                0,
                0,
                RingOptions::default(),
                Arc::new(Metrics::new()),
            )
        };
        match start(65_536).await {
            Err(RingError::Refused(why)) => assert!(why.contains("--max-visit"), "{why}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a ring with W = 65536 was accepted"),
        }
        let seq = start(1 << 28).await.expect("W = 2^28 is fine");
        assert_eq!(seq.max_batch(), 1 << 28);
    }
}
