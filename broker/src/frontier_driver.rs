//! Drives this broker's frontier core (`frontier::Core`, which decides; see that crate and
//! ARCHITECTURE.md "The stable frontier"): feeds it the appenders' reservations, the local
//! replicas' votes, roles and high watermarks and the cluster metadata; runs its rounds over
//! the broker-to-broker transport; answers peers' probes; exposes F and the stable offsets to
//! read_committed fetches and to the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use frontier::{Ack, Core, Options, Probe, ReplicaRole, Ticket};
use openraft::ServerState;
use tokio::sync::{watch, Notify};

use crate::cluster::metadata::ClusterState;
use crate::cluster::wire::{GroupKey, Request, Response};
use crate::cluster::{Cluster, FrontierPeer};
use crate::metrics::Metrics;
use crate::raft::log_store::VoteHook;
use crate::raft::PartitionRaft;
use crate::sequencer::SequencerClient;

/// Most time between two polls of the core when nothing wakes the driver.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Pause between attempts of the start-up reservation while the sequencer is unavailable.
const START_RETRY: Duration = Duration::from_millis(200);

pub struct Frontier {
    core: Mutex<Core<GroupKey>>,
    started: Instant,
    /// Wakes the driver: something the core depends on changed.
    wake: Notify,
    ready: watch::Sender<bool>,
    /// Wakes long-polling read_committed fetches: F or a stable offset moved.
    moved: Notify,
    metrics: Arc<Metrics>,
    seen_changes: AtomicU64,
    probe_timeout: Duration,
    /// Ticks after every poll of the core (waiters re-check their condition).
    polled: watch::Sender<u64>,
}

impl Frontier {
    pub fn new(node_id: u64, options: Options, metrics: Arc<Metrics>) -> Arc<Self> {
        let incarnation = rand::random::<u64>() | 1;
        let (ready, _) = watch::channel(false);
        metrics.frontier.set(-1);
        Arc::new(Self {
            core: Mutex::new(Core::new(node_id, incarnation, options)),
            started: Instant::now(),
            wake: Notify::new(),
            ready,
            moved: Notify::new(),
            metrics,
            seen_changes: AtomicU64::new(0),
            probe_timeout: Duration::from_micros(options.probe_timeout_us),
            polled: watch::channel(0).0,
        })
    }

    /// The core, whatever a panicking holder left it in: its state is a set of facts that
    /// each update keeps consistent, never half-written by an unwinding caller.
    fn core(&self) -> MutexGuard<'_, Core<GroupKey>> {
        match self.core.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Starts the driver and the start-up reservation. `stored_end` is the offset after the
    /// highest one found in any local log (numbers handed out before this process started).
    pub fn start(
        self: &Arc<Self>,
        cluster: Arc<Cluster>,
        sequencer: SequencerClient,
        stored_end: u64,
    ) {
        if stored_end > 0 {
            self.core().note_stored(stored_end - 1);
        }
        cluster.set_frontier_peer(Arc::clone(self) as Arc<dyn FrontierPeer>);
        tokio::spawn(Arc::clone(self).first_reservation(sequencer));
        tokio::spawn(Arc::clone(self).drive(cluster));
    }

    /// One reservation before anything else: every later one lies above everything handed
    /// out before this process started (the core's lower bounds need that).
    pub(crate) async fn first_reservation(self: Arc<Self>, sequencer: SequencerClient) {
        loop {
            let ticket = self.core().begin_reservation();
            match sequencer.reserve(1).await {
                Ok(n) => {
                    self.core().reservation_dropped(ticket, n, 1);
                    self.ready.send_replace(true);
                    self.wake.notify_one();
                    tracing::info!(gsn = n, "frontier: start-up reservation done");
                    return;
                }
                Err(e) => {
                    self.core().reservation_failed(ticket);
                    tracing::debug!(error = %e, "frontier: start-up reservation failed; retrying");
                    tokio::time::sleep(START_RETRY).await;
                }
            }
        }
    }

    async fn drive(self: Arc<Self>, cluster: Arc<Cluster>) {
        loop {
            let now = self.now_us();
            let (round, next) = {
                let mut core = self.core();
                (core.poll(now), core.next_wakeup())
            };
            if let Some((id, probes)) = round {
                self.metrics.frontier_rounds.inc();
                for (peer, probe) in probes {
                    tokio::spawn(Arc::clone(&self).probe(Arc::clone(&cluster), peer, id, probe));
                }
            }
            self.publish();
            self.polled.send_modify(|n| *n = n.wrapping_add(1));
            let sleep = next.map_or(MAX_SLEEP, |at| {
                Duration::from_micros(at.saturating_sub(self.now_us())).min(MAX_SLEEP)
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn probe(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        peer: u64,
        round: u64,
        probe: Probe<GroupKey>,
    ) {
        let ack = match cluster.raft_addr(peer) {
            Some(addr) => {
                let request = Request::Frontier(probe);
                match cluster
                    .transport
                    .call(peer, &addr, &request, self.probe_timeout)
                    .await
                {
                    Ok(Response::Frontier(ack)) => Some(ack),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::trace!(peer, error = %e, "frontier probe failed");
                        None
                    }
                }
            }
            None => None,
        };
        let now = self.now_us();
        self.core().on_ack(peer, round, ack, now);
        self.publish();
        self.wake.notify_one();
    }

    /// Updates the metrics and wakes long polls when F or a stable offset moved.
    fn publish(&self) {
        let (changes, f, newest, unconfirmed) = {
            let core = self.core();
            (
                core.changes(),
                core.frontier(),
                core.newest(),
                core.unconfirmed(),
            )
        };
        if self.seen_changes.swap(changes, Ordering::Relaxed) != changes {
            self.moved.notify_waiters();
        }
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.frontier.set(f.map_or(-1, as_i64));
        self.metrics.frontier_newest.set(newest.map_or(-1, as_i64));
        if let (Some(f), Some(n)) = (f, newest) {
            self.metrics
                .frontier_lag
                .set(as_i64((n + 1).saturating_sub(f)));
        }
        let counted = self.metrics.frontier_unconfirmed.get();
        if unconfirmed > counted {
            self.metrics
                .frontier_unconfirmed
                .inc_by(unconfirmed - counted);
        }
    }

    // ---- the appenders ----------------------------------------------------------------

    /// Resolves when F or a stable offset moves next (read_committed long polls).
    pub fn moved(&self) -> tokio::sync::futures::Notified<'_> {
        self.moved.notified()
    }

    /// Resolves once this broker's start-up reservation completed.
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn begin(&self) -> Ticket {
        self.core().begin_reservation()
    }

    /// Resolves once `key` may take numbers: every peer heard from lately knows the
    /// partition (see `Core::partition_ready`); re-checked whenever the driver runs.
    pub async fn partition_ready(&self, key: GroupKey) {
        let mut polled = self.polled.subscribe();
        loop {
            if self.core().partition_ready(key) {
                return;
            }
            if polled.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn failed(&self, ticket: Ticket) {
        self.core().reservation_failed(ticket);
        self.wake.notify_one();
    }

    pub fn dropped(&self, ticket: Ticket, first: u64, count: u64) {
        self.core().reservation_dropped(ticket, first, count);
        self.wake.notify_one();
    }

    pub fn stamped(
        &self,
        ticket: Ticket,
        key: GroupKey,
        term: u64,
        first: u64,
        count: u64,
        bases: &[u64],
    ) {
        self.core()
            .reservation_stamped(ticket, key, term, first, count, bases);
        self.wake.notify_one();
    }

    pub fn abandoned(&self, key: GroupKey, term: u64, base: u64) {
        self.core().batch_abandoned(key, term, base);
        self.wake.notify_one();
    }

    // ---- local replicas ---------------------------------------------------------------

    /// Before the replica's Raft node starts: its persisted vote.
    pub fn open_replica(&self, key: GroupKey, vote_term: u64) {
        self.core().open_replica(key, vote_term);
    }

    pub fn close_replica(&self, key: GroupKey) {
        self.core().close_replica(key);
        self.wake.notify_one();
    }

    /// For the replica's log store: tells the core of each vote before it is saved.
    pub fn vote_hook(self: &Arc<Self>, key: GroupKey) -> VoteHook {
        let me = Arc::clone(self);
        Arc::new(move |term| me.core().vote(key, term))
    }

    /// Feeds the replica's Raft role and high watermark to the core as they change.
    pub fn watch_replica(
        self: &Arc<Self>,
        key: GroupKey,
        raft: PartitionRaft,
        hw: watch::Receiver<i64>,
    ) {
        tokio::spawn(Arc::clone(self).follow(key, raft, hw));
    }

    async fn follow(
        self: Arc<Self>,
        key: GroupKey,
        raft: PartitionRaft,
        mut hw: watch::Receiver<i64>,
    ) {
        let mut metrics = raft.metrics();
        drop(raft);
        let mut last: Option<(ReplicaRole, i64)> = None;
        loop {
            let role = {
                let m = metrics.borrow_and_update();
                ReplicaRole {
                    leader_term: (m.state == ServerState::Leader).then_some(m.current_term),
                    applied_term: m.last_applied.map_or(0, |l| l.leader_id.term),
                }
            };
            let high = *hw.borrow_and_update();
            if last != Some((role, high)) {
                {
                    let mut core = self.core();
                    core.role(key, role);
                    core.applied(key, u64::try_from(high).unwrap_or(0));
                }
                last = Some((role, high));
                self.wake.notify_one();
            }
            let open = tokio::select! {
                r = metrics.changed() => r.is_ok(),
                r = hw.changed() => r.is_ok(),
            };
            if !open {
                // The Raft node stopped (shut down, or taken offline by a storage error):
                // it leads nothing any more.
                let applied_term = last.map_or(0, |(r, _)| r.applied_term);
                let stopped = ReplicaRole {
                    leader_term: None,
                    applied_term,
                };
                self.core().role(key, stopped);
                self.wake.notify_one();
                return;
            }
        }
    }

    // ---- the cluster and readers ------------------------------------------------------

    /// The brokers and partitions (with their voters) of the applied metadata.
    pub fn set_cluster(&self, state: &ClusterState) {
        let brokers = state
            .brokers
            .keys()
            .filter_map(|id| u64::try_from(*id).ok());
        let mut partitions = Vec::new();
        for topic in state.topics.values() {
            for index in 0..topic.record.partitions {
                let voters = usize::try_from(index)
                    .ok()
                    .and_then(|i| topic.record.replicas.get(i))
                    .map(|r| r.iter().filter_map(|b| u64::try_from(*b).ok()).collect())
                    .unwrap_or_default();
                let key = GroupKey {
                    topic_id: topic.record.id,
                    partition: index,
                };
                partitions.push((key, voters, topic.created_index));
            }
        }
        self.core()
            .set_cluster(state.applied_index, brokers, partitions);
        self.wake.notify_one();
    }

    /// read_committed's last stable offset of a partition this broker leads: every record
    /// below it is applied here and no other record will ever be below it.
    pub fn stable_offset(&self, key: GroupKey) -> Option<i64> {
        let lso = self.core().stable_offset(key)?;
        i64::try_from(lso).ok()
    }

    /// The highest number this broker knows was handed out.
    pub fn newest(&self) -> Option<i64> {
        let g = self.core().newest()?;
        i64::try_from(g).ok()
    }

    pub fn frontier(&self) -> Option<i64> {
        let f = self.core().frontier()?;
        i64::try_from(f).ok()
    }
}

impl FrontierPeer for Frontier {
    fn on_probe(&self, probe: Probe<GroupKey>) -> Ack<GroupKey> {
        let now = self.now_us();
        let ack = self.core().on_probe(probe, now);
        self.publish();
        self.wake.notify_one();
        ack
    }
}
