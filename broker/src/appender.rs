//! The partition appender: the single writer on a partition's leader. It checks idempotent
//! producers' batches, takes sequencer numbers for a group of batches in one ticket, stamps
//! each batch's base offset and the term of its numbers (outside the CRC), and hands them to
//! Raft in order, so offsets in a partition increase in append order. Waiting for the
//! acknowledgement happens off the appender, so a partition has many batches in flight.
//!
//! It is written against [`AppendRaft`] (openraft's `Raft` in the broker, a scripted group in
//! the unit tests below), so the offset-assignment rules are tested without sockets: a term
//! change while the numbers were on their way, a reservation that fails, Raft refusing the
//! write, a batch Raft stored in a later term than its numbers, numbers below the log's end.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, RaftMetrics, ServerState};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::wire::GroupKey;
use crate::frontier_driver::Frontier;
use crate::min_insync::wait_for_copies;
use crate::partition::{Acks, AppendError};
use crate::producer_state::{self, BatchMeta, Incoming, PendingView, ProducerEntry, Verdict};
use crate::raft::log_store::SharedLog;
use crate::raft::{AppendedSignal, BatchEntry, PartitionRaft, TypeConfig};
use crate::sequencer::SequencerClient;
use crate::storage::batch;

/// Most batches given numbers with one sequencer ticket.
const MAX_GROUP: usize = 256;

/// Raft's metrics of the partition's group (state, term, replication progress).
pub(crate) type RaftMetricsWatch = watch::Receiver<RaftMetrics<u64, BasicNode>>;
/// Resolves when Raft committed (or refused) an entry handed to it.
pub(crate) type Committed =
    oneshot::Receiver<Result<ClientWriteResponse<TypeConfig>, ClientWriteError<u64, BasicNode>>>;

/// What the appender needs from the partition's Raft group.
pub(crate) trait AppendRaft: Clone + Send + Sync + 'static {
    fn metrics(&self) -> RaftMetricsWatch;
    /// Hands one entry to Raft, after every entry handed to it before; Err when Raft cannot
    /// take it at all (it is then in no log).
    fn write(&self, entry: BatchEntry) -> impl Future<Output = Result<Committed, String>> + Send;
}

impl AppendRaft for PartitionRaft {
    fn metrics(&self) -> RaftMetricsWatch {
        openraft::Raft::metrics(self)
    }

    async fn write(&self, entry: BatchEntry) -> Result<Committed, String> {
        self.client_write_ff(entry).await.map_err(|e| e.to_string())
    }
}

/// One validated produce batch queued at its partition's appender.
pub(crate) struct AppendRequest {
    pub(crate) batch: BytesMut,
    pub(crate) record_count: u64,
    pub(crate) acks: Acks,
    /// Replicas that must hold the batch before an acks=all answer (min.insync.replicas).
    pub(crate) copies: usize,
    pub(crate) reply: oneshot::Sender<Result<i64, AppendError>>,
}

/// The partition's single writer on the leader: checks idempotent producers' batches,
/// takes sequencer numbers for the rest and hands them to Raft in order.
pub(crate) struct Appender<R: AppendRaft> {
    pub(crate) key: GroupKey,
    pub(crate) frontier: Arc<Frontier>,
    pub(crate) raft: R,
    pub(crate) sequencer: SequencerClient,
    pub(crate) log: SharedLog,
    pub(crate) high_watermark: watch::Receiver<i64>,
    pub(crate) duplicates: IntCounter,
    /// Batches stamped in `view_term` that may not be in the log yet.
    pub(crate) view: PendingView,
    pub(crate) view_term: Option<u64>,
}

/// A batch that passed the producer checks, with its producer fields (None: no producer id).
type Accepted = (AppendRequest, Option<ProducerBatch>);

#[derive(Clone, Copy)]
struct ProducerBatch {
    incoming: Incoming,
    max_timestamp: i64,
}

impl ProducerBatch {
    fn of(batch: &[u8]) -> Option<Self> {
        let f = batch::producer_fields(batch)?;
        (f.producer_id >= 0).then(|| Self {
            incoming: Incoming::new(
                f.producer_id,
                f.producer_epoch,
                f.base_sequence,
                f.last_offset_delta,
            ),
            max_timestamp: f.max_timestamp,
        })
    }
}

pub(crate) async fn run_appender<R: AppendRaft>(
    mut rx: mpsc::Receiver<AppendRequest>,
    mut appender: Appender<R>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        appender.append_group(group).await;
    }
}

fn fail_all(group: impl IntoIterator<Item = AppendRequest>, e: &AppendError) {
    for r in group {
        let _ = r.reply.send(Err(e.clone()));
    }
}

impl<R: AppendRaft> Appender<R> {
    /// The current term while this replica leads.
    fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    async fn append_group(&mut self, group: Vec<AppendRequest>) {
        // Only the leader may take numbers: a follower would waste them.
        let Some(term) = self.leader_term() else {
            fail_all(group, &AppendError::NotLeader);
            return;
        };
        if self.view_term != Some(term) {
            // A new term: the log (which holds everything Raft may still commit) is the
            // starting point; batches pending in an older term either reached it or never will.
            self.view.clear();
            self.view_term = Some(term);
        }
        let group = match self.screen(group, term) {
            Ok(g) => g,
            Err(group) => {
                fail_all(
                    group,
                    &AppendError::Storage("partition log lock poisoned".into()),
                );
                return;
            }
        };
        if group.is_empty() {
            return;
        }
        let total: u64 = group.iter().map(|(r, _)| r.record_count).sum();
        // The frontier bounds the numbers a reservation can get by what was handed out
        // before it began; that needs this broker's start-up reservation done.
        self.frontier.ready().await;
        self.frontier.partition_ready(self.key).await;
        let ticket = self.frontier.begin();
        let first = match self.sequencer.reserve(total).await {
            Ok(b) => b,
            Err(e) => {
                self.frontier.failed(ticket);
                fail_all(
                    group.into_iter().map(|(r, _)| r),
                    &AppendError::Sequencer(e.to_string()),
                );
                return;
            }
        };
        // Offsets must grow within a partition, also across leader changes. The ring hands
        // out numbers in real-time order, so a new leader's numbers lie above everything the
        // old one appended; this check turns a violation into an error instead of a log
        // that goes backwards.
        let end = self.log.read().ok().and_then(|l| l.log.end_offset());
        if end.is_some_and(|end| (first as i64) < end) {
            tracing::error!(first, end = ?end, "sequencer returned numbers below the partition's end");
            self.frontier.dropped(ticket, first, total);
            fail_all(
                group.into_iter().map(|(r, _)| r),
                &AppendError::Sequencer("sequence numbers below the partition end".into()),
            );
            return;
        }
        // The numbers were taken while awaiting the sequencer: appends must still belong to
        // the term the producer checks were made in.
        if self.leader_term() != Some(term) {
            self.frontier.dropped(ticket, first, total);
            fail_all(group.into_iter().map(|(r, _)| r), &AppendError::NotLeader);
            return;
        }
        let mut stamped = Vec::with_capacity(group.len());
        let mut base = first;
        for (r, producer) in group {
            let offset = base as i64;
            base += r.record_count;
            stamped.push((r, producer, offset));
        }
        let bases: Vec<u64> = stamped.iter().map(|(_, _, o)| *o as u64).collect();
        self.frontier
            .stamped(ticket, self.key, term, first, total, &bases);
        self.note_pending(&stamped);
        let target = SubmitTarget {
            raft: &self.raft,
            frontier: &self.frontier,
            key: self.key,
            term,
        };
        for (r, _, offset) in stamped {
            target.submit(r, offset).await;
        }
    }

    /// Applies the idempotent-producer rules in arrival order: duplicates are answered from
    /// the log (without numbers), violations get their error, the rest is returned. Err
    /// gives the group back when the log cannot be read.
    fn screen(
        &mut self,
        group: Vec<AppendRequest>,
        term: u64,
    ) -> Result<Vec<Accepted>, Vec<AppendRequest>> {
        if group.iter().all(|r| ProducerBatch::of(&r.batch).is_none()) {
            return Ok(group.into_iter().map(|r| (r, None)).collect());
        }
        let Ok(shared) = self.log.read() else {
            return Err(group);
        };
        self.view.prune(shared.log.end_offset().unwrap_or(i64::MIN));
        // Batches accepted earlier in this group, not stamped yet (offsets unknown: -1).
        let mut in_group: HashMap<i64, ProducerEntry> = HashMap::new();
        let mut accepted = Vec::with_capacity(group.len());
        for r in group {
            let Some(p) = ProducerBatch::of(&r.batch) else {
                accepted.push((r, None));
                continue;
            };
            let pid = p.incoming.producer_id;
            let entry = in_group
                .get(&pid)
                .or_else(|| self.view.entry(pid, shared.producers.get(pid)));
            match producer_state::check(entry, &p.incoming) {
                Ok(Verdict::Append) => {
                    let mut e = entry
                        .cloned()
                        .unwrap_or_else(|| ProducerEntry::empty(p.incoming.epoch));
                    e.add(p.incoming.epoch, unstamped(&p.incoming), p.max_timestamp);
                    in_group.insert(pid, e);
                    accepted.push((r, Some(p)));
                }
                Ok(Verdict::Duplicate(meta)) if meta.base_offset < 0 => {
                    // A retry queued behind its original in this very group: the original's
                    // offset is not known yet, so the retry is asked to come again.
                    let _ = r.reply.send(Err(AppendError::NotLeader));
                }
                Ok(Verdict::Duplicate(meta)) => self.answer_duplicate(r, meta, term),
                Err(e) => {
                    tracing::debug!(error = %e, "idempotent batch refused");
                    let _ = r.reply.send(Err(AppendError::Sequence(e)));
                }
            }
        }
        Ok(accepted)
    }

    /// Records stamped producer batches in the view, so the next ones (up to 5 in flight per
    /// producer) are checked against them before they reach the log.
    fn note_pending(&mut self, stamped: &[(AppendRequest, Option<ProducerBatch>, i64)]) {
        if stamped.iter().all(|(_, p, _)| p.is_none()) {
            return;
        }
        let Ok(shared) = self.log.read() else {
            return;
        };
        for (r, p, offset) in stamped {
            if let Some(p) = p {
                let last = offset + r.record_count as i64 - 1;
                let logged = shared.producers.get(p.incoming.producer_id);
                self.view
                    .stamped(&p.incoming, logged, *offset, last, p.max_timestamp);
            }
        }
    }

    /// Answers a retried batch with its original offset once that batch is as durable as
    /// `acks` asks (acks=all: committed), or NOT_LEADER if this replica stops leading first.
    fn answer_duplicate(&self, req: AppendRequest, meta: BatchMeta, term: u64) {
        self.duplicates.inc();
        tracing::debug!(base_offset = meta.base_offset, "duplicate idempotent batch");
        if req.acks == Acks::None {
            return;
        }
        let mut metrics = self.raft.metrics();
        let mut hw = self.high_watermark.clone();
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            let AppendRequest {
                acks,
                copies,
                mut reply,
                ..
            } = req;
            let mut stored = wait_stored(
                acks,
                meta.last_offset,
                term,
                &mut metrics,
                &mut hw,
                &log,
                &mut reply,
            )
            .await;
            if stored.is_ok() && acks == Acks::All {
                // The original's Raft index is unknown here; the leader's last index now is
                // at or above it (it is committed).
                let last = metrics.borrow().last_log_index.unwrap_or(0);
                stored = wait_for_copies(&mut metrics, term, last, copies, &mut reply).await;
            }
            let _ = reply.send(stored.map(|()| meta.base_offset));
        });
    }
}

fn unstamped(b: &Incoming) -> BatchMeta {
    BatchMeta {
        first_seq: b.first_seq,
        last_seq: b.last_seq,
        base_offset: -1,
        last_offset: -1,
    }
}

/// Waits until offset `last` is committed (acks=all) or in the leader's log (acks=1) while
/// this replica leads in `term`. Every wake-up is a change of the Raft metrics or the high
/// watermark; the produce request's own timeout bounds the wait (the waiter stops when the
/// request stops listening).
async fn wait_stored(
    acks: Acks,
    last: i64,
    term: u64,
    metrics: &mut RaftMetricsWatch,
    hw: &mut watch::Receiver<i64>,
    log: &SharedLog,
    reply: &mut oneshot::Sender<Result<i64, AppendError>>,
) -> Result<(), AppendError> {
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader || m.current_term != term {
                return Err(AppendError::NotLeader);
            }
        }
        let done = match acks {
            Acks::All => *hw.borrow_and_update() > last,
            Acks::Leader | Acks::None => log
                .read()
                .map(|l| l.log.end_offset().is_some_and(|end| end > last))
                .unwrap_or(false),
        };
        if done {
            return Ok(());
        }
        tokio::select! {
            _ = reply.closed() => return Err(AppendError::ShuttingDown),
            r = metrics.changed() => if r.is_err() { return Err(AppendError::ShuttingDown) },
            r = hw.changed() => if r.is_err() { return Err(AppendError::ShuttingDown) },
        }
    }
}

/// Where stamped batches go: the partition's Raft group, in the term their numbers were
/// taken in.
struct SubmitTarget<'a, R: AppendRaft> {
    raft: &'a R,
    frontier: &'a Arc<Frontier>,
    key: GroupKey,
    term: u64,
}

impl<R: AppendRaft> SubmitTarget<'_, R> {
    /// Stamps the batch (base offset, and the term of its numbers in partitionLeaderEpoch:
    /// the log store voids it if Raft stores it in another term) and hands it to Raft in
    /// order; waits for the ack on a separate task.
    async fn submit(&self, mut req: AppendRequest, base_offset: i64) {
        let to = self;
        let term = to.term;
        batch::stamp(
            &mut req.batch,
            base_offset,
            i32::try_from(term).unwrap_or(i32::MAX),
        );
        let (signal, appended) = match req.acks {
            Acks::Leader => {
                let (s, rx) = AppendedSignal::new();
                (Some(s), Some(rx))
            }
            Acks::None | Acks::All => (None, None),
        };
        let entry = BatchEntry {
            batch: Bytes::from(req.batch),
            appended: signal,
            verified: true,
        };
        let committed = match to.raft.write(entry).await {
            Ok(rx) => rx,
            Err(e) => {
                // Never reached the log: its numbers are holes.
                to.frontier.abandoned(to.key, term, base_offset as u64);
                let _ = req.reply.send(Err(AppendError::Storage(e)));
                return;
            }
        };
        let (mut reply, copies, mut metrics) = (req.reply, req.copies, to.raft.metrics());
        tokio::spawn(async move {
            let result = match appended {
                Some(appended) => {
                    // false: stored voided, in a later term than its numbers.
                    let r = match appended.await {
                        Ok(true) => Ok(()),
                        Ok(false) | Err(_) => Err(AppendError::NotLeader),
                    };
                    let _ = reply.send(r.map(|()| base_offset));
                    // Keep the commit receiver alive until Raft answers: openraft logs a warning
                    // for every response nobody waits for.
                    let _ = committed.await;
                    return;
                }
                None => match committed.await {
                    // Committed in the term its numbers were taken in: stored as sent; then
                    // min.insync.replicas copies.
                    Ok(Ok(resp)) if resp.log_id.leader_id.term == term => {
                        let index = resp.log_id.index;
                        wait_for_copies(&mut metrics, term, index, copies, &mut reply).await
                    }
                    // Committed in a later term: the log store voided it; the producer retries.
                    Ok(Ok(_)) => Err(AppendError::NotLeader),
                    Ok(Err(ClientWriteError::ForwardToLeader(_))) => Err(AppendError::NotLeader),
                    Ok(Err(e)) => Err(AppendError::Storage(e.to_string())),
                    Err(_) => Err(AppendError::ShuttingDown),
                },
            };
            let _ = reply.send(result.map(|()| base_offset));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::cluster::metadata::{BrokerInfo, ClusterState, MetaCommand};
    use crate::config::{LogConfig, SequencerKind};
    use crate::metrics::Metrics;
    use crate::raft::log_store::LogStore;
    use crate::sequencer::{ReserveFuture, Sequencer, SequencerError};
    use crate::storage::batch::tests::make_batch;
    use crate::storage::meta::{MetaStore, TopicRecord};

    type Written = (
        BatchEntry,
        oneshot::Sender<Result<ClientWriteResponse<TypeConfig>, ClientWriteError<u64, BasicNode>>>,
    );

    /// A Raft group the test plays: it sets the metrics (leader or not, the term) and
    /// receives every entry written, answering each commit itself.
    #[derive(Clone)]
    struct ScriptedRaft {
        metrics: Arc<watch::Sender<RaftMetrics<u64, BasicNode>>>,
        writes: mpsc::UnboundedSender<Written>,
        refuse: Arc<AtomicBool>,
    }

    impl AppendRaft for ScriptedRaft {
        fn metrics(&self) -> RaftMetricsWatch {
            self.metrics.subscribe()
        }

        async fn write(&self, entry: BatchEntry) -> Result<Committed, String> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err("the Raft node stopped".into());
            }
            let (tx, rx) = oneshot::channel();
            self.writes
                .send((entry, tx))
                .map_err(|_| "test gone".to_string())?;
            Ok(rx)
        }
    }

    impl ScriptedRaft {
        fn lead(&self, term: u64) {
            self.metrics.send_modify(|m| {
                m.state = ServerState::Leader;
                m.current_term = term;
            });
        }

        fn follow(&self, term: u64) {
            self.metrics.send_modify(|m| {
                m.state = ServerState::Follower;
                m.current_term = term;
            });
        }
    }

    type Answer = oneshot::Sender<Result<u64, SequencerError>>;

    /// A sequencer whose every reservation the test answers.
    struct GatedSequencer(mpsc::UnboundedSender<(u64, Answer)>);

    impl Sequencer for GatedSequencer {
        fn reserve(&self, count: u64) -> ReserveFuture<'_> {
            let (tx, rx) = oneshot::channel();
            let sent = self.0.send((count, tx));
            Box::pin(async move {
                sent.map_err(|_| SequencerError::Unavailable("test gone".into()))?;
                rx.await
                    .map_err(|_| SequencerError::Unavailable("no answer".into()))?
            })
        }
    }

    struct Harness {
        queue: mpsc::Sender<AppendRequest>,
        raft: ScriptedRaft,
        writes: mpsc::UnboundedReceiver<Written>,
        reservations: mpsc::UnboundedReceiver<(u64, Answer)>,
        frontier: Arc<Frontier>,
        log: SharedLog,
        _hw: watch::Sender<i64>,
        _dir: tempfile::TempDir,
    }

    const KEY: GroupKey = GroupKey {
        topic_id: [5; 16],
        partition: 0,
    };

    /// An appender of partition KEY on broker 1 (a cluster of one), its frontier ready.
    async fn harness() -> Harness {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).expect("meta"));
        let store =
            LogStore::open("p", 1, &dir.path().join("p"), LogConfig::default(), meta).expect("log");
        let log = store.shared();
        let metrics = Arc::new(Metrics::new());
        let (seq_tx, mut reservations) = mpsc::unbounded_channel();
        let sequencer = SequencerClient::start(
            Arc::new(GatedSequencer(seq_tx)),
            Duration::ZERO,
            Arc::clone(&metrics),
        );
        let frontier = Frontier::new(1, frontier::Options::default(), metrics);
        let mut state = ClusterState::default();
        state.apply(&MetaCommand::RegisterBroker {
            info: BrokerInfo {
                id: 1,
                raft_addr: "b1:9093".into(),
                endpoints: vec![],
                sequencer: Some(SequencerKind::Local),
            },
            cluster_id: "c".into(),
        });
        state.apply(&MetaCommand::CreateTopic(TopicRecord {
            name: "t".into(),
            id: KEY.topic_id,
            partitions: 1,
            configs: Default::default(),
            replicas: vec![vec![1]],
        }));
        frontier.set_cluster(&state);
        // The frontier's start-up reservation.
        let starting = tokio::spawn(Arc::clone(&frontier).first_reservation(sequencer.clone()));
        let (count, answer) = reservations.recv().await.expect("start-up reservation");
        assert_eq!(count, 1);
        let _ = answer.send(Ok(10));
        starting.await.expect("ready");
        let (writes_tx, writes) = mpsc::unbounded_channel();
        let raft = ScriptedRaft {
            metrics: Arc::new(watch::channel(RaftMetrics::new_initial(1)).0),
            writes: writes_tx,
            refuse: Arc::new(AtomicBool::new(false)),
        };
        raft.lead(3);
        let (hw, hw_rx) = watch::channel(0);
        let (queue, rx) = mpsc::channel(16);
        tokio::spawn(run_appender(
            rx,
            Appender {
                key: KEY,
                frontier: Arc::clone(&frontier),
                raft: raft.clone(),
                sequencer,
                log: Arc::clone(&log),
                high_watermark: hw_rx,
                duplicates: IntCounter::new("dups", "dups").expect("counter"),
                view: PendingView::default(),
                view_term: None,
            },
        ));
        Harness {
            queue,
            raft,
            writes,
            reservations,
            frontier,
            log,
            _hw: hw,
            _dir: dir,
        }
    }

    type Reply = oneshot::Receiver<Result<i64, AppendError>>;

    async fn enqueue(h: &Harness, records: i32, acks: Acks) -> Reply {
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest {
            batch: BytesMut::from(&make_batch(0, records, 1_000)[..]),
            record_count: records as u64,
            acks,
            copies: 1,
            reply,
        };
        h.queue.send(request).await.expect("queued");
        rx
    }

    fn committed_in(term: u64, index: u64) -> ClientWriteResponse<TypeConfig> {
        ClientWriteResponse {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            data: Default::default(),
            membership: None,
        }
    }

    async fn answer(reply: Reply) -> Result<i64, AppendError> {
        tokio::time::timeout(Duration::from_secs(5), reply)
            .await
            .expect("answered in time")
            .expect("answered")
    }

    fn stamped_base_and_epoch(entry: &BatchEntry) -> (i64, i32) {
        let span = batch::read_span(&entry.batch).expect("a batch");
        (span.base_offset, span.leader_epoch)
    }

    #[tokio::test]
    async fn batches_get_consecutive_numbers_and_the_term_they_were_taken_in() {
        let mut h = harness().await;
        let first = enqueue(&h, 3, Acks::All).await;
        let second = enqueue(&h, 2, Acks::All).await;
        let (count, answer_to) = h.reservations.recv().await.expect("one ticket");
        assert_eq!(count, 5, "both batches in one reservation");
        let _ = answer_to.send(Ok(100));
        let (a, commit_a) = h.writes.recv().await.expect("first write");
        let (b, commit_b) = h.writes.recv().await.expect("second write");
        assert_eq!(stamped_base_and_epoch(&a), (100, 3));
        assert_eq!(stamped_base_and_epoch(&b), (103, 3));
        let _ = commit_a.send(Ok(committed_in(3, 1)));
        let _ = commit_b.send(Ok(committed_in(3, 2)));
        assert_eq!(answer(first).await.expect("acked"), 100);
        assert_eq!(answer(second).await.expect("acked"), 103);
    }

    #[tokio::test]
    async fn a_follower_takes_no_numbers() {
        let mut h = harness().await;
        h.raft.follow(3);
        let reply = enqueue(&h, 1, Acks::All).await;
        assert!(matches!(answer(reply).await, Err(AppendError::NotLeader)));
        assert!(h.reservations.try_recv().is_err(), "no reservation");
    }

    #[tokio::test]
    async fn a_term_change_while_the_numbers_were_on_their_way_fails_the_group() {
        let mut h = harness().await;
        let reply = enqueue(&h, 2, Acks::All).await;
        let (_, answer_to) = h.reservations.recv().await.expect("reservation");
        h.raft.lead(4); // deposed and elected again meanwhile: another term
        let _ = answer_to.send(Ok(500));
        assert!(matches!(answer(reply).await, Err(AppendError::NotLeader)));
        assert!(h.writes.try_recv().is_err(), "nothing handed to Raft");
        assert_eq!(
            h.frontier.newest(),
            Some(501),
            "the numbers are holes, known as handed out"
        );
    }

    #[tokio::test]
    async fn a_failed_reservation_fails_the_group() {
        let mut h = harness().await;
        let reply = enqueue(&h, 2, Acks::All).await;
        let (_, answer_to) = h.reservations.recv().await.expect("reservation");
        let _ = answer_to.send(Err(SequencerError::Unavailable("ring resealing".into())));
        assert!(matches!(
            answer(reply).await,
            Err(AppendError::Sequencer(_))
        ));
        assert!(h.writes.try_recv().is_err());
    }

    #[tokio::test]
    async fn numbers_below_the_end_of_the_log_are_refused() {
        let mut h = harness().await;
        {
            let mut shared = h.log.write().expect("lock");
            let mut b = make_batch(0, 1, 1_000);
            batch::stamp(&mut b, 900, 2);
            let head = batch::parse_and_verify(&b).expect("valid");
            shared
                .log
                .append(1, &b, head.span, head.max_timestamp, 0)
                .expect("append");
        }
        let reply = enqueue(&h, 1, Acks::All).await;
        let (_, answer_to) = h.reservations.recv().await.expect("reservation");
        let _ = answer_to.send(Ok(800));
        match answer(reply).await {
            Err(AppendError::Sequencer(why)) => assert!(why.contains("below"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(h.writes.try_recv().is_err(), "a log never goes back");
    }

    #[tokio::test]
    async fn raft_refusing_the_write_fails_the_batch() {
        let mut h = harness().await;
        h.raft.refuse.store(true, Ordering::SeqCst);
        let reply = enqueue(&h, 1, Acks::All).await;
        let (_, answer_to) = h.reservations.recv().await.expect("reservation");
        let _ = answer_to.send(Ok(100));
        assert!(matches!(answer(reply).await, Err(AppendError::Storage(_))));
    }

    #[tokio::test]
    async fn a_batch_raft_stored_in_a_later_term_is_answered_not_leader() {
        let mut h = harness().await;
        let reply = enqueue(&h, 1, Acks::All).await;
        let (_, answer_to) = h.reservations.recv().await.expect("reservation");
        let _ = answer_to.send(Ok(100));
        let (entry, commit) = h.writes.recv().await.expect("write");
        assert_eq!(stamped_base_and_epoch(&entry), (100, 3));
        // Raft changed term between the appender's check and the write: the log store voids
        // the batch (its numbers belong to term 3), the producer must retry.
        let _ = commit.send(Ok(committed_in(4, 7)));
        assert!(matches!(answer(reply).await, Err(AppendError::NotLeader)));
    }

    #[tokio::test]
    async fn acks_1_answers_when_the_leader_stored_it_and_not_when_voided() {
        let mut h = harness().await;
        let stored = enqueue(&h, 1, Acks::Leader).await;
        let voided = enqueue(&h, 1, Acks::Leader).await;
        let (_, answer_to) = h.reservations.recv().await.expect("reservation");
        let _ = answer_to.send(Ok(100));
        for (intact, reply) in [(true, stored), (false, voided)] {
            let (entry, commit) = h.writes.recv().await.expect("write");
            entry.appended.as_ref().expect("acks=1 signal").fire(intact);
            let result = answer(reply).await;
            if intact {
                assert_eq!(result.expect("acked"), 100);
            } else {
                assert!(matches!(result, Err(AppendError::NotLeader)));
            }
            let _ = commit.send(Ok(committed_in(3, 1)));
        }
    }
}
