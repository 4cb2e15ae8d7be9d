//! The group coordinator: one [`GroupShard`] per `__consumer_offsets` partition this broker
//! leads, driven by requests, a timer and the log.
//!
//! * A watcher (every [`WATCH_INTERVAL`]) compares the partitions this broker leads with the
//!   shards it runs: a newly led partition (or a new leader epoch) gets a shard that first
//!   *loads*: it waits until the log's committed end covers everything the log held when
//!   leadership arrived, then replays the partition from its start. Until then its groups
//!   answer COORDINATOR_LOAD_IN_PROGRESS. A partition no longer led is dropped: whoever
//!   waits there is told NOT_COORDINATOR. The same loop runs the shards' timers.
//! * Every shard has one writer task: writes leave the state machine in order, are queued at
//!   the partition in that order (so the log holds them in that order) and acknowledged once
//!   replicated (acks=all), bounded by `commit_timeout_ms`; the answers that depend on them
//!   are sent only then.
//! * Requests lock their shard's state machine (a std mutex, never held across an await),
//!   register a oneshot for their answer, and wait on it outside the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::ResponseError as E;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::state::{
    CommitRequest, FetchedOffset, GroupOverview, GroupShard, GroupSummary, JoinRequest,
    JoinResponse, LeaveResult, MemberIdentity, Output, PartitionErrors, Reply, SyncRequest,
    SyncResponse, Waiter, WriteId,
};
use super::store::{self, BoxFuture, GroupLog, LogError};
use super::{now_ms, GroupConfig};

/// How often leadership is checked and timers run.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Writes queued per shard before new ones fail (COORDINATOR_NOT_AVAILABLE).
const WRITE_QUEUE: usize = 1024;
/// Bytes read from the log per step while loading.
const LOAD_READ_BYTES: u64 = 1 << 20;

/// The broker side of the coordinator: the offsets topic and the partitions of it this
/// broker leads.
pub trait OffsetsTopic: Send + Sync + 'static {
    /// Partition count of the offsets topic, if it exists.
    fn partitions(&self) -> Option<i32>;
    /// Creates the offsets topic unless it exists; its partition count.
    fn create(&self) -> BoxFuture<'_, Result<i32, String>>;
    /// Leader epoch and log of partition `p`, if this broker leads it.
    fn led_partition(&self, p: i32) -> Option<(i32, Arc<dyn GroupLog>)>;
}

enum Phase {
    Loading,
    Active(Box<GroupShard>),
    Closed,
}

struct Inner {
    phase: Phase,
    waiters: HashMap<Waiter, oneshot::Sender<Reply>>,
    writer: Option<mpsc::Sender<WriteJob>>,
}

struct WriteJob {
    id: WriteId,
    batch: BytesMut,
    records: u64,
}

struct Shard {
    partition: i32,
    epoch: i32,
    log: Arc<dyn GroupLog>,
    inner: Mutex<Inner>,
}

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; keep serving with the state as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        matches!(self.lock().phase, Phase::Closed)
    }

    /// Runs `f` on the active state machine and carries out what it produced.
    fn with_active<T>(&self, f: impl FnOnce(&mut GroupShard, i64) -> T) -> Result<T, NotServing> {
        let mut inner = self.lock();
        let now = now_ms();
        let Inner {
            phase,
            waiters,
            writer,
        } = &mut *inner;
        match phase {
            Phase::Active(core) => {
                let out = f(core, now);
                dispatch(core, waiters, writer.as_ref(), now);
                Ok(out)
            }
            Phase::Loading => Err(NotServing::Loading),
            Phase::Closed => Err(NotServing::Closed),
        }
    }

    /// Like `with_active`, for requests answered through a waiter.
    async fn call(
        &self,
        next_waiter: &AtomicU64,
        f: impl FnOnce(&mut GroupShard, i64, Waiter),
    ) -> Result<Reply, NotServing> {
        let (tx, rx) = oneshot::channel();
        let waiter = next_waiter.fetch_add(1, Ordering::Relaxed);
        {
            let mut inner = self.lock();
            let now = now_ms();
            let Inner {
                phase,
                waiters,
                writer,
            } = &mut *inner;
            match phase {
                Phase::Active(core) => {
                    waiters.insert(waiter, tx);
                    f(core, now, waiter);
                    dispatch(core, waiters, writer.as_ref(), now);
                }
                Phase::Loading => return Err(NotServing::Loading),
                Phase::Closed => return Err(NotServing::Closed),
            }
        }
        rx.await.map_err(|_| NotServing::Closed)
    }

    fn complete_write(&self, id: WriteId, result: Result<i64, LogError>) {
        let _ = self.with_active(|core, now| core.write_done(now, id, result));
    }

    fn close(&self) {
        let mut inner = self.lock();
        let now = now_ms();
        let old = std::mem::replace(&mut inner.phase, Phase::Closed);
        let Inner { waiters, .. } = &mut *inner;
        if let Phase::Active(mut core) = old {
            core.unload();
            dispatch(&mut core, waiters, None, now);
        }
        inner.waiters.clear();
        inner.writer = None;
    }
}

/// Why a shard did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotServing {
    Loading,
    Closed,
}

impl NotServing {
    fn code(self) -> i16 {
        match self {
            NotServing::Loading => E::CoordinatorLoadInProgress.code(),
            NotServing::Closed => E::NotCoordinator.code(),
        }
    }
}

/// Sends answers to their waiters and writes to the writer; a write that cannot be queued
/// fails at once (which may produce more output, handled in the same loop).
fn dispatch(
    core: &mut GroupShard,
    waiters: &mut HashMap<Waiter, oneshot::Sender<Reply>>,
    writer: Option<&mpsc::Sender<WriteJob>>,
    now: i64,
) {
    loop {
        let outputs = core.drain();
        if outputs.is_empty() {
            return;
        }
        for out in outputs {
            match out {
                Output::Reply(w, reply) => {
                    if let Some(tx) = waiters.remove(&w) {
                        let _ = tx.send(reply);
                    }
                }
                Output::Write(id, records) => {
                    let queued = match store::encode_batch(&records, now) {
                        Ok((batch, n)) => match writer {
                            Some(tx) => tx
                                .try_send(WriteJob {
                                    id,
                                    batch,
                                    records: n,
                                })
                                .map_err(|_| {
                                    LogError::Unavailable("coordinator write queue full".into())
                                }),
                            None => Err(LogError::NotLeader),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(e) = queued {
                        core.write_done(now, id, Err(e));
                    }
                }
            }
        }
    }
}

pub struct Coordinator {
    config: GroupConfig,
    topic: Arc<dyn OffsetsTopic>,
    shards: RwLock<HashMap<i32, Arc<Shard>>>,
    next_waiter: AtomicU64,
    create_lock: tokio::sync::Mutex<()>,
}

impl Coordinator {
    pub fn new(config: GroupConfig, topic: Arc<dyn OffsetsTopic>) -> Arc<Self> {
        Arc::new(Coordinator {
            config,
            topic,
            shards: RwLock::new(HashMap::new()),
            next_waiter: AtomicU64::new(1),
            create_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Starts the watcher (leadership changes, timers). It stops when the coordinator is
    /// dropped.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(
            async move {
                let mut interval = tokio::time::interval(WATCH_INTERVAL);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    let Some(c) = weak.upgrade() else {
                        return;
                    };
                    c.refresh();
                    c.tick();
                }
            }
            .instrument(tracing::info_span!("group_coordinator")),
        );
    }

    /// Offsets-topic partition of a group, once the topic exists.
    pub fn partition_of(&self, group: &str) -> Option<i32> {
        self.topic
            .partitions()
            .map(|n| store::partition_for(group, n))
    }

    /// Creates the offsets topic if needed (FindCoordinator) and returns the group's
    /// partition.
    pub async fn ensure_partition_of(&self, group: &str) -> Result<i32, String> {
        if let Some(p) = self.partition_of(group) {
            return Ok(p);
        }
        let n = {
            let _one_at_a_time = self.create_lock.lock().await;
            match self.topic.partitions() {
                Some(n) => n,
                None => self.topic.create().await?,
            }
        };
        self.refresh();
        Ok(store::partition_for(group, n))
    }

    /// Opens shards for newly led partitions and closes those no longer led.
    pub fn refresh(self: &Coordinator) {
        let n = self.topic.partitions().unwrap_or(0);
        // Asked before taking the lock: requests only wait for the comparison below.
        let led: Vec<_> = (0..n).map(|p| (p, self.topic.led_partition(p))).collect();
        let mut opened = Vec::new();
        let mut closed = Vec::new();
        {
            let Ok(mut shards) = self.shards.write() else {
                return;
            };
            for (p, led) in led {
                let current = shards.get(&p).map(|s| s.epoch);
                match (led, current) {
                    (Some((epoch, _)), Some(e)) if e == epoch => {}
                    (Some((epoch, log)), _) => {
                        if let Some(old) = shards.remove(&p) {
                            closed.push(old);
                        }
                        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                        let shard = Arc::new(Shard {
                            partition: p,
                            epoch,
                            log,
                            inner: Mutex::new(Inner {
                                phase: Phase::Loading,
                                waiters: HashMap::new(),
                                writer: Some(tx),
                            }),
                        });
                        shards.insert(p, Arc::clone(&shard));
                        opened.push((shard, rx));
                    }
                    (None, Some(_)) => {
                        if let Some(old) = shards.remove(&p) {
                            closed.push(old);
                        }
                    }
                    (None, None) => {}
                }
            }
            let stale: Vec<i32> = shards.keys().copied().filter(|p| *p >= n).collect();
            for p in stale {
                if let Some(old) = shards.remove(&p) {
                    closed.push(old);
                }
            }
        }
        for shard in closed {
            tracing::info!(
                partition = shard.partition,
                epoch = shard.epoch,
                "no longer coordinator for this offsets partition; unloading its groups"
            );
            shard.close();
        }
        for (shard, rx) in opened {
            let span = tracing::info_span!(
                "offsets_partition",
                partition = shard.partition,
                epoch = shard.epoch
            );
            tokio::spawn(
                run_writer(Arc::clone(&shard), rx, self.config.commit_timeout_ms)
                    .instrument(span.clone()),
            );
            tokio::spawn(load(Arc::clone(&shard), self.config.clone()).instrument(span));
        }
    }

    fn tick(&self) {
        for shard in self.all_shards() {
            let _ = shard.with_active(|core, now| {
                if core.next_deadline().is_some_and(|d| d <= now) {
                    core.tick(now);
                }
            });
        }
    }

    fn all_shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    fn shard_for(&self, group: &str) -> Result<Arc<Shard>, i16> {
        let p = self.partition_of(group).ok_or(E::NotCoordinator.code())?;
        self.shards
            .read()
            .ok()
            .and_then(|s| s.get(&p).cloned())
            .ok_or(E::NotCoordinator.code())
    }

    // ---- the APIs -----------------------------------------------------------------------

    #[tracing::instrument(level = "info", skip_all, fields(group = %req.group_id, member = %req.member_id))]
    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err(code) => return JoinResponse::error(&member_id, code),
        };
        match shard
            .call(&self.next_waiter, |core, now, w| core.join(now, req, w))
            .await
        {
            Ok(Reply::Join(r)) => r,
            Ok(_) => JoinResponse::error(&member_id, E::UnknownServerError.code()),
            Err(p) => JoinResponse::error(&member_id, p.code()),
        }
    }

    #[tracing::instrument(level = "info", skip_all, fields(group = %req.group_id, member = %req.member_id, generation = req.generation))]
    pub async fn sync(&self, req: SyncRequest) -> SyncResponse {
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err(code) => return SyncResponse::error(code),
        };
        match shard
            .call(&self.next_waiter, |core, now, w| core.sync(now, req, w))
            .await
        {
            Ok(Reply::Sync(r)) => r,
            Ok(_) => SyncResponse::error(E::UnknownServerError.code()),
            // Kafka: the rebalance state was lost with the load; rejoin without rediscovery.
            Err(NotServing::Loading) => SyncResponse::error(E::RebalanceInProgress.code()),
            Err(p) => SyncResponse::error(p.code()),
        }
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if group.is_empty() {
            return E::InvalidGroupId.code();
        }
        let shard = match self.shard_for(group) {
            Ok(s) => s,
            Err(code) => return code,
        };
        match shard
            .with_active(|core, now| core.heartbeat(now, group, member_id, instance_id, generation))
        {
            Ok(code) => code,
            // Kafka answers heartbeats blindly while loading.
            Err(NotServing::Loading) => 0,
            Err(p) => p.code(),
        }
    }

    pub fn leave(&self, group: &str, members: Vec<MemberIdentity>) -> LeaveResult {
        let error = |code| LeaveResult {
            error: code,
            members: Vec::new(),
        };
        if group.is_empty() {
            return error(E::InvalidGroupId.code());
        }
        let shard = match self.shard_for(group) {
            Ok(s) => s,
            Err(code) => return error(code),
        };
        shard
            .with_active(|core, now| core.leave(now, group, members))
            .unwrap_or_else(|p| error(p.code()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %req.group_id))]
    pub async fn commit(&self, req: CommitRequest) -> PartitionErrors {
        let all = |req: &CommitRequest, code: i16| -> PartitionErrors {
            req.offsets
                .iter()
                .map(|o| (o.topic.clone(), o.partition, code))
                .collect()
        };
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err(code) => return all(&req, code),
        };
        let keys = all(&req, 0);
        match shard
            .call(&self.next_waiter, |core, now, w| core.commit(now, req, w))
            .await
        {
            Ok(Reply::Commit(r)) => r,
            Ok(_) => keys
                .into_iter()
                .map(|(t, p, _)| (t, p, E::UnknownServerError.code()))
                .collect(),
            Err(e) => keys.into_iter().map(|(t, p, _)| (t, p, e.code())).collect(),
        }
    }

    pub fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<FetchedOffset>, i16> {
        let shard = self.shard_for(group)?;
        shard
            .with_active(|core, _| core.fetch_offsets(group, wanted))
            .map_err(NotServing::code)
    }

    /// `Ok(None)`: no such group.
    pub fn describe(&self, group: &str) -> Result<Option<GroupSummary>, i16> {
        let shard = self.shard_for(group)?;
        shard
            .with_active(|core, _| core.describe(group))
            .map_err(NotServing::code)
    }

    /// Every group this broker coordinates; COORDINATOR_LOAD_IN_PROGRESS while some
    /// partition is still loading (with the groups known so far).
    pub fn list(&self) -> (i16, Vec<GroupOverview>) {
        let mut error = 0;
        let mut groups = Vec::new();
        for shard in self.all_shards() {
            match shard.with_active(|core, _| core.list()) {
                Ok(g) => groups.extend(g),
                Err(NotServing::Loading) => error = E::CoordinatorLoadInProgress.code(),
                Err(NotServing::Closed) => {}
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        (error, groups)
    }

    #[tracing::instrument(level = "info", skip_all, fields(groups = ids.len()))]
    pub async fn delete_groups(&self, ids: Vec<String>) -> Vec<(String, i16)> {
        let mut by_shard: HashMap<i32, (Arc<Shard>, Vec<String>)> = HashMap::new();
        let mut results = Vec::new();
        for id in ids {
            match self.shard_for(&id) {
                Ok(shard) => by_shard
                    .entry(shard.partition)
                    .or_insert_with(|| (shard, Vec::new()))
                    .1
                    .push(id),
                Err(code) => results.push((id, code)),
            }
        }
        for (_, (shard, ids)) in by_shard {
            let keys = ids.clone();
            match shard
                .call(&self.next_waiter, |core, now, w| {
                    core.delete_groups(now, ids, w)
                })
                .await
            {
                Ok(Reply::DeleteGroups(r)) => results.extend(r),
                Ok(_) => {
                    results.extend(keys.into_iter().map(|g| (g, E::UnknownServerError.code())))
                }
                Err(p) => results.extend(keys.into_iter().map(|g| (g, p.code()))),
            }
        }
        results
    }

    #[tracing::instrument(level = "info", skip(self, partitions))]
    pub async fn offset_delete(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> (i16, PartitionErrors) {
        let shard = match self.shard_for(group) {
            Ok(s) => s,
            Err(code) => return (code, Vec::new()),
        };
        match shard
            .call(&self.next_waiter, |core, now, w| {
                core.offset_delete(now, group, partitions, w)
            })
            .await
        {
            Ok(Reply::OffsetDelete(e, r)) => (e, r),
            Ok(_) => (E::UnknownServerError.code(), Vec::new()),
            Err(p) => (p.code(), Vec::new()),
        }
    }
}

/// Appends the shard's writes in order; each acknowledgement is awaited on its own task.
async fn run_writer(shard: Arc<Shard>, mut rx: mpsc::Receiver<WriteJob>, timeout_ms: u64) {
    let timeout = Duration::from_millis(timeout_ms);
    while let Some(job) = rx.recv().await {
        match shard.log.append(job.batch, job.records).await {
            Ok(ack) => {
                let shard = Arc::clone(&shard);
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(timeout, ack).await {
                        Ok(r) => r,
                        Err(_) => Err(LogError::Timeout),
                    };
                    shard.complete_write(job.id, result);
                });
            }
            Err(e) => shard.complete_write(job.id, Err(e)),
        }
    }
}

/// Loads a shard from its partition: waits until everything the log held when leadership
/// arrived is committed, replays the partition from the start, then serves.
async fn load(shard: Arc<Shard>, config: GroupConfig) {
    let started = std::time::Instant::now();
    let target = shard.log.end_offset();
    while shard.log.high_watermark() < target {
        if shard.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut core = GroupShard::new(config, rand::random());
    let mut offset = 0i64;
    let mut records = 0u64;
    let mut undecodable = 0u64;
    loop {
        if shard.is_closed() {
            return;
        }
        if offset >= shard.log.high_watermark() {
            break;
        }
        let bytes = match shard.log.read(offset, LOAD_READ_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(offset, error = %e, "cannot read the offsets partition; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let next = store::for_each_record(&bytes, |(at, record)| match record {
            Ok(r) => {
                records += 1;
                core.replay(at, r);
            }
            Err(e) => {
                undecodable += 1;
                tracing::warn!(offset = at, error = %e, "skipping an undecodable record");
            }
        });
        match next {
            Some(n) if n > offset => offset = n,
            _ => {
                tracing::error!(
                    offset,
                    "offsets partition holds no whole batch here; loading stops"
                );
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let now = now_ms();
    core.finish_load(now);
    let groups = core.group_count();
    let mut inner = shard.lock();
    if !matches!(inner.phase, Phase::Loading) {
        return;
    }
    let Inner {
        waiters, writer, ..
    } = &mut *inner;
    dispatch(&mut core, waiters, writer.as_ref(), now);
    inner.phase = Phase::Active(Box::new(core));
    tracing::info!(
        groups,
        records,
        undecodable,
        ms = started.elapsed().as_millis() as u64,
        "loaded offsets partition"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::state::CommitOffset;
    use crate::group::store::Ack;
    use bytes::Bytes;

    /// An in-memory partition log: appends are stamped with increasing offsets and
    /// committed at once unless `hold` is set.
    #[derive(Default)]
    struct MemLog {
        batches: Mutex<Vec<(i64, Bytes)>>,
        next: AtomicU64,
        /// The committed view lags: nothing is committed yet (a new Raft leader).
        lagging: std::sync::atomic::AtomicBool,
    }

    impl GroupLog for MemLog {
        fn append(
            &self,
            mut batch: BytesMut,
            records: u64,
        ) -> BoxFuture<'_, Result<Ack, LogError>> {
            let base = self.next.fetch_add(records + 3, Ordering::SeqCst) as i64 + 5;
            crate::storage::batch::stamp(&mut batch, base, 1);
            if let Ok(mut b) = self.batches.lock() {
                b.push((base, batch.freeze()));
            }
            Box::pin(async move { Ok(Box::pin(async move { Ok(base) }) as Ack) })
        }
        fn read(&self, offset: i64, _max: u64) -> Result<Option<Bytes>, LogError> {
            let b = self
                .batches
                .lock()
                .map_err(|e| LogError::Read(e.to_string()))?;
            let mut out = BytesMut::new();
            for (base, batch) in b.iter() {
                let h = crate::storage::batch::parse_header(batch)
                    .map_err(|e| LogError::Read(e.to_string()))?;
                if h.span.last_offset >= offset || *base >= offset {
                    out.extend_from_slice(batch);
                }
            }
            Ok((!out.is_empty()).then(|| out.freeze()))
        }
        fn high_watermark(&self) -> i64 {
            if self.lagging.load(Ordering::SeqCst) {
                0
            } else {
                self.end_offset()
            }
        }
        fn end_offset(&self) -> i64 {
            self.batches
                .lock()
                .ok()
                .and_then(|b| {
                    b.last()
                        .and_then(|(_, batch)| crate::storage::batch::parse_header(batch).ok())
                        .map(|h| h.span.last_offset + 1)
                })
                .unwrap_or(0)
        }
    }

    struct MemTopic {
        log: Arc<MemLog>,
        led: std::sync::atomic::AtomicI32,
    }

    impl OffsetsTopic for MemTopic {
        fn partitions(&self) -> Option<i32> {
            Some(1)
        }
        fn create(&self) -> BoxFuture<'_, Result<i32, String>> {
            Box::pin(async { Ok(1) })
        }
        fn led_partition(&self, _p: i32) -> Option<(i32, Arc<dyn GroupLog>)> {
            let epoch = self.led.load(Ordering::SeqCst);
            (epoch > 0).then(|| (epoch, Arc::clone(&self.log) as Arc<dyn GroupLog>))
        }
    }

    async fn active(c: &Coordinator) {
        for _ in 0..200 {
            c.refresh();
            if c.shard_for("g")
                .is_ok_and(|s| matches!(s.lock().phase, Phase::Active(_)))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("shard never became active");
    }

    fn commit(group: &str, offset: i64, metadata: &str) -> CommitRequest {
        CommitRequest {
            group_id: group.into(),
            generation: -1,
            member_id: String::new(),
            instance_id: None,
            offsets: vec![CommitOffset {
                topic: "t".into(),
                partition: 0,
                offset,
                leader_epoch: 2,
                metadata: Some(metadata.into()),
            }],
        }
    }

    #[tokio::test]
    async fn commits_survive_a_leadership_change_and_reload() {
        let log = Arc::new(MemLog::default());
        let topic = Arc::new(MemTopic {
            log: Arc::clone(&log),
            led: std::sync::atomic::AtomicI32::new(1),
        });
        let c = Coordinator::new(GroupConfig::default(), topic.clone());
        active(&c).await;
        assert_eq!(
            c.commit(commit("g", 10, "first")).await,
            vec![("t".into(), 0, 0)]
        );
        assert_eq!(
            c.commit(commit("g", 20, "second")).await,
            vec![("t".into(), 0, 0)]
        );
        let fetched = c.fetch_offsets("g", None).expect("active");
        assert_eq!(
            fetched[0]
                .2
                .as_ref()
                .map(|v| (v.offset, v.metadata.as_str())),
            Some((20, "second"))
        );

        // Leadership goes: NOT_COORDINATOR. It comes back with a new epoch: the state is
        // read back from the log.
        topic.led.store(0, Ordering::SeqCst);
        c.refresh();
        assert_eq!(c.fetch_offsets("g", None), Err(E::NotCoordinator.code()));
        topic.led.store(2, Ordering::SeqCst);
        active(&c).await;
        let fetched = c.fetch_offsets("g", None).expect("active");
        let v = fetched[0].2.clone().expect("committed offset survived");
        assert_eq!(
            (v.offset, v.leader_epoch, v.metadata.as_str()),
            (20, 2, "second")
        );
    }

    #[tokio::test]
    async fn a_loading_partition_answers_load_in_progress() {
        let log = Arc::new(MemLog::default());
        // A commit from a previous leader, not yet known to be committed here.
        let record = store::Record::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Some(store::OffsetValue {
                offset: 77,
                leader_epoch: -1,
                metadata: "old".into(),
                commit_timestamp: 1,
            }),
        };
        let (batch, n) = store::encode_batch(&[record], 1).expect("encode");
        let _ack = log.append(batch, n).await.expect("append");
        log.lagging.store(true, Ordering::SeqCst);
        let topic = Arc::new(MemTopic {
            log: Arc::clone(&log),
            led: std::sync::atomic::AtomicI32::new(1),
        });
        let c = Coordinator::new(GroupConfig::default(), topic);
        c.refresh();
        let loading = E::CoordinatorLoadInProgress.code();
        let join = JoinRequest {
            group_id: "g".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            ..JoinRequest::default()
        };
        assert_eq!(c.join(join).await.error, loading);
        assert_eq!(c.fetch_offsets("g", None), Err(loading));
        assert_eq!(c.commit(commit("g", 1, "")).await[0].2, loading);
        // As Kafka: heartbeats pass blindly, syncs are told to rejoin.
        assert_eq!(c.heartbeat("g", "m", None, 1), 0);
        let sync = SyncRequest {
            group_id: "g".into(),
            ..SyncRequest::default()
        };
        assert_eq!(c.sync(sync).await.error, E::RebalanceInProgress.code());
        assert_eq!(c.list().0, loading);

        log.lagging.store(false, Ordering::SeqCst);
        active(&c).await;
        let fetched = c.fetch_offsets("g", None).expect("loaded");
        assert_eq!(fetched[0].2.as_ref().map(|v| v.offset), Some(77));
    }
}
