//! The stable frontier F of the global order.
//!
//! Every record's offset is a global sequence number (GSN) handed out before its batch
//! commits, so at any moment some numbers are still on their way and some will never be
//! used. F is a GSN such that every number below it is either committed in exactly one
//! partition or a hole that will never be filled; it only grows. This crate decides F. It
//! does no I/O: the broker feeds it events (reservations, appends, applies, Raft roles and
//! votes, the cluster's partitions, messages from peers, the time) and sends the messages it
//! asks for; `tests/sim.rs` runs the same code under crashes, leader changes, loss and
//! reordering against a model of Raft and of the sequencer.
//!
//! How (ARCHITECTURE.md has the proof sketch):
//! * **Certificates.** The leader of partition p in term t, once it has applied an entry of
//!   term t (so everything earlier terms wrote is applied or gone), states
//!   `c = min(bases of batches it stamped in term t that are not applied yet,
//!   lower bounds of its reservations still in flight, G + 1)`, where G is the highest
//!   number it knows was handed out. Numbers handed out later are above G (the sequencer
//!   hands numbers out in real-time order), so nothing below c can still be committed in p.
//! * **Confirmation.** A deposed leader that does not know it yet would certify without its
//!   successor's batches, so a certificate counts only once a majority of p's voters said,
//!   after it was computed, that they had not voted in a term above t (one probe per peer
//!   and round, for all partitions at once): a newer leader can then only have been elected,
//!   and taken numbers, after c was computed.
//! * **Stale reservations never commit.** A batch is stamped with the term its numbers were
//!   taken in; a log store voids (empties) a batch whose entry carries another term
//!   ([`stale_reservation`]), so numbers taken in one term can only become records in it.
//! * **Aggregation.** Every broker keeps, per partition, the best confirmed certificate any
//!   broker reported, and F = max(F, min over the cluster's partitions). Certificates are
//!   facts that stay true, so old ones from dead leaders are safe, and F never goes back.

mod core;
mod msg;

pub use crate::core::{Core, Options, ReplicaRole, RoundStart, Ticket};
pub use crate::msg::{Ack, Gossip, Probe, Report};

/// A global sequence number (a record's offset).
pub type Gsn = u64;
/// A broker's node id.
pub type NodeId = u64;
/// A Raft term (Kafka's leader epoch).
pub type Term = u64;

/// What names a partition (the broker uses its Raft group key).
pub trait PartKey: Copy + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static {}
impl<T: Copy + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static> PartKey for T {}

/// True when a batch whose numbers were taken in `reserved_term` is being stored as an entry
/// of `entry_term`: its numbers may lie below a frontier confirmed since, so the batch must be
/// stored without its records. Only a leader stamps batches; its appender checks the term
/// before handing a batch to Raft, but Raft may have moved on in between.
pub fn stale_reservation(reserved_term: Term, entry_term: Term) -> bool {
    reserved_term != entry_term
}
