//! The sequencer ring: the wire format shared by switches, controller and brokers
//! ([`wire`]), the switch pipeline as a pure state machine ([`pipeline`]) and the host loop
//! around it in the software switch ([`host`]: idle pacing, link emulation), the two other
//! roles as sans-IO state machines — the broker's ring client ([`client`]) and the ring
//! controller's decisions ([`control`]) — and a deterministic simulation that runs all of
//! them over a faulty network ([`sim`]). The P4 program is `p4/sequencer.p4`; the protocol
//! is written down in `PROTOCOL.md`.

pub mod client;
pub mod config;
pub mod control;
pub mod host;
pub mod pipeline;
pub mod sim;
pub mod wire;
