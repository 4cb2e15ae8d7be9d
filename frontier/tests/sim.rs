//! Deterministic simulation of the frontier under faults.
//!
//! Brokers run the real decision code ([`frontier::Core`], and the log store's
//! [`frontier::stale_reservation`] rule) next to a model of what surrounds it in the broker:
//! one Raft group per partition (elections, terms and votes persisted and reported to the
//! core before they are acted on, replication, commit, truncation of uncommitted tails, a
//! blank entry at every term start), partition appenders that take numbers from a sequencer
//! and hand stamped batches to Raft exactly as `broker/src/partition.rs` does (check the
//! term, reserve, check again, stamp, submit; Raft may meanwhile have changed term), a
//! sequencer that hands numbers out in real-time order after a random delay, and a network
//! that delays, reorders and loses messages. Raft's view reaches the core late and in order
//! (as openraft's metrics watch does); votes reach it synchronously (the log store's
//! save_vote hook). Faults: broker crashes and restarts (volatile state lost, the Raft log,
//! vote and commit index kept), pauses (a frozen broker keeps its stale view), a broker cut
//! off the network, message loss, and a restart of every broker at once.
//!
//! The checker fails a seed when:
//! * a batch is first known committed below a frontier any broker exposed before, or below
//!   a last stable offset a leader served for its partition before (so a reader would have
//!   passed it);
//! * a leader serves a last stable offset while some committed batch of its partition below
//!   it is not applied on that leader (a reader would miss it);
//! * a broker's exposed frontier goes back, or a broker exposes, after it restarted, a
//!   frontier below one any broker exposed before that restart;
//! * two committed batches share a number, or two replicas commit different entries at one
//!   index (the Raft model is checked too);
//! * after the faults stop and the load ends, some broker's frontier does not reach every
//!   committed number within the calm period (liveness).
//!
//! One step is 100 µs of the cores' clock. A seed replays exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use frontier::{stale_reservation, Ack, Core, Options, Probe, ReplicaRole, Ticket};

type Key = u32;
/// A broker's applied metadata: version, brokers, partitions with their voters.
type ClusterView = (u64, Vec<u64>, Vec<(Key, Vec<u64>, u64)>);
const STEP_US: u64 = 100;

// ---- randomness ------------------------------------------------------------------------

/// SplitMix64: small and the same everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

// ---- configuration ---------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SimConfig {
    seed: u64,
    brokers: usize,
    partitions: usize,
    replication: usize,
    steps: u64,
    /// Faults and new load stop here; the rest of the run is calm.
    faults_until: u64,
    load_until: u64,
    /// Per mille per step per led partition.
    produce_per_mille: u64,
    loss_per_mille: u64,
    crash_per_mille: u64,
    pause_per_mille: u64,
    cut_per_mille: u64,
    /// Raft messages between two brokers lost for a while, frontier messages not: a deposed
    /// leader that cannot hear its successor but still reaches its peers' frontier cores.
    raft_link_cut_per_mille: u64,
    restart_all_at: Option<u64>,
    /// Partitions created while the run goes on: (step, partition index). Each broker
    /// applies the metadata that creates one after its own delay.
    late_partitions: Vec<u64>,
    /// Deliberately broken variants, to show the checker catches them.
    break_confirmation: bool,
    break_void_rule: bool,
    break_partition_barrier: bool,
}

impl SimConfig {
    fn faulty(seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x5EED);
        let brokers = if rng.chance(300) { 5 } else { 3 };
        Self {
            seed,
            brokers,
            partitions: rng.range(2, 5) as usize,
            replication: if rng.chance(150) { 1 } else { 3 },
            steps: 30_000,
            faults_until: 18_000,
            load_until: 20_000,
            produce_per_mille: rng.range(20, 200),
            loss_per_mille: rng.range(0, 80),
            crash_per_mille: rng.range(0, 2),
            pause_per_mille: rng.range(0, 2),
            cut_per_mille: rng.range(0, 2),
            raft_link_cut_per_mille: rng.range(0, 3),
            restart_all_at: rng.chance(200).then(|| rng.range(4_000, 15_000)),
            late_partitions: (0..rng.below(3))
                .map(|_| rng.range(1_000, 15_000))
                .collect(),
            break_confirmation: false,
            break_void_rule: false,
            break_partition_barrier: false,
        }
    }
}

// ---- the Raft model ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    base: u64,
    count: u64,
    reserved_term: u64,
    voided: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    term: u64,
    batch: Option<Batch>,
}

#[derive(Debug, Clone)]
enum Role {
    Follower,
    Candidate(BTreeSet<usize>),
    Leader {
        next: BTreeMap<usize, usize>,
        matched: BTreeMap<usize, usize>,
    },
}

/// One replica of one partition. `term`, `voted_for`, `log`, `commit` and `applied` survive
/// a crash (persisted); the role does not.
#[derive(Debug, Clone)]
struct Replica {
    term: u64,
    voted_for: Option<usize>,
    log: Vec<Entry>,
    commit: usize,
    applied: usize,
    role: Role,
    deadline: u64,
    last_heartbeat: u64,
}

impl Replica {
    fn new() -> Self {
        Self {
            term: 0,
            voted_for: None,
            log: Vec::new(),
            commit: 0,
            applied: 0,
            role: Role::Follower,
            deadline: 0,
            last_heartbeat: 0,
        }
    }
    fn last(&self) -> (u64, usize) {
        (self.log.last().map_or(0, |e| e.term), self.log.len())
    }
    fn term_at(&self, idx: usize) -> u64 {
        if idx == 0 {
            0
        } else {
            self.log.get(idx - 1).map_or(u64::MAX, |e| e.term)
        }
    }
    fn leader_term(&self) -> Option<u64> {
        matches!(self.role, Role::Leader { .. }).then_some(self.term)
    }
    fn applied_term(&self) -> u64 {
        if self.applied == 0 {
            0
        } else {
            self.log[self.applied - 1].term
        }
    }
    fn hw(&self) -> u64 {
        self.log[..self.applied]
            .iter()
            .filter_map(|e| e.batch)
            .map(|b| b.base + b.count)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
enum RaftMsg {
    Vote {
        term: u64,
        last_term: u64,
        last_idx: usize,
    },
    VoteResp {
        term: u64,
        granted: bool,
    },
    Append {
        term: u64,
        prev_idx: usize,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: usize,
    },
    AppendResp {
        term: u64,
        ok: bool,
        /// On success the last index that matches; on failure the follower's log length
        /// (a hint that skips the leader's backoff past entries the follower lacks).
        matched: usize,
    },
}

// ---- events ------------------------------------------------------------------------------

#[derive(Debug)]
enum Event {
    Raft {
        to: usize,
        from: usize,
        p: usize,
        msg: RaftMsg,
    },
    Probe {
        to: usize,
        from: usize,
        probe: Probe<Key>,
    },
    Ack {
        to: usize,
        from: usize,
        incarnation: u64,
        round: u64,
        ack: Option<Ack<Key>>,
    },
    /// The sequencer assigns numbers to a reservation.
    Assign { op: usize },
    /// A reservation's numbers reach its broker.
    Complete { op: usize },
    /// A stamped batch reaches the partition's Raft core (client_write).
    Submit {
        broker: usize,
        incarnation: u64,
        p: usize,
        term: u64,
        base: u64,
        count: u64,
    },
}

#[derive(Debug, Clone)]
struct Reservation {
    broker: usize,
    incarnation: u64,
    ticket: Ticket,
    p: usize,
    term: u64,
    /// Batch sizes; None for a broker's start-up probe.
    batches: Option<Vec<u64>>,
    first: Option<u64>,
}

struct Broker {
    alive: bool,
    frozen_until: u64,
    cut_until: u64,
    incarnation: u64,
    core: Core<Key>,
    replicas: BTreeMap<usize, Replica>,
    /// Raft's view as the core will see it, in order (openraft's metrics watch).
    views: VecDeque<(u64, usize, ReplicaRole, u64)>,
    exposed: Option<u64>,
    /// Partitions whose appender is busy (one group at a time, as the broker's appender
    /// task: reserve, stamp, submit, then the next group).
    appending: BTreeMap<usize, usize>,
    /// Highest frontier any broker exposed when this one last started.
    floor_at_start: u64,
    /// Metadata versions applied (1 + partitions created after the start).
    meta_version: usize,
}

// ---- the simulation ----------------------------------------------------------------------

struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    brokers: Vec<Broker>,
    voters: Vec<Vec<usize>>,
    /// The metadata version that created each partition (1: the initial ones).
    created_in: Vec<usize>,
    /// Steps at which each metadata version was created (index = version - 1).
    versions_at: Vec<u64>,
    next_gsn: u64,
    ops: Vec<Reservation>,
    /// Committed entries by (partition, index), as first learned.
    committed: BTreeMap<(usize, usize), Entry>,
    used: BTreeMap<u64, usize>,
    max_exposed: u64,
    max_lso: BTreeMap<usize, u64>,
    raft_cuts: BTreeMap<(usize, usize), u64>,
    violations: Vec<String>,
    stats: Stats,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    committed_batches: u64,
    voided: u64,
    rounds: u64,
    crashes: u64,
    pauses: u64,
    cuts: u64,
    max_frontier: u64,
    max_committed: u64,
}

const HEARTBEAT: u64 = 10;
const ELECTION_MIN: u64 = 60;
const ELECTION_MAX: u64 = 120;

fn core_options() -> Options {
    Options {
        min_round_gap_us: 10 * STEP_US,
        idle_round_every_us: 2_000 * STEP_US,
        probe_timeout_us: 300 * STEP_US,
    }
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng(cfg.seed);
        let mut voters = Vec::new();
        for p in 0..cfg.partitions {
            let start = p % cfg.brokers;
            voters.push(
                (0..cfg.replication)
                    .map(|r| (start + r) % cfg.brokers)
                    .collect::<Vec<_>>(),
            );
        }
        let initial = voters.len();
        for (i, _) in cfg.late_partitions.iter().enumerate() {
            let p = initial + i;
            let start = p % cfg.brokers;
            voters.push(
                (0..cfg.replication)
                    .map(|r| (start + r) % cfg.brokers)
                    .collect::<Vec<_>>(),
            );
        }
        let mut created_in = vec![1; initial];
        let mut versions_at = vec![0];
        let mut late: Vec<u64> = cfg.late_partitions.clone();
        late.sort_unstable();
        for (i, at) in late.into_iter().enumerate() {
            created_in.push(i + 2);
            versions_at.push(at);
        }
        let brokers = (0..cfg.brokers)
            .map(|b| {
                let mut replicas = BTreeMap::new();
                for (p, vs) in voters.iter().enumerate().take(initial) {
                    if vs.contains(&b) {
                        let mut r = Replica::new();
                        r.deadline = rng.range(ELECTION_MIN, ELECTION_MAX);
                        replicas.insert(p, r);
                    }
                }
                Broker {
                    alive: true,
                    frozen_until: 0,
                    cut_until: 0,
                    incarnation: 0,
                    core: Core::new(b as u64, 0, core_options()),
                    replicas,
                    views: VecDeque::new(),
                    exposed: None,
                    appending: BTreeMap::new(),
                    floor_at_start: 0,
                    meta_version: 0,
                }
            })
            .collect();
        let mut sim = Self {
            cfg,
            rng,
            now: 0,
            events: BTreeMap::new(),
            seq: 0,
            brokers,
            voters,
            created_in,
            versions_at,
            next_gsn: 1_000,
            ops: Vec::new(),
            committed: BTreeMap::new(),
            used: BTreeMap::new(),
            max_exposed: 0,
            max_lso: BTreeMap::new(),
            raft_cuts: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
        };
        for b in 0..sim.brokers.len() {
            sim.brokers[b].meta_version = 1;
            sim.boot(b);
        }
        sim
    }

    /// The cluster as broker `b`'s applied metadata has it.
    fn cluster_view(&self, b: usize) -> ClusterView {
        let version = self.brokers[b].meta_version;
        let partitions = self
            .voters
            .iter()
            .enumerate()
            .filter(|(p, _)| self.created_in[*p] <= version)
            .map(|(p, vs)| {
                let voters = vs.iter().map(|v| *v as u64).collect();
                (p as Key, voters, self.created_in[p] as u64)
            })
            .collect();
        let brokers = (0..self.cfg.brokers as u64).collect();
        (version as u64, brokers, partitions)
    }

    /// Broker `b` applies the next metadata version once it exists and its delay passed.
    fn apply_metadata(&mut self, b: usize) {
        let next = self.brokers[b].meta_version + 1;
        let Some(at) = self.versions_at.get(next - 1).copied() else {
            return;
        };
        // Each broker applies a version after its own delay (a lagging Raft follower).
        let delay = (b as u64 * 7_919 + next as u64 * 104_729) % 1_500;
        if self.now < at + delay {
            return;
        }
        self.brokers[b].meta_version = next;
        let created: Vec<usize> = (0..self.voters.len())
            .filter(|p| self.created_in[*p] == next && self.voters[*p].contains(&b))
            .collect();
        let (version, brokers, partitions) = self.cluster_view(b);
        self.brokers[b]
            .core
            .set_cluster(version, brokers, partitions);
        for p in created {
            let mut r = Replica::new();
            r.deadline = self.now + self.rng.range(ELECTION_MIN, ELECTION_MAX);
            self.brokers[b].core.open_replica(p as Key, 0);
            self.brokers[b].replicas.insert(p, r);
        }
    }

    fn fail(&mut self, what: String) {
        if self.violations.len() < 10 {
            self.violations.push(format!("step {}: {what}", self.now));
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.events.insert((self.now + delay, self.seq), event);
    }

    fn usable(&self, b: usize) -> bool {
        self.brokers[b].alive && self.brokers[b].frozen_until <= self.now
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.brokers[a].cut_until <= self.now && self.brokers[b].cut_until <= self.now
    }

    fn net_delay(&mut self) -> u64 {
        self.rng.range(1, 8)
    }

    fn lost(&mut self) -> bool {
        self.now < self.cfg.faults_until && self.rng.chance(self.cfg.loss_per_mille)
    }

    // ---- brokers: start, crash ----------------------------------------------------------

    /// (Re)starts broker `b`: a fresh core that learns its replicas' persisted votes before
    /// anything can vote, the cluster, and a start-up reservation.
    fn boot(&mut self, b: usize) {
        let incarnation = self.rng.next();
        let mut core = Core::new(b as u64, incarnation, core_options());
        let (version, brokers, partitions) = self.cluster_view(b);
        core.set_cluster(version, brokers, partitions);
        for (p, r) in &self.brokers[b].replicas {
            core.open_replica(*p as Key, r.term);
        }
        let floor = self.max_exposed;
        let broker = &mut self.brokers[b];
        broker.alive = true;
        broker.incarnation = incarnation;
        broker.core = core;
        broker.views.clear();
        broker.appending.clear();
        broker.exposed = None;
        broker.floor_at_start = floor;
        let mut views = Vec::new();
        for (p, r) in broker.replicas.iter_mut() {
            r.role = Role::Follower;
            views.push((*p, r.applied_term(), r.hw()));
        }
        for (p, applied_term, hw) in views {
            self.push_view_of(b, p, applied_term, hw, None);
        }
        let ticket = self.brokers[b].core.begin_reservation();
        self.reserve(Reservation {
            broker: b,
            incarnation,
            ticket,
            p: 0,
            term: 0,
            batches: None,
            first: None,
        });
    }

    fn crash(&mut self, b: usize) {
        self.stats.crashes += 1;
        let broker = &mut self.brokers[b];
        broker.alive = false;
        broker.frozen_until = 0;
        for r in broker.replicas.values_mut() {
            r.role = Role::Follower;
        }
    }

    // ---- Raft's view reaching the core ----------------------------------------------------

    fn push_view(&mut self, b: usize, p: usize) {
        let r = &self.brokers[b].replicas[&p];
        let (applied_term, hw, leader) = (r.applied_term(), r.hw(), r.leader_term());
        self.push_view_of(b, p, applied_term, hw, leader);
    }

    fn push_view_of(
        &mut self,
        b: usize,
        p: usize,
        applied_term: u64,
        hw: u64,
        leader: Option<u64>,
    ) {
        let last = self.brokers[b].views.back().map_or(self.now, |v| v.0);
        let at = last.max(self.now + self.rng.below(4));
        let role = ReplicaRole {
            leader_term: leader,
            applied_term,
        };
        self.brokers[b].views.push_back((at, p, role, hw));
    }

    fn deliver_views(&mut self, b: usize) {
        while let Some((at, p, role, hw)) = self.brokers[b].views.front().copied() {
            if at > self.now {
                break;
            }
            self.brokers[b].views.pop_front();
            let core = &mut self.brokers[b].core;
            core.role(p as Key, role);
            core.applied(p as Key, hw);
        }
    }

    // ---- Raft ---------------------------------------------------------------------------

    /// Persists a new term (the log store's save_vote: the core hears of it first).
    fn new_term(&mut self, b: usize, p: usize, term: u64, voted_for: Option<usize>) {
        self.brokers[b].core.vote(p as Key, term);
        let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
        r.term = term;
        r.voted_for = voted_for;
        r.role = Role::Follower;
        self.push_view(b, p);
    }

    fn send_raft(&mut self, from: usize, to: usize, p: usize, msg: RaftMsg) {
        let link = (from.min(to), from.max(to));
        let link_cut = self
            .raft_cuts
            .get(&link)
            .is_some_and(|until| *until > self.now);
        if !self.connected(from, to) || link_cut || self.lost() {
            return;
        }
        let d = self.net_delay();
        self.schedule(d, Event::Raft { to, from, p, msg });
    }

    fn raft_tick(&mut self, b: usize, p: usize) {
        let now = self.now;
        let (is_leader, deadline) = {
            let r = &self.brokers[b].replicas[&p];
            (matches!(r.role, Role::Leader { .. }), r.deadline)
        };
        if is_leader {
            let due = self.brokers[b].replicas[&p].last_heartbeat + HEARTBEAT <= now;
            if due {
                self.replicate(b, p);
            }
            return;
        }
        if now < deadline {
            return;
        }
        let term = self.brokers[b].replicas[&p].term + 1;
        self.new_term(b, p, term, Some(b));
        let d = self.rng.range(ELECTION_MIN, ELECTION_MAX);
        let (last_term, last_idx) = {
            let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
            r.deadline = now + d;
            r.role = Role::Candidate(BTreeSet::from([b]));
            r.last()
        };
        self.maybe_lead(b, p);
        for v in self.voters[p].clone() {
            if v != b {
                let msg = RaftMsg::Vote {
                    term,
                    last_term,
                    last_idx,
                };
                self.send_raft(b, v, p, msg);
            }
        }
    }

    fn maybe_lead(&mut self, b: usize, p: usize) {
        let majority = self.voters[p].len() / 2 + 1;
        let won =
            matches!(&self.brokers[b].replicas[&p].role, Role::Candidate(v) if v.len() >= majority);
        if !won {
            return;
        }
        let voters = self.voters[p].clone();
        let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
        let term = r.term;
        r.log.push(Entry { term, batch: None });
        let last = r.log.len();
        let next = voters.iter().map(|v| (*v, last)).collect();
        let matched = voters
            .iter()
            .map(|v| (*v, if *v == b { last } else { 0 }))
            .collect();
        r.role = Role::Leader { next, matched };
        self.push_view(b, p);
        self.advance_commit(b, p);
        self.replicate(b, p);
    }

    fn replicate(&mut self, b: usize, p: usize) {
        let now = self.now;
        let mut out = Vec::new();
        {
            let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
            r.last_heartbeat = now;
            let Role::Leader { next, .. } = &r.role else {
                return;
            };
            for (v, n) in next {
                if *v == b {
                    continue;
                }
                let prev_idx = n.saturating_sub(1);
                let entries: Vec<Entry> = r.log.iter().skip(prev_idx).take(16).copied().collect();
                out.push((
                    *v,
                    RaftMsg::Append {
                        term: r.term,
                        prev_idx,
                        prev_term: r.term_at(prev_idx),
                        entries,
                        commit: r.commit,
                    },
                ));
            }
        }
        for (v, msg) in out {
            self.send_raft(b, v, p, msg);
        }
    }

    fn on_raft(&mut self, b: usize, from: usize, p: usize, msg: RaftMsg) {
        let my_term = self.brokers[b].replicas[&p].term;
        let their_term = match &msg {
            RaftMsg::Vote { term, .. }
            | RaftMsg::VoteResp { term, .. }
            | RaftMsg::Append { term, .. }
            | RaftMsg::AppendResp { term, .. } => *term,
        };
        if their_term > my_term {
            self.new_term(b, p, their_term, None);
        }
        if std::env::var("FRONTIER_SIM_TRACE").is_ok_and(|v| v == p.to_string())
            && self.now > 25_000
        {
            eprintln!("{} p{p} {from}->{b}: {msg:?}", self.now);
        }
        match msg {
            RaftMsg::Vote {
                term,
                last_term,
                last_idx,
            } => {
                let r = &self.brokers[b].replicas[&p];
                let grant = term == r.term
                    && r.voted_for.is_none_or(|v| v == from)
                    && (last_term, last_idx) >= r.last();
                if grant {
                    self.brokers[b].core.vote(p as Key, term);
                    let d = self.rng.range(ELECTION_MIN, ELECTION_MAX);
                    let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
                    r.voted_for = Some(from);
                    r.deadline = self.now + d;
                }
                let term = self.brokers[b].replicas[&p].term;
                self.send_raft(
                    b,
                    from,
                    p,
                    RaftMsg::VoteResp {
                        term,
                        granted: grant,
                    },
                );
            }
            RaftMsg::VoteResp { term, granted } => {
                let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
                if term == r.term && granted {
                    if let Role::Candidate(votes) = &mut r.role {
                        votes.insert(from);
                    }
                }
                self.maybe_lead(b, p);
            }
            RaftMsg::Append {
                term,
                prev_idx,
                prev_term,
                entries,
                commit,
            } => self.on_append(b, from, p, term, prev_idx, prev_term, entries, commit),
            RaftMsg::AppendResp { term, ok, matched } => {
                let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
                if term != r.term {
                    return;
                }
                if let Role::Leader { next, matched: m } = &mut r.role {
                    if ok {
                        let e = m.entry(from).or_insert(0);
                        *e = (*e).max(matched);
                        next.insert(from, (*e) + 1);
                    } else {
                        let n = next.entry(from).or_insert(1);
                        *n = (*n).saturating_sub(1).min(matched + 1).max(1);
                    }
                }
                self.advance_commit(b, p);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        b: usize,
        from: usize,
        p: usize,
        term: u64,
        prev_idx: usize,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: usize,
    ) {
        let d = self.rng.range(ELECTION_MIN, ELECTION_MAX);
        let now = self.now;
        let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
        if term < r.term {
            let t = r.term;
            self.send_raft(
                b,
                from,
                p,
                RaftMsg::AppendResp {
                    term: t,
                    ok: false,
                    matched: 0,
                },
            );
            return;
        }
        if matches!(r.role, Role::Candidate(_)) {
            r.role = Role::Follower;
        }
        r.deadline = now + d;
        if prev_idx > r.log.len() || r.term_at(prev_idx) != prev_term {
            let (t, len) = (r.term, r.log.len());
            self.send_raft(
                b,
                from,
                p,
                RaftMsg::AppendResp {
                    term: t,
                    ok: false,
                    matched: len,
                },
            );
            return;
        }
        for (i, e) in entries.iter().enumerate() {
            let idx = prev_idx + i + 1;
            if idx <= r.log.len() {
                if r.log[idx - 1].term != e.term {
                    assert!(idx > r.commit, "model: truncating a committed entry");
                    r.log.truncate(idx - 1);
                    r.log.push(*e);
                }
            } else {
                r.log.push(*e);
            }
        }
        let last_new = prev_idx + entries.len();
        if commit > r.commit {
            r.commit = commit.min(last_new).max(r.commit);
        }
        let t = r.term;
        self.apply(b, p);
        self.send_raft(
            b,
            from,
            p,
            RaftMsg::AppendResp {
                term: t,
                ok: true,
                matched: last_new,
            },
        );
    }

    fn advance_commit(&mut self, b: usize, p: usize) {
        let majority = self.voters[p].len() / 2 + 1;
        let newly: Vec<(usize, Entry)> = {
            let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
            let Role::Leader { matched, .. } = &r.role else {
                return;
            };
            let mut target = r.commit;
            for n in (r.commit + 1..=r.log.len()).rev() {
                let count = matched.values().filter(|m| **m >= n).count();
                if r.log[n - 1].term == r.term && count >= majority {
                    target = n;
                    break;
                }
            }
            let newly = (r.commit + 1..=target).map(|i| (i, r.log[i - 1])).collect();
            r.commit = target;
            newly
        };
        for (idx, entry) in newly {
            self.learn_committed(p, idx, entry);
        }
        self.apply(b, p);
    }

    /// The first time anybody knows that `entry` at `idx` is committed.
    fn learn_committed(&mut self, p: usize, idx: usize, entry: Entry) {
        if let Some(known) = self.committed.get(&(p, idx)) {
            if *known != entry {
                self.fail(format!(
                    "model: p{p} index {idx} committed as {known:?} and {entry:?}"
                ));
            }
            return;
        }
        self.committed.insert((p, idx), entry);
        let Some(batch) = entry.batch else {
            return;
        };
        if batch.voided {
            self.stats.voided += 1;
            return;
        }
        self.stats.committed_batches += 1;
        self.stats.max_committed = self.stats.max_committed.max(batch.base + batch.count - 1);
        if batch.reserved_term != entry.term && !self.cfg.break_void_rule {
            self.fail(format!("p{p} committed {batch:?} in term {}", entry.term));
        }
        for n in batch.base..batch.base + batch.count {
            if let Some(other) = self.used.insert(n, p) {
                self.fail(format!("number {n} committed in p{other} and p{p}"));
            }
        }
        if batch.base < self.max_exposed {
            self.fail(format!(
                "p{p} batch {}..{} committed below exposed frontier {}",
                batch.base,
                batch.base + batch.count,
                self.max_exposed
            ));
        }
        let lso = self.max_lso.get(&p).copied().unwrap_or(0);
        if batch.base < lso {
            self.fail(format!(
                "p{p} batch at {} committed below served stable offset {lso}",
                batch.base
            ));
        }
    }

    fn apply(&mut self, b: usize, p: usize) {
        let changed = {
            let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
            let changed = r.applied < r.commit;
            r.applied = r.commit;
            changed
        };
        if changed {
            self.push_view(b, p);
        }
    }

    // ---- appenders and the sequencer --------------------------------------------------------

    fn produce(&mut self, b: usize, p: usize) {
        let Some(term) = self.brokers[b].replicas[&p].leader_term() else {
            return;
        };
        if !self.brokers[b].core.is_ready() || self.brokers[b].appending.contains_key(&p) {
            return;
        }
        if !self.cfg.break_partition_barrier && !self.brokers[b].core.partition_ready(p as Key) {
            return;
        }
        // Clients follow the metadata: once a newer leader exists they produce there, so
        // a deposed leader that does not know it yet gets no new batches (mostly).
        let newest = self
            .brokers
            .iter()
            .filter_map(|br| br.replicas.get(&p).and_then(Replica::leader_term))
            .max();
        if newest != Some(term) && !self.rng.chance(50) {
            return;
        }
        let n = self.rng.range(1, 3);
        let batches: Vec<u64> = (0..n).map(|_| self.rng.range(1, 5)).collect();
        let ticket = self.brokers[b].core.begin_reservation();
        let incarnation = self.brokers[b].incarnation;
        self.brokers[b].appending.insert(p, usize::MAX);
        self.reserve(Reservation {
            broker: b,
            incarnation,
            ticket,
            p,
            term,
            batches: Some(batches),
            first: None,
        });
    }

    fn reserve(&mut self, op: Reservation) {
        self.ops.push(op);
        let id = self.ops.len() - 1;
        let d = self.rng.range(1, 15);
        self.schedule(d, Event::Assign { op: id });
    }

    fn on_assign(&mut self, op: usize) {
        let count = self.ops[op]
            .batches
            .as_ref()
            .map_or(1, |b| b.iter().sum::<u64>());
        self.ops[op].first = Some(self.next_gsn);
        self.next_gsn += count;
        // Occasionally a number nobody will ever use (an expired ticket).
        if self.rng.chance(50) {
            self.next_gsn += self.rng.range(1, 3);
        }
        let d = self.rng.range(1, 15);
        self.schedule(d, Event::Complete { op });
    }

    fn on_complete(&mut self, op: usize) {
        let r = self.ops[op].clone();
        let b = r.broker;
        if !self.brokers[b].alive || self.brokers[b].incarnation != r.incarnation {
            return;
        }
        if self.brokers[b].frozen_until > self.now {
            let wait = self.brokers[b].frozen_until - self.now;
            self.schedule(wait, Event::Complete { op });
            return;
        }
        let first = r.first.expect("assigned");
        let Some(batches) = r.batches else {
            self.brokers[b].core.reservation_dropped(r.ticket, first, 1);
            return;
        };
        let total: u64 = batches.iter().sum();
        // The appender checks the term again after the sequencer answered, and refuses
        // numbers below the partition's end (a log never goes back).
        let replica = &self.brokers[b].replicas[&r.p];
        let end = replica
            .log
            .iter()
            .filter_map(|e| e.batch)
            .map(|bt| bt.base + bt.count)
            .max()
            .unwrap_or(0);
        if replica.leader_term() != Some(r.term) || first < end {
            self.brokers[b]
                .core
                .reservation_dropped(r.ticket, first, total);
            self.brokers[b].appending.remove(&r.p);
            return;
        }
        self.brokers[b].appending.insert(r.p, batches.len());
        let mut bases = Vec::new();
        let mut next = first;
        for size in &batches {
            bases.push(next);
            next += size;
        }
        self.brokers[b]
            .core
            .reservation_stamped(r.ticket, r.p as Key, r.term, first, total, &bases);
        // Usually at once; now and then the appender task is starved for a while (a loaded
        // machine), long enough for Raft to change term in between.
        let mut delay = if self.rng.chance(10) {
            self.rng.range(50, 600)
        } else {
            0
        };
        for (base, size) in bases.into_iter().zip(batches) {
            delay += self.rng.below(3);
            self.schedule(
                delay,
                Event::Submit {
                    broker: b,
                    incarnation: r.incarnation,
                    p: r.p,
                    term: r.term,
                    base,
                    count: size,
                },
            );
        }
    }

    /// client_write: the Raft core appends in whatever term it leads now.
    fn on_submit(&mut self, b: usize, p: usize, term: u64, base: u64, count: u64) {
        if let Some(left) = self.brokers[b].appending.get_mut(&p) {
            *left -= 1;
            if *left == 0 {
                self.brokers[b].appending.remove(&p);
            }
        }
        let r = self.brokers[b].replicas.get_mut(&p).expect("replica");
        let Some(entry_term) = r.leader_term() else {
            self.brokers[b].core.batch_abandoned(p as Key, term, base);
            return;
        };
        let voided = !self.cfg.break_void_rule && stale_reservation(term, entry_term);
        r.log.push(Entry {
            term: entry_term,
            batch: Some(Batch {
                base,
                count,
                reserved_term: term,
                voided,
            }),
        });
        let last = r.log.len();
        if let Role::Leader { matched, .. } = &mut r.role {
            matched.insert(b, last);
        }
        self.advance_commit(b, p);
        self.replicate(b, p);
    }

    // ---- frontier messages -------------------------------------------------------------

    fn core_tick(&mut self, b: usize) {
        let now_us = self.now * STEP_US;
        if let Some((round, probes)) = self.brokers[b].core.poll(now_us) {
            self.stats.rounds += 1;
            let incarnation = self.brokers[b].incarnation;
            for (peer, probe) in probes {
                let to = peer as usize;
                if !self.connected(b, to) || self.lost() {
                    continue;
                }
                let d = self.net_delay();
                let _ = (round, incarnation);
                self.schedule(d, Event::Probe { to, from: b, probe });
            }
        }
        self.observe(b);
    }

    fn on_probe(&mut self, to: usize, from: usize, probe: Probe<Key>) {
        let round = probe.round;
        let now_us = self.now * STEP_US;
        let mut ack = self.brokers[to].core.on_probe(probe, now_us);
        if self.cfg.break_confirmation {
            ack.nacks.clear();
        }
        if !self.connected(to, from) || self.lost() {
            return;
        }
        let d = self.net_delay();
        let incarnation = self.brokers[from].incarnation;
        self.schedule(
            d,
            Event::Ack {
                to: from,
                from: to,
                incarnation,
                round,
                ack: Some(ack),
            },
        );
    }

    /// What a reader sees: the exposed frontier and the stable offsets the leaders serve.
    fn observe(&mut self, b: usize) {
        if let Some(f) = self.brokers[b].core.frontier() {
            let before = self.brokers[b].exposed;
            if before.is_some_and(|e| f < e) {
                self.fail(format!("broker {b} frontier went back {before:?} -> {f}"));
            }
            if f < self.brokers[b].floor_at_start {
                self.fail(format!(
                    "broker {b} exposed {f} after a restart, below {} exposed before",
                    self.brokers[b].floor_at_start
                ));
            }
            self.brokers[b].exposed = Some(f);
            self.max_exposed = self.max_exposed.max(f);
            self.stats.max_frontier = self.stats.max_frontier.max(f);
        }
        let leading: Vec<usize> = self.brokers[b]
            .replicas
            .iter()
            .filter(|(_, r)| r.leader_term().is_some())
            .map(|(p, _)| *p)
            .collect();
        for p in leading {
            let Some(lso) = self.brokers[b].core.stable_offset(p as Key) else {
                continue;
            };
            self.check_served(b, p, lso);
            let m = self.max_lso.entry(p).or_insert(0);
            *m = (*m).max(lso);
        }
    }

    /// Every committed batch of `p` below `lso` must be applied on `b`.
    fn check_served(&mut self, b: usize, p: usize, lso: u64) {
        let applied = self.brokers[b].replicas[&p].applied;
        let missing: Vec<(usize, Batch)> = self
            .committed
            .range((p, 0)..(p + 1, 0))
            .filter_map(|((_, idx), e)| e.batch.map(|bt| (*idx, bt)))
            .filter(|(idx, bt)| !bt.voided && bt.base < lso && *idx > applied)
            .collect();
        if let Some((idx, bt)) = missing.first() {
            self.fail(format!(
                "broker {b} serves p{p} up to {lso} but has not applied index {idx} (base {})",
                bt.base
            ));
        }
    }

    // ---- faults --------------------------------------------------------------------------

    fn inject_faults(&mut self) {
        if self.now >= self.cfg.faults_until {
            return;
        }
        if self.cfg.restart_all_at == Some(self.now) {
            for b in 0..self.brokers.len() {
                if self.brokers[b].alive {
                    self.crash(b);
                }
            }
            for b in 0..self.brokers.len() {
                self.boot(b);
            }
            return;
        }
        if self.rng.chance(self.cfg.raft_link_cut_per_mille) && self.rng.chance(100) {
            // Either one link, or every Raft link of one broker.
            let a = self.rng.below(self.brokers.len() as u64) as usize;
            let until = self.now + self.rng.range(100, 2_000);
            let others: Vec<usize> = if self.rng.chance(500) {
                (0..self.brokers.len()).filter(|c| *c != a).collect()
            } else {
                vec![self.rng.below(self.brokers.len() as u64) as usize]
            };
            for c in others.into_iter().filter(|c| *c != a) {
                self.raft_cuts.insert((a.min(c), a.max(c)), until);
                self.stats.cuts += 1;
            }
        }
        for b in 0..self.brokers.len() {
            if self.brokers[b].alive {
                if self.rng.chance(self.cfg.crash_per_mille) && self.rng.chance(200) {
                    self.crash(b);
                } else if self.rng.chance(self.cfg.pause_per_mille) && self.rng.chance(200) {
                    self.stats.pauses += 1;
                    self.brokers[b].frozen_until = self.now + self.rng.range(50, 3_000);
                } else if self.rng.chance(self.cfg.cut_per_mille) && self.rng.chance(200) {
                    self.stats.cuts += 1;
                    self.brokers[b].cut_until = self.now + self.rng.range(50, 3_000);
                }
            } else if self.rng.chance(20) {
                self.boot(b);
            }
        }
    }

    fn heal(&mut self) {
        for b in 0..self.brokers.len() {
            if !self.brokers[b].alive {
                self.boot(b);
            }
        }
    }

    // ---- the loop ----------------------------------------------------------------------

    fn run(mut self) -> Result<Stats, String> {
        while self.now < self.cfg.steps {
            if self.now == self.cfg.faults_until {
                self.heal();
            }
            self.inject_faults();
            self.deliver_events();
            for b in 0..self.brokers.len() {
                if !self.usable(b) {
                    continue;
                }
                self.apply_metadata(b);
                self.deliver_views(b);
                let parts: Vec<usize> = self.brokers[b].replicas.keys().copied().collect();
                for p in parts {
                    self.raft_tick(b, p);
                    if self.now < self.cfg.load_until && self.rng.chance(self.cfg.produce_per_mille)
                    {
                        self.produce(b, p);
                    }
                }
                self.core_tick(b);
            }
            self.now += 1;
        }
        self.check_liveness();
        if self.violations.is_empty() {
            Ok(self.stats)
        } else {
            Err(format!(
                "seed {} ({:?}): {}",
                self.cfg.seed,
                self.cfg,
                self.violations.join("; ")
            ))
        }
    }

    fn deliver_events(&mut self) {
        while let Some((&(at, seq), _)) = self.events.first_key_value() {
            if at > self.now {
                break;
            }
            let event = self.events.remove(&(at, seq)).expect("event");
            self.deliver(event);
        }
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::Raft { to, from, p, msg } => {
                if self.hold(to, || Event::Raft {
                    to,
                    from,
                    p,
                    msg: msg.clone(),
                }) {
                    return;
                }
                if !self.brokers[to].replicas.contains_key(&p) {
                    return; // not created there yet (NoGroup)
                }
                self.on_raft(to, from, p, msg);
            }
            Event::Probe { to, from, probe } => {
                if self.hold(to, || Event::Probe {
                    to,
                    from,
                    probe: probe.clone(),
                }) {
                    return;
                }
                self.on_probe(to, from, probe);
            }
            Event::Ack {
                to,
                from,
                incarnation,
                round,
                ack,
            } => {
                if self.brokers[to].incarnation != incarnation {
                    return;
                }
                if self.hold(to, || Event::Ack {
                    to,
                    from,
                    incarnation,
                    round,
                    ack: ack.clone(),
                }) {
                    return;
                }
                let now_us = self.now * STEP_US;
                self.brokers[to]
                    .core
                    .on_ack(from as u64, round, ack, now_us);
                self.observe(to);
            }
            Event::Assign { op } => self.on_assign(op),
            Event::Complete { op } => self.on_complete(op),
            Event::Submit {
                broker,
                incarnation,
                p,
                term,
                base,
                count,
            } => {
                if self.brokers[broker].incarnation != incarnation {
                    return;
                }
                if self.hold(broker, || Event::Submit {
                    broker,
                    incarnation,
                    p,
                    term,
                    base,
                    count,
                }) {
                    return;
                }
                self.on_submit(broker, p, term, base, count);
            }
        }
    }

    /// A dead broker drops what reaches it; a frozen one gets it when it thaws.
    fn hold(&mut self, b: usize, again: impl FnOnce() -> Event) -> bool {
        if !self.brokers[b].alive {
            return true;
        }
        if self.brokers[b].frozen_until > self.now {
            let wait = self.brokers[b].frozen_until - self.now;
            let e = again();
            self.schedule(wait, e);
            return true;
        }
        false
    }

    fn dump(&self) {
        if std::env::var("FRONTIER_SIM_DUMP").is_err() {
            return;
        }
        for (b, broker) in self.brokers.iter().enumerate() {
            eprintln!(
                "== broker {b} alive={} core={:#?}",
                broker.alive, broker.core
            );
            for (p, r) in &broker.replicas {
                eprintln!(
                    "   p{p}: term {} role {:?} log {} commit {} applied {} hw {}",
                    r.term,
                    r.role,
                    r.log.len(),
                    r.commit,
                    r.applied,
                    r.hw()
                );
            }
        }
    }

    fn check_liveness(&mut self) {
        self.dump();
        let target = self.stats.max_committed + 1;
        for b in 0..self.brokers.len() {
            let f = self.brokers[b].core.frontier();
            if f.is_none_or(|f| f < target) {
                self.fail(format!(
                    "liveness: broker {b} frontier {f:?} below the newest committed {target} \
                     after the calm period"
                ));
            }
        }
    }
}

fn run_seed(cfg: SimConfig) -> Result<Stats, String> {
    Sim::new(cfg).run()
}

fn seeds() -> u64 {
    std::env::var("FRONTIER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

#[test]
fn many_seeds_with_faults_keep_every_guarantee() {
    let mut totals = Stats::default();
    for seed in 0..seeds() {
        match run_seed(SimConfig::faulty(seed)) {
            Ok(s) => {
                totals.committed_batches += s.committed_batches;
                totals.voided += s.voided;
                totals.rounds += s.rounds;
                totals.crashes += s.crashes;
                totals.pauses += s.pauses;
                totals.cuts += s.cuts;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("totals over {} seeds: {totals:?}", seeds());
    assert!(
        totals.committed_batches > 1_000,
        "the load must commit batches"
    );
    assert!(totals.crashes > 0 && totals.pauses > 0 && totals.cuts > 0);
}

#[test]
fn a_calm_run_keeps_the_frontier_close_behind() {
    let mut cfg = SimConfig::faulty(7);
    cfg.crash_per_mille = 0;
    cfg.pause_per_mille = 0;
    cfg.cut_per_mille = 0;
    cfg.loss_per_mille = 0;
    cfg.restart_all_at = None;
    let stats = run_seed(cfg).expect("calm run");
    assert!(stats.committed_batches > 100, "{stats:?}");
    assert!(stats.max_frontier > stats.max_committed, "{stats:?}");
}

#[test]
fn restarting_every_broker_keeps_the_frontier_moving_forward() {
    for seed in 0..20 {
        let mut cfg = SimConfig::faulty(1_000 + seed);
        cfg.restart_all_at = Some(8_000);
        run_seed(cfg).expect("whole-cluster restart");
    }
}

/// The checker must catch a broken rule: without the vote check (acks that always
/// confirm), some seed commits below a frontier or a served stable offset.
#[test]
fn without_confirmation_a_deposed_leader_breaks_the_frontier() {
    // A deposed leader that still reaches its peers' frontier cores needs a Raft cut around
    // a leader while a new leader commits: at this rate about 1 seed in 70 of the first 200
    // shows it (seeds 21, 34, 158); at 5 per mille only 2 of 600 did. Deterministic: `any`
    // stops at seed 21.
    let caught = (0..400).any(|seed| {
        let mut cfg = SimConfig::faulty(seed);
        cfg.break_confirmation = true;
        cfg.raft_link_cut_per_mille = 30;
        run_seed(cfg).is_err()
    });
    assert!(
        caught,
        "no seed caught a frontier confirmed by a deposed leader"
    );
}

#[test]
fn without_the_void_rule_stale_reservations_break_the_frontier() {
    let caught = (0..300).any(|seed| {
        let mut cfg = SimConfig::faulty(seed);
        cfg.break_void_rule = true;
        cfg.pause_per_mille = 2;
        run_seed(cfg).is_err()
    });
    assert!(
        caught,
        "no seed caught a batch committed in a later term than its numbers"
    );
}

/// Without the barrier, a new partition takes numbers that a broker which has not applied
/// its creation already passed with its frontier.
#[test]
fn without_the_new_partition_barrier_a_lagging_broker_passes_its_numbers() {
    let caught = (0..300).any(|seed| {
        let mut cfg = SimConfig::faulty(seed);
        cfg.break_partition_barrier = true;
        cfg.late_partitions = vec![3_000, 6_000, 9_000];
        cfg.produce_per_mille = 200;
        run_seed(cfg).is_err()
    });
    assert!(
        caught,
        "no seed caught a frontier computed without a new partition"
    );
}

#[test]
fn replay_one_seed() {
    if let Some(seed) = std::env::var("FRONTIER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let r = run_seed(SimConfig::faulty(seed));
        eprintln!("{r:?}");
        r.expect("seed");
    }
}
