//! The controller loop: runs on every replica, acts only on the Raft leader. It follows the
//! reconfiguration of PROTOCOL.md (and the model in `sequencer_p4::sim`):
//!
//! 1. trigger: no progress for `token_timeout`, Alarm TokenDropped/Exhausted, a member with
//!    a new boot id, an operator's resize, or no configuration at all (bootstrap);
//! 2. seal the stored epoch on every member and roster switch, retransmitting;
//! 3. choose the restart point from the seal reports;
//! 4. store epoch e+1 with the conditional write (losers adopt the winner's configuration);
//! 5. install it on every member, retransmitting (a member restarting meanwhile aborts);
//! 6. inject at the head until the epoch shows progress.
//!
//! Between reconfigurations the switches need nothing from here: the loop only watches.
//! Progress is learnt two ways: Progress alarms (sent to whoever sealed or installed the
//! switch last, so possibly an old leader) and the `last_seq` in the Status answers to the
//! leader's periodic Probes, which reach whichever replica leads now. The probes also reveal
//! restarted switches when their boot Status went to another replica.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sequencer_p4::config::{RingConfig, RingMember};
use sequencer_p4::wire::{
    install_flags, Alarm, AlarmKind, Inject, Install, Message, Probe, Seal, Status, MAX_PACKET,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::replica::{Replica, ReplicaError};
use crate::restart::restart_point;
use crate::store::{CtrlState, RosterEntry};

/// Timing and sizing of the ring.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Retransmission interval for Seal, Install, Inject.
    pub retry: Duration,
    /// How often the leader probes the members of a running epoch.
    pub probe_interval: Duration,
    /// No progress for this long: the token is presumed lost.
    pub token_timeout: Duration,
    /// A phase that does not complete within this is abandoned (seal: silent switches are
    /// presumed dead; install/inject: start over with a new epoch).
    pub give_up: Duration,
    /// W: most numbers per visit.
    pub max_visit: u32,
    /// limit - base of each epoch.
    pub epoch_span: u64,
    /// Progress alarm every 2^report_shift token hops.
    pub report_shift: u8,
    /// Roster written to the store if it has none yet.
    pub initial_roster: Vec<RosterEntry>,
    /// Bound on one write to the store (a leader without quorum must not hang the loop).
    pub write_timeout: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            retry: Duration::from_millis(50),
            probe_interval: Duration::from_millis(100),
            token_timeout: Duration::from_millis(1000),
            give_up: Duration::from_millis(1500),
            max_visit: 1 << 16,
            epoch_span: 1 << 40,
            report_shift: 12,
            initial_roster: Vec::new(),
            write_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub epoch: AtomicU64,
    /// Epochs this replica stored (won the conditional write).
    pub reconfigurations: AtomicU64,
    /// Seal rounds started.
    pub seals: AtomicU64,
    pub is_leader: AtomicU64,
    /// Conditional writes lost to another controller.
    pub install_conflicts: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    #[error("unknown switch {0}: give it as id=host:port")]
    UnknownSwitch(u16),
    #[error("bad switch list: {0}")]
    Parse(String),
    #[error("empty ring")]
    Empty,
    #[error("store: {0}")]
    Store(String),
    #[error("controller stopped")]
    Stopped,
}

/// Requests from the admin endpoint to the controller loop.
#[derive(Debug)]
pub enum AdminCmd {
    Resize {
        switches: Vec<SwitchSpec>,
        reply: oneshot::Sender<Result<Vec<RosterEntry>, AdminError>>,
    },
}

/// A switch named in a resize: by id (address known) or with its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSpec {
    pub switch_id: u16,
    pub addr: Option<SocketAddrV4>,
}

/// Parses `0,1,3=127.0.0.1:7653`.
pub fn parse_switch_specs(s: &str) -> Result<Vec<SwitchSpec>, AdminError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (id, addr) = match p.split_once('=') {
                Some((id, a)) => (
                    id,
                    Some(
                        a.trim()
                            .parse::<SocketAddrV4>()
                            .map_err(|e| AdminError::Parse(format!("{p}: {e}")))?,
                    ),
                ),
                None => (p, None),
            };
            let switch_id = id
                .trim()
                .parse::<u16>()
                .map_err(|e| AdminError::Parse(format!("{p}: {e}")))?;
            Ok(SwitchSpec { switch_id, addr })
        })
        .collect()
}

#[derive(Debug)]
enum Phase {
    /// Not the leader: watch nothing, send nothing.
    Follower,
    Running {
        last_progress: Instant,
        last_probe: Instant,
        /// Last `last_seq` each member reported in the running epoch.
        seen: BTreeMap<u16, u64>,
    },
    Sealing {
        /// The epoch being sealed (the stored one; 0 when nothing is stored yet).
        epoch: u32,
        started: Instant,
        last_send: Instant,
        targets: Vec<RosterEntry>,
        reports: BTreeMap<u16, Status>,
    },
    Installing {
        config: RingConfig,
        started: Instant,
        last_send: Instant,
        acked: BTreeSet<u16>,
    },
    Injecting {
        config: RingConfig,
        started: Instant,
        last_send: Instant,
    },
}

pub struct Controller {
    replica: Replica,
    sock: Arc<UdpSocket>,
    cfg: ControllerConfig,
    metrics: Arc<Metrics>,
    phase: Phase,
    /// Stored state as of the last time this loop read or wrote it.
    state: CtrlState,
}

impl Controller {
    pub fn new(
        replica: Replica,
        sock: Arc<UdpSocket>,
        cfg: ControllerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            replica,
            sock,
            cfg,
            metrics,
            phase: Phase::Follower,
            state: CtrlState::default(),
        }
    }

    /// Runs until `admin` closes and the task is dropped; never returns on its own.
    pub async fn run(mut self, mut admin: mpsc::Receiver<AdminCmd>) {
        let span = tracing::info_span!("controller", id = self.replica.id);
        async move {
            let mut buf = vec![0u8; MAX_PACKET * 2];
            let mut tick = tokio::time::interval(self.cfg.retry / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut admin_open = true;
            loop {
                tokio::select! {
                    r = self.sock.recv_from(&mut buf) => match r {
                        Ok((n, src)) => {
                            let bytes = buf.get(..n).unwrap_or_default();
                            match Message::decode(bytes) {
                                Ok(msg) => self.on_packet(src, msg).await,
                                Err(e) => tracing::debug!(%src, error = %e, "undecodable packet"),
                            }
                        }
                        // ICMP port-unreachable from a dead switch surfaces here on Linux:
                        // it is information, not a reason to stop.
                        Err(e) => tracing::trace!(error = %e, "udp receive error"),
                    },
                    _ = tick.tick() => self.on_tick().await,
                    cmd = admin.recv(), if admin_open => match cmd {
                        Some(cmd) => self.on_admin(cmd).await,
                        None => admin_open = false,
                    },
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn send(&self, to: SocketAddrV4, msg: Message) {
        if let Err(e) = self.sock.send_to(&msg.to_bytes(), to).await {
            tracing::trace!(%to, error = %e, "udp send failed");
        }
    }

    fn current(&self) -> Option<&RingConfig> {
        self.state.config.as_ref()
    }

    async fn on_tick(&mut self) {
        let leader = self.replica.is_leader();
        self.metrics
            .is_leader
            .store(u64::from(leader), Ordering::Relaxed);
        if !leader {
            if !matches!(self.phase, Phase::Follower) {
                tracing::info!("lost leadership; controller idle");
                self.phase = Phase::Follower;
            }
            return;
        }
        let now = Instant::now();
        match &mut self.phase {
            Phase::Follower => self.become_leader().await,
            Phase::Running {
                last_progress,
                last_probe,
                ..
            } => {
                if now.duration_since(*last_progress) > self.cfg.token_timeout {
                    tracing::warn!("no progress: token presumed lost");
                    self.start_reconfig("token timeout").await;
                } else if now.duration_since(*last_probe) >= self.cfg.probe_interval {
                    *last_probe = now;
                    let members: Vec<SocketAddrV4> = self
                        .current()
                        .map(|c| c.members.iter().map(|m| m.addr).collect())
                        .unwrap_or_default();
                    for a in members {
                        self.send(a, Message::Probe(Probe {})).await;
                    }
                }
            }
            Phase::Sealing {
                started,
                last_send,
                targets,
                reports,
                ..
            } => {
                let all = targets.iter().all(|t| reports.contains_key(&t.switch_id));
                let gave_up = now.duration_since(*started) >= self.cfg.give_up;
                let roster_reported = self
                    .state
                    .roster
                    .iter()
                    .any(|r| reports.contains_key(&r.switch_id));
                if (all || gave_up) && roster_reported {
                    self.store_next_epoch().await;
                } else if now.duration_since(*last_send) >= self.cfg.retry {
                    *last_send = now;
                    self.send_seals().await;
                }
            }
            Phase::Installing {
                started, last_send, ..
            } => {
                if now.duration_since(*started) >= self.cfg.give_up {
                    self.start_reconfig("install timed out").await;
                } else if now.duration_since(*last_send) >= self.cfg.retry {
                    *last_send = now;
                    self.send_installs().await;
                }
            }
            Phase::Injecting {
                started, last_send, ..
            } => {
                if now.duration_since(*started) >= self.cfg.give_up {
                    self.start_reconfig("inject timed out").await;
                } else if now.duration_since(*last_send) >= self.cfg.retry {
                    *last_send = now;
                    self.send_inject().await;
                }
            }
        }
    }

    /// A fresh leader reads the store through a linearizable barrier, so that it acts on
    /// the newest configuration, then watches the ring rather than reconfiguring it: a
    /// running ring must not be disturbed by a controller failover.
    async fn become_leader(&mut self) {
        // Bounded: a leader that has lost its quorum must not wedge the loop here.
        let barrier = self.replica.raft.ensure_linearizable();
        match tokio::time::timeout(self.cfg.write_timeout, barrier).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "leadership not confirmed yet");
                return;
            }
            Err(_) => {
                tracing::debug!("leadership barrier timed out");
                return;
            }
        }
        self.state = self.replica.state();
        tracing::info!(epoch = self.state.epoch(), "became leader");
        if self.state.roster.is_empty() && !self.cfg.initial_roster.is_empty() {
            let roster = self.cfg.initial_roster.clone();
            match self.write_roster(roster).await {
                Ok(st) => self.state = st,
                Err(e) => {
                    tracing::warn!(error = %e, "could not store the initial roster");
                    return;
                }
            }
        }
        self.metrics
            .epoch
            .store(u64::from(self.state.epoch()), Ordering::Relaxed);
        if self.state.config.is_none() {
            self.start_reconfig("bootstrap").await;
        } else {
            let now = Instant::now();
            self.phase = Phase::Running {
                last_progress: now,
                last_probe: now - self.cfg.probe_interval,
                seen: BTreeMap::new(),
            };
        }
    }

    async fn write_roster(&self, roster: Vec<RosterEntry>) -> Result<CtrlState, AdminError> {
        match tokio::time::timeout(self.cfg.write_timeout, self.replica.set_roster(roster)).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(e)) => Err(AdminError::Store(e.to_string())),
            Err(_) => Err(AdminError::Store("timed out".into())),
        }
    }

    async fn start_reconfig(&mut self, why: &str) {
        let epoch = self.state.epoch();
        let mut targets: Vec<RosterEntry> = self
            .current()
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| RosterEntry {
                        switch_id: m.switch_id,
                        addr: m.addr,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for r in &self.state.roster {
            if !targets.iter().any(|t| t.switch_id == r.switch_id) {
                targets.push(r.clone());
            }
        }
        tracing::info!(epoch, why, targets = targets.len(), "sealing");
        self.metrics.seals.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.phase = Phase::Sealing {
            epoch,
            started: now,
            last_send: now,
            targets,
            reports: BTreeMap::new(),
        };
        self.send_seals().await;
    }

    async fn send_seals(&self) {
        let Phase::Sealing {
            epoch,
            targets,
            reports,
            ..
        } = &self.phase
        else {
            return;
        };
        for t in targets {
            if !reports.contains_key(&t.switch_id) {
                self.send(t.addr, Message::Seal(Seal { epoch: *epoch }))
                    .await;
            }
        }
    }

    /// Steps 3 and 4: restart point, then the conditional write.
    async fn store_next_epoch(&mut self) {
        let Phase::Sealing { epoch, reports, .. } = &self.phase else {
            return;
        };
        let epoch = *epoch;
        let base = match self.current() {
            Some(c) => restart_point(c, reports),
            None => 0,
        };
        let members: Vec<RingMember> = self
            .state
            .roster
            .iter()
            .filter_map(|r| {
                reports.get(&r.switch_id).map(|st| RingMember {
                    switch_id: r.switch_id,
                    addr: r.addr,
                    boot: st.boot,
                })
            })
            .collect();
        let Some(next_epoch) = epoch.checked_add(1) else {
            tracing::error!("epoch space exhausted");
            return;
        };
        // Kafka offsets are signed: never let an epoch reach past i64::MAX.
        let limit = base
            .saturating_add(self.cfg.epoch_span)
            .min(i64::MAX as u64);
        if members.is_empty() || limit <= base {
            tracing::error!(base, "cannot form a ring (no members or no number space)");
            self.start_reconfig("no ring").await;
            return;
        }
        let head = members[next_epoch as usize % members.len()].switch_id;
        let config = RingConfig {
            epoch: next_epoch,
            base,
            limit,
            max_visit: self.cfg.max_visit,
            members,
            head,
        };
        let write = self.replica.install(epoch, config.clone());
        let result = match tokio::time::timeout(self.cfg.write_timeout, write).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("store write timed out");
                self.phase = Phase::Follower;
                return;
            }
        };
        match result {
            Ok(r) => {
                self.state = r.state;
                let config = if r.won {
                    self.metrics
                        .reconfigurations
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        epoch = config.epoch,
                        base = config.base,
                        members = ?config.members.iter().map(|m| m.switch_id).collect::<Vec<_>>(),
                        "stored new epoch"
                    );
                    config
                } else {
                    // Another controller stored a newer epoch: adopt it and finish its
                    // installation (installs and injects are idempotent).
                    self.metrics
                        .install_conflicts
                        .fetch_add(1, Ordering::Relaxed);
                    let Some(c) = self.state.config.clone() else {
                        self.phase = Phase::Follower;
                        return;
                    };
                    tracing::info!(epoch = c.epoch, "lost the conditional write; adopting");
                    c
                };
                self.metrics
                    .epoch
                    .store(u64::from(config.epoch), Ordering::Relaxed);
                let now = Instant::now();
                self.phase = Phase::Installing {
                    config,
                    started: now,
                    last_send: now,
                    acked: BTreeSet::new(),
                };
                self.send_installs().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "store write failed");
                self.phase = Phase::Follower;
            }
        }
    }

    fn install_msg(&self, config: &RingConfig, k: usize) -> Option<(SocketAddrV4, Install)> {
        let n = config.members.len();
        let m = config.members.get(k)?;
        let succ = config.members.get((k + 1) % n)?;
        let mut install = Install {
            epoch: config.epoch,
            switch_id: m.switch_id,
            flags: if m.switch_id == config.head {
                install_flags::HEAD
            } else {
                0
            },
            report_shift: self.cfg.report_shift,
            max_visit: config.max_visit,
            boot: m.boot,
            base: config.base,
            limit: config.limit,
            ..Install::default()
        };
        install.set_successor(succ.addr);
        Some((m.addr, install))
    }

    async fn send_installs(&self) {
        let Phase::Installing { config, acked, .. } = &self.phase else {
            return;
        };
        for k in 0..config.members.len() {
            if let Some((to, i)) = self.install_msg(config, k) {
                if !acked.contains(&i.switch_id) {
                    self.send(to, Message::Install(i)).await;
                }
            }
        }
    }

    async fn send_inject(&self) {
        let Phase::Injecting { config, .. } = &self.phase else {
            return;
        };
        if let Some(h) = config.members.iter().find(|m| m.switch_id == config.head) {
            let epoch = config.epoch;
            self.send(h.addr, Message::Inject(Inject { epoch })).await;
        }
    }

    fn member_of(&self, switch_id: u16) -> Option<&RingMember> {
        self.current()?
            .members
            .iter()
            .find(|m| m.switch_id == switch_id)
    }

    /// Whether `src` is the address we know for `switch_id` (a switch is identified by
    /// its id, but only believed from its own address).
    fn known_addr(&self, switch_id: u16, src: SocketAddr) -> bool {
        let SocketAddr::V4(src) = src else {
            return false;
        };
        let in_cfg = self.member_of(switch_id).is_some_and(|m| m.addr == src);
        let in_roster = self
            .state
            .roster
            .iter()
            .any(|r| r.switch_id == switch_id && r.addr == src);
        let in_targets = matches!(&self.phase, Phase::Sealing { targets, .. }
            if targets.iter().any(|t| t.switch_id == switch_id && t.addr == src));
        in_cfg || in_roster || in_targets
    }

    async fn on_packet(&mut self, src: SocketAddr, msg: Message) {
        if matches!(self.phase, Phase::Follower) {
            return;
        }
        match msg {
            Message::Status(st) if self.known_addr(st.switch_id, src) => self.on_status(st).await,
            Message::Alarm(a) if self.known_addr(a.switch_id, src) => self.on_alarm(a).await,
            _ => {}
        }
    }

    async fn on_alarm(&mut self, a: Alarm) {
        let Some(epoch) = self.current().map(|c| c.epoch) else {
            return;
        };
        if a.epoch != epoch {
            return;
        }
        let kind = AlarmKind::from_u8(a.kind);
        match (kind, &mut self.phase) {
            (Some(AlarmKind::Progress), Phase::Running { last_progress, .. }) => {
                *last_progress = Instant::now();
            }
            (Some(AlarmKind::Progress), Phase::Injecting { .. }) => self.enter_running(),
            (
                Some(k @ (AlarmKind::TokenDropped | AlarmKind::Exhausted)),
                Phase::Running { .. } | Phase::Injecting { .. },
            ) => {
                tracing::warn!(switch = a.switch_id, kind = ?k, "alarm");
                self.start_reconfig("alarm").await;
            }
            _ => {}
        }
    }

    fn enter_running(&mut self) {
        let now = Instant::now();
        if let Some(c) = self.current() {
            tracing::info!(epoch = c.epoch, "token circulating");
        }
        self.phase = Phase::Running {
            last_progress: now,
            last_probe: now,
            seen: BTreeMap::new(),
        };
    }

    async fn on_status(&mut self, st: Status) {
        let member_boot = self.member_of(st.switch_id).map(|m| m.boot);
        let epoch = self.state.epoch();
        let restarted = member_boot.is_some_and(|b| b != st.boot);
        match &mut self.phase {
            Phase::Follower => {}
            Phase::Sealing {
                epoch: sealing,
                targets,
                reports,
                ..
            } => {
                if st.seal_floor >= *sealing && targets.iter().any(|t| t.switch_id == st.switch_id)
                {
                    reports.insert(st.switch_id, st);
                }
            }
            Phase::Installing { config, acked, .. } => {
                if restarted {
                    tracing::warn!(switch = st.switch_id, "member restarted during install");
                    self.start_reconfig("restart during install").await;
                } else if member_boot.is_some() && st.epoch == config.epoch {
                    acked.insert(st.switch_id);
                    if config.members.iter().all(|m| acked.contains(&m.switch_id)) {
                        let config = config.clone();
                        tracing::info!(epoch = config.epoch, "installed on every member");
                        let now = Instant::now();
                        self.phase = Phase::Injecting {
                            config,
                            started: now,
                            last_send: now,
                        };
                        self.send_inject().await;
                    }
                }
            }
            Phase::Running {
                last_progress,
                seen,
                ..
            } => {
                if restarted {
                    tracing::warn!(switch = st.switch_id, "member restarted");
                    self.start_reconfig("member restarted").await;
                } else if member_boot.is_some() && st.epoch == epoch {
                    let prev = seen.insert(st.switch_id, st.last_seq);
                    if prev.is_some_and(|p| st.last_seq > p) {
                        *last_progress = Instant::now();
                    }
                }
            }
            Phase::Injecting { .. } => {
                if restarted {
                    self.start_reconfig("member restarted during inject").await;
                } else if member_boot.is_some() && st.epoch == epoch && st.last_seq > 0 {
                    // A member accepted a token of this epoch: injection worked even if
                    // its Progress alarm was lost.
                    self.enter_running();
                }
            }
        }
    }

    async fn on_admin(&mut self, cmd: AdminCmd) {
        match cmd {
            AdminCmd::Resize { switches, reply } => {
                let r = self.resize(switches).await;
                let _ = reply.send(r);
            }
        }
    }

    /// Stores the new roster, then reconfigures: the next epoch's ring is the roster's
    /// switches that answer the seal.
    async fn resize(&mut self, switches: Vec<SwitchSpec>) -> Result<Vec<RosterEntry>, AdminError> {
        if matches!(self.phase, Phase::Follower) || !self.replica.is_leader() {
            return Err(AdminError::NotLeader(self.replica.leader()));
        }
        if switches.is_empty() {
            return Err(AdminError::Empty);
        }
        let mut book: BTreeMap<u16, SocketAddrV4> = self
            .cfg
            .initial_roster
            .iter()
            .chain(self.state.roster.iter())
            .map(|r| (r.switch_id, r.addr))
            .collect();
        if let Some(c) = self.current() {
            book.extend(c.members.iter().map(|m| (m.switch_id, m.addr)));
        }
        let mut roster = Vec::new();
        for s in switches {
            let addr = s
                .addr
                .or_else(|| book.get(&s.switch_id).copied())
                .ok_or(AdminError::UnknownSwitch(s.switch_id))?;
            if !roster
                .iter()
                .any(|r: &RosterEntry| r.switch_id == s.switch_id)
            {
                roster.push(RosterEntry {
                    switch_id: s.switch_id,
                    addr,
                });
            }
        }
        self.state = self.write_roster(roster.clone()).await?;
        self.start_reconfig("resize").await;
        Ok(roster)
    }
}

/// Handle for the admin endpoint.
#[derive(Clone)]
pub struct AdminHandle {
    pub tx: mpsc::Sender<AdminCmd>,
}

impl AdminHandle {
    pub async fn resize(&self, switches: Vec<SwitchSpec>) -> Result<Vec<RosterEntry>, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AdminCmd::Resize { switches, reply })
            .await
            .map_err(|_| AdminError::Stopped)?;
        rx.await.map_err(|_| AdminError::Stopped)?
    }
}

/// Starts the controller loop for `replica` on `sock`; returns the admin handle.
pub fn spawn(
    replica: Replica,
    sock: UdpSocket,
    cfg: ControllerConfig,
    metrics: Arc<Metrics>,
) -> (AdminHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let ctrl = Controller::new(replica, Arc::new(sock), cfg, metrics);
    let task = tokio::spawn(ctrl.run(rx));
    (AdminHandle { tx }, task)
}

impl From<ReplicaError> for AdminError {
    fn from(e: ReplicaError) -> Self {
        AdminError::Store(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_specs_parse_ids_and_addresses() {
        let s = parse_switch_specs("0, 1,3=127.0.0.1:7653,").expect("parse");
        assert_eq!(
            s,
            vec![
                SwitchSpec {
                    switch_id: 0,
                    addr: None
                },
                SwitchSpec {
                    switch_id: 1,
                    addr: None
                },
                SwitchSpec {
                    switch_id: 3,
                    addr: Some(SocketAddrV4::new([127, 0, 0, 1].into(), 7653))
                },
            ]
        );
        assert!(parse_switch_specs("x").is_err());
        assert!(parse_switch_specs("70000").is_err());
        assert!(parse_switch_specs("1=nowhere").is_err());
        assert!(parse_switch_specs("").expect("empty").is_empty());
    }
}
