//! RocksDB holds what is small and keyed: topics and their configs, Raft votes, Raft entries
//! that carry no record batch, applied state, and the sequencer's lease.
//!
//! Keys are plain prefixed strings: `topic/{name}`, `raft/{group}/{field}`,
//! `raft/{group}/entry/{index:020}`, `seq/lease`.

use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, WriteOptions, DB};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("metadata record {key} is unreadable: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("metadata record {key} cannot be encoded: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
}

/// A topic as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicRecord {
    pub name: String,
    /// Kafka topic id (UUID bytes).
    pub id: [u8; 16],
    pub partitions: i32,
    /// Topic-level config overrides (only non-default values).
    pub configs: BTreeMap<String, String>,
    /// Replica broker ids per partition; the first is the preferred leader. Empty in
    /// records written by single-broker versions (meaning: this broker).
    #[serde(default)]
    pub replicas: Vec<Vec<i32>>,
}

pub struct MetaStore {
    db: DB,
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Small, keyed data: keep memory modest.
        opts.set_write_buffer_size(8 << 20);
        opts.set_max_open_files(256);
        Ok(Self {
            db: DB::open(&opts, path)?,
        })
    }

    fn put<T: Serialize>(&self, key: &str, value: &T, sync: bool) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(value).map_err(|source| MetaError::Encode {
            key: key.to_string(),
            source,
        })?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.put_opt(key.as_bytes(), bytes, &wo)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, MetaError> {
        match self.db.get(key.as_bytes())? {
            None => Ok(None),
            Some(raw) => {
                serde_json::from_slice(&raw)
                    .map(Some)
                    .map_err(|source| MetaError::Decode {
                        key: key.to_string(),
                        source,
                    })
            }
        }
    }

    fn delete(&self, key: &str, sync: bool) -> Result<(), MetaError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.delete_opt(key.as_bytes(), &wo)?;
        Ok(())
    }

    /// All records under `prefix`, in key order.
    fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, MetaError> {
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = serde_json::from_slice(&v).map_err(|source| MetaError::Decode {
                key: key.clone(),
                source,
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<(), MetaError> {
        let keys: Vec<Box<[u8]>> = self
            .db
            .iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward))
            .map_while(|item| item.ok())
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, _)| k)
            .collect();
        let mut batch = rocksdb::WriteBatch::default();
        for k in keys {
            batch.delete(k);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    // ---- topics ----

    pub fn put_topic(&self, topic: &TopicRecord) -> Result<(), MetaError> {
        self.put(&format!("topic/{}", topic.name), topic, true)
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        self.delete(&format!("topic/{name}"), true)
    }

    pub fn topics(&self) -> Result<Vec<TopicRecord>, MetaError> {
        Ok(self.scan("topic/")?.into_iter().map(|(_, t)| t).collect())
    }

    // ---- raft groups ----

    pub fn put_raft<T: Serialize>(
        &self,
        group: &str,
        field: &str,
        value: &T,
        sync: bool,
    ) -> Result<(), MetaError> {
        self.put(&format!("raft/{group}/{field}"), value, sync)
    }

    pub fn get_raft<T: DeserializeOwned>(
        &self,
        group: &str,
        field: &str,
    ) -> Result<Option<T>, MetaError> {
        self.get(&format!("raft/{group}/{field}"))
    }

    pub fn put_raft_entry<T: Serialize>(
        &self,
        group: &str,
        index: u64,
        entry: &T,
    ) -> Result<(), MetaError> {
        self.put(&format!("raft/{group}/entry/{index:020}"), entry, true)
    }

    pub fn delete_raft_entry(&self, group: &str, index: u64) -> Result<(), MetaError> {
        self.delete(&format!("raft/{group}/entry/{index:020}"), true)
    }

    pub fn raft_entries<T: DeserializeOwned>(&self, group: &str) -> Result<Vec<T>, MetaError> {
        Ok(self
            .scan(&format!("raft/{group}/entry/"))?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Forgets everything about a Raft group (its topic was deleted).
    pub fn delete_raft_group(&self, group: &str) -> Result<(), MetaError> {
        self.delete_prefix(&format!("raft/{group}/"))
    }

    // ---- cluster ----

    /// The cluster id, generated on first start and kept forever after.
    pub fn cluster_id(&self) -> Result<String, MetaError> {
        if let Some(id) = self.get::<String>("cluster/id")? {
            return Ok(id);
        }
        let id = cluster_id_string(rand::random());
        self.put("cluster/id", &id, true)?;
        Ok(id)
    }

    // ---- sequencer ----

    pub fn sequencer_lease(&self) -> Result<Option<u64>, MetaError> {
        self.get("seq/lease")
    }

    pub fn put_sequencer_lease(&self, upto: u64) -> Result<(), MetaError> {
        self.put("seq/lease", &upto, true)
    }
}

/// A Kafka cluster id: URL-safe base64 of 16 bytes (22 characters).
pub fn cluster_id_string(raw: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = u128::from_be_bytes(raw);
    (0..22)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize] as char;
            bits >>= 6;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_entries_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = MetaStore::open(dir.path()).expect("open");
        let t = TopicRecord {
            name: "a".into(),
            id: [7; 16],
            partitions: 3,
            configs: BTreeMap::new(),
            replicas: vec![vec![1]; 3],
        };
        store.put_topic(&t).expect("put");
        assert_eq!(store.topics().expect("scan"), vec![t]);
        store.put_raft_entry("g1", 5, &"five").expect("put");
        store.put_raft_entry("g1", 12, &"twelve").expect("put");
        store.put_raft_entry("g10", 1, &"other group").expect("put");
        let entries: Vec<String> = store.raft_entries("g1").expect("scan");
        assert_eq!(entries, vec!["five".to_string(), "twelve".to_string()]);
        store.delete_raft_group("g1").expect("delete");
        assert!(store.raft_entries::<String>("g1").expect("scan").is_empty());
        assert_eq!(store.raft_entries::<String>("g10").expect("scan").len(), 1);
    }
}
