//! Broker-to-broker Raft transport over TCP (its own port, `--raft-listen`).
//!
//! Client side: two connections per peer (a control lane for heartbeats, votes and metadata,
//! a data lane for AppendEntries that carry batches), opened on first use, shared by every
//! Raft group.
//! Requests are pipelined (matched to responses by id) and the writer sends everything
//! queued behind the first request in one write (batched). The queue per peer is bounded: a
//! full queue fails the request at once, which openraft treats as a transient failure. A
//! lost connection fails the requests in flight; the next request reconnects, after a
//! backoff that doubles from 50 ms to 2 s while connects keep failing.
//!
//! Server side: each frame is handled on its own task by the `Handler` (Raft groups answer
//! independently), responses go back on the same connection in completion order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use super::wire::{self, Lane, Request, Response, WireError};

/// Requests queued per peer before callers are refused.
const PEER_QUEUE: usize = 4096;
/// Requests in flight on one inbound connection.
const SERVER_INFLIGHT: usize = 4096;
/// Most bytes gathered into one write.
const WRITE_BATCH_BYTES: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(u64, String),
    #[error("request to peer {0} timed out")]
    Timeout(u64),
    #[error("peer {0}: {1}")]
    Wire(u64, WireError),
}

/// Answers requests that arrive from peers.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send + '_;
}

struct Outgoing {
    frame: Bytes,
    id: u64,
    reply: oneshot::Sender<Result<Response, TransportError>>,
}

struct Peer {
    addr: String,
    tx: mpsc::Sender<Outgoing>,
}

/// The client half: a connection per peer.
pub struct Transport {
    node_id: u64,
    peers: Mutex<HashMap<(u64, Lane), Peer>>,
    next_id: std::sync::atomic::AtomicU64,
    /// When each peer last answered a request (liveness for the ISR).
    answered: Mutex<HashMap<u64, Instant>>,
}

impl Transport {
    pub fn new(node_id: u64) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            peers: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            answered: Mutex::new(HashMap::new()),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// True if `peer` answered a request within `window`. Leaders send heartbeats every
    /// heartbeat interval, so a live follower answers often.
    pub fn answered_within(&self, peer: u64, window: Duration) -> bool {
        self.answered
            .lock()
            .ok()
            .and_then(|a| a.get(&peer).copied())
            .is_some_and(|t| t.elapsed() <= window)
    }

    /// Sends `request` to node `target` at `addr` and waits up to `ttl` for its response.
    pub async fn call(
        &self,
        target: u64,
        addr: &str,
        request: &Request,
        ttl: Duration,
    ) -> Result<Response, TransportError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let frame = wire::encode(id, request).map_err(|e| TransportError::Wire(target, e))?;
        let (reply, rx) = oneshot::channel();
        let tx = self.peer_sender(target, request.lane(), addr);
        tx.try_send(Outgoing { frame, id, reply })
            .map_err(|e| TransportError::Unreachable(target, format!("queue: {e}")))?;
        match tokio::time::timeout(ttl, rx).await {
            Err(_) => Err(TransportError::Timeout(target)),
            Ok(Err(_)) => Err(TransportError::Unreachable(
                target,
                "connection task stopped".into(),
            )),
            Ok(Ok(r)) => {
                if r.is_ok() {
                    if let Ok(mut a) = self.answered.lock() {
                        a.insert(target, Instant::now());
                    }
                }
                r
            }
        }
    }

    fn peer_sender(&self, target: u64, lane: Lane, addr: &str) -> mpsc::Sender<Outgoing> {
        let mut peers = match self.peers.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(p) = peers.get(&(target, lane)) {
            if p.addr == addr && !p.tx.is_closed() {
                return p.tx.clone();
            }
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let span = tracing::info_span!("raft_peer", target, addr, lane = ?lane);
        tokio::spawn(run_peer(target, addr.to_string(), rx).instrument(span));
        peers.insert(
            (target, lane),
            Peer {
                addr: addr.to_string(),
                tx: tx.clone(),
            },
        );
        tx
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, TransportError>>>>>;

/// Owns the connection to one peer: connects when there is something to send, reconnects
/// after failures with backoff.
async fn run_peer(target: u64, addr: String, mut rx: mpsc::Receiver<Outgoing>) {
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    while let Some(first) = rx.recv().await {
        if first.reply.is_closed() {
            continue;
        }
        if Instant::now() < retry_at {
            fail(first, target, "backing off after a failed connect");
            continue;
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connect failed");
                fail(first, target, &e.to_string());
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                fail(first, target, "connect timed out");
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let _ = stream.set_nodelay(true);
        tracing::debug!("connected");
        if let Err(e) = run_connection(target, stream, first, &mut rx).await {
            tracing::debug!(error = %e, "connection closed");
        }
    }
}

fn fail(out: Outgoing, target: u64, why: &str) {
    let _ = out
        .reply
        .send(Err(TransportError::Unreachable(target, why.to_string())));
}

async fn run_connection(
    target: u64,
    stream: TcpStream,
    first: Outgoing,
    rx: &mut mpsc::Receiver<Outgoing>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let reader_pending = Arc::clone(&pending);
    let mut reader = tokio::spawn(async move {
        loop {
            let (id, response) = match read_frame::<Response>(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            };
            let waiter = reader_pending.lock().ok().and_then(|mut p| p.remove(&id));
            if let Some(w) = waiter {
                let _ = w.send(Ok(response));
            }
        }
    });
    let mut next = Some(first);
    let result = loop {
        let out = match next.take() {
            Some(o) => o,
            None => tokio::select! {
                o = rx.recv() => match o { Some(o) => o, None => break Ok(()) },
                r = &mut reader => break reader_outcome(r),
            },
        };
        let mut buf = BytesMut::new();
        push(&pending, out, &mut buf);
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(o) => push(&pending, o, &mut buf),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            break Err(e);
        }
    };
    reader.abort();
    let stranded: Vec<_> = pending
        .lock()
        .map(|mut p| p.drain().map(|(_, w)| w).collect())
        .unwrap_or_default();
    for w in stranded {
        let _ = w.send(Err(TransportError::Unreachable(
            target,
            "connection lost".into(),
        )));
    }
    result
}

fn reader_outcome(r: Result<Result<(), WireOrIo>, tokio::task::JoinError>) -> std::io::Result<()> {
    match r {
        Ok(Ok(())) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed the connection",
        )),
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

fn push(pending: &Pending, out: Outgoing, buf: &mut BytesMut) {
    if out.reply.is_closed() {
        return;
    }
    if let Ok(mut p) = pending.lock() {
        p.insert(out.id, out.reply);
    }
    buf.extend_from_slice(&out.frame);
}

#[derive(Debug, thiserror::Error)]
pub enum WireOrIo {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Reads one frame; `None` at a clean end of stream.
async fn read_frame<T: for<'de> serde::Deserialize<'de>>(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<(u64, T)>, WireOrIo> {
    let mut prefix = [0u8; 4];
    match rd.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = wire::frame_len(prefix)?;
    // Read in steps so memory follows what arrives, not what the prefix claims.
    let mut body = BytesMut::new();
    while body.len() < len {
        let step = (len - body.len()).min(1 << 20);
        let start = body.len();
        body.resize(start + step, 0);
        rd.read_exact(&mut body[start..]).await?;
    }
    Ok(Some(wire::decode(body.freeze())?))
}

/// Accepts peer connections and answers their requests with `handler`.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "raft listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let span = tracing::info_span!("raft_conn", %peer);
        tokio::spawn(serve_connection(stream, peer, handler).instrument(span));
    }
}

async fn serve_connection<H: Handler>(stream: TcpStream, peer: SocketAddr, handler: Arc<H>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(SERVER_INFLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut buf = BytesMut::from(&first[..]);
            while buf.len() < WRITE_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(f) => buf.extend_from_slice(&f),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(SERVER_INFLIGHT));
    loop {
        let (id, request) = match read_frame::<Request>(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing raft connection: bad frame");
                break;
            }
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let handler = Arc::clone(&handler);
        let tx = tx.clone();
        tokio::spawn(async move {
            let response = handler.handle(request).await;
            match wire::encode(id, &response) {
                Ok(frame) => {
                    let _ = tx.send(frame).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot encode raft response"),
            }
            drop(slot);
        });
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::raft::VoteResponse;
    use openraft::Vote;

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            match request {
                Request::MetaVote(v) => Response::Vote(Ok(VoteResponse {
                    vote: v.vote,
                    vote_granted: true,
                    last_log_id: None,
                })),
                _ => Response::NoGroup,
            }
        }
    }

    fn vote(term: u64) -> Request {
        Request::MetaVote(openraft::raft::VoteRequest {
            vote: Vote::new(term, 2),
            last_log_id: None,
        })
    }

    #[tokio::test]
    async fn pipelined_calls_get_their_own_answers_and_reconnect_after_restart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let t = Transport::new(1);
        let calls = (1..=50u64).map(|term| {
            let t = Arc::clone(&t);
            let addr = addr.clone();
            async move {
                let r = t.call(2, &addr, &vote(term), Duration::from_secs(5)).await;
                (term, r)
            }
        });
        for (term, r) in futures_join(calls).await {
            match r.expect("answered") {
                Response::Vote(Ok(v)) => assert_eq!(v.vote.leader_id().term, term),
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(server);
        // A peer that is not listening: calls fail at once instead of hanging.
        let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone_addr = gone.local_addr().expect("addr").to_string();
        drop(gone);
        let started = std::time::Instant::now();
        let failed = t
            .call(3, &gone_addr, &vote(1), Duration::from_secs(5))
            .await;
        assert!(failed.is_err(), "a call to a closed port must fail");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it failed by timing out"
        );
        // The peer comes up on that address: the transport connects after its backoff.
        let listener = TcpListener::bind(&gone_addr).await.expect("rebind");
        tokio::spawn(serve(listener, Arc::new(Echo)));
        let mut ok = false;
        for _ in 0..100 {
            if t.call(3, &gone_addr, &vote(7), Duration::from_secs(2))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "transport did not reconnect");
    }

    async fn futures_join<F: std::future::Future + Send + 'static>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futs.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
