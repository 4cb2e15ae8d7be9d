//! A Kafka-wire-compatible broker whose offsets are global sequence numbers (GSNs).
//!
//! Layout: `server` (sockets and framing loop) → `protocol` (frames, headers, bounds) →
//! `api` (one handler per Kafka API) → `broker` / `partition` (state) → `raft` (openraft
//! groups) → `storage` (segment files and RocksDB). `sequencer` hands out GSNs.

pub mod api;
pub mod appender;
pub mod broker;
pub mod cleaner;
pub mod cluster;
pub mod config;
pub mod frontier_driver;
pub mod group;
pub mod metrics;
pub mod min_insync;
pub mod offline;
pub mod partition;
pub mod producer_ids;
pub mod producer_state;
pub mod protocol;
pub mod raft;
pub mod ring_sequencer;
pub mod sequencer;
pub mod server;
pub mod storage;
pub mod topic_config;
