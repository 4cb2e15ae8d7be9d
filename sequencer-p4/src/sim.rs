//! Deterministic simulation of a sequencer ring: N switches running [`Pipeline`], the ring
//! controller's decisions ([`ControlCore`], the code `ring-controller` runs) over a store
//! that applies the same conditional write ([`CtrlState::apply`]), and brokers running the
//! ring client ([`client::Core`], the code the broker runs), over a network that loses,
//! duplicates, delays and reorders packets, while switches, brokers and the controller
//! crash and restart and the operator resizes the ring. Time is a step counter (one step
//! is one virtual millisecond for the cores' clocks) and all randomness comes from one
//! seed, so a seed replays exactly.
//!
//! The [`Checker`] watches every packet a switch emits and every reservation a broker
//! completes, and records a violation of:
//! * uniqueness: no two announcements (or grants) cover the same number, and no two
//!   completed reservations hold the same number;
//! * real-time order: a reservation completed before another started has smaller numbers;
//! * silence: a switch emits no ticket, grant, announcement or token between a restart
//!   and the delivery of an `Install` addressed to its new incarnation;
//! * sanity of the client: no reservation refused as malformed or too large.
//!
//! What is modelled rather than run: the Raft group (one store that survives controller
//! crashes, written synchronously; a crash may fall between the write and the controller
//! learning its outcome), the HTTP fetch of the configuration (delivered after a network
//! delay, possibly stale), and the I/O drivers around the cores.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::client::{self, Action, ClientOptions, DoneKind};
use crate::config::RingConfig;
use crate::control::{
    Command, ControlCore, ControlOptions, CtrlState, Effect, RosterEntry, SwitchSpec,
};
use crate::pipeline::{Config, Pipeline};
use crate::wire::{Announce, Message};

/// SplitMix64: small, fast, and the same everywhere (no dependency on a crate's algorithm).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_million / 1e6`.
    pub fn chance(&mut self, per_million: u32) -> bool {
        self.below(1_000_000) < u64::from(per_million)
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Everything a run depends on besides the seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Switches that exist (some may only join through a resize).
    pub switches: usize,
    /// The first `initial_roster` switches form the initial roster.
    pub initial_roster: usize,
    /// Operator resizes: at step s, the roster becomes these switches (in ring order).
    pub resizes: Vec<(u64, Vec<usize>)>,
    pub brokers: usize,
    pub steps: u64,
    /// Faults stop after this step so the run can show recovery.
    pub faults_until: u64,
    /// Per packet, parts per million.
    pub loss_ppm: u32,
    pub dup_ppm: u32,
    /// A packet arrives 1..=max_delay+1 steps after it is sent (reordering).
    pub max_delay: u64,
    /// Per step, parts per million.
    pub switch_crash_ppm: u32,
    pub switch_restart_ppm: u32,
    pub controller_crash_ppm: u32,
    pub broker_crash_ppm: u32,
    /// Chance per step that an idle broker slot starts a reservation.
    pub request_ppm: u32,
    pub max_count: u32,
    pub max_outstanding: usize,
    pub max_visit: u32,
    pub epoch_span: u64,
}

impl SimConfig {
    /// A configuration drawn from the seed, so that many seeds cover many shapes: one in
    /// four also resizes the ring twice under load.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0x5EED);
        let steps = 5000;
        let switches = 1 + r.below(5) as usize;
        let mut cfg = Self {
            seed,
            switches,
            initial_roster: switches,
            resizes: Vec::new(),
            brokers: 1 + r.below(3) as usize,
            steps,
            faults_until: steps * 2 / 3,
            loss_ppm: r.pick(&[0, 20_000, 100_000, 200_000]),
            dup_ppm: r.pick(&[0, 20_000, 100_000]),
            max_delay: r.pick(&[0, 3, 10]),
            switch_crash_ppm: r.pick(&[0, 1_000, 3_000]),
            switch_restart_ppm: r.pick(&[5_000, 20_000]),
            controller_crash_ppm: r.pick(&[0, 1_000]),
            broker_crash_ppm: r.pick(&[0, 500]),
            request_ppm: r.pick(&[100_000, 400_000]),
            max_count: r.pick(&[1, 10, 100]),
            max_outstanding: r.pick(&[1, 4]),
            max_visit: r.pick(&[100, 1000, 100_000]),
            epoch_span: r.pick(&[5_000, 1 << 40]),
        };
        if r.below(4) == 0 {
            // Random rosters at two random times (each a non-empty subset, random order).
            cfg.switches = 2 + r.below(4) as usize;
            cfg.initial_roster = 1 + r.below(cfg.switches as u64) as usize;
            for _ in 0..2 {
                let at = 200 + r.below(steps / 2);
                let mut ids: Vec<usize> = (0..cfg.switches).collect();
                for i in (1..ids.len()).rev() {
                    ids.swap(i, r.below(i as u64 + 1) as usize);
                }
                ids.truncate(1 + r.below(cfg.switches as u64) as usize);
                cfg.resizes.push((at, ids));
            }
            cfg.resizes.sort_by_key(|(at, _)| *at);
        }
        cfg
    }

    /// No faults at all: every reservation must complete and there is one epoch.
    pub fn calm(seed: u64) -> Self {
        Self {
            loss_ppm: 0,
            dup_ppm: 0,
            switch_crash_ppm: 0,
            controller_crash_ppm: 0,
            broker_crash_ppm: 0,
            epoch_span: 1 << 40,
            max_visit: 100_000,
            resizes: Vec::new(),
            ..Self::from_seed(seed)
        }
        .with_all_switches_in_roster()
    }

    fn with_all_switches_in_roster(mut self) -> Self {
        self.initial_roster = self.switches;
        self
    }

    /// The ring grows from 2 to 4 switches and shrinks to 3 while brokers produce, with
    /// the seed's faults (`calm` for none).
    pub fn resize_2_4_3(seed: u64, calm: bool) -> Self {
        let base = if calm {
            Self::calm(seed)
        } else {
            Self::from_seed(seed)
        };
        Self {
            switches: 4,
            initial_roster: 2,
            resizes: vec![(1500, vec![0, 1, 2, 3]), (3000, vec![0, 1, 3])],
            brokers: base.brokers.max(2),
            request_ppm: 400_000,
            ..base
        }
    }

    fn hop(&self) -> u64 {
        self.max_delay + 1
    }

    /// The controller's timing in steps (milliseconds of the cores' clocks).
    fn control_options(&self) -> ControlOptions {
        let retry = 2 * self.hop() + 2;
        ControlOptions {
            retry: Duration::from_millis(retry),
            probe_interval: Duration::from_millis(4 * retry),
            token_timeout: Duration::from_millis(12 * (1 << REPORT_SHIFT) * self.hop() + 20),
            give_up: Duration::from_millis(25 * retry),
            max_visit: self.max_visit,
            epoch_span: self.epoch_span,
            report_shift: REPORT_SHIFT,
        }
    }

    /// The ring client's options: its retransmission timeout in steps, and no deadline or
    /// request limit that a run could reach (a reservation that never completes is caught
    /// by the progress checks instead).
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            rto: Duration::from_millis(2 * (self.switches as u64 + 4) * self.hop() + 4),
            deadline: Duration::from_secs(24 * 3600),
            max_pending: self.max_outstanding,
            max_requests_per_reservation: 1 << 20,
            refetch_after_sends: 3,
            min_max_visit: 1,
            idle_nudge: Duration::from_millis(2 * self.hop()),
        }
    }
}

/// What a run did, for assertions on progress.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub started: u64,
    pub completed: u64,
    /// Reservations that ended without numbers (Unavailable; never a violation by itself).
    pub failed: u64,
    pub numbers_issued: u64,
    pub epochs: u32,
    pub switch_crashes: u64,
    pub controller_crashes: u64,
    pub completed_while_controller_down: u64,
    /// Resizes the controller accepted.
    pub resizes: u64,
    /// Members of the last stored epoch.
    pub final_members: Vec<u16>,
    /// Reservations outstanding at the end at brokers that are up.
    pub outstanding_at_end: u64,
    pub violations: Vec<String>,
}

const CTRL_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 6000);
const REPORT_SHIFT: u8 = 1;

fn switch_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, i as u8 + 1),
        crate::wire::SEQ_UDP_PORT,
    )
}

fn broker_addr(b: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, b as u8 + 1), 5000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Switch(usize),
    Broker(usize),
    Controller,
}

fn node_of(addr: SocketAddrV4) -> Option<Node> {
    let [a, b, c, d] = addr.ip().octets();
    match (a, b, c, d) {
        (10, 0, 0, d) if d > 0 => Some(Node::Switch(d as usize - 1)),
        (10, 0, 1, d) if d > 0 => Some(Node::Broker(d as usize - 1)),
        (10, 0, 2, 1) => Some(Node::Controller),
        _ => None,
    }
}

/// Packets in flight, and configuration fetches, by arrival step.
#[derive(Default)]
struct Network {
    in_flight: BTreeMap<u64, Vec<(SocketAddrV4, SocketAddrV4, Vec<u8>)>>,
    /// (broker, its incarnation, the configuration read) arriving at a step.
    fetches: BTreeMap<u64, Vec<(usize, u64, Option<RingConfig>)>>,
}

struct Controller {
    up: bool,
    down_until: u64,
    core: ControlCore,
    /// The replicated store: survives controller crashes.
    store: CtrlState,
}

struct Broker {
    up: bool,
    down_until: u64,
    /// Counts restarts, so a fetch answered to an earlier incarnation is dropped.
    incarnation: u64,
    core: client::Core,
    /// The client core's reservation id → index into `Sim::ops`.
    ops: BTreeMap<u64, usize>,
    fetching: bool,
}

struct SwitchSlot {
    pipeline: Option<Pipeline>,
    /// An Install addressed to the current incarnation has been delivered.
    install_delivered: bool,
}

#[derive(Debug, Clone, Copy)]
struct OpRecord {
    start: u64,
    end: Option<u64>,
    gsn: u64,
    count: u32,
}

/// Invariants over everything the switches issued and the brokers completed.
#[derive(Default)]
pub struct Checker {
    /// start → (end, epoch, switch, visit) of every announced range.
    issued: BTreeMap<u64, (u64, (u32, u16, u64))>,
    /// (epoch, switch, visit) → announcement, to catch two different ones.
    by_visit: BTreeMap<(u32, u16, u64), Announce>,
    /// start → (end, op) of every completed request.
    completed: BTreeMap<u64, (u64, usize)>,
    pub violations: Vec<String>,
}

impl Checker {
    fn fail(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    /// Records an announcement; different announcements may never overlap.
    pub fn announce(&mut self, a: &Announce) {
        let key = (a.epoch, a.switch_id, a.visit);
        if let Some(seen) = self.by_visit.get(&key) {
            if seen != a {
                self.fail(format!(
                    "two different announcements for {key:?}: {seen:?} and {a:?}"
                ));
            }
            return;
        }
        self.by_visit.insert(key, *a);
        let (start, end) = (a.base, a.base + (a.local_hi - a.local_lo));
        if let Some(other) = overlap(&self.issued, start, end) {
            self.fail(format!(
                "numbers {start}..{end} of {a:?} were already issued by {other:?}"
            ));
        }
        self.issued
            .insert(start, (end, (a.epoch, a.switch_id, a.visit)));
    }

    /// A grant must lie inside a range announced by the same switch in the same epoch.
    pub fn grant(&mut self, epoch: u32, switch_id: u16, gsn: u64, count: u32) {
        let end = gsn + u64::from(count);
        let inside = self
            .issued
            .range(..=gsn)
            .next_back()
            .is_some_and(|(_, (e, (ep, sw, _)))| *ep == epoch && *sw == switch_id && end <= *e);
        if !inside {
            self.fail(format!(
                "grant {gsn}..{end} (epoch {epoch}, switch {switch_id}) matches no announcement"
            ));
        }
    }

    fn complete(&mut self, op: usize, gsn: u64, count: u32) {
        let end = gsn + u64::from(count);
        if let Some(other) = overlap(&self.completed, gsn, end) {
            self.fail(format!(
                "request {op} got {gsn}..{end}, overlapping request {other:?}"
            ));
        }
        let covered = self
            .issued
            .range(..=gsn)
            .next_back()
            .is_some_and(|(_, (e, ..))| end <= *e);
        if !covered {
            self.fail(format!(
                "request {op} got {gsn}..{end}, which no switch announced"
            ));
        }
        self.completed.insert(gsn, (end, op));
    }

    /// Real-time order: for every pair A, B with end(A) < start(B), A's numbers are below B's.
    fn real_time(&mut self, ops: &[OpRecord]) {
        let mut done: Vec<(u64, u64)> = ops
            .iter()
            .filter_map(|o| o.end.map(|end| (end, o.gsn + u64::from(o.count) - 1)))
            .collect();
        done.sort_unstable();
        // prefix_max[i] = highest number held by the first i requests to complete.
        let mut prefix_max = Vec::with_capacity(done.len() + 1);
        prefix_max.push(None);
        for (_, last) in &done {
            let prev = prefix_max.last().copied().flatten();
            prefix_max.push(Some(prev.map_or(*last, |p: u64| p.max(*last))));
        }
        for (i, o) in ops.iter().enumerate().filter(|(_, o)| o.end.is_some()) {
            let before = done.partition_point(|(end, _)| *end < o.start);
            if let Some(max) = prefix_max[before] {
                if max >= o.gsn {
                    self.fail(format!(
                        "real-time order: request {i} started at step {} got {} but a request completed earlier holds {max}",
                        o.start, o.gsn
                    ));
                }
            }
        }
    }
}

/// Some range in `map` (start → (end, ..)) overlapping `start..end`.
fn overlap<V: Copy + std::fmt::Debug>(
    map: &BTreeMap<u64, (u64, V)>,
    start: u64,
    end: u64,
) -> Option<(u64, u64, V)> {
    if let Some((s, (e, v))) = map.range(..=start).next_back() {
        if *e > start {
            return Some((*s, *e, *v));
        }
    }
    map.range(start..end).next().map(|(s, (e, v))| (*s, *e, *v))
}

/// One simulated world.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    /// The cores' clock at step 0.
    origin: Instant,
    net: Network,
    switches: Vec<SwitchSlot>,
    brokers: Vec<Broker>,
    ctrl: Controller,
    ops: Vec<OpRecord>,
    pub checker: Checker,
    report: SimReport,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let client_opts = cfg.client_options();
        let brokers = (0..cfg.brokers)
            .map(|b| Broker {
                up: true,
                down_until: 0,
                incarnation: 0,
                core: client::Core::new(rng.next_u64(), b as u64, 0, client_opts.clone()),
                ops: BTreeMap::new(),
                fetching: false,
            })
            .collect();
        // The operator's initial roster, stored before the first leader reads the store.
        let store = CtrlState {
            config: None,
            roster: (0..cfg.initial_roster.min(cfg.switches))
                .map(|s| RosterEntry {
                    switch_id: s as u16,
                    addr: switch_addr(s),
                })
                .collect(),
        };
        let mut sim = Self {
            switches: Vec::new(),
            brokers,
            ctrl: Controller {
                up: true,
                down_until: 0,
                core: ControlCore::new(cfg.control_options()),
                store,
            },
            rng,
            now: 0,
            origin: Instant::now(),
            net: Network::default(),
            ops: Vec::new(),
            checker: Checker::default(),
            report: SimReport::default(),
            cfg,
        };
        for i in 0..sim.cfg.switches {
            sim.switches.push(SwitchSlot {
                pipeline: None,
                install_delivered: false,
            });
            sim.boot_switch(i);
        }
        let effects = sim
            .ctrl
            .core
            .become_leader(sim.ctrl.store.clone(), sim.clock());
        sim.controller_effects(effects);
        sim
    }

    fn clock(&self) -> Instant {
        self.origin + Duration::from_millis(self.now)
    }

    /// Runs every step and the final checks.
    pub fn run(mut self) -> SimReport {
        while self.now < self.cfg.steps {
            self.step();
        }
        self.checker.real_time(&self.ops);
        self.report.started = self.ops.len() as u64;
        self.report.completed = self.ops.iter().filter(|o| o.end.is_some()).count() as u64;
        self.report.numbers_issued = self.checker.issued.values().map(|(e, ..)| *e).sum::<u64>()
            - self.checker.issued.keys().sum::<u64>();
        self.report.epochs = self.ctrl.store.epoch();
        self.report.final_members = self
            .ctrl
            .store
            .config
            .as_ref()
            .map(|c| c.members.iter().map(|m| m.switch_id).collect())
            .unwrap_or_default();
        self.report.outstanding_at_end = self
            .brokers
            .iter()
            .filter(|b| b.up)
            .map(|b| b.ops.len() as u64)
            .sum();
        self.report.violations = std::mem::take(&mut self.checker.violations);
        self.report
    }

    fn step(&mut self) {
        self.now += 1;
        if self.now < self.cfg.faults_until {
            self.inject_faults();
        }
        self.revive();
        self.operator();
        for b in 0..self.brokers.len() {
            self.broker_tick(b);
        }
        self.controller_tick();
        self.deliver_due();
    }

    // ------------------------------------------------------------------ network

    fn send(&mut self, from: SocketAddrV4, to: SocketAddrV4, msg: Message) {
        if let Some(Node::Switch(s)) = node_of(from) {
            self.observe_switch_output(s, &msg);
        }
        if self.rng.chance(self.cfg.loss_ppm) {
            return;
        }
        let copies = if self.rng.chance(self.cfg.dup_ppm) {
            2
        } else {
            1
        };
        let bytes = msg.to_bytes();
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.cfg.max_delay + 1);
            self.net
                .in_flight
                .entry(at)
                .or_default()
                .push((from, to, bytes.clone()));
        }
    }

    /// Arrivals of this step, in a random order; configuration fetches first.
    fn deliver_due(&mut self) {
        if let Some(fetches) = self.net.fetches.remove(&self.now) {
            for (b, incarnation, cfg) in fetches {
                self.broker_config(b, incarnation, cfg);
            }
        }
        let Some(mut due) = self.net.in_flight.remove(&self.now) else {
            return;
        };
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for (from, to, bytes) in due {
            let msg = match Message::decode(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    self.checker.fail(format!("undecodable packet {e}"));
                    continue;
                }
            };
            match node_of(to) {
                Some(Node::Switch(s)) => self.switch_receive(s, from, msg),
                Some(Node::Broker(b)) => self.broker_receive(b, msg),
                Some(Node::Controller) => self.controller_receive(from, msg),
                None => self
                    .checker
                    .fail(format!("packet to unknown address {to}: {msg:?}")),
            }
        }
    }

    // ------------------------------------------------------------------ faults

    fn inject_faults(&mut self) {
        if self.rng.chance(self.cfg.switch_crash_ppm) {
            let s = self.rng.below(self.switches.len() as u64) as usize;
            if self.switches[s].pipeline.take().is_some() {
                self.report.switch_crashes += 1;
            }
        }
        if self.rng.chance(self.cfg.controller_crash_ppm) && self.ctrl.up {
            self.crash_controller();
        }
        if self.rng.chance(self.cfg.broker_crash_ppm) {
            let b = self.rng.below(self.brokers.len() as u64) as usize;
            let broker = &mut self.brokers[b];
            if broker.up {
                // Its reservations never complete; its tickets become holes.
                broker.up = false;
                broker.ops.clear();
                broker.down_until = self.now + 1 + self.rng.below(20);
            }
        }
    }

    /// The leader dies: a new one takes over after a while, with the store but none of
    /// the old leader's in-memory phase.
    fn crash_controller(&mut self) {
        self.ctrl.up = false;
        self.ctrl.core = ControlCore::new(self.cfg.control_options());
        self.ctrl.down_until = self.now + 1 + self.rng.below(40 * self.cfg.hop());
        self.report.controller_crashes += 1;
    }

    /// Restarts whatever is down and due: switches at random, the others after their downtime.
    fn revive(&mut self) {
        for s in 0..self.switches.len() {
            let restart =
                self.now >= self.cfg.faults_until || self.rng.chance(self.cfg.switch_restart_ppm);
            if self.switches[s].pipeline.is_none() && restart {
                self.boot_switch(s);
            }
        }
        if !self.ctrl.up && self.now >= self.ctrl.down_until {
            // A new leader: reads the store and watches the ring (it reconfigures only if
            // the token does not show up).
            self.ctrl.up = true;
            let effects = self
                .ctrl
                .core
                .become_leader(self.ctrl.store.clone(), self.clock());
            self.controller_effects(effects);
        }
        for b in 0..self.brokers.len() {
            if !self.brokers[b].up && self.now >= self.brokers[b].down_until {
                let client = self.rng.next_u64();
                let opts = self.cfg.client_options();
                let broker = &mut self.brokers[b];
                broker.up = true;
                broker.incarnation += 1;
                broker.fetching = false;
                broker.core = client::Core::new(client, b as u64, 0, opts);
            }
        }
    }

    /// Scheduled resizes, through the controller's own planning; a resize that finds the
    /// controller down is retried at the next step (the operator retries on 421).
    fn operator(&mut self) {
        let Some((at, ids)) = self.cfg.resizes.first().cloned() else {
            return;
        };
        if self.now < at || !self.ctrl.up || self.ctrl.core.is_follower() {
            return;
        }
        self.cfg.resizes.remove(0);
        let specs: Vec<SwitchSpec> = ids
            .iter()
            .map(|&s| SwitchSpec {
                switch_id: s as u16,
                addr: Some(switch_addr(s)),
            })
            .collect();
        let roster = match self.ctrl.core.plan_roster(&specs, &[]) {
            Ok(r) => r,
            Err(id) => {
                self.checker
                    .fail(format!("resize names unknown switch {id}"));
                return;
            }
        };
        self.ctrl.store.apply(&Command::SetRoster { roster });
        self.report.resizes += 1;
        let effects = self
            .ctrl
            .core
            .on_roster_stored(self.ctrl.store.clone(), self.clock());
        self.controller_effects(effects);
    }

    // ------------------------------------------------------------------ switches

    fn boot_switch(&mut self, s: usize) {
        let boot = self.rng.next_u64() | 1;
        let cfg = Config {
            switch_id: s as u16,
            boot,
            controller: Some(CTRL_ADDR),
            default_successor: None,
        };
        let pipeline = Pipeline::new(cfg);
        let hello = pipeline.boot_messages();
        self.switches[s] = SwitchSlot {
            pipeline: Some(pipeline),
            install_delivered: false,
        };
        for (to, msg) in hello {
            self.send(switch_addr(s), to, msg);
        }
    }

    fn switch_receive(&mut self, s: usize, from: SocketAddrV4, msg: Message) {
        let slot = &mut self.switches[s];
        let Some(pipeline) = slot.pipeline.as_mut() else {
            return;
        };
        if let Message::Install(i) = msg {
            if i.boot == pipeline.config().boot {
                slot.install_delivered = true;
            }
        }
        let out = pipeline.process(from, &msg);
        for (to, m) in out {
            self.send(switch_addr(s), to, m);
        }
    }

    fn observe_switch_output(&mut self, s: usize, msg: &Message) {
        let issues = matches!(
            msg,
            Message::Ticket(_) | Message::Grant(_) | Message::Announce(_) | Message::Token(_)
        );
        if issues && !self.switches[s].install_delivered {
            self.checker.fail(format!(
                "switch {s} sent {} before an install reached its incarnation",
                msg.name()
            ));
        }
        match msg {
            Message::Announce(a) => self.checker.announce(a),
            Message::Grant(g) => self.checker.grant(g.epoch, g.switch_id, g.gsn, g.count),
            _ => {}
        }
    }

    // ------------------------------------------------------------------ brokers

    fn broker_tick(&mut self, b: usize) {
        if !self.brokers[b].up {
            return;
        }
        let room = self.brokers[b].core.pending() < self.cfg.max_outstanding;
        if room && self.rng.chance(self.cfg.request_ppm) {
            self.start_op(b);
        }
        let now = self.clock();
        let actions = self.brokers[b].core.on_tick(now);
        self.broker_actions(b, actions);
    }

    fn start_op(&mut self, b: usize) {
        let count = 1 + self.rng.below(u64::from(self.cfg.max_count)) as u32;
        let op = self.ops.len();
        self.ops.push(OpRecord {
            start: self.now,
            end: None,
            gsn: 0,
            count,
        });
        let now = self.clock();
        let (id, actions) = self.brokers[b].core.start(u64::from(count), now);
        self.brokers[b].ops.insert(id, op);
        self.broker_actions(b, actions);
    }

    fn broker_actions(&mut self, b: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(to, msg) => self.send(broker_addr(b), to, msg),
                Action::Done(id, result, kind) => self.broker_done(b, id, result, kind),
                Action::FetchConfig => {
                    let broker = &mut self.brokers[b];
                    if !broker.fetching {
                        broker.fetching = true;
                        // A GET /ring: answered from the store as it is now (a follower
                        // may be behind, and the answer arrives a network delay later).
                        let at = self.now + 1 + self.rng.below(self.cfg.max_delay + 1);
                        let cfg = self.ctrl.store.config.clone();
                        let incarnation = self.brokers[b].incarnation;
                        self.net
                            .fetches
                            .entry(at)
                            .or_default()
                            .push((b, incarnation, cfg));
                    }
                }
            }
        }
    }

    fn broker_done(&mut self, b: usize, id: u64, result: Result<u64, String>, kind: DoneKind) {
        let Some(op) = self.brokers[b].ops.remove(&id) else {
            self.checker.fail(format!(
                "broker {b}: completion of unknown reservation {id}"
            ));
            return;
        };
        match (result, kind) {
            (Ok(gsn), DoneKind::Ok) => {
                let count = self.ops[op].count;
                self.checker.complete(op, gsn, count);
                let rec = &mut self.ops[op];
                rec.end = Some(self.now);
                rec.gsn = gsn;
                if !self.ctrl.up {
                    self.report.completed_while_controller_down += 1;
                }
            }
            (Err(_), DoneKind::Unavailable) => self.report.failed += 1,
            (r, k) => self
                .checker
                .fail(format!("broker {b} reservation {op}: {k:?} {r:?}")),
        }
    }

    fn broker_config(&mut self, b: usize, incarnation: u64, cfg: Option<RingConfig>) {
        let now = self.clock();
        let broker = &mut self.brokers[b];
        if !broker.up || broker.incarnation != incarnation {
            return;
        }
        broker.fetching = false;
        let Some(cfg) = cfg else {
            return;
        };
        let actions = broker.core.on_config(cfg, now);
        self.broker_actions(b, actions);
    }

    fn broker_receive(&mut self, b: usize, msg: Message) {
        if !self.brokers[b].up {
            return;
        }
        let now = self.clock();
        let actions = self.brokers[b].core.on_packet(&msg, now);
        self.broker_actions(b, actions);
    }

    // ------------------------------------------------------------------ controller

    fn controller_tick(&mut self) {
        if !self.ctrl.up {
            return;
        }
        let effects = self.ctrl.core.on_tick(self.clock());
        self.controller_effects(effects);
    }

    fn controller_receive(&mut self, from: SocketAddrV4, msg: Message) {
        if !self.ctrl.up {
            return;
        }
        let effects = self.ctrl.core.on_packet(from, &msg, self.clock());
        self.controller_effects(effects);
    }

    /// Carries out the controller's effects. A store write is applied at once; when
    /// controller crashes are enabled, one write in ten kills the controller right after
    /// it was applied, before it learns the outcome (the failover must cope).
    fn controller_effects(&mut self, mut effects: Vec<Effect>) {
        while !effects.is_empty() {
            let mut next = Vec::new();
            for e in effects {
                if !self.ctrl.up {
                    return;
                }
                match e {
                    Effect::Send(to, msg) => self.send(CTRL_ADDR, to, msg),
                    Effect::Store {
                        expected_epoch,
                        config,
                    } => {
                        let won = self.ctrl.store.apply(&Command::Install {
                            expected_epoch,
                            config,
                        });
                        if self.cfg.controller_crash_ppm > 0 && self.rng.below(10) == 0 {
                            self.crash_controller();
                            return;
                        }
                        next.extend(self.ctrl.core.on_stored(
                            won,
                            self.ctrl.store.clone(),
                            self.clock(),
                        ));
                    }
                }
            }
            effects = next;
        }
    }
}

/// Runs one seed; `Err` names the seed and the first violations.
pub fn run_seed(cfg: SimConfig) -> Result<SimReport, String> {
    let seed = cfg.seed;
    let report = Sim::new(cfg.clone()).run();
    if report.violations.is_empty() {
        Ok(report)
    } else {
        Err(format!(
            "seed {seed} violated the ring's guarantees (reproduce: SIM_SEED={seed} cargo test -p sequencer-p4 --release sim::tests::replay_one_seed -- --nocapture)\nconfig: {cfg:?}\n{}",
            report.violations.join("\n")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> u64 {
        std::env::var("SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000)
    }

    #[test]
    fn many_seeds_with_faults_keep_every_guarantee() {
        let mut totals = SimReport::default();
        for seed in 0..seeds() {
            let report = run_seed(SimConfig::from_seed(seed)).unwrap_or_else(|e| panic!("{e}"));
            totals.started += report.started;
            totals.completed += report.completed;
            totals.epochs += report.epochs;
            totals.switch_crashes += report.switch_crashes;
            totals.controller_crashes += report.controller_crashes;
            totals.completed_while_controller_down += report.completed_while_controller_down;
            totals.numbers_issued += report.numbers_issued;
            totals.failed += report.failed;
            totals.resizes += report.resizes;
        }
        eprintln!("{} seeds: {totals:?}", seeds());
        // The faults must actually have happened, and the ring must still have made progress.
        assert!(
            totals.switch_crashes > 0
                && totals.controller_crashes > 0
                && u64::from(totals.epochs) > seeds()
        );
        assert!(
            totals.completed * 10 > totals.started * 8,
            "too little progress: {totals:?}"
        );
        assert!(totals.completed_while_controller_down > 0);
        assert!(totals.resizes > 0, "some seeds resize the ring");
    }

    /// Issue 3's live resize, 2 → 4 → 3 switches, while brokers keep reserving: with the
    /// seed's faults (guarantees only) and without (the ring ends with the three switches
    /// and every reservation completes).
    #[test]
    fn resize_2_4_3_under_load() {
        let n = (seeds() / 10).max(1);
        for seed in 0..n {
            run_seed(SimConfig::resize_2_4_3(seed, false)).unwrap_or_else(|e| panic!("{e}"));
        }
        for seed in 0..20 {
            let report =
                run_seed(SimConfig::resize_2_4_3(seed, true)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.resizes, 2, "seed {seed}: {report:?}");
            assert_eq!(
                report.final_members,
                vec![0, 1, 3],
                "seed {seed}: {report:?}"
            );
            // Epoch 1 (two switches), one per resize.
            assert_eq!(report.epochs, 3, "seed {seed}: {report:?}");
            assert_eq!(report.failed, 0, "seed {seed}: {report:?}");
            assert_eq!(
                report.completed + report.outstanding_at_end,
                report.started,
                "seed {seed}: {report:?}"
            );
            assert!(report.started > 100, "seed {seed}: {report:?}");
        }
    }

    #[test]
    fn calm_runs_complete_every_request_in_one_epoch() {
        for seed in 0..20 {
            let report = run_seed(SimConfig::calm(seed)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.epochs, 1, "seed {seed}: {report:?}");
            assert_eq!(report.failed, 0, "seed {seed}: {report:?}");
            assert!(report.started > 30, "seed {seed}: {report:?}");
            // Requests still in flight at the end started within the last round trips.
            assert!(
                report.completed + report.outstanding_at_end == report.started,
                "seed {seed}: {report:?}"
            );
        }
    }

    /// `SIM_SEED=n` replays one seed with its full report.
    #[test]
    fn replay_one_seed() {
        let seed = std::env::var("SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        let cfg = SimConfig::from_seed(seed);
        match run_seed(cfg.clone()) {
            Ok(report) => eprintln!("seed {seed} ok: {cfg:?}\n{report:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn same_seed_same_run() {
        let a = Sim::new(SimConfig::from_seed(42)).run();
        let b = Sim::new(SimConfig::from_seed(42)).run();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    fn ann(switch_id: u16, visit: u64, lo: u64, hi: u64, base: u64) -> Announce {
        Announce {
            epoch: 1,
            switch_id,
            visit,
            local_lo: lo,
            local_hi: hi,
            base,
        }
    }

    #[test]
    fn checker_catches_overlaps_and_order_violations() {
        let mut c = Checker::default();
        c.announce(&ann(0, 1, 0, 10, 100));
        c.announce(&ann(0, 1, 0, 10, 100)); // a duplicate packet is fine
        assert!(c.violations.is_empty());
        c.announce(&ann(1, 1, 0, 5, 105));
        assert_eq!(c.violations.len(), 1, "overlap must be caught");
        c.announce(&ann(0, 1, 0, 10, 200));
        assert_eq!(
            c.violations.len(),
            2,
            "conflicting announcement must be caught"
        );
        c.grant(1, 0, 300, 1);
        assert_eq!(
            c.violations.len(),
            3,
            "grant outside any announcement must be caught"
        );

        let mut c = Checker::default();
        c.announce(&ann(0, 1, 0, 10, 100));
        c.complete(0, 100, 5);
        c.complete(1, 104, 2);
        assert_eq!(
            c.violations.len(),
            1,
            "two requests sharing a number must be caught"
        );
        let ops = [
            OpRecord {
                start: 0,
                end: Some(5),
                gsn: 107,
                count: 1,
            },
            OpRecord {
                start: 6,
                end: Some(9),
                gsn: 106,
                count: 1,
            },
        ];
        c.real_time(&ops);
        assert_eq!(c.violations.len(), 2, "real-time inversion must be caught");
    }

    #[test]
    fn restart_point_covers_silent_members() {
        use crate::config::RingMember;
        use crate::control::restart_point_of;
        use crate::wire::Status;
        let cfg = RingConfig {
            epoch: 3,
            base: 1000,
            limit: 1_000_000,
            max_visit: 50,
            members: [(0u16, 11u64), (1, 22), (2, 33)]
                .iter()
                .map(|&(switch_id, boot)| RingMember {
                    switch_id,
                    addr: switch_addr(switch_id.into()),
                    boot,
                })
                .collect(),
            head: 0,
        };
        let st = |boot, fwd_base| Status {
            boot,
            epoch: 3,
            seal_floor: 3,
            fwd_base,
            ..Status::default()
        };
        let reports = |r: &[(u16, Status)]| r.iter().copied().collect::<BTreeMap<u16, Status>>();
        // All report: the highest forwarded base.
        assert_eq!(
            restart_point_of(
                &cfg,
                &reports(&[(0, st(11, 1500)), (1, st(22, 1600)), (2, st(33, 1400))])
            ),
            1600
        );
        // Switch 2 restarted (new boot), switch 1 silent: two visits of at most W each.
        assert_eq!(
            restart_point_of(&cfg, &reports(&[(0, st(11, 1500)), (2, st(99, 0))])),
            1600
        );
        // Nobody from the installed incarnations: only the limit is safe.
        assert_eq!(
            restart_point_of(&cfg, &reports(&[(1, st(23, 0))])),
            1_000_000
        );
    }
}
