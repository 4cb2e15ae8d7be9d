//! Deterministic simulation of a sequencer ring: N switches running [`Pipeline`], a simple
//! controller (seal all, choose the restart point, install, inject), and brokers issuing
//! requests, over a network that loses, duplicates, delays and reorders packets, while
//! switches, brokers and the controller crash and restart. Time is a step counter and all
//! randomness comes from one seed, so a seed replays exactly.
//!
//! The [`Checker`] watches every packet a switch emits and every request a broker
//! completes, and records a violation of:
//! * uniqueness: no two announcements (or grants) cover the same number, and no two
//!   completed requests hold the same number;
//! * real-time order: a request completed before another started has smaller numbers;
//! * silence: a switch emits no ticket, grant, announcement or token between a restart
//!   and the delivery of an `Install` addressed to its new incarnation.
//!
//! The controller here is a model for the tests, not the ring controller: it keeps its
//! "metastore" in memory (surviving its own crashes, as a replicated store would) and
//! runs the same reconfiguration steps `PROTOCOL.md` prescribes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::pipeline::{Config, Pipeline};
use crate::wire::{
    install_flags, AlarmKind, Announce, Inject, Install, Message, RejectReason, Request, Seal,
    Status,
};

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
    pub switches: usize,
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
    /// Chance per step that an idle broker slot starts a request.
    pub request_ppm: u32,
    pub max_count: u32,
    pub max_outstanding: usize,
    pub max_visit: u32,
    pub epoch_span: u64,
}

impl SimConfig {
    /// A configuration drawn from the seed, so that many seeds cover many shapes.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0x5EED);
        let steps = 5000;
        Self {
            seed,
            switches: 1 + r.below(5) as usize,
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
        }
    }

    /// No faults at all: every request must complete and there is one epoch.
    pub fn calm(seed: u64) -> Self {
        Self {
            loss_ppm: 0,
            dup_ppm: 0,
            switch_crash_ppm: 0,
            controller_crash_ppm: 0,
            broker_crash_ppm: 0,
            epoch_span: 1 << 40,
            max_visit: 100_000,
            ..Self::from_seed(seed)
        }
    }

    fn hop(&self) -> u64 {
        self.max_delay + 1
    }
}

/// What a run did, for assertions on progress.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub started: u64,
    pub completed: u64,
    pub numbers_issued: u64,
    pub epochs: u32,
    pub switch_crashes: u64,
    pub controller_crashes: u64,
    pub completed_while_controller_down: u64,
    /// Requests outstanding at the end at brokers that are up.
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

/// Packets in flight, by arrival step.
#[derive(Default)]
struct Network {
    in_flight: BTreeMap<u64, Vec<(SocketAddrV4, SocketAddrV4, Vec<u8>)>>,
}

/// The consensus-backed store of the controller: the current configuration.
#[derive(Debug, Clone, Default)]
pub struct Store {
    pub epoch: u32,
    pub base: u64,
    pub limit: u64,
    /// (switch, boot) in ring order.
    pub members: Vec<(usize, u64)>,
}

#[derive(Debug)]
enum Phase {
    Running {
        last_progress: u64,
    },
    Sealing {
        started: u64,
        last_send: u64,
        acks: Vec<Option<Status>>,
    },
    Installing {
        started: u64,
        last_send: u64,
        acked: Vec<bool>,
    },
    Injecting {
        started: u64,
        last_send: u64,
    },
}

struct Controller {
    up: bool,
    down_until: u64,
    store: Store,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
struct HeldTicket {
    epoch: u32,
    switch_id: u16,
    visit: u64,
    local_off: u64,
}

#[derive(Debug)]
struct PendingOp {
    op: usize,
    count: u32,
    req_ids: Vec<u64>,
    epoch: u32,
    switch: usize,
    last_send: u64,
    sends: u32,
    tickets: Vec<HeldTicket>,
}

struct Broker {
    up: bool,
    down_until: u64,
    client: u64,
    next_req: u64,
    ops: Vec<PendingOp>,
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
        let mut sim = Self {
            switches: Vec::new(),
            brokers: (0..cfg.brokers)
                .map(|_| Broker {
                    up: true,
                    down_until: 0,
                    client: rng.next_u64(),
                    next_req: 1,
                    ops: Vec::new(),
                })
                .collect(),
            ctrl: Controller {
                up: true,
                down_until: 0,
                store: Store::default(),
                phase: Phase::Sealing {
                    started: 0,
                    last_send: 0,
                    acks: vec![None; cfg.switches],
                },
            },
            rng,
            now: 0,
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
        sim.controller_send_seals();
        sim
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
        self.report.epochs = self.ctrl.store.epoch;
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

    /// Arrivals of this step, in a random order.
    fn deliver_due(&mut self) {
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
                Some(Node::Controller) => self.controller_receive(msg),
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
            self.ctrl.up = false;
            self.ctrl.down_until = self.now + 1 + self.rng.below(40 * self.cfg.hop());
            self.report.controller_crashes += 1;
        }
        if self.rng.chance(self.cfg.broker_crash_ppm) {
            let b = self.rng.below(self.brokers.len() as u64) as usize;
            let broker = &mut self.brokers[b];
            if broker.up {
                broker.up = false;
                broker.ops.clear();
                broker.down_until = self.now + 1 + self.rng.below(20);
            }
        }
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
            // A new leader: the store survived, the in-memory phase did not. It watches the
            // ring and reconfigures if the token does not show up.
            self.ctrl.up = true;
            self.ctrl.phase = Phase::Running {
                last_progress: self.now,
            };
        }
        for b in 0..self.brokers.len() {
            if !self.brokers[b].up && self.now >= self.brokers[b].down_until {
                let client = self.rng.next_u64();
                let broker = &mut self.brokers[b];
                broker.up = true;
                broker.client = client;
                broker.next_req = 1;
            }
        }
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

    fn rto(&self) -> u64 {
        2 * (self.cfg.switches as u64 + 4) * self.cfg.hop() + 4
    }

    fn broker_tick(&mut self, b: usize) {
        if !self.brokers[b].up {
            return;
        }
        let room = self.brokers[b].ops.len() < self.cfg.max_outstanding;
        if room && self.rng.chance(self.cfg.request_ppm) {
            self.start_op(b);
        }
        let rto = self.rto();
        for i in 0..self.brokers[b].ops.len() {
            if self.now >= self.brokers[b].ops[i].last_send + rto {
                self.retransmit(b, i);
            }
        }
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
        let pending = PendingOp {
            op,
            count,
            req_ids: Vec::new(),
            epoch: 0,
            switch: 0,
            last_send: self.now,
            sends: 0,
            tickets: Vec::new(),
        };
        self.brokers[b].ops.push(pending);
        let i = self.brokers[b].ops.len() - 1;
        self.reissue(b, i);
    }

    /// A new request (new req_id) in the current configuration, fetched from the store.
    /// Tickets of earlier requests stay valid: whichever resolves first wins.
    fn reissue(&mut self, b: usize, i: usize) {
        let store = &self.ctrl.store;
        if store.members.is_empty() {
            return;
        }
        let switch = store.members[b % store.members.len()].0;
        let epoch = store.epoch;
        let broker = &mut self.brokers[b];
        let req_id = broker.next_req;
        broker.next_req += 1;
        let op = &mut broker.ops[i];
        op.req_ids.push(req_id);
        op.epoch = epoch;
        op.switch = switch;
        op.sends = 0;
        self.send_request(b, i);
    }

    fn send_request(&mut self, b: usize, i: usize) {
        let client = self.brokers[b].client;
        let op = &mut self.brokers[b].ops[i];
        op.last_send = self.now;
        op.sends += 1;
        let Some(&req_id) = op.req_ids.last() else {
            return;
        };
        let req = Request {
            epoch: op.epoch,
            count: op.count,
            client,
            req_id,
        };
        let to = switch_addr(op.switch);
        self.send(broker_addr(b), to, Message::Request(req));
    }

    fn retransmit(&mut self, b: usize, i: usize) {
        let op = &self.brokers[b].ops[i];
        let stale = op.req_ids.is_empty() || (op.sends >= 3 && self.ctrl.store.epoch != op.epoch);
        if stale {
            self.reissue(b, i);
        } else {
            self.send_request(b, i);
        }
    }

    fn broker_receive(&mut self, b: usize, msg: Message) {
        if !self.brokers[b].up {
            return;
        }
        let client = self.brokers[b].client;
        match msg {
            Message::Ticket(t) if t.client == client => {
                let held = HeldTicket {
                    epoch: t.epoch,
                    switch_id: t.switch_id,
                    visit: t.visit,
                    local_off: t.local_off,
                };
                if let Some(op) = self.brokers[b]
                    .ops
                    .iter_mut()
                    .find(|o| o.req_ids.contains(&t.req_id))
                {
                    if !op
                        .tickets
                        .iter()
                        .any(|h| h.epoch == held.epoch && h.local_off == held.local_off)
                    {
                        op.tickets.push(held);
                    }
                }
            }
            Message::Grant(g) if g.client == client => {
                if let Some(i) = self.brokers[b]
                    .ops
                    .iter()
                    .position(|o| o.req_ids.contains(&g.req_id))
                {
                    self.complete(b, i, g.gsn);
                }
            }
            Message::Announce(a) => self.resolve_announce(b, &a),
            Message::Reject(r) if r.client == client => self.on_reject(b, r.req_id, r.reason),
            _ => {}
        }
    }

    fn resolve_announce(&mut self, b: usize, a: &Announce) {
        let found = self.brokers[b].ops.iter().enumerate().find_map(|(i, op)| {
            op.tickets
                .iter()
                .find(|t| t.epoch == a.epoch && t.switch_id == a.switch_id && t.visit == a.visit)
                .map(|t| (i, a.base + (t.local_off - a.local_lo)))
        });
        if let Some((i, gsn)) = found {
            self.complete(b, i, gsn);
        }
    }

    fn on_reject(&mut self, b: usize, req_id: u64, reason: u8) {
        let Some(i) = self.brokers[b]
            .ops
            .iter()
            .position(|o| o.req_ids.last() == Some(&req_id))
        else {
            return;
        };
        match RejectReason::from_u8(reason) {
            Some(RejectReason::Expired) => self.reissue(b, i),
            Some(RejectReason::NotInstalled | RejectReason::WrongEpoch | RejectReason::Sealed) => {
                if self.ctrl.store.epoch != self.brokers[b].ops[i].epoch {
                    self.reissue(b, i);
                }
            }
            Some(RejectReason::Busy) => {}
            other => self
                .checker
                .fail(format!("broker {b} request {req_id} rejected: {other:?}")),
        }
    }

    fn complete(&mut self, b: usize, i: usize, gsn: u64) {
        let op = self.brokers[b].ops.swap_remove(i);
        self.checker.complete(op.op, gsn, op.count);
        let rec = &mut self.ops[op.op];
        rec.end = Some(self.now);
        rec.gsn = gsn;
        if !self.ctrl.up {
            self.report.completed_while_controller_down += 1;
        }
    }

    // ------------------------------------------------------------------ controller

    fn retry_interval(&self) -> u64 {
        2 * self.cfg.hop() + 2
    }

    fn give_up_after(&self) -> u64 {
        25 * self.retry_interval()
    }

    fn controller_tick(&mut self) {
        if !self.ctrl.up {
            return;
        }
        let (now, retry) = (self.now, self.retry_interval());
        let progress_timeout = 12 * (1 << REPORT_SHIFT) * self.cfg.hop() + 20;
        match &self.ctrl.phase {
            Phase::Running { last_progress } if now > last_progress + progress_timeout => {
                self.start_reconfig()
            }
            Phase::Sealing {
                started, last_send, ..
            } => {
                let ready = self.seal_complete(now >= started + self.give_up_after());
                if ready {
                    self.choose_and_store_next_epoch();
                } else if now >= last_send + retry {
                    self.controller_send_seals();
                }
            }
            Phase::Installing {
                started, last_send, ..
            } => {
                if now >= started + self.give_up_after() {
                    self.start_reconfig();
                } else if now >= last_send + retry {
                    self.controller_send_installs();
                }
            }
            Phase::Injecting { started, last_send } => {
                if now >= started + self.give_up_after() {
                    self.start_reconfig();
                } else if now >= last_send + retry {
                    self.controller_send_inject();
                }
            }
            Phase::Running { .. } => {}
        }
    }

    fn start_reconfig(&mut self) {
        self.ctrl.phase = Phase::Sealing {
            started: self.now,
            last_send: self.now,
            acks: vec![None; self.switches.len()],
        };
        self.controller_send_seals();
    }

    /// Seals go to every switch (members, and candidates for the next ring).
    fn controller_send_seals(&mut self) {
        if let Phase::Sealing { last_send, .. } = &mut self.ctrl.phase {
            *last_send = self.now;
        }
        let epoch = self.ctrl.store.epoch;
        for s in 0..self.switches.len() {
            self.send(CTRL_ADDR, switch_addr(s), Message::Seal(Seal { epoch }));
        }
    }

    /// Done when every switch has acknowledged, or, after the give-up time, when at least
    /// one has (the silent ones are presumed dead; see PROTOCOL.md on what that assumes).
    fn seal_complete(&self, give_up: bool) -> bool {
        let Phase::Sealing { acks, .. } = &self.ctrl.phase else {
            return false;
        };
        let acked = acks.iter().filter(|a| a.is_some()).count();
        acked == acks.len() || (give_up && acked > 0)
    }

    /// The restart point: above everything the sealed epoch can have issued (PROTOCOL.md,
    /// "Choosing the restart point").
    fn choose_and_store_next_epoch(&mut self) {
        let Phase::Sealing { acks, .. } = &self.ctrl.phase else {
            return;
        };
        let store = &self.ctrl.store;
        let restart = restart_point(store, acks, self.cfg.max_visit);
        let members: Vec<(usize, u64)> = acks
            .iter()
            .enumerate()
            .filter_map(|(s, a)| a.map(|st| (s, st.boot)))
            .collect();
        let next = Store {
            epoch: store.epoch + 1,
            base: restart,
            limit: restart.saturating_add(self.cfg.epoch_span),
            members,
        };
        self.ctrl.store = next;
        let n = self.ctrl.store.members.len();
        self.ctrl.phase = Phase::Installing {
            started: self.now,
            last_send: self.now,
            acked: vec![false; n],
        };
        self.controller_send_installs();
    }

    fn controller_send_installs(&mut self) {
        let Phase::Installing {
            last_send, acked, ..
        } = &mut self.ctrl.phase
        else {
            return;
        };
        *last_send = self.now;
        let acked = acked.clone();
        let store = self.ctrl.store.clone();
        let n = store.members.len();
        let head = store.epoch as usize % n;
        for (k, &(s, boot)) in store.members.iter().enumerate() {
            if acked[k] {
                continue;
            }
            let mut install = Install {
                epoch: store.epoch,
                switch_id: s as u16,
                flags: if k == head { install_flags::HEAD } else { 0 },
                report_shift: REPORT_SHIFT,
                max_visit: self.cfg.max_visit,
                boot,
                base: store.base,
                limit: store.limit,
                ..Install::default()
            };
            install.set_successor(switch_addr(store.members[(k + 1) % n].0));
            self.send(CTRL_ADDR, switch_addr(s), Message::Install(install));
        }
    }

    fn controller_send_inject(&mut self) {
        if let Phase::Injecting { last_send, .. } = &mut self.ctrl.phase {
            *last_send = self.now;
        }
        let store = &self.ctrl.store;
        let head = store.members[store.epoch as usize % store.members.len()].0;
        let epoch = store.epoch;
        self.send(
            CTRL_ADDR,
            switch_addr(head),
            Message::Inject(Inject { epoch }),
        );
    }

    fn controller_receive(&mut self, msg: Message) {
        if !self.ctrl.up {
            return;
        }
        match msg {
            Message::Status(st) => self.controller_status(st),
            Message::Alarm(a) => self.controller_alarm(a.kind, a.epoch),
            _ => {}
        }
    }

    fn controller_alarm(&mut self, kind: u8, epoch: u32) {
        if epoch != self.ctrl.store.epoch {
            return;
        }
        match (AlarmKind::from_u8(kind), &mut self.ctrl.phase) {
            (Some(AlarmKind::Progress), Phase::Running { last_progress }) => {
                *last_progress = self.now
            }
            (Some(AlarmKind::Progress), Phase::Injecting { .. }) => {
                self.ctrl.phase = Phase::Running {
                    last_progress: self.now,
                };
            }
            (
                Some(AlarmKind::TokenDropped | AlarmKind::Exhausted),
                Phase::Running { .. } | Phase::Injecting { .. },
            ) => {
                self.start_reconfig();
            }
            _ => {}
        }
    }

    fn controller_status(&mut self, st: Status) {
        let epoch = self.ctrl.store.epoch;
        let s = st.switch_id as usize;
        let member = self.ctrl.store.members.iter().position(|(m, _)| *m == s);
        let restarted = member.is_some_and(|k| self.ctrl.store.members[k].1 != st.boot);
        match &mut self.ctrl.phase {
            Phase::Sealing { acks, .. } if st.seal_floor >= epoch && s < acks.len() => {
                acks[s] = Some(st);
            }
            Phase::Installing { acked, .. } => {
                if restarted {
                    self.start_reconfig();
                } else if let Some(k) = member.filter(|_| st.epoch == epoch) {
                    acked[k] = true;
                    if acked.iter().all(|a| *a) {
                        self.ctrl.phase = Phase::Injecting {
                            started: self.now,
                            last_send: self.now,
                        };
                        self.controller_send_inject();
                    }
                }
            }
            Phase::Running { .. } | Phase::Injecting { .. } if restarted => self.start_reconfig(),
            _ => {}
        }
    }
}

/// Above every number epoch `store.epoch` can have issued: the shared formula
/// ([`crate::config::restart_point`]) over this store's members and the seal acks.
pub fn restart_point(store: &Store, acks: &[Option<Status>], max_visit: u32) -> u64 {
    let members = store
        .members
        .iter()
        .map(|&(s, boot)| (boot, acks.get(s).and_then(Option::as_ref)));
    crate::config::restart_point(store.epoch, store.base, store.limit, max_visit, members)
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
    }

    #[test]
    fn calm_runs_complete_every_request_in_one_epoch() {
        for seed in 0..20 {
            let report = run_seed(SimConfig::calm(seed)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.epochs, 1, "seed {seed}: {report:?}");
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
        let store = Store {
            epoch: 3,
            base: 1000,
            limit: 1_000_000,
            members: vec![(0, 11), (1, 22), (2, 33)],
        };
        let st = |boot, fwd_base| {
            Some(Status {
                boot,
                epoch: 3,
                seal_floor: 3,
                fwd_base,
                ..Status::default()
            })
        };
        // All report: the highest forwarded base.
        assert_eq!(
            restart_point(&store, &[st(11, 1500), st(22, 1600), st(33, 1400)], 50),
            1600
        );
        // Switch 2 restarted (new boot), switch 1 silent: two visits of at most W each.
        assert_eq!(
            restart_point(&store, &[st(11, 1500), None, st(99, 0)], 50),
            1600
        );
        // Nobody from the installed incarnations: only the limit is safe.
        assert_eq!(
            restart_point(&store, &[None, st(23, 0), None], 50),
            1_000_000
        );
    }
}
