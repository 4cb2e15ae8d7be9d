//! The client half of the ring protocol (PROTOCOL.md, "Issuing numbers") as a sans-IO state
//! machine: reservations, packets, configurations and the clock in; packets to send,
//! completions and "fetch the configuration" out. The broker's `RingSequencer`
//! (`broker/src/ring_sequencer.rs`) drives it over a UDP socket; the simulation ([`crate::sim`])
//! drives the same code over its faulty network, so what the simulation checks is what the
//! broker runs.
//!
//! Rules this client keeps, and why:
//! * A retransmission is the SAME request (`client, req_id, count, epoch`): the switch's
//!   dedup table then answers with the same ticket, and never allocates twice.
//! * A request never grows once sent (real-time order, PROTOCOL.md guarantee 2), and never
//!   asks for more than the epoch's `max_visit` (W): the switch would refuse it, and two
//!   requests do not give consecutive numbers, so larger reservations fail with
//!   [`DoneKind::TooMany`].
//! * A configuration whose W is below [`ClientOptions::min_max_visit`] is refused: the broker
//!   could not number its largest batch from it (a Kafka batch needs consecutive numbers).
//! * `Expired`, or a seal / new epoch: the old ticket's numbers become holes and a new request
//!   (new `req_id`) is sent. Tickets of earlier requests of the same reservation stay valid:
//!   whichever resolves first wins, the rest are holes.
//! * Everything is bounded: pending reservations, requests and time per reservation.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::config::RingConfig;
use crate::wire::{Announce, Grant, Message, Probe, Reject, RejectReason, Request, Ticket};

/// Tunables of the client core.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Retransmit a request that has been neither resolved nor rejected for this long. A
    /// ticket waits up to one token rotation, so this must exceed a rotation.
    pub rto: Duration,
    /// A reservation that has not completed in this time fails (`Unavailable`).
    pub deadline: Duration,
    /// Most reservations in flight at once; more fail at once (`Unavailable`).
    pub max_pending: usize,
    /// Most distinct requests (req_ids) one reservation may send before it fails.
    pub max_requests_per_reservation: usize,
    /// After this many sends of one request without an answer, ask for the configuration:
    /// the home switch may be dead and the ring reconfigured without it.
    pub refetch_after_sends: u32,
    /// Configurations whose W (`max_visit`) is below this are refused.
    pub min_max_visit: u32,
    /// A reservation started after this long without any in flight also sends a Probe to
    /// the head switch, which releases a token parked by idle pacing (softswitch
    /// `--idle-hold-us`), so the request waits one rotation, not the rest of the hold.
    /// Zero: never.
    pub idle_nudge: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(50),
            deadline: Duration::from_secs(10),
            max_pending: 1024,
            max_requests_per_reservation: 64,
            refetch_after_sends: 4,
            min_max_visit: 1,
            idle_nudge: Duration::from_millis(1),
        }
    }
}

/// What [`Core`] asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(SocketAddrV4, Message),
    /// Reservation `op` finished: its first number, or why not.
    Done(u64, Result<u64, String>, DoneKind),
    /// The configuration may have changed: fetch it (the driver rate-limits).
    FetchConfig,
}

/// How a reservation ended, so the driver can map it to its own error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneKind {
    Ok,
    /// More numbers than one ring request may carry (W), or none.
    TooMany,
    /// No numbers in time, too much in flight, or the ring is unusable (refused W).
    Unavailable,
    /// A switch refused the request as malformed (BadRequest): a bug, not a fault.
    Refused,
}

/// Counters the driver exports (the broker as `gsn_ring_*_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Numbers this client was issued and will never use.
    pub holes: u64,
    pub retransmits: u64,
    /// New requests (new req_id) for a reservation that already had one.
    pub reissues: u64,
    pub busy: u64,
    /// Configurations refused for a too small W.
    pub refused_configs: u64,
    /// Probes sent to the head to wake an idle ring.
    pub nudges: u64,
}

/// A ticket this client holds: numbers `local_off..local_off+count` of `switch_id`, global
/// at visit `visit` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    req_id: u64,
    epoch: u32,
    switch_id: u16,
    visit: u64,
    local_off: u64,
}

#[derive(Debug)]
struct Op {
    count: u32,
    /// Epoch and switch of the current request (meaningful once `req_ids` is non-empty).
    epoch: u32,
    home: SocketAddrV4,
    /// Every request sent for this reservation; the last is the current one.
    req_ids: Vec<u64>,
    sends: u32,
    last_send: Instant,
    deadline: Instant,
    tickets: Vec<Held>,
}

/// The request/response state machine of one client, without sockets or timers.
/// Deterministic: the same calls give the same actions (ordered maps only).
pub struct Core {
    client: u64,
    broker_id: u64,
    next_req: u64,
    next_op: u64,
    config: Option<RingConfig>,
    /// Epoch and reason of the newest configuration refused (newer than `config`).
    refused: Option<(u32, String)>,
    opts: ClientOptions,
    ops: BTreeMap<u64, Op>,
    /// Every number handed out must be at or above this (offsets already in the logs).
    floor: u64,
    stats: ClientStats,
    /// Last time a reservation started or ended.
    last_active: Option<Instant>,
}

impl Core {
    /// `client` must be random per process start (a restarted client never matches its
    /// old requests); `broker_id` picks the home switch.
    pub fn new(client: u64, broker_id: u64, floor: u64, opts: ClientOptions) -> Self {
        Self {
            client,
            broker_id,
            next_req: 1,
            next_op: 1,
            config: None,
            refused: None,
            opts,
            ops: BTreeMap::new(),
            floor,
            stats: ClientStats::default(),
            last_active: None,
        }
    }

    pub fn config(&self) -> Option<&RingConfig> {
        self.config.as_ref()
    }

    pub fn client(&self) -> u64 {
        self.client
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    pub fn pending(&self) -> usize {
        self.ops.len()
    }

    /// Why the newest configuration seen was refused, if it was.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_ref().map(|(_, why)| why.as_str())
    }

    /// Whether `cfg` is usable by this client; `Err` says why not.
    pub fn check_config(&self, cfg: &RingConfig) -> Result<(), String> {
        if cfg.members.is_empty() || cfg.max_visit == 0 {
            return Err(format!("ring epoch {} has no members or W = 0", cfg.epoch));
        }
        if cfg.max_visit < self.opts.min_max_visit {
            return Err(format!(
                "ring epoch {} allows {} numbers per request (W), below this broker's \
                 {} records per batch: a batch needs consecutive numbers from one request; \
                 run the ring controllers with --max-visit >= {} and start a new epoch \
                 (POST /resize with the current switches)",
                cfg.epoch, cfg.max_visit, self.opts.min_max_visit, self.opts.min_max_visit
            ));
        }
        Ok(())
    }

    /// Starts a reservation of `count` numbers; returns its id.
    pub fn start(&mut self, count: u64, now: Instant) -> (u64, Vec<Action>) {
        let id = self.next_op;
        self.next_op += 1;
        let mut out = Vec::new();
        if let Some((_, why)) = &self.refused {
            out.push(Action::Done(id, Err(why.clone()), DoneKind::Unavailable));
            out.push(Action::FetchConfig);
            return (id, out);
        }
        let max = self
            .config
            .as_ref()
            .map_or(u64::from(u32::MAX), |c| u64::from(c.max_visit));
        if count == 0 || count > max {
            out.push(Action::Done(
                id,
                Err(format!(
                    "{count} numbers; one ring request carries 1..={max}"
                )),
                DoneKind::TooMany,
            ));
            return (id, out);
        }
        if self.ops.len() >= self.opts.max_pending {
            out.push(Action::Done(
                id,
                Err(format!("{} reservations already in flight", self.ops.len())),
                DoneKind::Unavailable,
            ));
            return (id, out);
        }
        let idle = self.ops.is_empty()
            && !self.opts.idle_nudge.is_zero()
            && self
                .last_active
                .is_none_or(|t| now.saturating_duration_since(t) >= self.opts.idle_nudge);
        self.last_active = Some(now);
        let op = Op {
            count: count as u32,
            epoch: 0,
            home: SocketAddrV4::new([0, 0, 0, 0].into(), 0),
            req_ids: Vec::new(),
            sends: 0,
            last_send: now,
            deadline: now + self.opts.deadline,
            tickets: Vec::new(),
        };
        self.ops.insert(id, op);
        if self.config.is_some() {
            self.reissue(id, now, &mut out);
            if idle {
                self.nudge(&mut out);
            }
        } else {
            out.push(Action::FetchConfig);
        }
        (id, out)
    }

    /// A Probe to the head, unless the head is our home switch (the request itself wakes
    /// it there).
    fn nudge(&mut self, out: &mut Vec<Action>) {
        let Some(cfg) = &self.config else {
            return;
        };
        let home = cfg.home(self.broker_id).map(|m| m.switch_id);
        let Some(head) = cfg.members.iter().find(|m| m.switch_id == cfg.head) else {
            return;
        };
        if home != Some(head.switch_id) {
            self.stats.nudges += 1;
            out.push(Action::Send(head.addr, Message::Probe(Probe {})));
        }
    }

    /// Adopts a fetched configuration unless it is older than the one we have (or unusable),
    /// and moves every reservation whose request belongs to an older epoch (or none yet)
    /// into it.
    pub fn on_config(&mut self, cfg: RingConfig, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let current = self.config.as_ref().map_or(0, |c| c.epoch);
        if self.config.is_some() && current > cfg.epoch {
            return out;
        }
        if let Err(why) = self.check_config(&cfg) {
            if self.refused.as_ref().is_none_or(|(e, _)| *e < cfg.epoch) {
                tracing::error!(epoch = cfg.epoch, "ring configuration refused: {why}");
                self.stats.refused_configs += 1;
            }
            // Reservations that were waiting to move into this epoch cannot.
            let stuck: Vec<u64> = self
                .ops
                .iter()
                .filter(|(_, op)| op.req_ids.is_empty() || op.epoch < cfg.epoch)
                .map(|(id, _)| *id)
                .collect();
            for id in stuck {
                self.ops.remove(&id);
                out.push(Action::Done(id, Err(why.clone()), DoneKind::Unavailable));
            }
            self.refused = Some((cfg.epoch, why));
            return out;
        }
        self.refused = None;
        let epoch = cfg.epoch;
        let max = cfg.max_visit;
        self.config = Some(cfg);
        let ids: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| op.req_ids.is_empty() || op.epoch < epoch)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if self.ops.get(&id).is_some_and(|op| op.count > max) {
                self.ops.remove(&id);
                out.push(Action::Done(
                    id,
                    Err(format!("the ring's per-request limit is now {max}")),
                    DoneKind::TooMany,
                ));
                continue;
            }
            self.reissue(id, now, &mut out);
        }
        out
    }

    /// A new request (new req_id) for reservation `id` in the current configuration.
    fn reissue(&mut self, id: u64, now: Instant, out: &mut Vec<Action>) {
        let Some(cfg) = &self.config else {
            out.push(Action::FetchConfig);
            return;
        };
        let Some(home) = cfg.home(self.broker_id).map(|m| m.addr) else {
            out.push(Action::FetchConfig);
            return;
        };
        let epoch = cfg.epoch;
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if op.req_ids.len() >= self.opts.max_requests_per_reservation {
            let n = op.req_ids.len();
            self.ops.remove(&id);
            out.push(Action::Done(
                id,
                Err(format!("gave up after {n} requests")),
                DoneKind::Unavailable,
            ));
            return;
        }
        if !op.req_ids.is_empty() {
            self.stats.reissues += 1;
        }
        let req_id = self.next_req;
        self.next_req += 1;
        op.req_ids.push(req_id);
        op.epoch = epoch;
        op.home = home;
        op.sends = 0;
        Self::send(self.client, op, now, out);
    }

    fn send(client: u64, op: &mut Op, now: Instant, out: &mut Vec<Action>) {
        let Some(&req_id) = op.req_ids.last() else {
            return;
        };
        op.sends += 1;
        op.last_send = now;
        out.push(Action::Send(
            op.home,
            Message::Request(Request {
                epoch: op.epoch,
                count: op.count,
                client,
                req_id,
            }),
        ));
    }

    /// Deadlines and retransmissions.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let ids: Vec<u64> = self.ops.keys().copied().collect();
        let mut fetch = false;
        for id in ids {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            if now >= op.deadline {
                self.ops.remove(&id);
                out.push(Action::Done(
                    id,
                    Err("no numbers from the ring before the deadline".into()),
                    DoneKind::Unavailable,
                ));
                continue;
            }
            if now < op.last_send + self.opts.rto {
                continue;
            }
            if op.req_ids.is_empty() {
                // Still waiting for a configuration.
                op.last_send = now;
                fetch = true;
                continue;
            }
            self.stats.retransmits += 1;
            Self::send(self.client, op, now, &mut out);
            if op.sends % self.opts.refetch_after_sends.max(1) == 0 {
                fetch = true;
            }
        }
        if fetch {
            out.push(Action::FetchConfig);
        }
        out
    }

    /// One packet from the network. Anything not meant for this client is ignored.
    pub fn on_packet(&mut self, msg: &Message, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match msg {
            Message::Ticket(t) => self.on_ticket(t),
            Message::Grant(g) => self.on_grant(g, &mut out),
            Message::Announce(a) => self.on_announce(a, &mut out),
            Message::Reject(r) => self.on_reject(r, now, &mut out),
            _ => {}
        }
        if out.iter().any(|a| matches!(a, Action::Done(..))) {
            self.last_active = Some(now);
        }
        out
    }

    fn find_by_req(&self, req_id: u64) -> Option<u64> {
        self.ops
            .iter()
            .find(|(_, op)| op.req_ids.contains(&req_id))
            .map(|(id, _)| *id)
    }

    fn on_ticket(&mut self, t: &Ticket) {
        if t.client != self.client {
            return;
        }
        let Some(id) = self.find_by_req(t.req_id) else {
            return;
        };
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if t.count != op.count {
            tracing::debug!(req_id = t.req_id, "ticket with a different count ignored");
            return;
        }
        let held = Held {
            req_id: t.req_id,
            epoch: t.epoch,
            switch_id: t.switch_id,
            visit: t.visit,
            local_off: t.local_off,
        };
        // Bounded: one entry per distinct ticket, at most one per request plus the (rare)
        // fresh ticket after a dedup-row collision; cap it anyway against a hostile peer.
        if !op.tickets.contains(&held)
            && op.tickets.len() < 4 * self.opts.max_requests_per_reservation
        {
            op.tickets.push(held);
        }
    }

    fn on_grant(&mut self, g: &Grant, out: &mut Vec<Action>) {
        if g.client != self.client {
            return;
        }
        let Some(id) = self.find_by_req(g.req_id) else {
            return;
        };
        if self.ops.get(&id).is_some_and(|op| op.count == g.count) {
            self.complete(id, g.gsn, |h| h.req_id == g.req_id, out);
        }
    }

    /// One announcement covers every ticket of that visit, so it can resolve many
    /// reservations of this client at once (all requests batched into one visit).
    fn on_announce(&mut self, a: &Announce, out: &mut Vec<Action>) {
        let found: Vec<(u64, Held, u32)> = self
            .ops
            .iter()
            .filter_map(|(id, op)| {
                op.tickets
                    .iter()
                    .find(|t| {
                        t.epoch == a.epoch && t.switch_id == a.switch_id && t.visit == a.visit
                    })
                    .map(|t| (*id, *t, op.count))
            })
            .collect();
        for (id, held, count) in found {
            let off = held.local_off;
            // Peer input: the ticket must lie inside the announced range.
            let inside = off >= a.local_lo
                && off
                    .checked_add(u64::from(count))
                    .is_some_and(|end| end <= a.local_hi);
            match a
                .base
                .checked_add(off.wrapping_sub(a.local_lo))
                .filter(|_| inside)
            {
                Some(gsn) => self.complete(id, gsn, |h| *h == held, out),
                None => tracing::warn!(?a, "announcement does not cover our ticket; ignored"),
            }
        }
    }

    fn on_reject(&mut self, r: &Reject, now: Instant, out: &mut Vec<Action>) {
        if r.client != self.client {
            return;
        }
        // Only the current request's rejection matters: an older one was already replaced.
        let Some(id) = self
            .ops
            .iter()
            .find(|(_, op)| op.req_ids.last() == Some(&r.req_id))
            .map(|(id, _)| *id)
        else {
            return;
        };
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        let (count, op_epoch) = (op.count, op.epoch);
        match RejectReason::from_u8(r.reason) {
            Some(RejectReason::Expired) => {
                // The ticket's announcement is gone: those numbers are holes.
                self.stats.holes += u64::from(count);
                self.reissue(id, now, out);
            }
            Some(RejectReason::NotInstalled | RejectReason::WrongEpoch | RejectReason::Sealed) => {
                if self.config.as_ref().is_some_and(|c| c.epoch > op_epoch) {
                    self.reissue(id, now, out);
                } else {
                    out.push(Action::FetchConfig);
                }
            }
            // The visit's batch is full: the retransmission timer sends the same request
            // again after the token has passed.
            Some(RejectReason::Busy) => self.stats.busy += 1,
            Some(RejectReason::BadRequest) | None => {
                self.ops.remove(&id);
                out.push(Action::Done(
                    id,
                    Err(format!(
                        "switch {} refused the request (reason {})",
                        r.switch_id, r.reason
                    )),
                    DoneKind::Refused,
                ));
            }
        }
    }

    /// Reservation `id` got `gsn`; `resolved` tells which held tickets that answer covers.
    fn complete(
        &mut self,
        id: u64,
        gsn: u64,
        resolved: impl Fn(&Held) -> bool,
        out: &mut Vec<Action>,
    ) {
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        // Every other ticket of this reservation will never be used.
        let extra = op.tickets.iter().filter(|h| !resolved(h)).count() as u64;
        self.stats.holes += extra * u64::from(op.count);
        let end = gsn.checked_add(u64::from(op.count));
        if gsn < self.floor || end.is_none_or(|e| e > i64::MAX as u64) {
            // The ring's epochs must start above every offset in the logs; a ring that
            // does not is misconfigured, and using its numbers would reorder the logs.
            self.stats.holes += u64::from(op.count);
            out.push(Action::Done(
                id,
                Err(format!(
                    "ring issued {gsn}, below the stored offsets' floor {} or out of range",
                    self.floor
                )),
                DoneKind::Unavailable,
            ));
            return;
        }
        out.push(Action::Done(id, Ok(gsn), DoneKind::Ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RingMember;

    fn addr(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), port)
    }

    fn ring(epoch: u32, base: u64) -> RingConfig {
        RingConfig {
            epoch,
            base,
            limit: base + (1 << 30),
            max_visit: 100,
            members: (0..2)
                .map(|i| RingMember {
                    switch_id: i,
                    addr: addr(7000 + i),
                    boot: 1,
                })
                .collect(),
            head: 0,
        }
    }

    const CLIENT: u64 = 0xC0FFEE;

    fn core() -> Core {
        // broker 1 → home is member 1 (port 7001).
        let mut c = Core::new(CLIENT, 1, 0, ClientOptions::default());
        assert!(c.on_config(ring(1, 1000), Instant::now()).is_empty());
        c
    }

    fn sent(actions: &[Action]) -> Vec<(SocketAddrV4, Request)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(to, Message::Request(r)) => Some((*to, *r)),
                _ => None,
            })
            .collect()
    }

    fn done(actions: &[Action]) -> Vec<(u64, Result<u64, String>, DoneKind)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Done(id, r, k) => Some((*id, r.clone(), *k)),
                _ => None,
            })
            .collect()
    }

    fn ticket(r: &Request, switch_id: u16, visit: u64, local_off: u64) -> Message {
        Message::Ticket(Ticket {
            epoch: r.epoch,
            switch_id,
            count: r.count,
            client: r.client,
            req_id: r.req_id,
            visit,
            local_off,
        })
    }

    fn reject(r: &Request, reason: RejectReason, switch_epoch: u32) -> Message {
        Message::Reject(Reject {
            epoch: switch_epoch,
            switch_id: 1,
            reason: reason as u8,
            req_epoch: r.epoch,
            client: r.client,
            req_id: r.req_id,
        })
    }

    #[test]
    fn ticket_then_announce_resolves() {
        let mut c = core();
        let now = Instant::now();
        let (id, out) = c.start(5, now);
        let reqs = sent(&out);
        assert_eq!(reqs.len(), 1);
        let (to, r) = reqs[0];
        assert_eq!(to, addr(7001));
        assert_eq!((r.epoch, r.count, r.client), (1, 5, CLIENT));
        assert!(c.on_packet(&ticket(&r, 1, 3, 40), now).is_empty());
        // An announcement of another switch or visit resolves nothing.
        let other = Announce {
            epoch: 1,
            switch_id: 0,
            visit: 3,
            local_lo: 30,
            local_hi: 50,
            base: 5000,
        };
        assert!(c.on_packet(&Message::Announce(other), now).is_empty());
        let ann = Announce {
            switch_id: 1,
            ..other
        };
        let out = c.on_packet(&Message::Announce(ann), now);
        assert_eq!(done(&out), vec![(id, Ok(5010), DoneKind::Ok)]);
        assert_eq!(c.pending(), 0);
        // A duplicate announcement changes nothing.
        assert!(c.on_packet(&Message::Announce(ann), now).is_empty());
    }

    #[test]
    fn one_announcement_resolves_every_ticket_of_its_visit() {
        let mut c = core();
        let now = Instant::now();
        let (a, out_a) = c.start(2, now);
        let (b, out_b) = c.start(3, now);
        let (_, ra) = sent(&out_a)[0];
        let (_, rb) = sent(&out_b)[0];
        c.on_packet(&ticket(&ra, 1, 1, 0), now);
        c.on_packet(&ticket(&rb, 1, 1, 2), now);
        let ann = Announce {
            epoch: 1,
            switch_id: 1,
            visit: 1,
            local_lo: 0,
            local_hi: 5,
            base: 100,
        };
        let got = done(&c.on_packet(&Message::Announce(ann), now));
        assert_eq!(
            got,
            vec![(a, Ok(100), DoneKind::Ok), (b, Ok(102), DoneKind::Ok)]
        );
    }

    #[test]
    fn timeout_retransmits_the_same_request_and_grant_resolves() {
        let mut c = core();
        let t0 = Instant::now();
        let (id, out) = c.start(7, t0);
        let (_, r) = sent(&out)[0];
        assert!(c.on_tick(t0 + Duration::from_millis(10)).is_empty());
        let out = c.on_tick(t0 + Duration::from_millis(60));
        assert_eq!(sent(&out), vec![(addr(7001), r)], "same request again");
        let grant = Grant {
            epoch: 1,
            switch_id: 1,
            count: 7,
            client: CLIENT,
            req_id: r.req_id,
            gsn: 777,
        };
        // Someone else's grant is not ours.
        let foreign = Grant { client: 1, ..grant };
        assert!(c.on_packet(&Message::Grant(foreign), t0).is_empty());
        let out = c.on_packet(&Message::Grant(grant), t0);
        assert_eq!(done(&out), vec![(id, Ok(777), DoneKind::Ok)]);
    }

    #[test]
    fn expired_becomes_a_hole_and_a_new_request() {
        let mut c = core();
        let now = Instant::now();
        let (_, out) = c.start(3, now);
        let (_, r) = sent(&out)[0];
        let out = c.on_packet(&reject(&r, RejectReason::Expired, 1), now);
        let again = sent(&out);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].1.req_id, r.req_id);
        assert_eq!(again[0].1.count, 3);
        assert_eq!(c.stats().holes, 3);
    }

    #[test]
    fn sealed_fetches_config_then_moves_to_the_new_epoch() {
        let mut c = core();
        let now = Instant::now();
        let (id, out) = c.start(4, now);
        let (_, r) = sent(&out)[0];
        c.on_packet(&ticket(&r, 1, 9, 0), now);
        let out = c.on_packet(&reject(&r, RejectReason::Sealed, 1), now);
        assert_eq!(out, vec![Action::FetchConfig]);
        // An older configuration is ignored.
        assert!(c.on_config(ring(0, 0), now).is_empty());
        let out = c.on_config(ring(2, 1 << 20), now);
        let reqs = sent(&out);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].1.epoch, 2);
        assert_ne!(reqs[0].1.req_id, r.req_id);
        // A late rejection of the old request is ignored.
        assert!(c
            .on_packet(&reject(&r, RejectReason::Sealed, 2), now)
            .is_empty());
        let grant = Grant {
            epoch: 2,
            switch_id: 1,
            count: 4,
            client: CLIENT,
            req_id: reqs[0].1.req_id,
            gsn: 1 << 20,
        };
        let out = c.on_packet(&Message::Grant(grant), now);
        assert_eq!(done(&out), vec![(id, Ok(1 << 20), DoneKind::Ok)]);
        // The old epoch's ticket will never be used.
        assert_eq!(c.stats().holes, 4);
    }

    #[test]
    fn wrong_epoch_with_newer_known_config_reissues_at_once() {
        let mut c = core();
        let now = Instant::now();
        let (_, out) = c.start(1, now);
        let (_, r) = sent(&out)[0];
        c.config = Some(ring(3, 9000));
        let out = c.on_packet(&reject(&r, RejectReason::WrongEpoch, 3), now);
        assert_eq!(sent(&out)[0].1.epoch, 3);
    }

    #[test]
    fn limits_are_enforced() {
        let mut c = core();
        let now = Instant::now();
        let (id, out) = c.start(101, now);
        assert_eq!(done(&out)[0].0, id);
        assert_eq!(done(&out)[0].2, DoneKind::TooMany);
        let (_, out) = c.start(0, now);
        assert_eq!(done(&out)[0].2, DoneKind::TooMany);
        // Busy: nothing now, retransmission later.
        let (id, out) = c.start(2, now);
        let (_, r) = sent(&out)[0];
        assert!(c
            .on_packet(&reject(&r, RejectReason::Busy, 1), now)
            .is_empty());
        // Deadline.
        let out = c.on_tick(now + ClientOptions::default().deadline);
        assert_eq!(
            done(&out),
            vec![(
                id,
                Err("no numbers from the ring before the deadline".into()),
                DoneKind::Unavailable
            )]
        );
        // Announcement that does not cover the ticket is ignored (no panic on underflow).
        let (_, out) = c.start(5, now);
        let (_, r) = sent(&out)[0];
        c.on_packet(&ticket(&r, 1, 1, 3), now);
        let bad = Announce {
            epoch: 1,
            switch_id: 1,
            visit: 1,
            local_lo: 4,
            local_hi: 6,
            base: u64::MAX - 4,
        };
        assert!(c.on_packet(&Message::Announce(bad), now).is_empty());
        let full = Announce {
            local_lo: 0,
            local_hi: 8,
            ..bad
        };
        assert!(
            done(&c.on_packet(&Message::Announce(full), now))[0]
                .1
                .is_err(),
            "overflow"
        );
        // A malformed-request rejection is a bug, reported as such.
        let (id, out) = c.start(1, now);
        let (_, r) = sent(&out)[0];
        let out = c.on_packet(&reject(&r, RejectReason::BadRequest, 1), now);
        assert_eq!(done(&out)[0].0, id);
        assert_eq!(done(&out)[0].2, DoneKind::Refused);
    }

    #[test]
    fn silence_triggers_a_config_fetch_and_a_new_home() {
        let mut c = core();
        let t0 = Instant::now();
        let (_, out) = c.start(1, t0);
        let (_, r) = sent(&out)[0];
        let rto = ClientOptions::default().rto;
        let mut fetches = 0;
        for i in 1..=4u32 {
            let out = c.on_tick(t0 + rto * i);
            assert_eq!(sent(&out), vec![(addr(7001), r)], "same request, same home");
            fetches += out.iter().filter(|a| **a == Action::FetchConfig).count();
        }
        assert_eq!(
            fetches, 1,
            "one fetch after refetch_after_sends silent sends"
        );
        // The ring was reconfigured without our home switch: the request moves.
        let mut next = ring(2, 50_000);
        next.members.truncate(1);
        let out = c.on_config(next, t0);
        let reqs = sent(&out);
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].0, reqs[0].1.epoch), (addr(7000), 2));
        assert_eq!(c.stats().retransmits, 4);
        assert_eq!(c.stats().reissues, 1);
    }

    #[test]
    fn an_idle_client_wakes_the_head_along_with_its_request() {
        let mut c = core();
        let t0 = Instant::now();
        let probes = |out: &[Action]| {
            out.iter()
                .filter(|a| matches!(a, Action::Send(to, Message::Probe(_)) if *to == addr(7000)))
                .count()
        };
        // First request after silence: request to the home switch, probe to the head.
        let (_, out) = c.start(1, t0);
        assert_eq!((sent(&out).len(), probes(&out)), (1, 1));
        let (_, r) = sent(&out)[0];
        // Busy (one in flight): no probe.
        let (_, out) = c.start(1, t0);
        assert_eq!(probes(&out), 0);
        let grant = Grant {
            epoch: 1,
            switch_id: 1,
            count: 1,
            client: CLIENT,
            req_id: r.req_id,
            gsn: 5,
        };
        c.on_packet(&Message::Grant(grant), t0);
        // Still one in flight, then none: a request right after activity sends no probe,
        // one after the idle time does.
        let (_, out) = c.start(1, t0 + Duration::from_micros(100));
        assert_eq!(probes(&out), 0);
        let mut c = core();
        c.last_active = Some(t0);
        let (_, out) = c.start(1, t0 + Duration::from_micros(500));
        assert_eq!(probes(&out), 0);
        let mut c = core();
        c.last_active = Some(t0);
        let (_, out) = c.start(1, t0 + Duration::from_millis(2));
        assert_eq!(probes(&out), 1);
        assert_eq!(c.stats().nudges, 1);
        // A client whose home is the head never probes.
        let mut c = Core::new(CLIENT, 0, 0, ClientOptions::default());
        c.on_config(ring(1, 0), t0);
        let (_, out) = c.start(1, t0);
        assert_eq!(probes(&out), 0);
    }

    #[test]
    fn without_config_waits_and_fetches() {
        let mut c = Core::new(CLIENT, 0, 0, ClientOptions::default());
        let now = Instant::now();
        let (_, out) = c.start(3, now);
        assert_eq!(out, vec![Action::FetchConfig]);
        let out = c.on_config(ring(1, 0), now);
        assert_eq!(sent(&out)[0].0, addr(7000));
    }

    #[test]
    fn a_ring_whose_w_is_below_the_minimum_is_refused_until_one_is_not() {
        let opts = ClientOptions {
            min_max_visit: 1_000,
            ..ClientOptions::default()
        };
        let mut c = Core::new(CLIENT, 0, 0, opts);
        let now = Instant::now();
        // A reservation waiting for the first configuration fails with the reason.
        let (id, _) = c.start(3, now);
        let out = c.on_config(ring(1, 0), now);
        let d = done(&out);
        assert_eq!((d[0].0, d[0].2), (id, DoneKind::Unavailable));
        let why = d[0].1.clone().expect_err("refused");
        assert!(
            why.contains("W") && why.contains("--max-visit >= 1000"),
            "{why}"
        );
        assert!(c.config().is_none() && c.refused().is_some());
        assert_eq!(c.stats().refused_configs, 1);
        // Later reservations fail at once, and ask for a newer configuration.
        let (id, out) = c.start(3, now);
        assert_eq!(done(&out)[0].0, id);
        assert!(out.contains(&Action::FetchConfig));
        // A ring with a large enough W is adopted.
        let mut good = ring(2, 0);
        good.max_visit = 1_000;
        assert!(c.on_config(good, now).is_empty());
        assert!(c.refused().is_none());
        let (_, out) = c.start(1_000, now);
        assert_eq!(sent(&out).len(), 1);
    }
}
