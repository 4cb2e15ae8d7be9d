//! The controller loop: runs on every replica, acts only on the Raft leader. The decisions
//! (seal, restart point, conditional write, install, inject, watching the ring) are
//! [`sequencer_p4::control::ControlCore`], the same code the simulation in
//! `sequencer_p4::sim` runs under faults; this module is its driver: the UDP socket to the
//! switches, the clock, leadership (a linearizable barrier before acting), the store writes
//! on the openraft group, the admin commands and the metrics.
//!
//! See `sequencer_p4::control` for the steps and PROTOCOL.md for why they are safe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use sequencer_p4::control::SwitchSpec;
use sequencer_p4::control::{ControlCore, ControlOptions, Effect, DEFAULT_MAX_VISIT};
use sequencer_p4::wire::{Message, MAX_PACKET};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::replica::{Replica, ReplicaError};
use crate::store::{CtrlState, RosterEntry};

/// Most queued datagrams handled before a tick judges the clock (bounds the tick's work).
const MAX_DRAIN: usize = 4096;

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
        let core = ControlOptions::default();
        Self {
            retry: core.retry,
            probe_interval: core.probe_interval,
            token_timeout: core.token_timeout,
            give_up: core.give_up,
            max_visit: DEFAULT_MAX_VISIT,
            epoch_span: core.epoch_span,
            report_shift: core.report_shift,
            initial_roster: Vec::new(),
            write_timeout: Duration::from_secs(3),
        }
    }
}

impl ControllerConfig {
    /// The decision core's part of the configuration.
    pub fn core(&self) -> ControlOptions {
        ControlOptions {
            retry: self.retry,
            probe_interval: self.probe_interval,
            token_timeout: self.token_timeout,
            give_up: self.give_up,
            max_visit: self.max_visit,
            epoch_span: self.epoch_span,
            report_shift: self.report_shift,
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
                            .parse::<std::net::SocketAddrV4>()
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

pub struct Controller {
    replica: Replica,
    sock: Arc<UdpSocket>,
    cfg: ControllerConfig,
    metrics: Arc<Metrics>,
    core: ControlCore,
}

impl Controller {
    pub fn new(
        replica: Replica,
        sock: Arc<UdpSocket>,
        cfg: ControllerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let core = ControlCore::new(cfg.core());
        Self {
            replica,
            sock,
            cfg,
            metrics,
            core,
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
                    r = self.sock.recv_from(&mut buf) => self.on_received(r, &buf).await,
                    _ = tick.tick() => self.on_tick(&mut buf).await,
                    cmd = admin.recv(), if admin_open => match cmd {
                        Some(cmd) => self.on_admin(cmd).await,
                        None => admin_open = false,
                    },
                }
                self.sync_metrics();
            }
        }
        .instrument(span)
        .await
    }

    async fn on_received(&mut self, r: std::io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        match r {
            Ok((n, SocketAddr::V4(src))) => {
                let bytes = buf.get(..n).unwrap_or_default();
                match Message::decode(bytes) {
                    Ok(msg) => {
                        let effects = self.core.on_packet(src, &msg, Instant::now());
                        self.execute(effects).await;
                    }
                    Err(e) => tracing::debug!(%src, error = %e, "undecodable packet"),
                }
            }
            Ok(_) => {}
            // ICMP port-unreachable from a dead switch surfaces here on Linux:
            // it is information, not a reason to stop.
            Err(e) => tracing::trace!(error = %e, "udp receive error"),
        }
    }

    /// Handles what already waits in the socket. Called before the clock is judged: if
    /// this process was starved (CPU, a paused VM), the tick and a backlog of Progress
    /// alarms are ready together, and judging the clock first would reseal a healthy ring.
    async fn drain_socket(&mut self, buf: &mut [u8]) {
        for _ in 0..MAX_DRAIN {
            match self.sock.try_recv_from(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                r => self.on_received(r, buf).await,
            }
        }
    }

    fn sync_metrics(&self) {
        let st = self.core.stats();
        self.metrics
            .reconfigurations
            .store(st.reconfigurations, Ordering::Relaxed);
        self.metrics.seals.store(st.seals, Ordering::Relaxed);
        self.metrics
            .install_conflicts
            .store(st.install_conflicts, Ordering::Relaxed);
        if !self.core.is_follower() {
            self.metrics
                .epoch
                .store(u64::from(self.core.state().epoch()), Ordering::Relaxed);
        }
    }

    /// Carries out the core's effects: packets, and store writes whose outcome goes back
    /// into the core (which may produce more effects).
    async fn execute(&mut self, mut effects: Vec<Effect>) {
        while !effects.is_empty() {
            let mut next = Vec::new();
            for e in effects {
                match e {
                    Effect::Send(to, msg) => {
                        if let Err(e) = self.sock.send_to(&msg.to_bytes(), to).await {
                            tracing::trace!(%to, error = %e, "udp send failed");
                        }
                    }
                    Effect::Store {
                        expected_epoch,
                        config,
                    } => {
                        let write = self.replica.install(expected_epoch, config);
                        match tokio::time::timeout(self.cfg.write_timeout, write).await {
                            Ok(Ok(r)) => {
                                next.extend(self.core.on_stored(r.won, r.state, Instant::now()))
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "store write failed");
                                self.core.on_store_failed();
                            }
                            Err(_) => {
                                tracing::warn!("store write timed out");
                                self.core.on_store_failed();
                            }
                        }
                    }
                }
            }
            effects = next;
        }
    }

    async fn on_tick(&mut self, buf: &mut [u8]) {
        let leader = self.replica.is_leader();
        self.metrics
            .is_leader
            .store(u64::from(leader), Ordering::Relaxed);
        if !leader {
            self.core.step_down();
            return;
        }
        if self.core.is_follower() {
            self.become_leader().await;
            return;
        }
        self.drain_socket(buf).await;
        let effects = self.core.on_tick(Instant::now());
        self.execute(effects).await;
    }

    /// A fresh leader reads the store through a linearizable barrier, so that it acts on
    /// the newest configuration, and stores the initial roster if there is none.
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
        let mut state = self.replica.state();
        if state.roster.is_empty() && !self.cfg.initial_roster.is_empty() {
            let roster = self.cfg.initial_roster.clone();
            match self.write_roster(roster).await {
                Ok(st) => state = st,
                Err(e) => {
                    tracing::warn!(error = %e, "could not store the initial roster");
                    return;
                }
            }
        }
        let effects = self.core.become_leader(state, Instant::now());
        self.execute(effects).await;
    }

    async fn write_roster(&self, roster: Vec<RosterEntry>) -> Result<CtrlState, AdminError> {
        match tokio::time::timeout(self.cfg.write_timeout, self.replica.set_roster(roster)).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(e)) => Err(AdminError::Store(e.to_string())),
            Err(_) => Err(AdminError::Store("timed out".into())),
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
        if self.core.is_follower() || !self.replica.is_leader() {
            return Err(AdminError::NotLeader(self.replica.leader()));
        }
        if switches.is_empty() {
            return Err(AdminError::Empty);
        }
        let roster = self
            .core
            .plan_roster(&switches, &self.cfg.initial_roster)
            .map_err(AdminError::UnknownSwitch)?;
        let state = self.write_roster(roster.clone()).await?;
        let effects = self.core.on_roster_stored(state, Instant::now());
        self.execute(effects).await;
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
    use std::net::SocketAddrV4;

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
