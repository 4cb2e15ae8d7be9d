//! Wire format of the sequencer ring, shared by the software switch, the ring controller and
//! the broker's sequencer client.
//!
//! Every packet is one UDP datagram: a 4-byte common header (`seq_common_t` in
//! `p4/sequencer.p4`) followed by exactly one fixed-size message header chosen by
//! `msg_type`. All integers are big-endian (network byte order), fields are packed with no
//! padding, and every field list below is written in the same order and width as the P4
//! header of the same name. The tests at the bottom parse the P4 program and check this
//! field by field, so the two cannot drift apart. `PROTOCOL.md` explains what each message
//! means; this module only says how it is laid out.
//!
//! Decoding never panics and never allocates: a packet is either exactly the size its type
//! says, or it is rejected with a [`WireError`].

use std::net::{Ipv4Addr, SocketAddrV4};

/// `magic` of every sequencer packet ("GS": global sequence).
pub const MAGIC: u16 = 0x4753;
/// Protocol version in every packet; a switch drops other versions.
pub const VERSION: u8 = 1;
/// The UDP port a hardware switch's parser intercepts (`SEQ_UDP_PORT` in the P4 program).
/// Software switches may listen anywhere.
pub const SEQ_UDP_PORT: u16 = 7650;
/// Bytes of the common header.
pub const COMMON_LEN: usize = 4;
/// Largest packet of this protocol (a `Status`), so receivers can size one fixed buffer.
pub const MAX_PACKET: usize = COMMON_LEN + Status::LEN;

/// Why a packet could not be decoded. Garbage from the network is expected; callers count
/// it and drop the packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet of {got} bytes is shorter than the {need}-byte {what}")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("bad magic {0:#06x}: not a sequencer packet")]
    BadMagic(u16),
    #[error("protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{what} carries {extra} trailing bytes; its size is fixed")]
    Trailing { what: &'static str, extra: usize },
}

/// A fixed-width big-endian integer field.
trait Field: Sized + Copy {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Option<Self>;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! field_impl {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_be_bytes(bytes.get(..Self::SIZE)?.try_into().ok()?))
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}
field_impl!(u8, u16, u32, u64);

/// Reads fields in order from a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    what: &'static str,
    need: usize,
}

impl Cursor<'_> {
    fn take<T: Field>(&mut self) -> Result<T, WireError> {
        let short = WireError::Short {
            what: self.what,
            need: self.need,
            got: self.bytes.len(),
        };
        let value = T::read(self.bytes).ok_or(short.clone())?;
        self.bytes = self.bytes.get(T::SIZE..).ok_or(short)?;
        Ok(value)
    }
}

/// Declares one header: the struct, its size, its field table (name, bits) for the P4
/// layout test, and big-endian encode/decode in declaration order.
macro_rules! header {
    (
        $(#[$meta:meta])*
        $name:ident, p4 = $p4:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Name of the matching `header` in `p4/sequencer.p4`.
            pub const P4_HEADER: &'static str = $p4;
            /// Encoded size in bytes.
            pub const LEN: usize = 0 $( + <$ty as Field>::SIZE )*;
            /// (field name, width in bits), in wire order.
            pub const FIELDS: &'static [(&'static str, usize)] =
                &[ $( (stringify!($field), 8 * <$ty as Field>::SIZE) ),* ];

            fn put(&self, out: &mut Vec<u8>) {
                $( Field::write(self.$field, out); )*
                let _ = out;
            }

            fn get(bytes: &[u8]) -> Result<Self, WireError> {
                let mut cur = Cursor { bytes, what: stringify!($name), need: Self::LEN };
                let _ = &mut cur;
                Ok(Self { $( $field: cur.take()?, )* })
            }

            /// Field values in wire order, widened to u64 (for tests and logs).
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($field), u64::from(self.$field)) ),* ]
            }

            #[cfg(test)]
            #[allow(dead_code)]
            fn from_values(values: &[u64]) -> Self {
                let mut it = values.iter().copied();
                let _ = &mut it;
                Self { $( $field: <$ty>::try_from(it.next().unwrap_or(0)).unwrap_or_default(), )* }
            }
        }
    };
}

header! {
    /// Starts every packet.
    Common, p4 = "seq_common_t" { magic: u16, version: u8, msg_type: u8 }
}

header! {
    /// Broker → home switch: reserve `count` consecutive numbers. `(client, req_id)` is the
    /// idempotence key: a retransmission with the same key gets the same ticket back.
    Request, p4 = "seq_request_t" {
        /// The epoch the broker believes is installed; other epochs are rejected.
        epoch: u32,
        count: u32,
        /// Random per broker process start, so a restarted broker never matches the old one.
        client: u64,
        /// Increases per request of one client.
        req_id: u64,
    }
}

header! {
    /// Switch → broker: your numbers are local offsets `local_off..local_off+count` of this
    /// switch, and become global when visit number `visit` is announced.
    Ticket, p4 = "seq_ticket_t" {
        epoch: u32,
        switch_id: u16,
        count: u32,
        client: u64,
        req_id: u64,
        visit: u64,
        local_off: u64,
    }
}

header! {
    /// Switch → broker: the request is resolved; numbers `gsn..gsn+count` are yours. Sent
    /// when a retransmitted request finds its ticket already announced.
    Grant, p4 = "seq_grant_t" {
        epoch: u32,
        switch_id: u16,
        count: u32,
        client: u64,
        req_id: u64,
        gsn: u64,
    }
}

header! {
    /// Switch → broker (or controller): the request was not served; see [`RejectReason`].
    Reject, p4 = "seq_reject_t" {
        /// The switch's installed epoch (0 = none), so the broker learns it is behind.
        epoch: u32,
        switch_id: u16,
        reason: u8,
        /// The epoch the rejected request carried.
        req_epoch: u32,
        client: u64,
        req_id: u64,
    }
}

header! {
    /// Switch → brokers with tickets in this visit: local offsets `local_lo..local_hi` of
    /// `switch_id` are global numbers `base..base+(local_hi-local_lo)`.
    Announce, p4 = "seq_announce_t" {
        epoch: u32,
        switch_id: u16,
        visit: u64,
        local_lo: u64,
        local_hi: u64,
        base: u64,
    }
}

header! {
    /// Switch → successor: the one token of an epoch. `next_base` is the next free global
    /// number; `seq` counts hops so that stale and duplicated copies are recognised.
    Token, p4 = "seq_token_t" { epoch: u32, seq: u64, next_base: u64 }
}

header! {
    /// Controller → switch: seal `epoch` (and every older one). Idempotent; answered with
    /// a [`Status`].
    Seal, p4 = "seq_seal_t" { epoch: u32 }
}

header! {
    /// Controller → switch: install `epoch`. Accepted only by the switch incarnation
    /// `boot` and only if `epoch` is above every epoch sealed there. Answered with a
    /// [`Status`].
    Install, p4 = "seq_install_t" {
        epoch: u32,
        switch_id: u16,
        /// [`install_flags`].
        flags: u8,
        /// A `Progress` alarm is sent when `token.seq % 2^report_shift == 0`.
        report_shift: u8,
        /// Most numbers one visit may cover (W); bounds what a lost switch can have issued.
        max_visit: u32,
        succ_ip: u32,
        succ_port: u16,
        boot: u64,
        /// First number of the epoch.
        base: u64,
        /// The epoch never issues a number at or above this.
        limit: u64,
    }
}

header! {
    /// Controller → head switch: create the epoch's token. Idempotent.
    Inject, p4 = "seq_inject_t" { epoch: u32 }
}

header! {
    /// Controller → switch: answer with a [`Status`]. No body.
    Probe, p4 = "" {}
}

header! {
    /// Switch → controller: the switch's registers. Reply to Seal, Install, Inject, Probe;
    /// also sent once at boot. A seal is acknowledged by a Status with `seal_floor >= epoch`.
    Status, p4 = "seq_status_t" {
        switch_id: u16,
        /// [`status_flags`].
        flags: u8,
        /// Installed epoch (0 = none since boot).
        epoch: u32,
        /// Highest epoch sealed since boot.
        seal_floor: u32,
        boot: u64,
        /// Highest token `seq` accepted in `epoch`.
        last_seq: u64,
        /// `next_base` of the token this switch last forwarded (0 = none yet).
        fwd_base: u64,
        local_next: u64,
        local_prev: u64,
        visits: u64,
    }
}

header! {
    /// Switch → controller: something the control plane must know (see [`AlarmKind`]).
    Alarm, p4 = "seq_alarm_t" {
        switch_id: u16,
        kind: u8,
        epoch: u32,
        seq: u64,
        base: u64,
    }
}

/// Bits of [`Install::flags`].
pub mod install_flags {
    /// This switch creates the token on `Inject`.
    pub const HEAD: u8 = 1;
}

/// Bits of [`Status::flags`].
pub mod status_flags {
    pub const INSTALLED: u8 = 1;
    pub const SEALED: u8 = 2;
    pub const HEAD: u8 = 4;
}

/// [`Reject::reason`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// No epoch installed since boot: ask the controller for the current configuration.
    NotInstalled = 1,
    /// The request's epoch is not the installed one (see `Reject::epoch`).
    WrongEpoch = 2,
    /// The epoch is sealed: a reconfiguration is under way.
    Sealed = 3,
    /// This visit's batch is full (W): retransmit the same request after the next visit.
    Busy = 4,
    /// The ticket's announcement left the switch's memory: its numbers are holes; send a
    /// new request.
    Expired = 5,
    /// count is 0 or above W, or a retransmission changed count.
    BadRequest = 6,
}

impl RejectReason {
    pub fn from_u8(v: u8) -> Option<Self> {
        use RejectReason::*;
        [NotInstalled, WrongEpoch, Sealed, Busy, Expired, BadRequest]
            .into_iter()
            .find(|r| *r as u8 == v)
    }
}

/// [`Alarm::kind`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlarmKind {
    /// The token passed (every 2^report_shift hops): the ring is alive.
    Progress = 1,
    /// A token arrived that this switch cannot accept (not installed since boot, or a
    /// different epoch): if it was the live token, it is gone.
    TokenDropped = 2,
    /// The epoch reached its `limit`; the token stopped here and the switch sealed itself.
    Exhausted = 3,
}

impl AlarmKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        use AlarmKind::*;
        [Progress, TokenDropped, Exhausted]
            .into_iter()
            .find(|k| *k as u8 == v)
    }
}

impl Install {
    pub fn successor(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.succ_ip), self.succ_port)
    }

    pub fn set_successor(&mut self, addr: SocketAddrV4) {
        self.succ_ip = u32::from(*addr.ip());
        self.succ_port = addr.port();
    }
}

/// One sequencer packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Ticket(Ticket),
    Grant(Grant),
    Reject(Reject),
    Announce(Announce),
    Token(Token),
    Seal(Seal),
    Install(Install),
    Inject(Inject),
    Probe(Probe),
    Status(Status),
    Alarm(Alarm),
}

/// `msg_type` values, in one place so the P4 constants can be checked against them.
pub mod msg_type {
    pub const REQUEST: u8 = 1;
    pub const TICKET: u8 = 2;
    pub const GRANT: u8 = 3;
    pub const REJECT: u8 = 4;
    pub const ANNOUNCE: u8 = 5;
    pub const TOKEN: u8 = 6;
    pub const SEAL: u8 = 7;
    pub const INSTALL: u8 = 8;
    pub const INJECT: u8 = 9;
    pub const PROBE: u8 = 10;
    pub const STATUS: u8 = 11;
    pub const ALARM: u8 = 12;
}

impl Message {
    /// The `msg_type` byte of this message.
    pub fn type_code(&self) -> u8 {
        use msg_type::*;
        match self {
            Message::Request(_) => REQUEST,
            Message::Ticket(_) => TICKET,
            Message::Grant(_) => GRANT,
            Message::Reject(_) => REJECT,
            Message::Announce(_) => ANNOUNCE,
            Message::Token(_) => TOKEN,
            Message::Seal(_) => SEAL,
            Message::Install(_) => INSTALL,
            Message::Inject(_) => INJECT,
            Message::Probe(_) => PROBE,
            Message::Status(_) => STATUS,
            Message::Alarm(_) => ALARM,
        }
    }

    /// Short name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::Ticket(_) => "ticket",
            Message::Grant(_) => "grant",
            Message::Reject(_) => "reject",
            Message::Announce(_) => "announce",
            Message::Token(_) => "token",
            Message::Seal(_) => "seal",
            Message::Install(_) => "install",
            Message::Inject(_) => "inject",
            Message::Probe(_) => "probe",
            Message::Status(_) => "status",
            Message::Alarm(_) => "alarm",
        }
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Common {
            magic: MAGIC,
            version: VERSION,
            msg_type: self.type_code(),
        }
        .put(out);
        match self {
            Message::Request(m) => m.put(out),
            Message::Ticket(m) => m.put(out),
            Message::Grant(m) => m.put(out),
            Message::Reject(m) => m.put(out),
            Message::Announce(m) => m.put(out),
            Message::Token(m) => m.put(out),
            Message::Seal(m) => m.put(out),
            Message::Install(m) => m.put(out),
            Message::Inject(m) => m.put(out),
            Message::Probe(m) => m.put(out),
            Message::Status(m) => m.put(out),
            Message::Alarm(m) => m.put(out),
        }
    }

    /// The encoded packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_PACKET);
        self.encode(&mut out);
        out
    }

    /// Decodes one packet. The packet must be exactly as long as its type says.
    pub fn decode(packet: &[u8]) -> Result<Message, WireError> {
        let common = Common::get(packet)?;
        if common.magic != MAGIC {
            return Err(WireError::BadMagic(common.magic));
        }
        if common.version != VERSION {
            return Err(WireError::Version(common.version));
        }
        let body = packet.get(COMMON_LEN..).unwrap_or_default();
        use msg_type::*;
        Ok(match common.msg_type {
            REQUEST => Message::Request(exact(body)?),
            TICKET => Message::Ticket(exact(body)?),
            GRANT => Message::Grant(exact(body)?),
            REJECT => Message::Reject(exact(body)?),
            ANNOUNCE => Message::Announce(exact(body)?),
            TOKEN => Message::Token(exact(body)?),
            SEAL => Message::Seal(exact(body)?),
            INSTALL => Message::Install(exact(body)?),
            INJECT => Message::Inject(exact(body)?),
            PROBE => Message::Probe(exact(body)?),
            STATUS => Message::Status(exact(body)?),
            ALARM => Message::Alarm(exact(body)?),
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// A message body of fixed size.
trait Body: Sized {
    const NAME: &'static str;
    const SIZE: usize;
    fn parse(bytes: &[u8]) -> Result<Self, WireError>;
}

macro_rules! body_impl {
    ($($t:ident),*) => {$(
        impl Body for $t {
            const NAME: &'static str = stringify!($t);
            const SIZE: usize = $t::LEN;
            fn parse(bytes: &[u8]) -> Result<Self, WireError> { $t::get(bytes) }
        }
    )*};
}
body_impl!(
    Request, Ticket, Grant, Reject, Announce, Token, Seal, Install, Inject, Probe, Status, Alarm
);

fn exact<T: Body>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > T::SIZE {
        return Err(WireError::Trailing {
            what: T::NAME,
            extra: body.len() - T::SIZE,
        });
    }
    T::parse(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const P4_SOURCE: &str = include_str!("../p4/sequencer.p4");

    /// Every header's (name, p4 header, fields, a message built from values).
    fn layouts() -> Vec<(&'static str, &'static [(&'static str, usize)])> {
        vec![
            (Common::P4_HEADER, Common::FIELDS),
            (Request::P4_HEADER, Request::FIELDS),
            (Ticket::P4_HEADER, Ticket::FIELDS),
            (Grant::P4_HEADER, Grant::FIELDS),
            (Reject::P4_HEADER, Reject::FIELDS),
            (Announce::P4_HEADER, Announce::FIELDS),
            (Token::P4_HEADER, Token::FIELDS),
            (Seal::P4_HEADER, Seal::FIELDS),
            (Install::P4_HEADER, Install::FIELDS),
            (Inject::P4_HEADER, Inject::FIELDS),
            (Status::P4_HEADER, Status::FIELDS),
            (Alarm::P4_HEADER, Alarm::FIELDS),
        ]
    }

    /// Parses `header NAME { bit<N> field; ... }` blocks out of the P4 source.
    fn p4_headers() -> BTreeMap<String, Vec<(String, usize)>> {
        let mut out = BTreeMap::new();
        let mut rest = P4_SOURCE;
        while let Some(at) = rest.find("\nheader ") {
            rest = &rest[at + "\nheader ".len()..];
            let name = rest
                .split_whitespace()
                .next()
                .expect("header name")
                .to_string();
            let open = rest.find('{').expect("header body");
            let close = rest.find('}').expect("header end");
            let fields = rest[open + 1..close]
                .lines()
                .map(|l| l.split("//").next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let l = l.strip_suffix(';').expect("field ends with ;");
                    let (ty, field) = l.split_once(char::is_whitespace).expect("type and name");
                    let bits = ty
                        .strip_prefix("bit<")
                        .and_then(|t| t.strip_suffix('>'))
                        .unwrap_or_else(|| panic!("{name}: only bit<N> fields, got {ty}"));
                    (field.trim().to_string(), bits.parse().expect("width"))
                })
                .collect();
            out.insert(name, fields);
            rest = &rest[close..];
        }
        out
    }

    /// Parses `const bit<N> NAME = VALUE;` out of the P4 source.
    fn p4_const(name: &str) -> u64 {
        let line = P4_SOURCE
            .lines()
            .find(|l| l.trim_start().starts_with("const") && l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("P4 const {name} missing"));
        let value = line
            .split('=')
            .nth(1)
            .expect("=")
            .trim()
            .trim_end_matches(';')
            .trim();
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).expect("hex"),
            None => value.parse().expect("decimal"),
        }
    }

    #[test]
    fn rust_headers_match_p4_headers_field_by_field() {
        let p4 = p4_headers();
        for (name, fields) in layouts() {
            let declared = p4
                .get(name)
                .unwrap_or_else(|| panic!("P4 program lacks header {name}"));
            let ours: Vec<(String, usize)> =
                fields.iter().map(|(f, b)| (f.to_string(), *b)).collect();
            assert_eq!(
                &ours, declared,
                "layout of {name} differs between wire.rs and sequencer.p4"
            );
        }
        let ours: Vec<&str> = layouts().iter().map(|(n, _)| *n).collect();
        for name in p4.keys().filter(|n| n.starts_with("seq_")) {
            assert!(
                ours.contains(&name.as_str()),
                "P4 header {name} has no Rust counterpart"
            );
        }
    }

    #[test]
    fn constants_match_p4() {
        assert_eq!(p4_const("SEQ_MAGIC"), u64::from(MAGIC));
        assert_eq!(p4_const("SEQ_VERSION"), u64::from(VERSION));
        assert_eq!(p4_const("SEQ_UDP_PORT"), u64::from(SEQ_UDP_PORT));
        let types = [
            ("MSG_REQUEST", msg_type::REQUEST),
            ("MSG_TICKET", msg_type::TICKET),
            ("MSG_GRANT", msg_type::GRANT),
            ("MSG_REJECT", msg_type::REJECT),
            ("MSG_ANNOUNCE", msg_type::ANNOUNCE),
            ("MSG_TOKEN", msg_type::TOKEN),
            ("MSG_SEAL", msg_type::SEAL),
            ("MSG_INSTALL", msg_type::INSTALL),
            ("MSG_INJECT", msg_type::INJECT),
            ("MSG_PROBE", msg_type::PROBE),
            ("MSG_STATUS", msg_type::STATUS),
            ("MSG_ALARM", msg_type::ALARM),
        ];
        for (p4_name, code) in types {
            assert_eq!(p4_const(p4_name), u64::from(code), "{p4_name}");
        }
        let sizes = [
            ("LEN_TICKET", Ticket::LEN),
            ("LEN_GRANT", Grant::LEN),
            ("LEN_REJECT", Reject::LEN),
            ("LEN_ANNOUNCE", Announce::LEN),
            ("LEN_TOKEN", Token::LEN),
            ("LEN_STATUS", Status::LEN),
            ("LEN_ALARM", Alarm::LEN),
        ];
        for (p4_name, len) in sizes {
            assert_eq!(p4_const(p4_name), (COMMON_LEN + len) as u64, "{p4_name}");
        }
        for r in 1..=6u8 {
            let reason = RejectReason::from_u8(r).expect("reason");
            assert_eq!(
                p4_const(&format!("REJECT_{}", upper_snake(&format!("{reason:?}")))),
                u64::from(r)
            );
        }
        for k in 1..=3u8 {
            let kind = AlarmKind::from_u8(k).expect("kind");
            assert_eq!(
                p4_const(&format!("ALARM_{}", upper_snake(&format!("{kind:?}")))),
                u64::from(k)
            );
        }
    }

    fn upper_snake(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    /// A distinct value per field, fitting its width, so a swapped field is caught.
    fn pattern(fields: &[(&str, usize)]) -> Vec<u64> {
        fields
            .iter()
            .enumerate()
            .map(|(i, (_, bits))| {
                let v = 0x0102_0304_0506_0708u64.rotate_left(8 * i as u32) ^ (i as u64 + 1);
                if *bits == 64 {
                    v
                } else {
                    v & ((1u64 << bits) - 1)
                }
            })
            .collect()
    }

    /// Reads `bits` bits at bit offset `at`, big-endian.
    fn read_bits(bytes: &[u8], at: usize, bits: usize) -> u64 {
        (at..at + bits).fold(0u64, |acc, b| {
            (acc << 1) | u64::from((bytes[b / 8] >> (7 - b % 8)) & 1)
        })
    }

    fn every_message() -> Vec<Message> {
        vec![
            Message::Request(Request::from_values(&pattern(Request::FIELDS))),
            Message::Ticket(Ticket::from_values(&pattern(Ticket::FIELDS))),
            Message::Grant(Grant::from_values(&pattern(Grant::FIELDS))),
            Message::Reject(Reject::from_values(&pattern(Reject::FIELDS))),
            Message::Announce(Announce::from_values(&pattern(Announce::FIELDS))),
            Message::Token(Token::from_values(&pattern(Token::FIELDS))),
            Message::Seal(Seal::from_values(&pattern(Seal::FIELDS))),
            Message::Install(Install::from_values(&pattern(Install::FIELDS))),
            Message::Inject(Inject::from_values(&pattern(Inject::FIELDS))),
            Message::Probe(Probe {}),
            Message::Status(Status::from_values(&pattern(Status::FIELDS))),
            Message::Alarm(Alarm::from_values(&pattern(Alarm::FIELDS))),
        ]
    }

    fn values_of(m: &Message) -> (&'static str, Vec<(&'static str, u64)>) {
        match m {
            Message::Request(x) => (Request::P4_HEADER, x.values()),
            Message::Ticket(x) => (Ticket::P4_HEADER, x.values()),
            Message::Grant(x) => (Grant::P4_HEADER, x.values()),
            Message::Reject(x) => (Reject::P4_HEADER, x.values()),
            Message::Announce(x) => (Announce::P4_HEADER, x.values()),
            Message::Token(x) => (Token::P4_HEADER, x.values()),
            Message::Seal(x) => (Seal::P4_HEADER, x.values()),
            Message::Install(x) => (Install::P4_HEADER, x.values()),
            Message::Inject(x) => (Inject::P4_HEADER, x.values()),
            Message::Probe(x) => (Probe::P4_HEADER, x.values()),
            Message::Status(x) => (Status::P4_HEADER, x.values()),
            Message::Alarm(x) => (Alarm::P4_HEADER, x.values()),
        }
    }

    /// Encodes each message with distinct field values and reads every field back at the
    /// bit offset the P4 declaration gives it.
    #[test]
    fn encoded_bytes_sit_where_p4_parses_them() {
        let p4 = p4_headers();
        let common = &p4["seq_common_t"];
        let common_bits: usize = common.iter().map(|(_, b)| b).sum();
        assert_eq!(common_bits, 8 * COMMON_LEN);
        for m in every_message() {
            let bytes = m.to_bytes();
            assert_eq!(read_bits(&bytes, 0, 16), u64::from(MAGIC));
            assert_eq!(read_bits(&bytes, 24, 8), u64::from(m.type_code()));
            let (header, values) = values_of(&m);
            let declared = p4.get(header).cloned().unwrap_or_default();
            let mut at = common_bits;
            for ((name, bits), (vname, value)) in declared.iter().zip(&values) {
                assert_eq!(name, vname, "{header}");
                assert_eq!(
                    read_bits(&bytes, at, *bits),
                    *value,
                    "{header}.{name} at bit {at}"
                );
                at += bits;
            }
            assert_eq!(declared.len(), values.len(), "{header}");
            assert_eq!(at, 8 * bytes.len(), "{header}: P4 size vs encoded size");
            assert!(bytes.len() <= MAX_PACKET);
        }
    }

    #[test]
    fn round_trip_every_message() {
        for m in every_message() {
            assert_eq!(Message::decode(&m.to_bytes()), Ok(m));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for m in every_message() {
            let bytes = m.to_bytes();
            for len in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..len]).is_err(),
                    "{} truncated to {len}",
                    m.name()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Message::decode(&longer),
                Err(WireError::Trailing { .. })
            ));
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: every length up to MAX_PACKET + 8, many contents,
        // with a valid magic/version half the time so the type dispatch is reached.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..MAX_PACKET + 8 {
            for round in 0..200 {
                let mut buf = Vec::with_capacity(len);
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    buf.push(x as u8);
                }
                if round % 2 == 0 && len >= COMMON_LEN {
                    buf[..3].copy_from_slice(&[(MAGIC >> 8) as u8, MAGIC as u8, VERSION]);
                    buf[3] %= 14;
                }
                let _ = Message::decode(&buf);
            }
        }
        assert_eq!(
            Message::decode(&[0x47, 0x53, VERSION, 99]),
            Err(WireError::UnknownType(99))
        );
        assert_eq!(Message::decode(&[0, 0, 1, 1]), Err(WireError::BadMagic(0)));
        assert_eq!(
            Message::decode(&[0x47, 0x53, 9, 1]),
            Err(WireError::Version(9))
        );
    }
}
