//! The sequencer ring's data plane: the wire format shared by switches, controller and
//! brokers ([`wire`]), the switch pipeline as a pure state machine ([`pipeline`]), and a
//! deterministic simulation of a whole ring under faults ([`sim`]). The P4 program is
//! `p4/sequencer.p4`; the protocol is written down in `PROTOCOL.md`.

pub mod config;
pub mod pipeline;
pub mod sim;
pub mod wire;
