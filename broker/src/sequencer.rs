//! Global sequence numbers (GSNs). Every record gets one; they are the partition offsets.
//!
//! `Sequencer` is the boundary to the switch ring (`crate::ring_sequencer`). `LocalSequencer` is the
//! in-process implementation: a counter with a lease persisted in RocksDB, so numbers never
//! repeat across restarts. `SequencerClient` batches requests from all partitions into one
//! `Sequencer::reserve` call and hands out sub-ranges in request order.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::storage::meta::MetaStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SequencerError {
    #[error("sequencer unavailable: {0}")]
    Unavailable(String),
    #[error("request for {0} numbers exceeds the per-request limit")]
    TooMany(u64),
}

pub type ReserveFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, SequencerError>> + Send + 'a>>;

/// Source of global sequence numbers.
pub trait Sequencer: Send + Sync + 'static {
    /// Reserves `count` consecutive numbers and returns the first. A number is never returned
    /// twice, and a reservation that completes before another starts gets smaller numbers.
    fn reserve(&self, count: u64) -> ReserveFuture<'_>;

    /// Most numbers one `reserve` call may ask for. `SequencerClient` keeps its merged
    /// batches at or below it: the switch ring caps a request at its per-visit limit W, and
    /// two requests do not give consecutive numbers, so a batch cannot be split.
    fn max_batch(&self) -> u64 {
        MAX_RESERVE
    }
}

/// Numbers leased ahead per durable write.
const LEASE_CHUNK: u64 = 1 << 20;
/// Most numbers one request may ask for (a batch holds at most i32::MAX records).
pub const MAX_RESERVE: u64 = 1 << 40;

/// In-process sequencer with a persisted lease.
pub struct LocalSequencer {
    meta: Arc<MetaStore>,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    next: u64,
    leased_upto: u64,
}

impl LocalSequencer {
    /// Starts above every number an earlier run could have handed out (`floor` is the highest
    /// offset found in any log, a second guard).
    pub fn open(meta: Arc<MetaStore>, floor: u64) -> Result<Self, crate::storage::meta::MetaError> {
        let leased = meta.sequencer_lease()?.unwrap_or(0);
        let start = leased.max(floor);
        Ok(Self {
            meta,
            state: Mutex::new(LeaseState {
                next: start,
                leased_upto: start,
            }),
        })
    }

    fn reserve_now(&self, count: u64) -> Result<u64, SequencerError> {
        if count == 0 || count > MAX_RESERVE {
            return Err(SequencerError::TooMany(count));
        }
        let mut st = self
            .state
            .lock()
            .map_err(|_| SequencerError::Unavailable("lease lock poisoned".into()))?;
        let base = st.next;
        let end = base
            .checked_add(count)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or_else(|| SequencerError::Unavailable("GSN space exhausted".into()))?;
        if end > st.leased_upto {
            let lease = end.saturating_add(LEASE_CHUNK);
            self.meta
                .put_sequencer_lease(lease)
                .map_err(|e| SequencerError::Unavailable(e.to_string()))?;
            st.leased_upto = lease;
        }
        st.next = end;
        Ok(base)
    }
}

impl Sequencer for LocalSequencer {
    fn reserve(&self, count: u64) -> ReserveFuture<'_> {
        Box::pin(async move { self.reserve_now(count) })
    }
}

struct Ticket {
    count: u64,
    reply: oneshot::Sender<Result<u64, SequencerError>>,
}

/// Most tickets merged into one sequencer request.
const MAX_TICKETS_PER_REQUEST: usize = 4096;
const TICKET_QUEUE: usize = 16 * 1024;

/// Broker-side client: merges tickets from all partitions into one request per round trip.
#[derive(Clone)]
pub struct SequencerClient {
    tx: mpsc::Sender<Ticket>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl SequencerClient {
    /// `window`: how long to gather tickets after the first arrives (0 = only what queued up
    /// while the previous request was in flight).
    pub fn start(
        sequencer: Arc<dyn Sequencer>,
        window: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(TICKET_QUEUE);
        tokio::spawn(run_batcher(sequencer, rx, window, Arc::clone(&metrics)));
        Self { tx, metrics }
    }

    /// Reserves `count` consecutive numbers; returns the first.
    pub async fn reserve(&self, count: u64) -> Result<u64, SequencerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Ticket { count, reply })
            .await
            .map_err(|_| SequencerError::Unavailable("sequencer client stopped".into()))?;
        let _ = &self.metrics;
        rx.await.map_err(|_| {
            SequencerError::Unavailable("sequencer client dropped the request".into())
        })?
    }
}

async fn run_batcher(
    sequencer: Arc<dyn Sequencer>,
    mut rx: mpsc::Receiver<Ticket>,
    window: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) {
    // A ticket that did not fit in the previous batch starts the next one.
    let mut carry: Option<Ticket> = None;
    loop {
        let first = match carry.take() {
            Some(t) => t,
            None => match rx.recv().await {
                Some(t) => t,
                None => break,
            },
        };
        if !window.is_zero() {
            tokio::time::sleep(window).await;
        }
        let limit = sequencer.max_batch().max(1);
        let mut sum = first.count;
        let mut tickets = vec![first];
        while tickets.len() < MAX_TICKETS_PER_REQUEST {
            match rx.try_recv() {
                Ok(t) => match sum.checked_add(t.count).filter(|s| *s <= limit) {
                    Some(s) => {
                        sum = s;
                        tickets.push(t);
                    }
                    None => {
                        carry = Some(t);
                        break;
                    }
                },
                Err(_) => break,
            }
        }
        let total = tickets
            .iter()
            .try_fold(0u64, |acc, t| acc.checked_add(t.count));
        let result = match total {
            Some(total) => sequencer.reserve(total).await,
            None => Err(SequencerError::TooMany(u64::MAX)),
        };
        metrics.sequencer_requests.inc();
        metrics.sequencer_tickets.inc_by(tickets.len() as u64);
        match result {
            Ok(mut base) => {
                metrics.sequencer_numbers.inc_by(total.unwrap_or(0));
                for t in tickets {
                    let _ = t.reply.send(Ok(base));
                    base += t.count;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "sequencer request failed");
                for t in tickets {
                    let _ = t.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbers_never_repeat_across_reopen_and_batching() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(dir.path()).expect("open"));
        let seq = Arc::new(LocalSequencer::open(Arc::clone(&meta), 0).expect("seq"));
        let client = SequencerClient::start(
            seq,
            Duration::ZERO,
            Arc::new(crate::metrics::Metrics::new()),
        );
        let mut handles = Vec::new();
        for i in 1..=50u64 {
            let c = client.clone();
            handles.push(tokio::spawn(async move { (c.reserve(i).await, i) }));
        }
        let mut ranges = Vec::new();
        for h in handles {
            let (r, n) = h.await.expect("join");
            let base = r.expect("reserve");
            ranges.push((base, base + n));
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {:?}", w);
        }
        let high = ranges.last().map(|r| r.1).unwrap_or(0);
        drop(client);
        let again = LocalSequencer::open(meta, 0).expect("reopen");
        assert!(again.reserve_now(1).expect("reserve") >= high);
    }
}
