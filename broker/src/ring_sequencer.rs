//! [`Sequencer`] over the switch ring (`sequencer-p4/PROTOCOL.md`, "Issuing numbers").
//!
//! One reservation is one `Request` to the broker's home switch. The switch answers with a
//! `Ticket` (local offsets, resolved at its next token visit), and the numbers become known
//! when the matching `Announce` (or, after a lost announcement, a `Grant`) arrives. The
//! protocol logic lives in [`Core`], a socket-free state machine (packets and clock in,
//! packets and completions out) so it can be tested message by message; [`RingSequencer`]
//! drives it from one tokio task that owns the UDP socket.
//!
//! Rules this client keeps, and why:
//! * A retransmission is the SAME request (`client, req_id, count, epoch`): the switch's
//!   dedup table then answers with the same ticket, and never allocates twice.
//! * A request never grows once sent (real-time order, PROTOCOL.md guarantee 2), and never
//!   asks for more than the epoch's `max_visit` (W): the switch would refuse it, and two
//!   requests do not give consecutive numbers, so larger reservations fail with
//!   [`SequencerError::TooMany`]; [`Sequencer::max_batch`] tells `SequencerClient` the limit.
//! * `Expired`, or a seal / new epoch: the old ticket's numbers become holes and a new request
//!   (new `req_id`) is sent. Tickets of earlier requests of the same reservation stay valid:
//!   whichever resolves first wins, the rest are holes (as in `sequencer_p4::sim`).
//! * Everything is bounded: pending reservations, requests per reservation, time per
//!   reservation, HTTP response size and time.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sequencer_p4::config::RingConfig;
use sequencer_p4::wire::{
    Announce, Grant, Message, Reject, RejectReason, Request, Ticket, MAX_PACKET,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::sequencer::{ReserveFuture, Sequencer, SequencerError};

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

/// What [`Core`] asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(SocketAddrV4, Message),
    /// Reservation `op` finished.
    Done(u64, Result<u64, String>, DoneKind),
    /// The configuration may have changed: fetch it (the driver rate-limits).
    FetchConfig,
}

/// How a reservation ended, so the driver can map it to a [`SequencerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneKind {
    Ok,
    TooMany,
    Unavailable,
}

/// A ticket this client holds: numbers `local_off..local_off+count` of `switch_id`, global
/// at visit `visit` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    req_id: u64,
    epoch: u32,
    switch_id: u16,
    visit: u64,
    local_off: u64,
}

#[derive(Debug)]
struct Op {
    count: u32,
    /// Epoch and switch of the current request (meaningful once `req_ids` is non-empty).
    epoch: u32,
    home: SocketAddrV4,
    /// Every request sent for this reservation; the last is the current one.
    req_ids: Vec<u64>,
    sends: u32,
    last_send: Instant,
    deadline: Instant,
    tickets: Vec<Held>,
}

/// The request/response state machine of one client, without sockets or timers.
pub struct Core {
    client: u64,
    broker_id: u64,
    next_req: u64,
    next_op: u64,
    config: Option<RingConfig>,
    opts: RingOptions,
    ops: HashMap<u64, Op>,
    /// Every number handed out must be at or above this (offsets already in the logs).
    floor: u64,
    metrics: Arc<Metrics>,
}

impl Core {
    pub fn new(
        client: u64,
        broker_id: u64,
        floor: u64,
        opts: RingOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            broker_id,
            next_req: 1,
            next_op: 1,
            config: None,
            opts,
            ops: HashMap::new(),
            floor,
            metrics,
        }
    }

    pub fn config(&self) -> Option<&RingConfig> {
        self.config.as_ref()
    }

    pub fn pending(&self) -> usize {
        self.ops.len()
    }

    /// Starts a reservation of `count` numbers; returns its id.
    pub fn start(&mut self, count: u64, now: Instant) -> (u64, Vec<Action>) {
        let id = self.next_op;
        self.next_op += 1;
        let mut out = Vec::new();
        let max = self
            .config
            .as_ref()
            .map_or(u64::from(u32::MAX), |c| u64::from(c.max_visit));
        if count == 0 || count > max {
            out.push(Action::Done(
                id,
                Err(format!(
                    "{count} numbers; one ring request carries 1..={max}"
                )),
                DoneKind::TooMany,
            ));
            return (id, out);
        }
        if self.ops.len() >= self.opts.max_pending {
            out.push(Action::Done(
                id,
                Err(format!("{} reservations already in flight", self.ops.len())),
                DoneKind::Unavailable,
            ));
            return (id, out);
        }
        let op = Op {
            count: count as u32,
            epoch: 0,
            home: SocketAddrV4::new([0, 0, 0, 0].into(), 0),
            req_ids: Vec::new(),
            sends: 0,
            last_send: now,
            deadline: now + self.opts.deadline,
            tickets: Vec::new(),
        };
        self.ops.insert(id, op);
        if self.config.is_some() {
            self.reissue(id, now, &mut out);
        } else {
            out.push(Action::FetchConfig);
        }
        (id, out)
    }

    /// Adopts a fetched configuration unless it is older than the one we have, and moves
    /// every reservation whose request belongs to an older epoch (or none yet) into it.
    pub fn on_config(&mut self, cfg: RingConfig, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.config.as_ref().is_some_and(|c| c.epoch > cfg.epoch) {
            return out;
        }
        if cfg.members.is_empty() || cfg.max_visit == 0 {
            tracing::warn!(
                epoch = cfg.epoch,
                "ring configuration without members or W; ignored"
            );
            return out;
        }
        self.metrics.ring_epoch.set(i64::from(cfg.epoch));
        let epoch = cfg.epoch;
        let max = cfg.max_visit;
        self.config = Some(cfg);
        let mut ids: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| op.req_ids.is_empty() || op.epoch < epoch)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if self.ops.get(&id).is_some_and(|op| op.count > max) {
                self.ops.remove(&id);
                out.push(Action::Done(
                    id,
                    Err(format!("the ring's per-request limit is now {max}")),
                    DoneKind::TooMany,
                ));
                continue;
            }
            self.reissue(id, now, &mut out);
        }
        out
    }

    /// A new request (new req_id) for reservation `id` in the current configuration.
    fn reissue(&mut self, id: u64, now: Instant, out: &mut Vec<Action>) {
        let Some(cfg) = &self.config else {
            out.push(Action::FetchConfig);
            return;
        };
        let Some(home) = cfg.home(self.broker_id).map(|m| m.addr) else {
            out.push(Action::FetchConfig);
            return;
        };
        let epoch = cfg.epoch;
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if op.req_ids.len() >= self.opts.max_requests_per_reservation {
            let n = op.req_ids.len();
            self.ops.remove(&id);
            out.push(Action::Done(
                id,
                Err(format!("gave up after {n} requests")),
                DoneKind::Unavailable,
            ));
            return;
        }
        if !op.req_ids.is_empty() {
            self.metrics.ring_reissues.inc();
        }
        let req_id = self.next_req;
        self.next_req += 1;
        op.req_ids.push(req_id);
        op.epoch = epoch;
        op.home = home;
        op.sends = 0;
        Self::send(self.client, op, now, out);
    }

    fn send(client: u64, op: &mut Op, now: Instant, out: &mut Vec<Action>) {
        let Some(&req_id) = op.req_ids.last() else {
            return;
        };
        op.sends += 1;
        op.last_send = now;
        out.push(Action::Send(
            op.home,
            Message::Request(Request {
                epoch: op.epoch,
                count: op.count,
                client,
                req_id,
            }),
        ));
    }

    /// Deadlines and retransmissions.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let mut ids: Vec<u64> = self.ops.keys().copied().collect();
        ids.sort_unstable();
        let mut fetch = false;
        for id in ids {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            if now >= op.deadline {
                self.ops.remove(&id);
                out.push(Action::Done(
                    id,
                    Err("no numbers from the ring before the deadline".into()),
                    DoneKind::Unavailable,
                ));
                continue;
            }
            if now < op.last_send + self.opts.rto {
                continue;
            }
            if op.req_ids.is_empty() {
                // Still waiting for a configuration.
                op.last_send = now;
                fetch = true;
                continue;
            }
            self.metrics.ring_retransmits.inc();
            Self::send(self.client, op, now, &mut out);
            if op.sends % self.opts.refetch_after_sends.max(1) == 0 {
                fetch = true;
            }
        }
        if fetch {
            out.push(Action::FetchConfig);
        }
        out
    }

    /// One packet from the network. Anything not meant for this client is ignored.
    pub fn on_packet(&mut self, msg: &Message, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match msg {
            Message::Ticket(t) => self.on_ticket(t),
            Message::Grant(g) => self.on_grant(g, &mut out),
            Message::Announce(a) => self.on_announce(a, &mut out),
            Message::Reject(r) => self.on_reject(r, now, &mut out),
            _ => {}
        }
        out
    }

    fn find_by_req(&self, req_id: u64) -> Option<u64> {
        self.ops
            .iter()
            .find(|(_, op)| op.req_ids.contains(&req_id))
            .map(|(id, _)| *id)
    }

    fn on_ticket(&mut self, t: &Ticket) {
        if t.client != self.client {
            return;
        }
        let Some(id) = self.find_by_req(t.req_id) else {
            return;
        };
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if t.count != op.count {
            tracing::debug!(req_id = t.req_id, "ticket with a different count ignored");
            return;
        }
        let held = Held {
            req_id: t.req_id,
            epoch: t.epoch,
            switch_id: t.switch_id,
            visit: t.visit,
            local_off: t.local_off,
        };
        // Bounded: one entry per distinct ticket, at most one per request plus the (rare)
        // fresh ticket after a dedup-row collision; cap it anyway against a hostile peer.
        if !op.tickets.contains(&held)
            && op.tickets.len() < 4 * self.opts.max_requests_per_reservation
        {
            op.tickets.push(held);
        }
    }

    fn on_grant(&mut self, g: &Grant, out: &mut Vec<Action>) {
        if g.client != self.client {
            return;
        }
        let Some(id) = self.find_by_req(g.req_id) else {
            return;
        };
        if self.ops.get(&id).is_some_and(|op| op.count == g.count) {
            self.complete(id, g.gsn, |h| h.req_id == g.req_id, out);
        }
    }

    /// One announcement covers every ticket of that visit, so it can resolve many
    /// reservations of this client at once (all requests batched into one visit).
    fn on_announce(&mut self, a: &Announce, out: &mut Vec<Action>) {
        let mut found: Vec<(u64, Held, u32)> = self
            .ops
            .iter()
            .filter_map(|(id, op)| {
                op.tickets
                    .iter()
                    .find(|t| {
                        t.epoch == a.epoch && t.switch_id == a.switch_id && t.visit == a.visit
                    })
                    .map(|t| (*id, *t, op.count))
            })
            .collect();
        found.sort_unstable_by_key(|f| f.0);
        for (id, held, count) in found {
            let off = held.local_off;
            // Peer input: the ticket must lie inside the announced range.
            let inside = off >= a.local_lo
                && off
                    .checked_add(u64::from(count))
                    .is_some_and(|end| end <= a.local_hi);
            match a
                .base
                .checked_add(off.wrapping_sub(a.local_lo))
                .filter(|_| inside)
            {
                Some(gsn) => self.complete(id, gsn, |h| *h == held, out),
                None => tracing::warn!(?a, "announcement does not cover our ticket; ignored"),
            }
        }
    }

    fn on_reject(&mut self, r: &Reject, now: Instant, out: &mut Vec<Action>) {
        if r.client != self.client {
            return;
        }
        // Only the current request's rejection matters: an older one was already replaced.
        let Some(id) = self
            .ops
            .iter()
            .find(|(_, op)| op.req_ids.last() == Some(&r.req_id))
            .map(|(id, _)| *id)
        else {
            return;
        };
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        let (count, op_epoch) = (op.count, op.epoch);
        match RejectReason::from_u8(r.reason) {
            Some(RejectReason::Expired) => {
                // The ticket's announcement is gone: those numbers are holes.
                self.metrics.ring_holes.inc_by(u64::from(count));
                self.reissue(id, now, out);
            }
            Some(RejectReason::NotInstalled | RejectReason::WrongEpoch | RejectReason::Sealed) => {
                if self.config.as_ref().is_some_and(|c| c.epoch > op_epoch) {
                    self.reissue(id, now, out);
                } else {
                    out.push(Action::FetchConfig);
                }
            }
            // The visit's batch is full: the retransmission timer sends the same request
            // again after the token has passed.
            Some(RejectReason::Busy) => self.metrics.ring_busy.inc(),
            Some(RejectReason::BadRequest) | None => {
                self.ops.remove(&id);
                out.push(Action::Done(
                    id,
                    Err(format!(
                        "switch {} refused the request (reason {})",
                        r.switch_id, r.reason
                    )),
                    DoneKind::Unavailable,
                ));
            }
        }
    }

    /// Reservation `id` got `gsn`; `resolved` tells which held tickets that answer covers.
    fn complete(
        &mut self,
        id: u64,
        gsn: u64,
        resolved: impl Fn(&Held) -> bool,
        out: &mut Vec<Action>,
    ) {
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        // Every other ticket of this reservation will never be used.
        let extra = op.tickets.iter().filter(|h| !resolved(h)).count() as u64;
        self.metrics.ring_holes.inc_by(extra * u64::from(op.count));
        let end = gsn.checked_add(u64::from(op.count));
        if gsn < self.floor || end.is_none_or(|e| e > i64::MAX as u64) {
            // The ring's epochs must start above every offset in the logs; a ring that
            // does not is misconfigured, and using its numbers would reorder the logs.
            self.metrics.ring_holes.inc_by(u64::from(op.count));
            out.push(Action::Done(
                id,
                Err(format!(
                    "ring issued {gsn}, below the stored offsets' floor {} or out of range",
                    self.floor
                )),
                DoneKind::Unavailable,
            ));
            return;
        }
        out.push(Action::Done(id, Ok(gsn), DoneKind::Ok));
    }
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
        let mut core = Core::new(client, broker_id, floor, opts.clone(), Arc::clone(&metrics));
        let max_batch = Arc::new(AtomicU64::new(DEFAULT_MAX_BATCH));
        match fetch_config(&source, opts.fetch_timeout).await {
            Ok(cfg) => {
                tracing::info!(
                    epoch = cfg.epoch,
                    members = cfg.members.len(),
                    "ring configuration"
                );
                max_batch.store(u64::from(cfg.max_visit), Ordering::Relaxed);
                core.on_config(cfg, Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "no ring configuration yet; will retry"),
        }
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(core, socket, source, rx, Arc::clone(&max_batch), opts));
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

/// Batch limit before the first configuration says what W is.
const DEFAULT_MAX_BATCH: u64 = 1024;

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
) {
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
                            DoneKind::Ok | DoneKind::Unavailable => SequencerError::Unavailable(e),
                        });
                        let _ = reply.send(res);
                    }
                }
                Action::FetchConfig => {
                    let due = last_fetch.is_none_or(|t| t.elapsed() >= opts.min_fetch_interval);
                    if !fetching && due {
                        fetching = true;
                        last_fetch = Some(Instant::now());
                        core.metrics.ring_config_fetches.inc();
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequencer_p4::config::RingMember;

    fn addr(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), port)
    }

    fn ring(epoch: u32, base: u64) -> RingConfig {
        RingConfig {
            epoch,
            base,
            limit: base + (1 << 30),
            max_visit: 100,
            members: (0..2)
                .map(|i| RingMember {
                    switch_id: i,
                    addr: addr(7000 + i),
                    boot: 1,
                })
                .collect(),
            head: 0,
        }
    }

    const CLIENT: u64 = 0xC0FFEE;

    fn core() -> Core {
        // broker 1 → home is member 1 (port 7001).
        let mut c = Core::new(
            CLIENT,
            1,
            0,
            RingOptions::default(),
            Arc::new(Metrics::new()),
        );
        assert!(c.on_config(ring(1, 1000), Instant::now()).is_empty());
        c
    }

    fn sent(actions: &[Action]) -> Vec<(SocketAddrV4, Request)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(to, Message::Request(r)) => Some((*to, *r)),
                _ => None,
            })
            .collect()
    }

    fn done(actions: &[Action]) -> Vec<(u64, Result<u64, String>, DoneKind)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Done(id, r, k) => Some((*id, r.clone(), *k)),
                _ => None,
            })
            .collect()
    }

    fn ticket(r: &Request, switch_id: u16, visit: u64, local_off: u64) -> Message {
        Message::Ticket(Ticket {
            epoch: r.epoch,
            switch_id,
            count: r.count,
            client: r.client,
            req_id: r.req_id,
            visit,
            local_off,
        })
    }

    fn reject(r: &Request, reason: RejectReason, switch_epoch: u32) -> Message {
        Message::Reject(Reject {
            epoch: switch_epoch,
            switch_id: 1,
            reason: reason as u8,
            req_epoch: r.epoch,
            client: r.client,
            req_id: r.req_id,
        })
    }

    #[test]
    fn ticket_then_announce_resolves() {
        let mut c = core();
        let now = Instant::now();
        let (id, out) = c.start(5, now);
        let reqs = sent(&out);
        assert_eq!(reqs.len(), 1);
        let (to, r) = reqs[0];
        assert_eq!(to, addr(7001));
        assert_eq!((r.epoch, r.count, r.client), (1, 5, CLIENT));
        assert!(c.on_packet(&ticket(&r, 1, 3, 40), now).is_empty());
        // An announcement of another switch or visit resolves nothing.
        let other = Announce {
            epoch: 1,
            switch_id: 0,
            visit: 3,
            local_lo: 30,
            local_hi: 50,
            base: 5000,
        };
        assert!(c.on_packet(&Message::Announce(other), now).is_empty());
        let ann = Announce {
            switch_id: 1,
            ..other
        };
        let out = c.on_packet(&Message::Announce(ann), now);
        assert_eq!(done(&out), vec![(id, Ok(5010), DoneKind::Ok)]);
        assert_eq!(c.pending(), 0);
        // A duplicate announcement changes nothing.
        assert!(c.on_packet(&Message::Announce(ann), now).is_empty());
    }

    #[test]
    fn one_announcement_resolves_every_ticket_of_its_visit() {
        let mut c = core();
        let now = Instant::now();
        let (a, out_a) = c.start(2, now);
        let (b, out_b) = c.start(3, now);
        let (_, ra) = sent(&out_a)[0];
        let (_, rb) = sent(&out_b)[0];
        c.on_packet(&ticket(&ra, 1, 1, 0), now);
        c.on_packet(&ticket(&rb, 1, 1, 2), now);
        let ann = Announce {
            epoch: 1,
            switch_id: 1,
            visit: 1,
            local_lo: 0,
            local_hi: 5,
            base: 100,
        };
        let mut got = done(&c.on_packet(&Message::Announce(ann), now));
        got.sort_by_key(|d| d.0);
        assert_eq!(
            got,
            vec![(a, Ok(100), DoneKind::Ok), (b, Ok(102), DoneKind::Ok)]
        );
    }

    #[test]
    fn timeout_retransmits_the_same_request_and_grant_resolves() {
        let mut c = core();
        let t0 = Instant::now();
        let (id, out) = c.start(7, t0);
        let (_, r) = sent(&out)[0];
        assert!(c.on_tick(t0 + Duration::from_millis(10)).is_empty());
        let out = c.on_tick(t0 + Duration::from_millis(60));
        assert_eq!(sent(&out), vec![(addr(7001), r)], "same request again");
        let grant = Grant {
            epoch: 1,
            switch_id: 1,
            count: 7,
            client: CLIENT,
            req_id: r.req_id,
            gsn: 777,
        };
        // Someone else's grant is not ours.
        let foreign = Grant { client: 1, ..grant };
        assert!(c.on_packet(&Message::Grant(foreign), t0).is_empty());
        let out = c.on_packet(&Message::Grant(grant), t0);
        assert_eq!(done(&out), vec![(id, Ok(777), DoneKind::Ok)]);
    }

    #[test]
    fn expired_becomes_a_hole_and_a_new_request() {
        let mut c = core();
        let now = Instant::now();
        let (_, out) = c.start(3, now);
        let (_, r) = sent(&out)[0];
        let out = c.on_packet(&reject(&r, RejectReason::Expired, 1), now);
        let again = sent(&out);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].1.req_id, r.req_id);
        assert_eq!(again[0].1.count, 3);
        assert_eq!(c.metrics.ring_holes.get(), 3);
    }

    #[test]
    fn sealed_fetches_config_then_moves_to_the_new_epoch() {
        let mut c = core();
        let now = Instant::now();
        let (id, out) = c.start(4, now);
        let (_, r) = sent(&out)[0];
        c.on_packet(&ticket(&r, 1, 9, 0), now);
        let out = c.on_packet(&reject(&r, RejectReason::Sealed, 1), now);
        assert_eq!(out, vec![Action::FetchConfig]);
        // An older configuration is ignored.
        assert!(c.on_config(ring(0, 0), now).is_empty());
        let out = c.on_config(ring(2, 1 << 20), now);
        let reqs = sent(&out);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].1.epoch, 2);
        assert_ne!(reqs[0].1.req_id, r.req_id);
        // A late rejection of the old request is ignored.
        assert!(c
            .on_packet(&reject(&r, RejectReason::Sealed, 2), now)
            .is_empty());
        let grant = Grant {
            epoch: 2,
            switch_id: 1,
            count: 4,
            client: CLIENT,
            req_id: reqs[0].1.req_id,
            gsn: 1 << 20,
        };
        let out = c.on_packet(&Message::Grant(grant), now);
        assert_eq!(done(&out), vec![(id, Ok(1 << 20), DoneKind::Ok)]);
        // The old epoch's ticket will never be used.
        assert_eq!(c.metrics.ring_holes.get(), 4);
    }

    #[test]
    fn wrong_epoch_with_newer_known_config_reissues_at_once() {
        let mut c = core();
        let now = Instant::now();
        let (_, out) = c.start(1, now);
        let (_, r) = sent(&out)[0];
        c.config = Some(ring(3, 9000));
        let out = c.on_packet(&reject(&r, RejectReason::WrongEpoch, 3), now);
        assert_eq!(sent(&out)[0].1.epoch, 3);
    }

    #[test]
    fn limits_are_enforced() {
        let mut c = core();
        let now = Instant::now();
        let (id, out) = c.start(101, now);
        assert_eq!(done(&out)[0].0, id);
        assert_eq!(done(&out)[0].2, DoneKind::TooMany);
        let (_, out) = c.start(0, now);
        assert_eq!(done(&out)[0].2, DoneKind::TooMany);
        // Busy: nothing now, retransmission later.
        let (id, out) = c.start(2, now);
        let (_, r) = sent(&out)[0];
        assert!(c
            .on_packet(&reject(&r, RejectReason::Busy, 1), now)
            .is_empty());
        // Deadline.
        let out = c.on_tick(now + RingOptions::default().deadline);
        assert_eq!(
            done(&out),
            vec![(
                id,
                Err("no numbers from the ring before the deadline".into()),
                DoneKind::Unavailable
            )]
        );
        // Announcement that does not cover the ticket is ignored (no panic on underflow).
        let (_, out) = c.start(5, now);
        let (_, r) = sent(&out)[0];
        c.on_packet(&ticket(&r, 1, 1, 3), now);
        let bad = Announce {
            epoch: 1,
            switch_id: 1,
            visit: 1,
            local_lo: 4,
            local_hi: 6,
            base: u64::MAX - 4,
        };
        assert!(c.on_packet(&Message::Announce(bad), now).is_empty());
        let full = Announce {
            local_lo: 0,
            local_hi: 8,
            ..bad
        };
        assert!(
            done(&c.on_packet(&Message::Announce(full), now))[0]
                .1
                .is_err(),
            "overflow"
        );
    }

    #[test]
    fn silence_triggers_a_config_fetch_and_a_new_home() {
        let mut c = core();
        let t0 = Instant::now();
        let (_, out) = c.start(1, t0);
        let (_, r) = sent(&out)[0];
        let rto = RingOptions::default().rto;
        let mut fetches = 0;
        for i in 1..=4u32 {
            let out = c.on_tick(t0 + rto * i);
            assert_eq!(sent(&out), vec![(addr(7001), r)], "same request, same home");
            fetches += out.iter().filter(|a| **a == Action::FetchConfig).count();
        }
        assert_eq!(
            fetches, 1,
            "one fetch after refetch_after_sends silent sends"
        );
        // The ring was reconfigured without our home switch: the request moves.
        let mut next = ring(2, 50_000);
        next.members.truncate(1);
        let out = c.on_config(next, t0);
        let reqs = sent(&out);
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].0, reqs[0].1.epoch), (addr(7000), 2));
        assert_eq!(c.metrics.ring_retransmits.get(), 4);
        assert_eq!(c.metrics.ring_reissues.get(), 1);
    }

    #[test]
    fn without_config_waits_and_fetches() {
        let mut c = Core::new(
            CLIENT,
            0,
            0,
            RingOptions::default(),
            Arc::new(Metrics::new()),
        );
        let now = Instant::now();
        let (_, out) = c.start(3, now);
        assert_eq!(out, vec![Action::FetchConfig]);
        let out = c.on_config(ring(1, 0), now);
        assert_eq!(sent(&out)[0].0, addr(7000));
    }

    #[test]
    fn http_response_parsing() {
        let cfg = ring(4, 10);
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
}
