//! The software switch's host side: what sits around the [`Pipeline`] in `softswitch` (and in
//! the in-process rings of the broker's tests and benchmark), never inside it. The pipeline
//! stays a P4-shaped state machine with no timers; two things that need a clock live here:
//!
//! * **Idle pacing** ([`IdlePacer`]). An idle ring forwards its token as fast as the links
//!   allow: on loopback that is ~10-30k hops/s per switch and a core burnt doing nothing.
//!   The head switch's host parks the token *before* the pipeline sees it when a whole
//!   rotation issued nothing (the token's `next_base` equals the head's `fwd_base`) and no
//!   request waits at the head, for at most `idle_hold`, and only once the ring has been
//!   idle for `idle_grace`. A request arriving at the head releases it at once (after the
//!   request got its ticket, so the very next visit announces it), and so does a Probe: a
//!   ring client that has been idle sends one to the head along with its first request to
//!   another switch, so that request waits one rotation rather than the rest of the hold.
//!   After either (parked or not: the token may be on its way to the switch that holds the
//!   request) the ring must be idle for `idle_grace` again before the next park. To the protocol a parked token is a slow link: no guarantee depends on link
//!   timing. On a Tofino the same is a recirculation through a paused queue, driven by the
//!   switch CPU.
//! * **Link emulation** (`link_delay`). Every token forward waits that long before it is
//!   sent, with microsecond precision (a spin that keeps receiving packets, since tokio's
//!   timers tick in milliseconds), to emulate switch-to-switch links in benchmarks.
//!
//! [`Host`] is sans-IO (datagrams and the clock in, datagrams out) so tests drive it
//! message by message; [`serve`] runs it on a tokio UDP socket.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::pipeline::{Outputs, Pipeline};
use crate::wire::{status_flags, Message, Status, Token, MAX_PACKET};

/// Host-side behaviour of a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// Longest time the head parks an idle token (0 = never: the token spins).
    pub idle_hold: Duration,
    /// The ring must have been idle this long before the head starts parking.
    pub idle_grace: Duration,
    /// Extra delay of every token forward (emulated link; 0 = none).
    pub link_delay: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            idle_hold: Duration::from_millis(1),
            idle_grace: Duration::from_millis(1),
            link_delay: Duration::ZERO,
        }
    }
}

/// Decides whether the head parks an arriving token. Pure: the switch's registers (read by
/// the host CPU, as a P4 control plane reads registers) and the clock in, a decision out.
#[derive(Debug, Clone)]
pub struct IdlePacer {
    hold: Duration,
    grace: Duration,
    /// Start of the current run of idle rotations.
    idle_since: Option<Instant>,
}

impl IdlePacer {
    pub fn new(hold: Duration, grace: Duration) -> Self {
        Self {
            hold,
            grace,
            idle_since: None,
        }
    }

    /// `Some(until)` if token `t`, arriving at a switch whose registers are `st`, should be
    /// parked until `until` (or until a request arrives).
    pub fn hold_until(&mut self, t: &Token, st: &Status, now: Instant) -> Option<Instant> {
        let live_head = st.flags & status_flags::INSTALLED != 0
            && st.flags & status_flags::SEALED == 0
            && st.flags & status_flags::HEAD != 0;
        // Only a token the pipeline would accept, at a head that has seen one before.
        if self.hold.is_zero()
            || !live_head
            || t.epoch != st.epoch
            || t.seq <= st.last_seq
            || st.last_seq == 0
        {
            return None;
        }
        let idle = t.next_base == st.fwd_base && st.local_next == st.local_prev;
        if !idle {
            self.idle_since = None;
            return None;
        }
        let since = *self.idle_since.get_or_insert(now);
        (now.saturating_duration_since(since) >= self.grace).then(|| now + self.hold)
    }

    /// The ring is in use again: the next park needs a whole new grace period.
    pub fn wake(&mut self) {
        self.idle_since = None;
    }
}

/// Host counters, next to the pipeline's own [`crate::pipeline::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Packets received, by message type code (index = `msg_type`).
    pub packets_in: [u64; 13],
    pub decode_errors: u64,
    /// Tokens parked by idle pacing.
    pub tokens_held: u64,
    /// Parked tokens released early by a request or a probe.
    pub holds_released_early: u64,
    /// Total time tokens spent parked.
    pub held_time: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Parked {
    from: SocketAddrV4,
    token: Token,
    since: Instant,
    until: Instant,
}

/// A switch: the pipeline, its idle pacer and its emulated outgoing link. Sans-IO.
pub struct Host {
    pipeline: Pipeline,
    opts: HostOptions,
    pacer: IdlePacer,
    parked: Option<Parked>,
    /// Token forwards waiting for the emulated link, in due order (the delay is constant).
    delayed: VecDeque<(Instant, SocketAddrV4, Message)>,
    stats: HostStats,
}

/// When [`Host::on_time`] wants to be called next, and whether that needs sub-millisecond
/// precision (a link delay) or a timer will do (a parked token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    pub at: Instant,
    pub precise: bool,
}

impl Host {
    pub fn new(pipeline: Pipeline, opts: HostOptions) -> Self {
        Self {
            pipeline,
            pacer: IdlePacer::new(opts.idle_hold, opts.idle_grace),
            opts,
            parked: None,
            delayed: VecDeque::new(),
            stats: HostStats::default(),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// Whether a token is parked right now.
    pub fn is_holding(&self) -> bool {
        self.parked.is_some()
    }

    /// The boot `Status` (see [`Pipeline::boot_messages`]).
    pub fn boot_messages(&self) -> Outputs {
        self.pipeline.boot_messages()
    }

    /// One datagram from `from`. Returns what to send now.
    pub fn on_datagram(&mut self, from: SocketAddrV4, packet: &[u8], now: Instant) -> Outputs {
        let msg = match Message::decode(packet) {
            Ok(m) => m,
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::debug!(%from, error = %e, "dropped undecodable packet");
                return Vec::new();
            }
        };
        if let Some(n) = self.stats.packets_in.get_mut(usize::from(msg.type_code())) {
            *n += 1;
        }
        self.on_message(from, &msg, now)
    }

    /// One decoded message from `from`.
    pub fn on_message(&mut self, from: SocketAddrV4, msg: &Message, now: Instant) -> Outputs {
        if let Message::Token(t) = msg {
            if self.parked.is_none() {
                if let Some(until) = self.pacer.hold_until(t, &self.pipeline.status(), now) {
                    self.stats.tokens_held += 1;
                    self.parked = Some(Parked {
                        from,
                        token: *t,
                        since: now,
                        until,
                    });
                    return Vec::new();
                }
            }
        }
        if matches!(
            msg,
            Message::Seal(_) | Message::Install(_) | Message::Inject(_)
        ) {
            tracing::info!(%from, ?msg, "control message");
        }
        let epoch_before = self.pipeline.status().epoch;
        let mut out = self.process(from, msg, now);
        let status = self.pipeline.status();
        if status.epoch != epoch_before {
            tracing::info!(
                epoch = status.epoch,
                head = status.flags & status_flags::HEAD != 0,
                "epoch installed"
            );
        }
        // A request waits here (the parked token's visit announces it right away), or a
        // client woke the ring for a request at another switch. Either way the ring is in
        // use: even if the token is elsewhere now, it must not be parked when it comes by
        // (the request it is wanted for may be at a switch it has just passed).
        if matches!(msg, Message::Request(_) | Message::Probe(_)) {
            self.pacer.wake();
            if self.parked.is_some() {
                self.stats.holds_released_early += 1;
                out.extend(self.release(now));
            }
        }
        out
    }

    /// Releases a parked token whose time is up and sends link-delayed forwards that are due.
    pub fn on_time(&mut self, now: Instant) -> Outputs {
        let mut out = Vec::new();
        if self.parked.is_some_and(|p| now >= p.until) {
            out.extend(self.release(now));
        }
        while let Some((due, to, msg)) = self.delayed.front().copied() {
            if due > now {
                break;
            }
            self.delayed.pop_front();
            out.push((to, msg));
        }
        out
    }

    /// The next time [`Host::on_time`] has something to do.
    pub fn next_wake(&self) -> Option<Wake> {
        let link = self.delayed.front().map(|(due, ..)| Wake {
            at: *due,
            precise: true,
        });
        let park = self.parked.map(|p| Wake {
            at: p.until,
            precise: false,
        });
        match (link, park) {
            (Some(l), Some(p)) if p.at < l.at => Some(p),
            (Some(l), _) => Some(l),
            (None, p) => p,
        }
    }

    fn release(&mut self, now: Instant) -> Outputs {
        let Some(p) = self.parked.take() else {
            return Vec::new();
        };
        self.stats.held_time += now.saturating_duration_since(p.since);
        self.process(p.from, &Message::Token(p.token), now)
    }

    /// The pipeline, then the emulated link for token forwards.
    fn process(&mut self, from: SocketAddrV4, msg: &Message, now: Instant) -> Outputs {
        let mut out = self.pipeline.process(from, msg);
        if !self.opts.link_delay.is_zero() {
            let due = now + self.opts.link_delay;
            let delayed = &mut self.delayed;
            out.retain(|(to, m)| {
                let token = matches!(m, Message::Token(_));
                if token {
                    delayed.push_back((due, *to, *m));
                }
                !token
            });
        }
        out
    }
}

/// Runs `host` on `sock` until `shutdown` completes. `on_second` is called about once a
/// second (metrics). Sends that fail are counted in the returned closure's view through
/// `on_send_error`; nothing here stops the loop but `shutdown`.
pub async fn serve(
    sock: &UdpSocket,
    host: &mut Host,
    mut on_second: impl FnMut(&Host),
    mut on_send_error: impl FnMut(),
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut out_buf = Vec::with_capacity(MAX_PACKET);
    let boot = host.boot_messages();
    send_all(sock, boot, &mut out_buf, &mut on_send_error).await;
    // Room for one byte more than the largest packet, so an oversized one is seen as such.
    let mut buf = [0u8; MAX_PACKET + 1];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let wake = host.next_wake();
        let out = tokio::select! {
            biased;
            received = sock.recv_from(&mut buf) => match received {
                Ok((len, SocketAddr::V4(from))) => {
                    host.on_datagram(from, &buf[..len], Instant::now())
                }
                Ok((_, SocketAddr::V6(_))) => Vec::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "recv failed");
                    Vec::new()
                }
            },
            _ = wait_for(wake), if wake.is_some() => host.on_time(Instant::now()),
            _ = tick.tick() => {
                on_second(host);
                Vec::new()
            }
            _ = &mut shutdown => return,
        };
        send_all(sock, out, &mut out_buf, &mut on_send_error).await;
    }
}

/// Waits until `wake.at`. Timer-precise waits sleep; precise ones (link emulation, usually
/// microseconds) sleep for whatever whole milliseconds they can and then yield to the
/// runtime until the time has come, so packets keep being received meanwhile.
async fn wait_for(wake: Option<Wake>) {
    let Some(wake) = wake else {
        return std::future::pending().await;
    };
    if !wake.precise {
        return tokio::time::sleep_until(wake.at.into()).await;
    }
    let coarse = wake.at.checked_sub(Duration::from_millis(2));
    if let Some(coarse) = coarse.filter(|c| *c > Instant::now()) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while Instant::now() < wake.at {
        tokio::task::yield_now().await;
    }
}

async fn send_all(
    sock: &UdpSocket,
    out: Outputs,
    buf: &mut Vec<u8>,
    on_send_error: &mut impl FnMut(),
) {
    for (to, msg) in out {
        buf.clear();
        msg.encode(buf);
        if let Err(e) = sock.send_to(buf, to).await {
            on_send_error();
            tracing::debug!(%to, error = %e, "send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Config;
    use crate::wire::{install_flags, Announce, Inject, Install, Probe, Request};
    use std::net::Ipv4Addr;

    const CTRL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 6000);
    const NEXT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7001);
    const BROKER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9000);
    const MS: Duration = Duration::from_millis(1);

    /// An installed, injected head switch (a ring of one, forwarding to NEXT).
    fn head(opts: HostOptions, t0: Instant) -> (Host, Token) {
        let mut h = Host::new(
            Pipeline::new(Config {
                switch_id: 0,
                boot: 9,
                controller: Some(CTRL),
                default_successor: None,
            }),
            opts,
        );
        let mut i = Install {
            epoch: 1,
            switch_id: 0,
            flags: install_flags::HEAD,
            report_shift: 30,
            max_visit: 1000,
            boot: 9,
            base: 100,
            limit: 1 << 40,
            ..Install::default()
        };
        i.set_successor(NEXT);
        h.on_message(CTRL, &Message::Install(i), t0);
        let out = h.on_message(CTRL, &Message::Inject(Inject { epoch: 1 }), t0);
        // With an emulated link the first forward waits in it.
        let tok = token_of(&out).or_else(|| token_of(&h.on_time(t0 + opts.link_delay)));
        (h, tok.expect("first token"))
    }

    fn token_of(out: &Outputs) -> Option<Token> {
        out.iter().find_map(|(to, m)| match m {
            Message::Token(t) if *to == NEXT => Some(*t),
            _ => None,
        })
    }

    fn announce_of(out: &Outputs) -> Option<Announce> {
        out.iter().find_map(|(_, m)| match m {
            Message::Announce(a) => Some(*a),
            _ => None,
        })
    }

    fn request(req_id: u64) -> Message {
        Message::Request(Request {
            epoch: 1,
            count: 5,
            client: 3,
            req_id,
        })
    }

    #[test]
    fn idle_token_is_parked_after_the_grace_and_released_by_time() {
        let t0 = Instant::now();
        let opts = HostOptions {
            idle_hold: 5 * MS,
            idle_grace: 2 * MS,
            link_delay: Duration::ZERO,
        };
        let (mut h, mut tok) = head(opts, t0);
        // Idle rotations within the grace are forwarded at once.
        for ms in [0, 1] {
            let out = h.on_message(NEXT, &Message::Token(tok), t0 + ms * MS);
            tok = token_of(&out).expect("forwarded during the grace");
        }
        // Past the grace: parked, nothing sent, released when the hold runs out.
        let at = t0 + 2 * MS;
        assert!(h.on_message(NEXT, &Message::Token(tok), at).is_empty());
        assert!(h.is_holding());
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: at + 5 * MS,
                precise: false
            })
        );
        assert!(h.on_time(at + 4 * MS).is_empty());
        let out = h.on_time(at + 5 * MS);
        let next = token_of(&out).expect("released");
        assert_eq!(next.seq, tok.seq + 1);
        assert_eq!(h.stats().tokens_held, 1);
        assert_eq!(h.stats().held_time, 5 * MS);
    }

    #[test]
    fn a_request_releases_the_parked_token_and_is_announced_by_that_visit() {
        let t0 = Instant::now();
        let opts = HostOptions {
            idle_hold: 50 * MS,
            idle_grace: Duration::ZERO,
            link_delay: Duration::ZERO,
        };
        let (mut h, tok) = head(opts, t0);
        assert!(h.on_message(NEXT, &Message::Token(tok), t0).is_empty());
        let out = h.on_message(BROKER, &request(1), t0 + MS);
        assert!(out
            .iter()
            .any(|(to, m)| *to == BROKER && matches!(m, Message::Ticket(_))));
        let ann = announce_of(&out).expect("announced by the released token's visit");
        assert_eq!((ann.local_lo, ann.local_hi, ann.base), (0, 5, 100));
        assert!(token_of(&out).is_some() && !h.is_holding());
        assert_eq!(h.stats().holds_released_early, 1);
    }

    #[test]
    fn a_probe_releases_the_parked_token_and_restarts_the_grace() {
        let t0 = Instant::now();
        let opts = HostOptions {
            idle_hold: 50 * MS,
            idle_grace: 2 * MS,
            link_delay: Duration::ZERO,
        };
        let (mut h, mut tok) = head(opts, t0);
        tok = token_of(&h.on_message(NEXT, &Message::Token(tok), t0)).expect("grace");
        assert!(h
            .on_message(NEXT, &Message::Token(tok), t0 + 2 * MS)
            .is_empty());
        let out = h.on_message(BROKER, &Message::Probe(Probe {}), t0 + 3 * MS);
        let tok = token_of(&out).expect("released by the probe");
        assert!(out
            .iter()
            .any(|(to, m)| *to == BROKER && matches!(m, Message::Status(_))));
        // Idle again, but the grace starts over: forwarded, not parked.
        let out = h.on_message(NEXT, &Message::Token(tok), t0 + 4 * MS);
        let tok = token_of(&out).expect("forwarded");
        assert!(!h.is_holding());
        // A probe while the token is away also restarts the grace.
        let out = h.on_message(NEXT, &Message::Token(tok), t0 + 5 * MS);
        let tok = token_of(&out).expect("still within the grace");
        assert!(h
            .on_message(NEXT, &Message::Token(tok), t0 + 6 * MS)
            .is_empty());
        let out = h.on_message(BROKER, &Message::Probe(Probe {}), t0 + 7 * MS);
        let tok = token_of(&out).expect("released");
        // Idle from 8 ms on; a probe at 9 ms, while the token is away, restarts the grace,
        // so at 10 ms the token is not parked.
        let out = h.on_message(NEXT, &Message::Token(tok), t0 + 8 * MS);
        let tok = token_of(&out).expect("forwarded");
        // (without this probe it would be: 10 - 8 >= grace)
        h.on_message(BROKER, &Message::Probe(Probe {}), t0 + 9 * MS);
        let out = h.on_message(NEXT, &Message::Token(tok), t0 + 10 * MS);
        assert!(token_of(&out).is_some(), "probed: the grace starts over");
    }

    #[test]
    fn busy_ring_or_pending_request_is_never_parked() {
        let t0 = Instant::now();
        let opts = HostOptions {
            idle_hold: 50 * MS,
            idle_grace: Duration::ZERO,
            link_delay: Duration::ZERO,
        };
        let (mut h, mut tok) = head(opts, t0);
        // Numbers issued elsewhere in the ring since our last visit: not idle.
        tok.next_base += 7;
        let out = h.on_message(NEXT, &Message::Token(tok), t0);
        tok = token_of(&out).expect("forwarded");
        // A request waiting here: not idle either (and the visit announces it).
        h.on_message(BROKER, &request(1), t0);
        let out = h.on_message(NEXT, &Message::Token(tok), t0);
        assert!(announce_of(&out).is_some());
        // Stale copies and other epochs go straight to the pipeline (which drops them).
        let stale = Token { seq: 1, ..tok };
        assert!(h.on_message(NEXT, &Message::Token(stale), t0).is_empty());
        assert!(!h.is_holding());
        // Pacing off: never parked.
        let (mut h, tok) = head(
            HostOptions {
                idle_hold: Duration::ZERO,
                ..opts
            },
            t0,
        );
        assert!(token_of(&h.on_message(NEXT, &Message::Token(tok), t0 + MS)).is_some());
    }

    #[test]
    fn link_delay_defers_only_token_forwards() {
        let t0 = Instant::now();
        let opts = HostOptions {
            idle_hold: Duration::ZERO,
            idle_grace: Duration::ZERO,
            link_delay: Duration::from_micros(10),
        };
        let (mut h, tok) = head(opts, t0);
        // Tickets are not delayed.
        let out = h.on_message(BROKER, &request(1), t0);
        assert!(matches!(out.as_slice(), [(BROKER, Message::Ticket(_))]));
        let at = t0 + MS;
        let out = h.on_message(NEXT, &Message::Token(tok), at);
        assert!(token_of(&out).is_none() && announce_of(&out).is_some());
        assert_eq!(
            h.next_wake(),
            Some(Wake {
                at: at + Duration::from_micros(10),
                precise: true
            })
        );
        assert!(h.on_time(at + Duration::from_micros(9)).is_empty());
        assert!(token_of(&h.on_time(at + Duration::from_micros(10))).is_some());
    }
}
