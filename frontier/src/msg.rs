//! Messages between brokers' frontier cores. A round is one `Probe` to every peer and one
//! `Ack` back; both carry the sender's `Gossip` (its G, its F, its led partitions when the
//! receiver may lack them, and its last report), so reports spread without extra messages.

use serde::{Deserialize, Serialize};

use crate::{Gsn, NodeId, Term};

/// What every frontier message carries about its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip<K> {
    pub from: NodeId,
    /// Random per process start: a new one means the sender forgot everything.
    pub incarnation: u64,
    /// Highest GSN the sender knows was handed out.
    pub g: Option<Gsn>,
    /// The sender's frontier.
    pub f: Option<Gsn>,
    /// The version (metadata log index) of the cluster metadata the sender applied: a
    /// receiver that is behind may not know every partition, and holds its frontier.
    pub meta_version: u64,
    /// Version of the sender's set of led partitions (0: it leads none yet).
    pub set_version: u64,
    /// That set, (partition, term), when the receiver may not hold this version.
    pub set: Option<Vec<(K, Term)>>,
    /// The sender's last completed round, if it confirmed anything.
    pub report: Option<Report<K>>,
    /// The version of the receiver's set that the sender holds (0: none).
    pub known_version: u64,
    /// The receiver's incarnation that `known_version` refers to.
    pub known_incarnation: u64,
}

/// The outcome of a round: every partition of the set `set_version` except `excluded` is
/// certified: nothing below `value` will ever be committed in it that is not committed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report<K> {
    pub round: u64,
    pub set_version: u64,
    pub value: Gsn,
    pub excluded: Vec<K>,
}

/// Round `round` asks: have you voted in a term above mine for any of my partitions?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe<K> {
    pub round: u64,
    pub gossip: Gossip<K>,
}

/// The answer to a probe. `checked_version` is the prober's set version the answer refers
/// to (0: the receiver did not hold it and checked nothing); `nacks` are the partitions of
/// that set for which the receiver has voted in a higher term (or cannot tell).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack<K> {
    pub round: u64,
    pub gossip: Gossip<K>,
    pub checked_version: u64,
    pub nacks: Vec<K>,
}
