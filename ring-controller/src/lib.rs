//! The sequencer ring's control plane, done the way Delos' VirtualLog does it: a
//! consensus-backed store of the ring configuration ([`store`], [`replica`], over [`net`]),
//! and on the Raft leader a controller ([`controller`]) that detects a broken ring, seals
//! the epoch, chooses the restart point ([`restart`]), stores the next configuration with a
//! conditional write, installs it and injects the token. [`http`] is the admin endpoint.

pub mod controller;
pub mod http;
pub mod net;
pub mod replica;
pub mod restart;
pub mod store;
