//! The frontier core: one per broker, driven by events and the clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::msg::{Ack, Gossip, Probe, Report};
use crate::{Gsn, NodeId, PartKey, Term};

/// Timing of rounds (microseconds of the driver's monotonic clock).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Least time between the starts of two rounds: bounds the cost under load.
    pub min_round_gap_us: u64,
    /// A round starts at least this often even when nothing changed, so a peer that
    /// restarted or missed a message catches up without anybody's help.
    pub idle_round_every_us: u64,
    /// A peer that has not answered a probe after this long counts as refusing.
    pub probe_timeout_us: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            min_round_gap_us: 1_000,
            idle_round_every_us: 1_000_000,
            probe_timeout_us: 500_000,
        }
    }
}

/// Most partitions a peer's led set or a report's exclusions may name (the cluster holds at
/// most 20,000 partitions): a larger one is ignored rather than stored.
const MAX_SET: usize = 100_000;

/// A round to start: its id and the probe for each peer.
pub type RoundStart<K> = (u64, Vec<(NodeId, Probe<K>)>);

/// What Raft says about a local replica (from its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaRole {
    /// The term this replica leads in, if it leads.
    pub leader_term: Option<Term>,
    /// The term of the last entry this replica applied.
    pub applied_term: Term,
}

/// A reservation of numbers in flight (see [`Core::begin_reservation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

/// One local replica.
#[derive(Debug, Default)]
struct Replica {
    /// The term of this replica's persisted vote. Updated before the vote is acted on.
    vote_term: Term,
    role: ReplicaRole,
    /// Offset after the last applied batch.
    hw: Gsn,
    /// Bases of batches stamped by this broker and not applied yet, per reservation term.
    unresolved: BTreeMap<Term, BTreeMap<Gsn, u32>>,
}

/// A certificate being confirmed in the current round.
#[derive(Debug)]
struct Pending {
    term: Term,
    value: Gsn,
    /// Acks still needed from other voters.
    needed: usize,
    acked: BTreeSet<NodeId>,
}

#[derive(Debug)]
struct Round<K> {
    id: u64,
    started_us: u64,
    set_version: u64,
    certs: BTreeMap<K, Pending>,
    waiting: BTreeSet<NodeId>,
}

impl<K> Round<K> {
    /// Every certificate confirmed, or nobody left to answer.
    fn complete(&self) -> bool {
        self.waiting.is_empty()
            || (!self.certs.is_empty() && self.certs.values().all(|c| c.acked.len() >= c.needed))
    }
}

/// What this broker knows of a peer.
#[derive(Debug)]
struct Peer<K> {
    incarnation: u64,
    /// The peer's last two led sets, by version (a report may name the previous one).
    sets: Vec<(u64, Vec<(K, Term)>)>,
    /// The version of this broker's set that the peer holds.
    knows_mine: u64,
    /// Last vote check of the peer's set: (set version, our vote version, nacks).
    checked: Option<(u64, u64, Vec<K>)>,
    /// The metadata version the peer applied, and when it last said so.
    meta_version: u64,
    heard_us: u64,
}

impl<K> Peer<K> {
    fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            sets: Vec::new(),
            knows_mine: 0,
            checked: None,
            meta_version: 0,
            heard_us: 0,
        }
    }
}

/// The frontier decisions of one broker. See the crate documentation.
#[derive(Debug)]
pub struct Core<K: PartKey> {
    me: NodeId,
    incarnation: u64,
    opts: Options,
    /// Highest number known to have been handed out; None until one of this broker's own
    /// reservations completed after start (then every later reservation lies above
    /// everything handed out before this process started).
    g: Option<Gsn>,
    /// The same, learned before that first reservation (logs, peers).
    g_learned: Gsn,
    /// The last number of that first reservation. It lies above every number handed out
    /// before this process started, so above every frontier any broker exposed before:
    /// F is exposed only once it reached it, which keeps F moving forward across restarts.
    started_above: Option<Gsn>,
    next_ticket: u64,
    /// Open reservations and the lower bound of the numbers each can still get.
    tickets: BTreeMap<Ticket, Gsn>,
    lower_bounds: BTreeMap<Gsn, u32>,
    replicas: BTreeMap<K, Replica>,
    /// Bumped whenever a local vote moves: invalidates cached vote checks.
    vote_version: u64,
    brokers: BTreeSet<NodeId>,
    /// Partitions of the cluster and their voters.
    partitions: BTreeMap<K, Vec<NodeId>>,
    cluster_version: u64,
    /// The metadata version applied here, and the version each partition first appeared in.
    meta_version: u64,
    born: BTreeMap<K, u64>,
    /// The driver's clock at the last call that gave one.
    now_us: u64,
    led: Vec<(K, Term)>,
    led_version: u64,
    round: Option<Round<K>>,
    next_round: u64,
    last_round_start: Option<u64>,
    dirty: bool,
    report: Option<Report<K>>,
    /// Last confirmed certificate per led partition: (term, value).
    confirmed: BTreeMap<K, (Term, Gsn)>,
    peers: BTreeMap<NodeId, Peer<K>>,
    /// Peers with an unanswered probe: a new round does not probe them again until it is
    /// answered or times out (a paused peer must not collect a probe per round).
    outstanding: BTreeMap<NodeId, u64>,
    /// Best confirmed certificate any broker reported, per partition.
    best: BTreeMap<K, Gsn>,
    f: Option<Gsn>,
    /// Bumped whenever F or a confirmed certificate moves (readers may wake).
    changes: u64,
    /// Certificates that a round could not confirm, in all.
    unconfirmed: u64,
}

impl<K: PartKey> Core<K> {
    pub fn new(me: NodeId, incarnation: u64, opts: Options) -> Self {
        Self {
            me,
            incarnation,
            opts,
            g: None,
            g_learned: 0,
            started_above: None,
            next_ticket: 1,
            tickets: BTreeMap::new(),
            lower_bounds: BTreeMap::new(),
            replicas: BTreeMap::new(),
            vote_version: 0,
            brokers: BTreeSet::new(),
            partitions: BTreeMap::new(),
            cluster_version: 0,
            meta_version: 0,
            born: BTreeMap::new(),
            now_us: 0,
            led: Vec::new(),
            led_version: 0,
            round: None,
            next_round: 1,
            last_round_start: None,
            dirty: true,
            report: None,
            confirmed: BTreeMap::new(),
            peers: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            best: BTreeMap::new(),
            f: None,
            changes: 0,
            unconfirmed: 0,
        }
    }

    // ---- numbers -------------------------------------------------------------------

    /// True once a reservation of this broker completed since start. Appenders must not
    /// begin reservations before (the lower bounds would be unknown).
    pub fn is_ready(&self) -> bool {
        self.g.is_some()
    }

    /// A reservation is about to be sent to the sequencer. Its numbers will lie above
    /// everything known handed out now.
    pub fn begin_reservation(&mut self) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let lower = self.g.map_or(0, |g| g + 1);
        self.tickets.insert(ticket, lower);
        *self.lower_bounds.entry(lower).or_insert(0) += 1;
        ticket
    }

    fn close_ticket(&mut self, ticket: Ticket) {
        if let Some(lower) = self.tickets.remove(&ticket) {
            if let Some(n) = self.lower_bounds.get_mut(&lower) {
                *n -= 1;
                if *n == 0 {
                    self.lower_bounds.remove(&lower);
                }
            }
        }
        self.dirty = true;
    }

    /// One of this broker's own reservations completed with `last` as its last number.
    fn handed_out(&mut self, last: Gsn) {
        if self.started_above.is_none() {
            self.started_above = Some(last);
        }
        self.g = Some(self.g.unwrap_or(self.g_learned).max(last));
        self.dirty = true;
    }

    /// The sequencer gave no numbers.
    pub fn reservation_failed(&mut self, ticket: Ticket) {
        self.close_ticket(ticket);
    }

    /// The sequencer gave `count` numbers from `first`, none of which will be stored (the
    /// term changed, the start-up probe): they are holes.
    pub fn reservation_dropped(&mut self, ticket: Ticket, first: Gsn, count: u64) {
        self.handed_out(first + count.max(1) - 1);
        self.close_ticket(ticket);
    }

    /// The sequencer gave `count` numbers from `first`; the batches starting at `bases` were
    /// stamped with them for partition `p` in `term` and are about to go to Raft.
    pub fn reservation_stamped(
        &mut self,
        ticket: Ticket,
        p: K,
        term: Term,
        first: Gsn,
        count: u64,
        bases: &[Gsn],
    ) {
        self.handed_out(first + count.max(1) - 1);
        if let Some(r) = self.replicas.get_mut(&p) {
            let stale = r.role.leader_term.is_some_and(|t| t > term);
            if !stale {
                let pending = r.unresolved.entry(term).or_default();
                for base in bases.iter().filter(|b| **b >= r.hw) {
                    *pending.entry(*base).or_insert(0) += 1;
                }
            }
        }
        self.close_ticket(ticket);
    }

    /// Raft refused a stamped batch: it is not in any log, its numbers are holes.
    pub fn batch_abandoned(&mut self, p: K, term: Term, base: Gsn) {
        if let Some(r) = self.replicas.get_mut(&p) {
            if let Some(pending) = r.unresolved.get_mut(&term) {
                if let Some(n) = pending.get_mut(&base) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(&base);
                    }
                }
            }
            self.dirty = true;
        }
    }

    /// `last` is in a log: it was handed out before now.
    pub fn note_stored(&mut self, last: Gsn) {
        match self.g {
            Some(g) if last > g => {
                self.g = Some(last);
                self.dirty = true;
            }
            Some(_) => {}
            None => self.g_learned = self.g_learned.max(last),
        }
    }

    // ---- replicas ------------------------------------------------------------------

    /// A local replica opened; `vote_term` is its persisted vote. Must happen before its Raft
    /// node can vote.
    pub fn open_replica(&mut self, p: K, vote_term: Term) {
        let r = self.replicas.entry(p).or_default();
        r.vote_term = r.vote_term.max(vote_term);
        self.vote_version += 1;
        self.dirty = true;
    }

    pub fn close_replica(&mut self, p: K) {
        self.replicas.remove(&p);
        self.confirmed.remove(&p);
        self.vote_version += 1;
        self.dirty = true;
    }

    /// The replica is about to persist (and then act on) a vote in `term`.
    pub fn vote(&mut self, p: K, term: Term) {
        let r = self.replicas.entry(p).or_default();
        if term > r.vote_term {
            r.vote_term = term;
            self.vote_version += 1;
            self.dirty = true;
        }
    }

    pub fn role(&mut self, p: K, role: ReplicaRole) {
        let Some(r) = self.replicas.get_mut(&p) else {
            return;
        };
        if r.role == role {
            return;
        }
        if let Some(term) = role.leader_term {
            // Earlier terms' batches are in the log (and get applied) or never will be.
            r.unresolved.retain(|t, _| *t >= term);
        }
        r.role = role;
        self.dirty = true;
    }

    /// The replica applied everything below `hw`.
    pub fn applied(&mut self, p: K, hw: Gsn) {
        let Some(r) = self.replicas.get_mut(&p) else {
            return;
        };
        if hw <= r.hw {
            return;
        }
        r.hw = hw;
        for pending in r.unresolved.values_mut() {
            *pending = pending.split_off(&hw);
        }
        r.unresolved.retain(|_, pending| !pending.is_empty());
        self.dirty = true;
        if hw > 0 {
            self.note_stored(hw - 1);
        }
    }

    // ---- cluster -------------------------------------------------------------------

    /// The brokers and partitions of the cluster metadata applied up to `version` (its log
    /// index: the same entries have the same version on every broker). Each partition comes
    /// with its voters and the version that created it (a broker at that version knows it).
    pub fn set_cluster(
        &mut self,
        version: u64,
        brokers: impl IntoIterator<Item = NodeId>,
        partitions: impl IntoIterator<Item = (K, Vec<NodeId>, u64)>,
    ) {
        let caught_up = version > self.meta_version;
        self.meta_version = self.meta_version.max(version);
        let brokers: BTreeSet<NodeId> = brokers.into_iter().collect();
        let mut created = BTreeMap::new();
        let partitions: BTreeMap<K, Vec<NodeId>> = partitions
            .into_iter()
            .map(|(p, voters, born)| {
                created.insert(p, born);
                (p, voters)
            })
            .collect();
        for (p, born) in created {
            self.born.entry(p).or_insert(born);
        }
        if brokers == self.brokers && partitions == self.partitions {
            if caught_up {
                self.recompute_f();
            }
            return;
        }
        self.peers.retain(|id, _| brokers.contains(id));
        self.best.retain(|p, _| partitions.contains_key(p));
        self.born.retain(|p, _| partitions.contains_key(p));
        self.brokers = brokers;
        self.partitions = partitions;
        self.cluster_version += 1;
        self.dirty = true;
        self.recompute_f();
    }

    // ---- outputs -------------------------------------------------------------------

    /// This broker's frontier: every number below it is committed in exactly one partition
    /// or will never be used.
    pub fn frontier(&self) -> Option<Gsn> {
        let f = self.f?;
        (f >= self.started_above?).then_some(f)
    }

    /// Highest number known to have been handed out.
    pub fn newest(&self) -> Option<Gsn> {
        self.g
    }

    /// Whether partition `p` may take numbers: every peer heard from lately has applied the
    /// metadata that created it, so none of them computes a frontier without it. (A peer
    /// silent for longer holds its frontier when it hears of newer metadata.)
    pub fn partition_ready(&self, p: K) -> bool {
        let Some(born) = self.born.get(&p) else {
            return false;
        };
        self.peers
            .values()
            .filter(|peer| self.recently_heard(peer))
            .all(|peer| peer.meta_version >= *born)
    }

    fn recently_heard(&self, peer: &Peer<K>) -> bool {
        self.now_us < peer.heard_us.saturating_add(self.opts.probe_timeout_us)
    }

    /// A peer heard from lately applied newer metadata: this broker may not know every
    /// partition, so it does not raise its frontier from its own view.
    fn behind(&self) -> bool {
        self.peers
            .values()
            .any(|peer| self.recently_heard(peer) && peer.meta_version > self.meta_version)
    }

    /// Changes whenever the frontier or a stable offset may have moved.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Certificates that rounds could not confirm, since start.
    pub fn unconfirmed(&self) -> u64 {
        self.unconfirmed
    }

    /// The last stable offset of led partition `p`: min(F, its confirmed certificate). Every
    /// record of `p` below it is applied here, and no other will ever be below it.
    pub fn stable_offset(&self, p: K) -> Option<Gsn> {
        let (_, cert) = self.confirmed.get(&p)?;
        Some(self.frontier()?.min(*cert))
    }

    // ---- rounds --------------------------------------------------------------------

    /// When `poll` wants to run next (None: only after an event).
    pub fn next_wakeup(&self) -> Option<u64> {
        if let Some(round) = &self.round {
            return Some(round.started_us + self.opts.probe_timeout_us);
        }
        let Some(last) = self.last_round_start else {
            return Some(0);
        };
        let gap = if self.dirty && self.wants_rounds() {
            self.opts.min_round_gap_us
        } else {
            self.opts.idle_round_every_us
        };
        Some(last + gap)
    }

    /// Brokers that lead nothing only gossip at the idle pace.
    fn wants_rounds(&self) -> bool {
        self.replicas.values().any(|r| r.role.leader_term.is_some())
    }

    /// Times out a round whose peers do not all answer, and starts a new round when one is
    /// due: returns its id and the probes to send.
    pub fn poll(&mut self, now_us: u64) -> Option<RoundStart<K>> {
        self.now_us = self.now_us.max(now_us);
        let timeout = self.opts.probe_timeout_us;
        self.outstanding
            .retain(|_, sent| now_us < sent.saturating_add(timeout));
        if let Some(round) = &self.round {
            if now_us < round.started_us + self.opts.probe_timeout_us {
                return None;
            }
            self.finish_round();
        }
        let due = match self.last_round_start {
            None => true,
            Some(last) => {
                let since = now_us.saturating_sub(last);
                (self.dirty && self.wants_rounds() && since >= self.opts.min_round_gap_us)
                    || since >= self.opts.idle_round_every_us
            }
        };
        if !due {
            return None;
        }
        Some(self.start_round(now_us))
    }

    fn floor(&self) -> Option<Gsn> {
        let g = self.g?;
        let lowest = self.lower_bounds.keys().next().copied();
        Some(lowest.map_or(g + 1, |l| l.min(g + 1)))
    }

    /// Certificates this broker can state now.
    fn certificates(&self) -> BTreeMap<K, Pending> {
        let mut out = BTreeMap::new();
        let Some(floor) = self.floor() else {
            return out;
        };
        for (p, r) in &self.replicas {
            let Some(term) = r.role.leader_term else {
                continue;
            };
            // Until an entry of this term is applied, earlier terms' entries may still be
            // committed; a vote in a newer term means this leadership may be over.
            if r.role.applied_term != term || r.vote_term != term {
                continue;
            }
            let Some(voters) = self.partitions.get(p) else {
                continue;
            };
            if !voters.contains(&self.me) {
                continue;
            }
            let pending = r
                .unresolved
                .get(&term)
                .and_then(|b| b.keys().next().copied());
            let value = pending.map_or(floor, |b| b.min(floor));
            out.insert(
                *p,
                Pending {
                    term,
                    value,
                    needed: voters.len() / 2,
                    acked: BTreeSet::new(),
                },
            );
        }
        out
    }

    fn start_round(&mut self, now_us: u64) -> RoundStart<K> {
        let id = self.next_round;
        self.next_round += 1;
        self.last_round_start = Some(now_us);
        self.dirty = false;
        let certs = self.certificates();
        let set: Vec<(K, Term)> = certs.iter().map(|(p, c)| (*p, c.term)).collect();
        if set != self.led {
            self.led = set;
            self.led_version += 1;
        }
        let waiting: BTreeSet<NodeId> = self
            .brokers
            .iter()
            .copied()
            .filter(|b| *b != self.me && !self.outstanding.contains_key(b))
            .collect();
        for peer in &waiting {
            self.outstanding.insert(*peer, now_us);
        }
        let probes = waiting
            .iter()
            .map(|peer| {
                let probe = Probe {
                    round: id,
                    gossip: self.gossip_for(*peer),
                };
                (*peer, probe)
            })
            .collect();
        self.round = Some(Round {
            id,
            started_us: now_us,
            set_version: self.led_version,
            certs,
            waiting,
        });
        if self.round.as_ref().is_some_and(Round::complete) {
            self.finish_round();
        }
        (id, probes)
    }

    fn gossip_for(&self, peer: NodeId) -> Gossip<K> {
        let known = self.peers.get(&peer);
        let peer_has_mine = known.is_some_and(|p| p.knows_mine == self.led_version);
        let (known_version, known_incarnation) = known.map_or((0, 0), |p| {
            (p.sets.last().map_or(0, |(v, _)| *v), p.incarnation)
        });
        Gossip {
            from: self.me,
            incarnation: self.incarnation,
            g: self.g,
            f: self.f,
            meta_version: self.meta_version,
            set_version: self.led_version,
            set: (!peer_has_mine && self.led_version > 0).then(|| self.led.clone()),
            report: self.report.clone(),
            known_version,
            known_incarnation,
        }
    }

    /// A peer's probe: take in its gossip, check our votes against its led partitions.
    pub fn on_probe(&mut self, probe: Probe<K>, now_us: u64) -> Ack<K> {
        self.now_us = self.now_us.max(now_us);
        let from = probe.gossip.from;
        let version = probe.gossip.set_version;
        self.take_gossip(probe.gossip);
        let (checked_version, nacks) = self.check_votes(from, version);
        Ack {
            round: probe.round,
            gossip: self.gossip_for(from),
            checked_version,
            nacks,
        }
    }

    /// Partitions of `from`'s set `version` for which this broker voted in a higher term or
    /// cannot tell. (0, []) when it does not hold that set.
    fn check_votes(&mut self, from: NodeId, version: u64) -> (u64, Vec<K>) {
        let vote_version = self.vote_version + self.cluster_version;
        let Some(peer) = self.peers.get(&from) else {
            return (0, Vec::new());
        };
        if let Some((v, votes, nacks)) = &peer.checked {
            if *v == version && *votes == vote_version {
                return (version, nacks.clone());
            }
        }
        let Some((_, set)) = peer.sets.iter().find(|(v, _)| *v == version) else {
            return (0, Vec::new());
        };
        let nacks: Vec<K> = set
            .iter()
            .filter(|(p, term)| self.voted_above(*p, *term))
            .map(|(p, _)| *p)
            .collect();
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.checked = Some((version, vote_version, nacks.clone()));
        }
        (version, nacks)
    }

    /// Whether this broker may have voted for `p` in a term above `term`.
    fn voted_above(&self, p: K, term: Term) -> bool {
        match self.replicas.get(&p) {
            Some(r) => r.vote_term > term,
            // A voter whose replica is not open (yet) cannot tell what it voted before
            // this process started.
            None => self
                .partitions
                .get(&p)
                .is_some_and(|voters| voters.contains(&self.me)),
        }
    }

    /// The answer to probe `round` from `from` (None: the peer did not answer).
    pub fn on_ack(&mut self, from: NodeId, round: u64, ack: Option<Ack<K>>, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        self.outstanding.remove(&from);
        let mut confirmations = None;
        if let Some(ack) = ack {
            let checked = ack.checked_version;
            let nacks = ack.nacks.clone();
            self.take_gossip(ack.gossip);
            if checked != 0 {
                confirmations = Some((checked, nacks));
            }
        }
        let Some(r) = self.round.as_mut().filter(|r| r.id == round) else {
            return;
        };
        if !r.waiting.remove(&from) {
            return;
        }
        if let Some((_, nacks)) = confirmations.filter(|(v, _)| *v == r.set_version) {
            let nacks: BTreeSet<K> = nacks.into_iter().collect();
            for (p, pending) in r.certs.iter_mut() {
                let voter = self.partitions.get(p).is_some_and(|v| v.contains(&from));
                if voter && !nacks.contains(p) {
                    pending.acked.insert(from);
                }
            }
        }
        if r.complete() {
            self.finish_round();
        }
    }

    fn finish_round(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        let mut value: Option<Gsn> = None;
        let mut excluded = Vec::new();
        for (p, pending) in round.certs {
            if pending.acked.len() >= pending.needed {
                let before = self.confirmed.insert(p, (pending.term, pending.value));
                if before != Some((pending.term, pending.value)) {
                    self.changes += 1;
                }
                value = Some(value.map_or(pending.value, |v| v.min(pending.value)));
            } else {
                // Retried with the next round (an event's, or the idle one): a deposed leader
                // that does not know it yet must not probe every millisecond.
                excluded.push(p);
                self.unconfirmed += 1;
            }
        }
        if let Some(value) = value {
            let report = Report {
                round: round.id,
                set_version: round.set_version,
                value,
                excluded,
            };
            let led = self.led.clone();
            if round.set_version == self.led_version {
                self.apply_report(&led, &report);
            }
            self.report = Some(report);
        }
    }

    fn take_gossip(&mut self, gossip: Gossip<K>) {
        let from = gossip.from;
        if from == self.me || !self.brokers.contains(&from) {
            return;
        }
        let peer = self
            .peers
            .entry(from)
            .or_insert_with(|| Peer::new(gossip.incarnation));
        if peer.incarnation != gossip.incarnation {
            *peer = Peer::new(gossip.incarnation);
        }
        if gossip.known_incarnation == self.incarnation {
            peer.knows_mine = gossip.known_version;
        }
        peer.meta_version = peer.meta_version.max(gossip.meta_version);
        peer.heard_us = self.now_us;
        if let Some(set) = gossip.set.filter(|s| s.len() <= MAX_SET) {
            if peer.sets.last().map(|(v, _)| *v) != Some(gossip.set_version) {
                peer.sets.push((gossip.set_version, set));
                if peer.sets.len() > 2 {
                    peer.sets.remove(0);
                }
            }
        }
        if let Some(report) = gossip.report.filter(|r| r.excluded.len() <= MAX_SET) {
            let set = peer
                .sets
                .iter()
                .find(|(v, _)| *v == report.set_version)
                .map(|(_, s)| s.clone());
            if let Some(set) = set {
                self.apply_report(&set, &report);
            }
        }
        if let Some(g) = gossip.g {
            self.note_stored(g);
        }
        if let Some(f) = gossip.f {
            if self.f.is_none_or(|mine| f > mine) {
                self.f = Some(f);
                self.changes += 1;
            }
        }
    }

    fn apply_report(&mut self, set: &[(K, Term)], report: &Report<K>) {
        let mut raised = false;
        let excluded: BTreeSet<K> = report.excluded.iter().copied().collect();
        for (p, _) in set {
            if excluded.contains(p) || !self.partitions.contains_key(p) {
                continue;
            }
            let best = self.best.entry(*p).or_insert(0);
            if report.value > *best {
                *best = report.value;
                raised = true;
            }
        }
        if raised {
            self.recompute_f();
        }
    }

    fn recompute_f(&mut self) {
        if self.partitions.is_empty() || self.behind() {
            return;
        }
        let mut lowest: Option<Gsn> = None;
        for p in self.partitions.keys() {
            let Some(best) = self.best.get(p) else {
                return;
            };
            lowest = Some(lowest.map_or(*best, |l| l.min(*best)));
        }
        if let Some(candidate) = lowest {
            if self.f.is_none_or(|f| candidate > f) {
                self.f = Some(candidate);
                self.changes += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = 7;

    fn leader_of(core: &mut Core<u32>, p: u32, term: Term) {
        core.open_replica(p, 0);
        core.vote(p, term);
        core.role(
            p,
            ReplicaRole {
                leader_term: Some(term),
                applied_term: term,
            },
        );
    }

    /// A core whose start-up reservation completed with number `start`.
    fn started(me: NodeId, start: Gsn) -> Core<u32> {
        let mut core = Core::new(me, me * 1000 + 1, Options::default());
        let t = core.begin_reservation();
        core.reservation_dropped(t, start, 1);
        core
    }

    #[test]
    fn a_single_broker_certifies_up_to_what_it_handed_out_and_applied() {
        // Started at 10: F is exposed from 10 on (above everything handed out before).
        let mut c = started(1, 10);
        c.set_cluster(1, [1], [(P, vec![1], 1)]);
        leader_of(&mut c, P, 1);
        let t = c.begin_reservation();
        c.reservation_stamped(t, P, 1, 11, 5, &[11, 14]);
        c.poll(0);
        assert_eq!(
            c.confirmed.get(&P),
            Some(&(1, 11)),
            "the unapplied batch holds it"
        );
        assert_eq!(c.stable_offset(P), Some(11));
        c.applied(P, 14);
        c.poll(2_000);
        assert_eq!(c.confirmed.get(&P), Some(&(1, 14)));
        assert_eq!(c.frontier(), Some(14));
        c.applied(P, 16);
        c.poll(4_000);
        assert_eq!((c.frontier(), c.stable_offset(P)), (Some(16), Some(16)));
    }

    #[test]
    fn an_open_reservation_holds_the_certificate_at_its_lower_bound() {
        let mut c = started(1, 10);
        c.set_cluster(1, [1], [(P, vec![1], 1)]);
        leader_of(&mut c, P, 1);
        let open = c.begin_reservation(); // numbers will be above 10
        c.note_stored(40); // another broker's batch, learned later
        c.poll(0);
        assert_eq!(c.confirmed.get(&P), Some(&(1, 11)));
        c.reservation_failed(open);
        c.poll(2_000);
        assert_eq!(c.confirmed.get(&P), Some(&(1, 41)));
    }

    #[test]
    fn no_certificate_before_the_term_start_is_applied_or_after_a_newer_vote() {
        let mut c = started(1, 10);
        c.set_cluster(1, [1], [(P, vec![1], 1)]);
        c.open_replica(P, 0);
        c.vote(P, 3);
        c.role(
            P,
            ReplicaRole {
                leader_term: Some(3),
                applied_term: 2,
            },
        );
        c.poll(0);
        assert!(
            c.confirmed.is_empty(),
            "earlier terms' entries may still commit"
        );
        c.role(
            P,
            ReplicaRole {
                leader_term: Some(3),
                applied_term: 3,
            },
        );
        c.vote(P, 4); // voted for a newer leader; Raft's view has not caught up yet
        c.poll(2_000);
        assert!(c.confirmed.is_empty());
    }

    /// Two brokers, p replicated on both: A's certificate needs B's "not above your term".
    fn exchange(a: &mut Core<u32>, b: &mut Core<u32>, now: u64) {
        let (round, probes) = a.poll(now).expect("a round");
        for (to, probe) in probes {
            assert_eq!(to, 2);
            let ack = b.on_probe(probe, now);
            a.on_ack(2, round, Some(ack), now);
        }
    }

    #[test]
    fn a_peer_that_voted_in_a_newer_term_refuses_the_certificate() {
        let mut a = started(1, 10);
        let mut b = started(2, 20);
        for c in [&mut a, &mut b] {
            c.set_cluster(1, [1, 2], [(P, vec![1, 2], 1)]);
        }
        leader_of(&mut a, P, 1);
        b.open_replica(P, 1);
        exchange(&mut a, &mut b, 0);
        assert_eq!(a.confirmed.get(&P).map(|c| c.0), Some(1));
        b.vote(P, 2); // B votes for a new leader; A does not know yet
        a.note_stored(30);
        exchange(&mut a, &mut b, 2_000);
        assert_eq!(
            a.confirmed.get(&P).map(|c| c.1),
            Some(11),
            "the newer certificate (31) was refused; the old one stands"
        );
        assert!(a.unconfirmed() > 0);
    }

    #[test]
    fn reports_spread_with_the_messages_and_every_partition_counts() {
        const Q: u32 = 8;
        let mut a = started(1, 10);
        let mut b = started(2, 20);
        for c in [&mut a, &mut b] {
            c.set_cluster(1, [1, 2], [(P, vec![1], 1), (Q, vec![2], 1)]);
        }
        leader_of(&mut a, P, 1);
        leader_of(&mut b, Q, 1);
        exchange(&mut a, &mut b, 0);
        assert_eq!(a.frontier(), None, "Q not certified yet");
        // B's round: its report (Q at 21) reaches A with the ack... then A's next probe.
        let (round, probes) = b.poll(0).expect("round");
        for (_, probe) in probes {
            let ack = a.on_probe(probe, 0);
            b.on_ack(1, round, Some(ack), 0);
        }
        // A learned G = 20 from B's probe: its next round certifies P at 21, and B's report
        // (Q at 21) came with that probe.
        exchange(&mut a, &mut b, 2_000);
        assert_eq!(a.frontier(), Some(21));
        assert_eq!(a.stable_offset(P), Some(21));
    }

    #[test]
    fn a_new_partition_waits_until_peers_applied_its_creation() {
        const NEW: u32 = 9;
        let mut a = started(1, 10);
        let mut b = started(2, 20);
        a.set_cluster(5, [1, 2], [(P, vec![1, 2], 4), (NEW, vec![1], 5)]);
        b.set_cluster(4, [1, 2], [(P, vec![1, 2], 4)]);
        exchange(&mut a, &mut b, 0);
        assert!(a.partition_ready(P));
        assert!(!a.partition_ready(NEW), "B has not applied version 5");
        b.set_cluster(5, [1, 2], [(P, vec![1, 2], 4), (NEW, vec![1], 5)]);
        // B's first round tells A (every message carries the sender's version).
        let (_, probes) = b.poll(1_000).expect("B's first round");
        for (_, probe) in probes {
            a.on_probe(probe, 1_000);
        }
        assert!(a.partition_ready(NEW));
        // A peer silent for longer than the probe timeout is not waited for.
        let mut c = started(1, 10);
        c.set_cluster(6, [1, 2], [(NEW, vec![1], 5)]);
        assert!(c.partition_ready(NEW));
    }
}
