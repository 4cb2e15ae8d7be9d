//! The switch's match-action logic as a pure state machine: one packet in, at most a fixed
//! number of packets out. It mirrors `p4/sequencer.p4` control by control, and keeps the
//! limits of a switch pipeline so that whatever works here works there:
//!
//! * state is fixed-width registers and fixed-size register arrays, allocated in [`new`];
//! * one packet at a time, each register array read/written at one index per packet;
//! * no blocking, no timers, no loops over input-sized data (the only loop is the
//!   multicast replication of an announcement, bounded by [`CLIENT_SLOTS`], which a
//!   hardware switch does in its packet replication engine);
//! * a crash loses everything: [`new`] is an empty, uninstalled switch, and the boot id it
//!   is given makes stale `Install`s addressed to an earlier incarnation harmless.
//!
//! See `PROTOCOL.md` for why each rule below is there.
//!
//! [`new`]: Pipeline::new

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::{
    install_flags, status_flags, Alarm, AlarmKind, Announce, Grant, Inject, Install, Message,
    Reject, RejectReason, Request, Seal, Status, Ticket, Token,
};

/// Entries of the idempotence table (request dedup), indexed by `(client ^ req_id) % DEDUP_SLOTS`.
pub const DEDUP_SLOTS: usize = 4096;
/// Announcements kept for answering retransmitted requests, indexed by `visit % ANN_SLOTS`.
pub const ANN_SLOTS: usize = 1024;
/// Client address slots (multicast replicas), indexed by `client % CLIENT_SLOTS`.
pub const CLIENT_SLOTS: usize = 64;
/// Most packets one input can produce: an announcement per client slot, the token, an alarm.
pub const MAX_OUTPUTS: usize = CLIENT_SLOTS + 3;

const NO_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

/// What the switch is configured with before it sees a packet (ports, addresses): a
/// hardware switch gets this from its startup config, not from registers, so it survives a
/// restart. Nothing here is protocol state.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub switch_id: u16,
    /// Identifies this incarnation. Must differ across restarts (the softswitch draws it
    /// at random); 0 is reserved for "unknown".
    pub boot: u64,
    /// Where the boot `Status` and alarms go before an `Install` names the controller.
    pub controller: Option<SocketAddrV4>,
    /// Successor used when an `Install` leaves `succ_port` at 0.
    pub default_successor: Option<SocketAddrV4>,
}

/// One dedup register row: the ticket handed out for `(client, req_id)` in `epoch`.
#[derive(Debug, Clone, Copy, Default)]
struct DedupEntry {
    epoch: u32,
    count: u32,
    client: u64,
    req_id: u64,
    visit: u64,
    local_off: u64,
}

/// One announcement register row.
#[derive(Debug, Clone, Copy, Default)]
struct AnnEntry {
    epoch: u32,
    visit: u64,
    local_lo: u64,
    base: u64,
}

/// Per-switch counters (P4 `counter` externs), exported by the softswitch as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub token_visits: u64,
    pub rotations: u64,
    pub nonempty_visits: u64,
    pub numbers: u64,
    pub tickets: u64,
    pub grants: u64,
    pub rejects: u64,
    pub tokens_dropped: u64,
}

/// The switch: registers plus the logic that reads and writes them.
pub struct Pipeline {
    cfg: Config,
    // Epoch registers, written by Install.
    epoch: u32,
    seal_floor: u32,
    head: bool,
    base: u64,
    limit: u64,
    max_visit: u32,
    report_shift: u8,
    successor: SocketAddrV4,
    controller: SocketAddrV4,
    // Sequencing registers.
    local_next: u64,
    local_prev: u64,
    visits: u64,
    last_seq: u64,
    fwd_base: u64,
    pending_clients: u64,
    // Register arrays.
    dedup: Box<[DedupEntry]>,
    ann: Box<[AnnEntry]>,
    client_addr: Box<[SocketAddrV4]>,
    stats: Stats,
}

/// Packets a pipeline pass emits: (destination, message).
pub type Outputs = Vec<(SocketAddrV4, Message)>;

impl Pipeline {
    /// A switch just powered on: every register zero, nothing installed.
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            epoch: 0,
            seal_floor: 0,
            head: false,
            base: 0,
            limit: 0,
            max_visit: 0,
            report_shift: 0,
            successor: NO_ADDR,
            controller: cfg.controller.unwrap_or(NO_ADDR),
            local_next: 0,
            local_prev: 0,
            visits: 0,
            last_seq: 0,
            fwd_base: 0,
            pending_clients: 0,
            dedup: vec![DedupEntry::default(); DEDUP_SLOTS].into_boxed_slice(),
            ann: vec![AnnEntry::default(); ANN_SLOTS].into_boxed_slice(),
            client_addr: vec![NO_ADDR; CLIENT_SLOTS].into_boxed_slice(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// An epoch is installed and not sealed: the only state in which numbers are issued.
    pub fn is_live(&self) -> bool {
        self.epoch != 0 && !self.sealed()
    }

    fn sealed(&self) -> bool {
        self.epoch <= self.seal_floor
    }

    /// What the switch says once at boot (its CPU agent, not the data plane): "I exist,
    /// with this boot id, and nothing installed".
    pub fn boot_messages(&self) -> Outputs {
        match self.cfg.controller {
            Some(ctrl) => vec![(ctrl, Message::Status(self.status()))],
            None => Vec::new(),
        }
    }

    /// The register snapshot reported to the controller.
    pub fn status(&self) -> Status {
        let mut flags = 0;
        if self.epoch != 0 {
            flags |= status_flags::INSTALLED;
        }
        if self.epoch != 0 && self.sealed() {
            flags |= status_flags::SEALED;
        }
        if self.head {
            flags |= status_flags::HEAD;
        }
        Status {
            switch_id: self.cfg.switch_id,
            flags,
            epoch: self.epoch,
            seal_floor: self.seal_floor,
            boot: self.cfg.boot,
            last_seq: self.last_seq,
            fwd_base: self.fwd_base,
            local_next: self.local_next,
            local_prev: self.local_prev,
            visits: self.visits,
        }
    }

    /// One packet through the pipeline. Messages a switch does not consume (tickets,
    /// announcements, ... addressed to someone else) are dropped.
    pub fn process(&mut self, src: SocketAddrV4, msg: &Message) -> Outputs {
        let mut out = Vec::new();
        match msg {
            Message::Request(r) => out.push((src, self.on_request(src, r))),
            Message::Token(t) => self.on_token(*t, &mut out),
            Message::Seal(s) => out.push((src, self.on_seal(src, s))),
            Message::Install(i) => out.push((src, self.on_install(src, i))),
            Message::Inject(j) => self.on_inject(src, j, &mut out),
            Message::Probe(_) => out.push((src, Message::Status(self.status()))),
            Message::Ticket(_)
            | Message::Grant(_)
            | Message::Reject(_)
            | Message::Announce(_)
            | Message::Status(_)
            | Message::Alarm(_) => {}
        }
        debug_assert!(out.len() <= MAX_OUTPUTS);
        out
    }

    fn reject(&mut self, r: &Request, reason: RejectReason) -> Message {
        self.stats.rejects += 1;
        Message::Reject(Reject {
            epoch: self.epoch,
            switch_id: self.cfg.switch_id,
            reason: reason as u8,
            req_epoch: r.epoch,
            client: r.client,
            req_id: r.req_id,
        })
    }

    fn on_request(&mut self, src: SocketAddrV4, r: &Request) -> Message {
        if self.epoch == 0 {
            return self.reject(r, RejectReason::NotInstalled);
        }
        if r.epoch != self.epoch {
            return self.reject(r, RejectReason::WrongEpoch);
        }
        if self.sealed() {
            return self.reject(r, RejectReason::Sealed);
        }
        let slot = client_slot(r.client);
        self.client_addr[slot] = src;
        let idx = dedup_index(r.client, r.req_id);
        let entry = self.dedup[idx];
        if entry.epoch == self.epoch && entry.client == r.client && entry.req_id == r.req_id {
            return self.on_retransmission(r, entry);
        }
        self.new_ticket(r, idx)
    }

    /// A request we have seen: same ticket again while its visit is pending, the resolved
    /// numbers once announced, or Expired when the announcement has been overwritten.
    fn on_retransmission(&mut self, r: &Request, entry: DedupEntry) -> Message {
        if entry.count != r.count {
            return self.reject(r, RejectReason::BadRequest);
        }
        if entry.visit > self.visits {
            self.pending_clients |= 1 << client_slot(r.client);
            return Message::Ticket(self.ticket(entry));
        }
        let ann = self.ann[ann_index(entry.visit)];
        if ann.epoch != self.epoch || ann.visit != entry.visit {
            return self.reject(r, RejectReason::Expired);
        }
        self.stats.grants += 1;
        Message::Grant(Grant {
            epoch: self.epoch,
            switch_id: self.cfg.switch_id,
            count: entry.count,
            client: entry.client,
            req_id: entry.req_id,
            gsn: ann.base + (entry.local_off - ann.local_lo),
        })
    }

    /// Fetch-and-add on the local counter. Admission keeps every visit at or below W
    /// numbers, which is what lets the controller bound what a lost switch issued.
    fn new_ticket(&mut self, r: &Request, idx: usize) -> Message {
        if r.count == 0 || r.count > self.max_visit {
            return self.reject(r, RejectReason::BadRequest);
        }
        let pending = self.local_next - self.local_prev;
        if pending + u64::from(r.count) > u64::from(self.max_visit) {
            return self.reject(r, RejectReason::Busy);
        }
        let entry = DedupEntry {
            epoch: self.epoch,
            count: r.count,
            client: r.client,
            req_id: r.req_id,
            visit: self.visits + 1,
            local_off: self.local_next,
        };
        self.local_next += u64::from(r.count);
        self.dedup[idx] = entry;
        self.pending_clients |= 1 << client_slot(r.client);
        self.stats.tickets += 1;
        Message::Ticket(self.ticket(entry))
    }

    fn ticket(&self, e: DedupEntry) -> Ticket {
        Ticket {
            epoch: e.epoch,
            switch_id: self.cfg.switch_id,
            count: e.count,
            client: e.client,
            req_id: e.req_id,
            visit: e.visit,
            local_off: e.local_off,
        }
    }

    fn on_token(&mut self, t: Token, out: &mut Outputs) {
        if t.epoch != self.epoch || self.epoch == 0 {
            // Older epochs' tokens are expected to die; a newer one means this switch
            // missed (or lost, by restarting) the install, and the ring is now broken.
            if t.epoch > self.epoch {
                self.stats.tokens_dropped += 1;
                self.alarm(AlarmKind::TokenDropped, t.epoch, t.seq, t.next_base, out);
            }
            return;
        }
        // Sealed: the controller is replacing this epoch. Seq not above the last one:
        // a duplicated or delayed copy of a token already passed on.
        if self.sealed() || t.seq <= self.last_seq {
            return;
        }
        self.visit(t, out);
    }

    /// The token's work at this switch: claim `local_next - local_prev` numbers from
    /// `next_base` (O(1) however many), announce them, forward the token.
    fn visit(&mut self, mut t: Token, out: &mut Outputs) {
        let batch = self.local_next - self.local_prev;
        let Some(next_base) = t
            .next_base
            .checked_add(batch)
            .filter(|end| *end <= self.limit)
        else {
            // The epoch is used up: stop issuing here and let the controller move on.
            self.seal_floor = self.epoch;
            self.alarm(AlarmKind::Exhausted, t.epoch, t.seq, t.next_base, out);
            return;
        };
        if batch > 0 {
            self.announce(t.next_base, out);
        }
        self.stats.token_visits += 1;
        if self.head {
            self.stats.rotations += 1;
        }
        self.last_seq = t.seq;
        self.fwd_base = next_base;
        // The first visit always reports, so the controller learns the injection worked.
        if t.seq == 1 || t.seq & low_mask(self.report_shift) == 0 {
            self.alarm(AlarmKind::Progress, t.epoch, t.seq, next_base, out);
        }
        t.next_base = next_base;
        t.seq = t.seq.saturating_add(1);
        out.push((self.successor, Message::Token(t)));
    }

    fn announce(&mut self, base: u64, out: &mut Outputs) {
        self.visits += 1;
        let ann = AnnEntry {
            epoch: self.epoch,
            visit: self.visits,
            local_lo: self.local_prev,
            base,
        };
        self.ann[ann_index(self.visits)] = ann;
        let msg = Message::Announce(Announce {
            epoch: self.epoch,
            switch_id: self.cfg.switch_id,
            visit: self.visits,
            local_lo: self.local_prev,
            local_hi: self.local_next,
            base,
        });
        // Multicast replication: one copy per client slot that holds a ticket of this visit.
        for (slot, addr) in self.client_addr.iter().enumerate() {
            if self.pending_clients & (1 << slot) != 0 && addr.port() != 0 {
                out.push((*addr, msg));
            }
        }
        self.stats.nonempty_visits += 1;
        self.stats.numbers += self.local_next - self.local_prev;
        self.local_prev = self.local_next;
        self.pending_clients = 0;
    }

    fn alarm(&self, kind: AlarmKind, epoch: u32, seq: u64, base: u64, out: &mut Outputs) {
        if self.controller.port() == 0 {
            return;
        }
        let alarm = Alarm {
            switch_id: self.cfg.switch_id,
            kind: kind as u8,
            epoch,
            seq,
            base,
        };
        out.push((self.controller, Message::Alarm(alarm)));
    }

    /// Seals `s.epoch` and every older epoch. Idempotent; survives reordering because the
    /// floor only rises.
    fn on_seal(&mut self, src: SocketAddrV4, s: &Seal) -> Message {
        self.seal_floor = self.seal_floor.max(s.epoch);
        self.controller = src;
        Message::Status(self.status())
    }

    /// Installs a new epoch if it is addressed to this incarnation and above every sealed
    /// epoch; a repeat of the installed epoch changes nothing. Always answers with the
    /// registers so the controller sees what happened (and the boot id, if it was wrong).
    fn on_install(&mut self, src: SocketAddrV4, i: &Install) -> Message {
        let successor = if i.succ_port != 0 {
            Some(i.successor())
        } else {
            self.cfg.default_successor
        };
        let acceptable = i.boot == self.cfg.boot
            && i.switch_id == self.cfg.switch_id
            && i.epoch > self.seal_floor
            && i.epoch > self.epoch
            && i.max_visit > 0
            && i.limit > i.base;
        if let (true, Some(successor)) = (acceptable, successor) {
            self.install(src, i, successor);
        }
        Message::Status(self.status())
    }

    fn install(&mut self, src: SocketAddrV4, i: &Install, successor: SocketAddrV4) {
        self.epoch = i.epoch;
        self.head = i.flags & install_flags::HEAD != 0;
        self.base = i.base;
        self.limit = i.limit;
        self.max_visit = i.max_visit;
        self.report_shift = i.report_shift.min(63);
        self.successor = successor;
        self.controller = src;
        // Epoch-scoped registers restart; the dedup and announcement arrays need no
        // clearing because every row carries its epoch.
        self.local_next = 0;
        self.local_prev = 0;
        self.visits = 0;
        self.last_seq = 0;
        self.fwd_base = 0;
        self.pending_clients = 0;
    }

    /// Creates the epoch's first token, once: only the head, only before any token was
    /// accepted in this epoch, so duplicated or repeated injections are no-ops (answered
    /// with a Status). A real injection is acknowledged by the first visit's Progress.
    fn on_inject(&mut self, src: SocketAddrV4, j: &Inject, out: &mut Outputs) {
        if self.is_live() && self.head && j.epoch == self.epoch && self.last_seq == 0 {
            let token = Token {
                epoch: self.epoch,
                seq: 1,
                next_base: self.base,
            };
            self.visit(token, out);
        } else {
            out.push((src, Message::Status(self.status())));
        }
    }
}

fn client_slot(client: u64) -> usize {
    (client % CLIENT_SLOTS as u64) as usize
}

fn dedup_index(client: u64, req_id: u64) -> usize {
    ((client ^ req_id) % DEDUP_SLOTS as u64) as usize
}

fn ann_index(visit: u64) -> usize {
    (visit % ANN_SLOTS as u64) as usize
}

fn low_mask(bits: u8) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Probe, Status};

    const CTRL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 6000);
    const NEXT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7002);
    const BROKER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9000);

    fn switch(boot: u64) -> Pipeline {
        Pipeline::new(Config {
            switch_id: 1,
            boot,
            controller: Some(CTRL),
            default_successor: None,
        })
    }

    fn install_msg(epoch: u32, boot: u64, head: bool) -> Message {
        let mut i = Install {
            epoch,
            switch_id: 1,
            flags: if head { install_flags::HEAD } else { 0 },
            report_shift: 0,
            max_visit: 100,
            boot,
            base: 1000,
            limit: 1_000_000,
            ..Install::default()
        };
        i.set_successor(NEXT);
        Message::Install(i)
    }

    fn status_of(out: &Outputs) -> Status {
        out.iter()
            .find_map(|(_, m)| match m {
                Message::Status(s) => Some(*s),
                _ => None,
            })
            .expect("a status")
    }

    fn request(epoch: u32, req_id: u64, count: u32) -> Message {
        Message::Request(Request {
            epoch,
            count,
            client: 77,
            req_id,
        })
    }

    fn only(out: Outputs) -> Message {
        assert_eq!(out.len(), 1, "{out:?}");
        out[0].1
    }

    #[test]
    fn fresh_switch_issues_nothing() {
        let mut s = switch(5);
        assert!(
            matches!(only(s.process(BROKER, &request(1, 1, 3))), Message::Reject(r) if r.reason == RejectReason::NotInstalled as u8)
        );
        let out = s.process(
            NEXT,
            &Message::Token(Token {
                epoch: 1,
                seq: 9,
                next_base: 0,
            }),
        );
        assert!(matches!(only(out), Message::Alarm(a) if a.kind == AlarmKind::TokenDropped as u8));
        let st = status_of(&s.process(CTRL, &Message::Probe(Probe {})));
        assert_eq!((st.epoch, st.flags, st.boot), (0, 0, 5));
    }

    #[test]
    fn install_for_another_boot_or_a_sealed_epoch_is_refused() {
        let mut s = switch(5);
        assert_eq!(
            status_of(&s.process(CTRL, &install_msg(3, 4, true))).epoch,
            0
        );
        s.process(CTRL, &Message::Seal(Seal { epoch: 3 }));
        assert_eq!(
            status_of(&s.process(CTRL, &install_msg(3, 5, true))).epoch,
            0
        );
        assert_eq!(
            status_of(&s.process(CTRL, &install_msg(4, 5, true))).epoch,
            4
        );
    }

    #[test]
    fn tickets_become_gsns_at_the_token_visit() {
        let mut s = switch(5);
        s.process(CTRL, &install_msg(1, 5, true));
        let t1 = only(s.process(BROKER, &request(1, 1, 3)));
        let t2 = only(s.process(BROKER, &request(1, 2, 4)));
        assert!(matches!(t1, Message::Ticket(t) if t.local_off == 0 && t.visit == 1));
        assert!(matches!(t2, Message::Ticket(t) if t.local_off == 3 && t.visit == 1));
        let out = s.process(CTRL, &Message::Inject(Inject { epoch: 1 }));
        let ann = out.iter().find_map(|(a, m)| match m {
            Message::Announce(x) if *a == BROKER => Some(*x),
            _ => None,
        });
        assert_eq!(
            ann.map(|a| (a.local_lo, a.local_hi, a.base)),
            Some((0, 7, 1000))
        );
        let tok = out
            .iter()
            .find(|(a, m)| *a == NEXT && matches!(m, Message::Token(_)));
        assert!(matches!(tok, Some((_, Message::Token(t))) if t.next_base == 1007 && t.seq == 2));
        // The retransmitted second request is answered from the announcement register.
        assert!(
            matches!(only(s.process(BROKER, &request(1, 2, 4))), Message::Grant(g) if g.gsn == 1003)
        );
        // A second injection, or a stale copy of the token, does nothing.
        let again = s.process(CTRL, &Message::Inject(Inject { epoch: 1 }));
        assert_eq!(again.len(), 1);
        assert!(s
            .process(
                NEXT,
                &Message::Token(Token {
                    epoch: 1,
                    seq: 1,
                    next_base: 0
                })
            )
            .is_empty());
    }

    #[test]
    fn batch_per_visit_is_bounded_and_exhaustion_seals() {
        let mut s = switch(5);
        s.process(CTRL, &install_msg(1, 5, true));
        assert!(matches!(
            only(s.process(BROKER, &request(1, 1, 100))),
            Message::Ticket(_)
        ));
        assert!(
            matches!(only(s.process(BROKER, &request(1, 2, 1))), Message::Reject(r) if r.reason == RejectReason::Busy as u8)
        );
        let out = s.process(
            NEXT,
            &Message::Token(Token {
                epoch: 1,
                seq: 5,
                next_base: 999_950,
            }),
        );
        assert!(matches!(only(out), Message::Alarm(a) if a.kind == AlarmKind::Exhausted as u8));
        assert!(!s.is_live());
        assert!(
            matches!(only(s.process(BROKER, &request(1, 3, 1))), Message::Reject(r) if r.reason == RejectReason::Sealed as u8)
        );
    }

    #[test]
    fn retransmission_after_the_announcement_left_memory_is_expired() {
        let mut s = switch(5);
        s.process(CTRL, &install_msg(1, 5, true));
        assert!(matches!(
            only(s.process(BROKER, &request(1, 1, 1))),
            Message::Ticket(_)
        ));
        s.process(CTRL, &Message::Inject(Inject { epoch: 1 }));
        // ANN_SLOTS more non-empty visits overwrite the announcement of visit 1.
        for v in 0..ANN_SLOTS as u64 {
            s.process(BROKER, &request(1, 1000 + v, 1));
            s.process(
                NEXT,
                &Message::Token(Token {
                    epoch: 1,
                    seq: 2 + v,
                    next_base: 5000 + v,
                }),
            );
        }
        let again = only(s.process(BROKER, &request(1, 1, 1)));
        assert!(
            matches!(again, Message::Reject(r) if r.reason == RejectReason::Expired as u8),
            "{again:?}"
        );
        // A retransmission that changes count is refused rather than answered.
        let changed = only(s.process(BROKER, &request(1, 1000 + ANN_SLOTS as u64 - 1, 2)));
        assert!(
            matches!(changed, Message::Reject(r) if r.reason == RejectReason::BadRequest as u8)
        );
    }

    #[test]
    fn requests_for_another_epoch_or_after_a_seal_are_rejected() {
        let mut s = switch(5);
        s.process(CTRL, &install_msg(2, 5, false));
        let wrong = only(s.process(BROKER, &request(1, 1, 1)));
        assert!(
            matches!(wrong, Message::Reject(r) if r.reason == RejectReason::WrongEpoch as u8 && r.epoch == 2)
        );
        let st = status_of(&s.process(CTRL, &Message::Seal(Seal { epoch: 2 })));
        assert_eq!(st.flags & status_flags::SEALED, status_flags::SEALED);
        let sealed = only(s.process(BROKER, &request(2, 1, 1)));
        assert!(matches!(sealed, Message::Reject(r) if r.reason == RejectReason::Sealed as u8));
        // A sealed switch swallows its epoch's token: the epoch ends here.
        assert!(s
            .process(
                NEXT,
                &Message::Token(Token {
                    epoch: 2,
                    seq: 1,
                    next_base: 0
                })
            )
            .is_empty());
        // Non-head switches ignore Inject.
        let mut t = switch(6);
        t.process(CTRL, &install_msg(1, 6, false));
        let out = t.process(CTRL, &Message::Inject(Inject { epoch: 1 }));
        assert!(matches!(only(out), Message::Status(st) if st.last_seq == 0));
    }
}
