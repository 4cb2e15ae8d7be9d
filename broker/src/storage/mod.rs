//! Partition storage: record batches in segment files, small keyed state in RocksDB.

pub mod batch;
pub mod compact;
pub mod health;
pub mod log;
pub mod meta;
pub mod records;
pub mod segment;
