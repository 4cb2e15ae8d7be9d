//! The ring controller's decisions as a sans-IO state machine: packets, the clock, leadership
//! and store results in; packets and conditional store writes out. `ring-controller` runs it
//! on every replica (acting only on the Raft leader) with a UDP socket and an openraft store;
//! the simulation ([`crate::sim`]) runs the same code over its faulty network, with the same
//! [`CtrlState::apply`] as its store. It follows PROTOCOL.md ("Epochs, seal, install,
//! inject"):
//!
//! 1. trigger: no progress for `token_timeout`, Alarm TokenDropped/Exhausted, a member with
//!    a new boot id, an operator's resize, or no configuration at all (bootstrap);
//! 2. seal the stored epoch on every member and roster switch, retransmitting;
//! 3. choose the restart point from the seal reports ([`crate::config::restart_point`]);
//! 4. store epoch e+1 with the conditional write (losers adopt the winner's configuration);
//! 5. install it on every member, retransmitting (a member restarting meanwhile aborts);
//! 6. inject at the head until the epoch shows progress.
//!
//! Between reconfigurations the switches need nothing from here: the core only watches.
//! Progress is learnt two ways: Progress alarms (sent to whoever sealed or installed the
//! switch last, so possibly an old leader) and the `last_seq` in the Status answers to the
//! leader's periodic Probes, which reach whichever replica leads now. The probes also reveal
//! restarted switches when their boot Status went to another replica.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{restart_point, RingConfig, RingMember};
use crate::wire::{install_flags, Alarm, AlarmKind, Inject, Install, Message, Probe, Seal, Status};

/// A switch the operator wants in the ring (the roster); the ring of an epoch is the subset
/// that answered the seal, in roster order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub switch_id: u16,
    pub addr: SocketAddrV4,
}

/// A command of the replicated store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Store `config` only if the stored epoch (0 = none) is still `expected_epoch`.
    Install {
        expected_epoch: u32,
        config: RingConfig,
    },
    /// Replace the roster (resize). Takes effect at the next reconfiguration.
    SetRoster { roster: Vec<RosterEntry> },
}

/// The replicated state: the current configuration and the roster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrlState {
    pub config: Option<RingConfig>,
    pub roster: Vec<RosterEntry>,
}

impl CtrlState {
    pub fn epoch(&self) -> u32 {
        self.config.as_ref().map_or(0, |c| c.epoch)
    }

    /// The one place the conditional write is decided. Every replica applies the same log
    /// in the same order, so racing proposers get exactly one winner.
    pub fn apply(&mut self, cmd: &Command) -> bool {
        match cmd {
            Command::Install {
                expected_epoch,
                config,
            } => {
                // Epochs must also strictly grow, so a buggy proposer cannot go backwards
                // even with a matching expectation.
                let ok = self.epoch() == *expected_epoch && config.epoch > *expected_epoch;
                if ok {
                    self.config = Some(config.clone());
                }
                ok
            }
            Command::SetRoster { roster } => {
                self.roster = roster.clone();
                true
            }
        }
    }
}

/// Timing and sizing of the ring.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Retransmission interval for Seal, Install, Inject.
    pub retry: Duration,
    /// How often the leader probes the members of a running epoch.
    pub probe_interval: Duration,
    /// No progress for this long: the token is presumed lost.
    pub token_timeout: Duration,
    /// A phase that does not complete within this is abandoned (seal: silent switches are
    /// presumed dead; install/inject: start over with a new epoch).
    pub give_up: Duration,
    /// W: most numbers per visit, written into every new epoch.
    pub max_visit: u32,
    /// limit - base of each epoch.
    pub epoch_span: u64,
    /// Progress alarm every 2^report_shift token hops.
    pub report_shift: u8,
}

/// Default W: 2^28 numbers per visit. A request must fit in one visit, and the broker asks
/// for a whole batch (up to 1,000,000 records) — in fact for everything a partition queued
/// (up to 256 batches) — in one request. The cost of a large W is only the hole a dead
/// switch leaves (at most W numbers per silent member at a reconfiguration).
pub const DEFAULT_MAX_VISIT: u32 = 1 << 28;

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            retry: Duration::from_millis(50),
            probe_interval: Duration::from_millis(100),
            token_timeout: Duration::from_millis(1000),
            give_up: Duration::from_millis(1500),
            max_visit: DEFAULT_MAX_VISIT,
            epoch_span: 1 << 40,
            report_shift: 12,
        }
    }
}

impl ControlOptions {
    /// Refuses settings under which the ring could not make progress.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_visit == 0 {
            return Err("max_visit (W) must be at least 1".into());
        }
        if u64::from(self.max_visit) > self.epoch_span {
            return Err(format!(
                "max_visit (W) {} exceeds the epoch span {}: a full visit could never fit an epoch",
                self.max_visit, self.epoch_span
            ));
        }
        if self.retry.is_zero() || self.token_timeout.is_zero() || self.give_up.is_zero() {
            return Err("retry, token timeout and give-up must be positive".into());
        }
        Ok(())
    }
}

/// The restart point after `cfg.epoch` ([`restart_point`]), with `reports` mapping switch id
/// to the Status that answered the seal of `cfg.epoch`.
pub fn restart_point_of(cfg: &RingConfig, reports: &BTreeMap<u16, Status>) -> u64 {
    let members = cfg
        .members
        .iter()
        .map(|m| (m.boot, reports.get(&m.switch_id)));
    restart_point(cfg.epoch, cfg.base, cfg.limit, cfg.max_visit, members)
}

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Send(SocketAddrV4, Message),
    /// The conditional write `Command::Install { expected_epoch, config }`. Answer with
    /// [`ControlCore::on_stored`] (won or lost, and the state after it) or
    /// [`ControlCore::on_store_failed`].
    Store {
        expected_epoch: u32,
        config: RingConfig,
    },
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Epochs this core stored (won the conditional write).
    pub reconfigurations: u64,
    /// Seal rounds started.
    pub seals: u64,
    /// Conditional writes lost to another controller.
    pub install_conflicts: u64,
}

/// A switch named in a resize: by id (address known) or with its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSpec {
    pub switch_id: u16,
    pub addr: Option<SocketAddrV4>,
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
    /// Waiting for the driver's answer to an [`Effect::Store`].
    Storing,
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

/// One replica's controller logic.
pub struct ControlCore {
    opts: ControlOptions,
    phase: Phase,
    /// Stored state as of the last time the driver read or wrote it.
    state: CtrlState,
    stats: ControlStats,
}

impl ControlCore {
    pub fn new(opts: ControlOptions) -> Self {
        Self {
            opts,
            phase: Phase::Follower,
            state: CtrlState::default(),
            stats: ControlStats::default(),
        }
    }

    pub fn options(&self) -> &ControlOptions {
        &self.opts
    }

    pub fn state(&self) -> &CtrlState {
        &self.state
    }

    pub fn stats(&self) -> ControlStats {
        self.stats
    }

    /// True until [`ControlCore::become_leader`], and again after a step-down or a failed
    /// store write (the driver then confirms leadership again).
    pub fn is_follower(&self) -> bool {
        matches!(self.phase, Phase::Follower)
    }

    /// Whether the ring is running its stored epoch (no reconfiguration under way).
    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// Short name of the phase (logs, tests).
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Follower => "follower",
            Phase::Running { .. } => "running",
            Phase::Sealing { .. } => "sealing",
            Phase::Storing => "storing",
            Phase::Installing { .. } => "installing",
            Phase::Injecting { .. } => "injecting",
        }
    }

    fn current(&self) -> Option<&RingConfig> {
        self.state.config.as_ref()
    }

    /// This replica is no longer the leader.
    pub fn step_down(&mut self) {
        if !self.is_follower() {
            tracing::info!("lost leadership; controller idle");
            self.phase = Phase::Follower;
        }
    }

    /// This replica leads and `state` was read behind a linearizable barrier (with the
    /// initial roster already stored if there was none). A running ring is watched, not
    /// reconfigured: a controller failover must not disturb it.
    pub fn become_leader(&mut self, state: CtrlState, now: Instant) -> Vec<Effect> {
        self.state = state;
        tracing::info!(epoch = self.state.epoch(), "became leader");
        let mut out = Vec::new();
        if self.state.config.is_none() {
            self.start_reconfig("bootstrap", now, &mut out);
        } else {
            self.phase = Phase::Running {
                last_progress: now,
                // Probe at the first tick.
                last_probe: now.checked_sub(self.opts.probe_interval).unwrap_or(now),
                seen: BTreeMap::new(),
            };
        }
        out
    }

    pub fn on_tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        let probe_due;
        match &mut self.phase {
            Phase::Follower | Phase::Storing => return out,
            Phase::Running {
                last_progress,
                last_probe,
                ..
            } => {
                if now.saturating_duration_since(*last_progress) > self.opts.token_timeout {
                    tracing::warn!("no progress: token presumed lost");
                    self.start_reconfig("token timeout", now, &mut out);
                    return out;
                }
                probe_due = now.saturating_duration_since(*last_probe) >= self.opts.probe_interval;
                if probe_due {
                    *last_probe = now;
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
                let gave_up = now.saturating_duration_since(*started) >= self.opts.give_up;
                let roster_reported = self
                    .state
                    .roster
                    .iter()
                    .any(|r| reports.contains_key(&r.switch_id));
                if (all || gave_up) && roster_reported {
                    self.store_next_epoch(now, &mut out);
                } else if now.saturating_duration_since(*last_send) >= self.opts.retry {
                    *last_send = now;
                    self.send_seals(&mut out);
                }
                return out;
            }
            Phase::Installing {
                started, last_send, ..
            } => {
                if now.saturating_duration_since(*started) >= self.opts.give_up {
                    self.start_reconfig("install timed out", now, &mut out);
                } else if now.saturating_duration_since(*last_send) >= self.opts.retry {
                    *last_send = now;
                    self.send_installs(&mut out);
                }
                return out;
            }
            Phase::Injecting {
                started, last_send, ..
            } => {
                if now.saturating_duration_since(*started) >= self.opts.give_up {
                    self.start_reconfig("inject timed out", now, &mut out);
                } else if now.saturating_duration_since(*last_send) >= self.opts.retry {
                    *last_send = now;
                    self.send_inject(&mut out);
                }
                return out;
            }
        }
        if probe_due {
            if let Some(c) = self.current() {
                for m in &c.members {
                    out.push(Effect::Send(m.addr, Message::Probe(Probe {})));
                }
            }
        }
        out
    }

    fn start_reconfig(&mut self, why: &str, now: Instant, out: &mut Vec<Effect>) {
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
        self.stats.seals += 1;
        self.phase = Phase::Sealing {
            epoch,
            started: now,
            last_send: now,
            targets,
            reports: BTreeMap::new(),
        };
        self.send_seals(out);
    }

    fn send_seals(&self, out: &mut Vec<Effect>) {
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
                out.push(Effect::Send(t.addr, Message::Seal(Seal { epoch: *epoch })));
            }
        }
    }

    /// Steps 3 and 4: restart point, then the conditional write.
    fn store_next_epoch(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Phase::Sealing { epoch, reports, .. } = &self.phase else {
            return;
        };
        let epoch = *epoch;
        let base = self.current().map_or(0, |c| restart_point_of(c, reports));
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
            .saturating_add(self.opts.epoch_span)
            .min(i64::MAX as u64);
        if members.is_empty() || limit <= base {
            tracing::error!(base, "cannot form a ring (no members or no number space)");
            self.start_reconfig("no ring", now, out);
            return;
        }
        let head = members[next_epoch as usize % members.len()].switch_id;
        let config = RingConfig {
            epoch: next_epoch,
            base,
            limit,
            max_visit: self.opts.max_visit,
            members,
            head,
        };
        self.phase = Phase::Storing;
        out.push(Effect::Store {
            expected_epoch: epoch,
            config,
        });
    }

    /// The answer to [`Effect::Store`]: `won` tells whether our configuration was stored,
    /// `state` is the stored state after the write (the winner's configuration if we lost).
    pub fn on_stored(&mut self, won: bool, state: CtrlState, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Storing) {
            return out;
        }
        self.state = state;
        let Some(config) = self.state.config.clone() else {
            self.phase = Phase::Follower;
            return out;
        };
        if won {
            self.stats.reconfigurations += 1;
            tracing::info!(
                epoch = config.epoch,
                base = config.base,
                members = ?config.members.iter().map(|m| m.switch_id).collect::<Vec<_>>(),
                "stored new epoch"
            );
        } else {
            // Another controller stored a newer epoch: adopt it and finish its
            // installation (installs and injects are idempotent).
            self.stats.install_conflicts += 1;
            tracing::info!(epoch = config.epoch, "lost the conditional write; adopting");
        }
        self.phase = Phase::Installing {
            config,
            started: now,
            last_send: now,
            acked: BTreeSet::new(),
        };
        self.send_installs(&mut out);
        out
    }

    /// The store write failed or timed out (no quorum, lost leadership): stand down until
    /// the driver confirms leadership again.
    pub fn on_store_failed(&mut self) {
        tracing::warn!("store write failed; re-confirming leadership");
        self.phase = Phase::Follower;
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
            report_shift: self.opts.report_shift,
            max_visit: config.max_visit,
            boot: m.boot,
            base: config.base,
            limit: config.limit,
            ..Install::default()
        };
        install.set_successor(succ.addr);
        Some((m.addr, install))
    }

    fn send_installs(&self, out: &mut Vec<Effect>) {
        let Phase::Installing { config, acked, .. } = &self.phase else {
            return;
        };
        for k in 0..config.members.len() {
            if let Some((to, i)) = self.install_msg(config, k) {
                if !acked.contains(&i.switch_id) {
                    out.push(Effect::Send(to, Message::Install(i)));
                }
            }
        }
    }

    fn send_inject(&self, out: &mut Vec<Effect>) {
        let Phase::Injecting { config, .. } = &self.phase else {
            return;
        };
        if let Some(h) = config.members.iter().find(|m| m.switch_id == config.head) {
            let epoch = config.epoch;
            out.push(Effect::Send(h.addr, Message::Inject(Inject { epoch })));
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
    fn known_addr(&self, switch_id: u16, src: SocketAddrV4) -> bool {
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

    /// One packet from a switch.
    pub fn on_packet(&mut self, src: SocketAddrV4, msg: &Message, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.is_follower() {
            return out;
        }
        match msg {
            Message::Status(st) if self.known_addr(st.switch_id, src) => {
                self.on_status(*st, now, &mut out)
            }
            Message::Alarm(a) if self.known_addr(a.switch_id, src) => {
                self.on_alarm(*a, now, &mut out)
            }
            _ => {}
        }
        out
    }

    fn on_alarm(&mut self, a: Alarm, now: Instant, out: &mut Vec<Effect>) {
        let Some(epoch) = self.current().map(|c| c.epoch) else {
            return;
        };
        if a.epoch != epoch {
            return;
        }
        let kind = AlarmKind::from_u8(a.kind);
        match (kind, &mut self.phase) {
            (Some(AlarmKind::Progress), Phase::Running { last_progress, .. }) => {
                *last_progress = now;
            }
            (Some(AlarmKind::Progress), Phase::Injecting { .. }) => self.enter_running(now),
            (
                Some(k @ (AlarmKind::TokenDropped | AlarmKind::Exhausted)),
                Phase::Running { .. } | Phase::Injecting { .. },
            ) => {
                tracing::warn!(switch = a.switch_id, kind = ?k, "alarm");
                self.start_reconfig("alarm", now, out);
            }
            _ => {}
        }
    }

    fn enter_running(&mut self, now: Instant) {
        if let Some(c) = self.current() {
            tracing::info!(epoch = c.epoch, "token circulating");
        }
        self.phase = Phase::Running {
            last_progress: now,
            last_probe: now,
            seen: BTreeMap::new(),
        };
    }

    fn on_status(&mut self, st: Status, now: Instant, out: &mut Vec<Effect>) {
        let member_boot = self.member_of(st.switch_id).map(|m| m.boot);
        let epoch = self.state.epoch();
        let restarted = member_boot.is_some_and(|b| b != st.boot);
        match &mut self.phase {
            Phase::Follower | Phase::Storing => {}
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
                    self.start_reconfig("restart during install", now, out);
                } else if member_boot.is_some() && st.epoch == config.epoch {
                    acked.insert(st.switch_id);
                    if config.members.iter().all(|m| acked.contains(&m.switch_id)) {
                        let config = config.clone();
                        tracing::info!(epoch = config.epoch, "installed on every member");
                        self.phase = Phase::Injecting {
                            config,
                            started: now,
                            last_send: now,
                        };
                        self.send_inject(out);
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
                    self.start_reconfig("member restarted", now, out);
                } else if member_boot.is_some() && st.epoch == epoch {
                    let prev = seen.insert(st.switch_id, st.last_seq);
                    if prev.is_some_and(|p| st.last_seq > p) {
                        *last_progress = now;
                    }
                }
            }
            Phase::Injecting { .. } => {
                if restarted {
                    self.start_reconfig("member restarted during inject", now, out);
                } else if member_boot.is_some() && st.epoch == epoch && st.last_seq > 0 {
                    // A member accepted a token of this epoch: injection worked even if
                    // its Progress alarm was lost.
                    self.enter_running(now);
                }
            }
        }
    }

    /// The roster a resize to `switches` stores: addresses of switches named by id alone
    /// come from `known` (the initial roster), the stored roster or the configuration.
    /// `Err(id)` names a switch whose address nobody knows.
    pub fn plan_roster(
        &self,
        switches: &[SwitchSpec],
        known: &[RosterEntry],
    ) -> Result<Vec<RosterEntry>, u16> {
        let mut book: BTreeMap<u16, SocketAddrV4> = known
            .iter()
            .chain(self.state.roster.iter())
            .map(|r| (r.switch_id, r.addr))
            .collect();
        if let Some(c) = self.current() {
            book.extend(c.members.iter().map(|m| (m.switch_id, m.addr)));
        }
        let mut roster: Vec<RosterEntry> = Vec::new();
        for s in switches {
            let addr = s
                .addr
                .or_else(|| book.get(&s.switch_id).copied())
                .ok_or(s.switch_id)?;
            if !roster.iter().any(|r| r.switch_id == s.switch_id) {
                roster.push(RosterEntry {
                    switch_id: s.switch_id,
                    addr,
                });
            }
        }
        Ok(roster)
    }

    /// A new roster was stored (`state` is the store after it): reconfigure, so the next
    /// epoch's ring is the roster's switches that answer the seal.
    pub fn on_roster_stored(&mut self, state: CtrlState, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.is_follower() {
            return out;
        }
        self.state = state;
        self.start_reconfig("resize", now, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Config, Pipeline};
    use std::net::Ipv4Addr;

    const CTRL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 6000);

    fn addr(i: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7650 + i)
    }

    fn roster(n: u16) -> Vec<RosterEntry> {
        (0..n)
            .map(|i| RosterEntry {
                switch_id: i,
                addr: addr(i),
            })
            .collect()
    }

    /// Switches as pipelines, and the core's effects delivered to them at once (no loss):
    /// the happy path of every phase, through the real pipeline.
    struct Bench {
        core: ControlCore,
        store: CtrlState,
        switches: Vec<Pipeline>,
        now: Instant,
        /// Packets in flight: (from, to, message).
        wire: Vec<(SocketAddrV4, SocketAddrV4, Message)>,
    }

    impl Bench {
        fn new(n: u16) -> Self {
            let store = CtrlState {
                config: None,
                roster: roster(n),
            };
            let switches = (0..n)
                .map(|i| {
                    Pipeline::new(Config {
                        switch_id: i,
                        boot: 100 + u64::from(i),
                        controller: Some(CTRL),
                        default_successor: None,
                    })
                })
                .collect();
            Self {
                core: ControlCore::new(ControlOptions {
                    max_visit: 10,
                    ..ControlOptions::default()
                }),
                store,
                switches,
                now: Instant::now(),
                wire: Vec::new(),
            }
        }

        /// Runs effects to quiescence, letting tokens make at most `hops` more hops (the
        /// rest stay on the wire for later).
        fn run(&mut self, mut effects: Vec<Effect>, mut hops: usize) {
            let mut skipped = Vec::new();
            loop {
                for e in std::mem::take(&mut effects) {
                    match e {
                        Effect::Send(to, m) => self.wire.push((CTRL, to, m)),
                        Effect::Store {
                            expected_epoch,
                            config,
                        } => {
                            let won = self.store.apply(&Command::Install {
                                expected_epoch,
                                config,
                            });
                            effects.extend(self.core.on_stored(won, self.store.clone(), self.now));
                        }
                    }
                }
                if !effects.is_empty() {
                    continue;
                }
                if self.wire.is_empty() {
                    self.wire = skipped;
                    return;
                }
                let (from, to, m) = self.wire.remove(0);
                if to == CTRL {
                    effects.extend(self.core.on_packet(from, &m, self.now));
                    continue;
                }
                if matches!(m, Message::Token(_)) {
                    if hops == 0 {
                        skipped.push((from, to, m));
                        continue;
                    }
                    hops -= 1;
                }
                let i = usize::from(to.port() - 7650);
                if let Some(sw) = self.switches.get_mut(i) {
                    for (dest, out) in sw.process(from, &m) {
                        self.wire.push((to, dest, out));
                    }
                }
            }
        }

        /// The token in flight is lost.
        fn drop_tokens(&mut self) {
            self.wire
                .retain(|(_, _, m)| !matches!(m, Message::Token(_)));
        }

        fn tick(&mut self, after: Duration, hops: usize) {
            self.now += after;
            let e = self.core.on_tick(self.now);
            self.run(e, hops);
        }
    }

    #[test]
    fn bootstrap_seal_store_install_inject_then_watch() {
        let mut b = Bench::new(3);
        let e = b.core.become_leader(b.store.clone(), b.now);
        assert_eq!(b.core.phase_name(), "sealing");
        b.run(e, 0);
        // All three answered the seal: the next tick stores and installs epoch 1, the
        // installs' answers trigger the injection, the first visit reports progress.
        b.tick(Duration::from_millis(25), 3);
        assert_eq!(b.core.phase_name(), "running");
        let cfg = b.store.config.clone().expect("epoch 1 stored");
        assert_eq!((cfg.epoch, cfg.base, cfg.members.len()), (1, 0, 3));
        assert_eq!(cfg.max_visit, 10);
        assert!(b.switches.iter().all(|s| s.is_live()));
        assert_eq!(b.core.stats().reconfigurations, 1);
        // Probes show the token moving: no reconfiguration after the token timeout.
        for _ in 0..30 {
            b.tick(Duration::from_millis(100), 3);
        }
        assert_eq!((b.core.phase_name(), b.store.epoch()), ("running", 1));
    }

    #[test]
    fn lost_token_leads_to_a_new_epoch_above_everything_issued() {
        let mut b = Bench::new(2);
        let e = b.core.become_leader(b.store.clone(), b.now);
        b.run(e, 0);
        b.tick(Duration::from_millis(25), 5);
        let before = b.switches.iter().map(|s| s.status().fwd_base).max();
        // The token is lost: timeout, seal, restart point, epoch 2.
        b.drop_tokens();
        for _ in 0..15 {
            b.tick(Duration::from_millis(100), 0);
        }
        assert_eq!(b.core.stats().seals, 2, "bootstrap and the lost token");
        let cfg = b.store.config.clone().expect("epoch 2");
        assert_eq!(cfg.epoch, 2);
        assert!(Some(cfg.base) >= before);
        assert_eq!(b.core.phase_name(), "running");
    }

    #[test]
    fn a_lost_race_adopts_the_winner_and_resize_plans_the_roster() {
        let mut b = Bench::new(3);
        let e = b.core.become_leader(b.store.clone(), b.now);
        b.run(e, 0);
        b.now += Duration::from_millis(25);
        let effects = b.core.on_tick(b.now);
        let Some(Effect::Store { config, .. }) = effects.last().cloned() else {
            panic!("expected a store write: {effects:?}")
        };
        // Another controller got there first with its own epoch 1.
        let mut theirs = config.clone();
        theirs.base = 500;
        assert!(b.store.apply(&Command::Install {
            expected_epoch: 0,
            config: theirs.clone()
        }));
        assert!(!b.store.clone().apply(&Command::Install {
            expected_epoch: 0,
            config
        }));
        let e = b.core.on_stored(false, b.store.clone(), b.now);
        assert_eq!(b.core.stats().install_conflicts, 1);
        b.run(e, 3);
        assert_eq!(b.switches[0].status().epoch, 1);
        assert_eq!(b.core.state().config.as_ref().map(|c| c.base), Some(500));
        // Resize: ids resolve through what is known; unknown ids are refused.
        let spec = |switch_id, addr| SwitchSpec { switch_id, addr };
        assert_eq!(
            b.core.plan_roster(&[spec(0, None), spec(7, None)], &[]),
            Err(7)
        );
        let planned = b
            .core
            .plan_roster(&[spec(2, None), spec(0, None), spec(5, Some(addr(5)))], &[])
            .expect("plan");
        assert_eq!(
            planned.iter().map(|r| r.switch_id).collect::<Vec<_>>(),
            vec![2, 0, 5]
        );
    }

    #[test]
    fn options_that_cannot_make_progress_are_refused() {
        assert!(ControlOptions::default().validate().is_ok());
        let bad = ControlOptions {
            max_visit: 1 << 20,
            epoch_span: 1000,
            ..ControlOptions::default()
        };
        assert!(bad.validate().is_err());
        let zero = ControlOptions {
            max_visit: 0,
            ..ControlOptions::default()
        };
        assert!(zero.validate().is_err());
    }
}
