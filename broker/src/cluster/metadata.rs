//! Cluster metadata: what the metadata Raft group replicates (brokers, topics, partition
//! assignments, configs, partition leaders and ISR), as KRaft does. `ClusterState::apply` is
//! the pure state machine; `meta_store.rs` persists it and the group's log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::config::SequencerKind;
use crate::storage::meta::TopicRecord;
use crate::topic_config::{self, ConfigOp, DynamicConfigs};

openraft::declare_raft_types!(
    /// Types of the cluster metadata Raft group.
    pub MetaConfig:
        D = MetaCommand,
        R = MetaReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<MetaConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type MetaRaft = openraft::Raft<MetaConfig>;

/// A Kafka listener a broker serves, by name ("external", "internal").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub listener: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: i32,
    pub raft_addr: String,
    pub endpoints: Vec<Endpoint>,
    /// Where this broker's offsets come from (`None` in registrations stored before brokers
    /// reported it). Part of the registration, so a restart with another sequencer
    /// registers again and meets the check.
    #[serde(default)]
    pub sequencer: Option<SequencerKind>,
}

/// What a partition leader reports about its partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub leader: i32,
    /// Raft term of the leader: Kafka's leader epoch.
    pub epoch: i32,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    RegisterBroker {
        info: BrokerInfo,
        /// Adopted as the cluster id if the cluster has none yet.
        cluster_id: String,
    },
    CreateTopic(TopicRecord),
    DeleteTopic {
        name: String,
    },
    AddPartitions {
        name: String,
        replicas: Vec<Vec<i32>>,
    },
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    PartitionStates(Vec<PartitionReport>),
    /// DeleteRecords: every replica of the partition raises its log start offset to at least
    /// `low_watermark` and deletes the segments entirely below it. The topic id keeps a request
    /// from reaching a re-created topic of the same name.
    DeleteRecords {
        name: String,
        topic_id: [u8; 16],
        partition: i32,
        low_watermark: i64,
    },
    /// Reserves the next `count` producer ids for the broker that asks (InitProducerId).
    AllocateProducerIds {
        count: u32,
    },
    /// AlterConfigs (`replace`: the ops form the whole new set) and IncrementalAlterConfigs
    /// on a topic or on the dynamic broker configs. Applied atomically, so concurrent
    /// incremental changes of different keys do not overwrite each other.
    AlterConfigs {
        target: ConfigTarget,
        replace: bool,
        ops: Vec<ConfigOp>,
    },
    /// A broker's replica of a partition went offline after a storage error (`offline`), or
    /// opened again after a restart. An offline replica is out of the ISR, cannot be
    /// reported as leader, and Metadata lists it in `offline_replicas`.
    ReplicaStorage {
        topic_id: [u8; 16],
        partition: i32,
        broker: i32,
        offline: bool,
    },
}

/// What an AlterConfigs command changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigTarget {
    Topic(String),
    /// Dynamic broker configs: "" = the cluster-wide default, else a broker id.
    Broker(String),
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("{0}")]
    Invalid(String),
    /// A broker whose sequencer is not the cluster's: it would be a second source of
    /// offsets. The broker stops with this message.
    #[error("{0}")]
    SequencerMismatch(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaReply {
    pub rejected: Option<Rejection>,
    /// For AllocateProducerIds: the reserved ids, `first..end`.
    #[serde(default)]
    pub producer_ids: Option<(i64, i64)>,
}

/// Leader and in-sync replicas of one partition, as last reported by its leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// -1 until a leader has reported.
    pub leader: i32,
    pub epoch: i32,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicState {
    pub record: TopicRecord,
    pub partitions: Vec<PartitionState>,
    /// DeleteRecords low watermarks by partition (only ever raised).
    #[serde(default)]
    pub low_watermarks: BTreeMap<i32, i64>,
    /// The metadata index of the entry that last created partitions of this topic
    /// (CreateTopic, AddPartitions): a broker that applied it knows all of them. 0 for
    /// topics stored before it was recorded (every broker knows those).
    #[serde(default)]
    pub created_index: u64,
    /// Replicas (broker ids) offline after a storage error, by partition.
    #[serde(default)]
    pub offline: BTreeMap<i32, BTreeSet<i32>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicState>,
    /// Dynamic broker configs (AlterConfigs on BROKER resources).
    #[serde(default)]
    pub broker_configs: DynamicConfigs,
    /// The first producer id not handed out yet (ids are reserved in blocks).
    #[serde(default)]
    pub next_producer_id: i64,
    /// The metadata log index this state has applied; while `apply` runs, the index of the
    /// entry being applied (set by the state machine): the same on every broker.
    #[serde(default)]
    pub applied_index: u64,
    /// The cluster's source of offsets, fixed by the first registration that names one.
    #[serde(default)]
    pub sequencer: Option<SequencerKind>,
}

fn unreported(n: usize) -> Vec<PartitionState> {
    vec![
        PartitionState {
            leader: -1,
            epoch: -1,
            isr: Vec::new(),
        };
        n
    ]
}

impl ClusterState {
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaReply {
        if let MetaCommand::AllocateProducerIds { count } = cmd {
            return self.allocate_producer_ids(*count);
        }
        let rejected = match cmd {
            MetaCommand::RegisterBroker { info, cluster_id } => self.register(info, cluster_id),
            MetaCommand::CreateTopic(record) => self.create_topic(record),
            MetaCommand::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => None,
                None => Some(Rejection::UnknownTopic(name.clone())),
            },
            MetaCommand::AddPartitions { name, replicas } => self.add_partitions(name, replicas),
            MetaCommand::AlterTopicConfigs { name, configs } => match self.topics.get_mut(name) {
                Some(t) => {
                    t.record.configs = configs.clone();
                    None
                }
                None => Some(Rejection::UnknownTopic(name.clone())),
            },
            MetaCommand::PartitionStates(reports) => {
                for r in reports {
                    self.report(r);
                }
                None
            }
            MetaCommand::AlterConfigs {
                target,
                replace,
                ops,
            } => self.alter_configs(target, *replace, ops),
            MetaCommand::AllocateProducerIds { .. } => None,
            MetaCommand::DeleteRecords {
                name,
                topic_id,
                partition,
                low_watermark,
            } => self.delete_records(name, topic_id, *partition, *low_watermark),
            MetaCommand::ReplicaStorage {
                topic_id,
                partition,
                broker,
                offline,
            } => self.replica_storage(topic_id, *partition, *broker, *offline),
        };
        MetaReply {
            rejected,
            producer_ids: None,
        }
    }

    fn register(&mut self, info: &BrokerInfo, cluster_id: &str) -> Option<Rejection> {
        if let Some(why) = self.sequencer_conflict(info.id, info.sequencer) {
            return Some(Rejection::SequencerMismatch(why));
        }
        if self.cluster_id.is_none() {
            self.cluster_id = Some(cluster_id.to_string());
        }
        if info.sequencer.is_some() {
            self.sequencer = info.sequencer;
        }
        self.brokers.insert(info.id, info.clone());
        None
    }

    /// Why broker `id` numbering offsets with `kind` would give the cluster a second number
    /// source (two brokers handing out the same offsets); `None` when it may take part. The
    /// cluster's kind is the one its first registration named. A cluster of one (no other
    /// broker registered) may change its own sequencer: there is still one source.
    pub fn sequencer_conflict(&self, id: i32, kind: Option<SequencerKind>) -> Option<String> {
        let (Some(cluster), Some(kind)) = (self.sequencer, kind) else {
            return None;
        };
        let others: Vec<i32> = self.brokers.keys().copied().filter(|b| *b != id).collect();
        if cluster == kind || others.is_empty() {
            return None;
        }
        Some(format!(
            "broker {id} numbers offsets with the {kind} sequencer, but the cluster it joins \
             (brokers {others:?}) uses the {cluster} sequencer: two number sources would hand \
             out the same offsets; start this broker with --sequencer {cluster} (a cluster of \
             several brokers needs --sequencer ring on every broker)"
        ))
    }

    /// Reserves `count` producer ids. Every broker applies the same entries, so each block is
    /// handed out once in the cluster, also across restarts (the state is persisted).
    fn allocate_producer_ids(&mut self, count: u32) -> MetaReply {
        let first = self.next_producer_id.max(0);
        match first.checked_add(i64::from(count)) {
            Some(end) if count > 0 => {
                self.next_producer_id = end;
                MetaReply {
                    rejected: None,
                    producer_ids: Some((first, end)),
                }
            }
            _ => MetaReply {
                rejected: Some(Rejection::Invalid(format!(
                    "cannot reserve {count} producer ids after {first}"
                ))),
                producer_ids: None,
            },
        }
    }

    /// The config set `target` would have after `ops`, validated; what AlterConfigs stores.
    pub fn altered_configs(
        &self,
        target: &ConfigTarget,
        replace: bool,
        ops: &[ConfigOp],
    ) -> Result<BTreeMap<String, String>, Rejection> {
        let none = BTreeMap::new();
        let current = match target {
            ConfigTarget::Topic(name) => match self.topics.get(name) {
                Some(t) => &t.record.configs,
                None => return Err(Rejection::UnknownTopic(name.clone())),
            },
            ConfigTarget::Broker(id) => self.broker_configs.get(id).unwrap_or(&none),
        };
        // APPEND/SUBTRACT of a key without a value here start from the Kafka default.
        let default = |name: &str| {
            let topic_name = topic_config::topic_name_of(name).unwrap_or(name);
            topic_config::kafka_default(topic_name).map(String::from)
        };
        let next =
            topic_config::apply_ops(current, replace, ops, default).map_err(Rejection::Invalid)?;
        match target {
            ConfigTarget::Topic(_) => topic_config::validate(&next),
            ConfigTarget::Broker(_) => topic_config::validate_broker(&next),
        }
        .map_err(Rejection::Invalid)?;
        Ok(next)
    }

    fn alter_configs(
        &mut self,
        target: &ConfigTarget,
        replace: bool,
        ops: &[ConfigOp],
    ) -> Option<Rejection> {
        let next = match self.altered_configs(target, replace, ops) {
            Ok(n) => n,
            Err(r) => return Some(r),
        };
        match target {
            ConfigTarget::Topic(name) => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.record.configs = next;
                }
            }
            ConfigTarget::Broker(id) if next.is_empty() => {
                self.broker_configs.remove(id);
            }
            ConfigTarget::Broker(id) => {
                self.broker_configs.insert(id.clone(), next);
            }
        }
        None
    }

    fn create_topic(&mut self, record: &TopicRecord) -> Option<Rejection> {
        if self.topics.contains_key(&record.name) {
            return Some(Rejection::TopicExists(record.name.clone()));
        }
        if record.replicas.len() != record.partitions as usize {
            return Some(Rejection::Invalid(format!(
                "{} replica lists for {} partitions",
                record.replicas.len(),
                record.partitions
            )));
        }
        self.topics.insert(
            record.name.clone(),
            TopicState {
                record: record.clone(),
                partitions: unreported(record.replicas.len()),
                low_watermarks: BTreeMap::new(),
                created_index: self.applied_index,
                offline: BTreeMap::new(),
            },
        );
        None
    }

    fn add_partitions(&mut self, name: &str, replicas: &[Vec<i32>]) -> Option<Rejection> {
        let Some(t) = self.topics.get_mut(name) else {
            return Some(Rejection::UnknownTopic(name.to_string()));
        };
        t.record.replicas.extend(replicas.iter().cloned());
        t.record.partitions = t.record.replicas.len() as i32;
        t.partitions.extend(unreported(replicas.len()));
        t.created_index = self.applied_index;
        None
    }

    /// Accepts a report from the partition's current leader: a newer epoch, or the same
    /// epoch and leader (an ISR change). Reports from deposed leaders, and from a replica
    /// that went offline (a report it sent just before), are ignored; offline replicas are
    /// never in the ISR.
    fn report(&mut self, r: &PartitionReport) {
        let Some(t) = self.topics.values_mut().find(|t| t.record.id == r.topic_id) else {
            return;
        };
        let offline = t.offline.get(&r.partition).cloned().unwrap_or_default();
        if offline.contains(&r.leader) {
            return;
        }
        let Some(p) = usize::try_from(r.partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
        else {
            return;
        };
        if r.epoch > p.epoch || (r.epoch == p.epoch && r.leader == p.leader) {
            p.leader = r.leader;
            p.epoch = r.epoch;
            p.isr = r.isr.clone();
            p.isr.retain(|b| !offline.contains(b));
        }
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&TopicState> {
        self.topics.values().find(|t| &t.record.id == id)
    }

    pub fn partition_count(&self) -> usize {
        self.topics.values().map(|t| t.partitions.len()).sum()
    }

    /// Replica lists for `count` new partitions with `rf` replicas each over the registered
    /// brokers: partition p's replicas start at broker (start + p) mod n, so preferred
    /// leaders (the first replica) spread evenly, and `start` continues where the cluster's
    /// existing partitions left off so small topics do not all lead on the same broker.
    pub fn place(&self, count: usize, rf: usize) -> Result<Vec<Vec<i32>>, Rejection> {
        let brokers: Vec<i32> = self.brokers.keys().copied().collect();
        if rf == 0 || rf > brokers.len() {
            return Err(Rejection::Invalid(format!(
                "replication factor {rf} is not possible with {} registered broker(s)",
                brokers.len()
            )));
        }
        let n = brokers.len();
        let start = self.partition_count() % n;
        Ok((0..count)
            .map(|p| (0..rf).map(|r| brokers[(start + p + r) % n]).collect())
            .collect())
    }

    /// Checks operator-given replica lists.
    pub fn check_assignment(&self, replicas: &[Vec<i32>]) -> Result<(), Rejection> {
        let rf = replicas.first().map_or(0, Vec::len);
        for (p, list) in replicas.iter().enumerate() {
            let unique: BTreeSet<_> = list.iter().collect();
            if list.is_empty() || unique.len() != list.len() || list.len() != rf {
                return Err(Rejection::Invalid(format!(
                    "partition {p}: replicas {list:?} must be {rf} distinct brokers"
                )));
            }
            if let Some(b) = list.iter().find(|b| !self.brokers.contains_key(b)) {
                return Err(Rejection::Invalid(format!(
                    "partition {p}: broker {b} is not registered"
                )));
            }
        }
        Ok(())
    }
}

impl ClusterState {
    fn delete_records(
        &mut self,
        name: &str,
        topic_id: &[u8; 16],
        partition: i32,
        low_watermark: i64,
    ) -> Option<Rejection> {
        let Some(t) = self
            .topics
            .get_mut(name)
            .filter(|t| &t.record.id == topic_id)
        else {
            return Some(Rejection::UnknownTopic(name.to_string()));
        };
        if partition < 0 || partition >= t.record.partitions {
            return Some(Rejection::Invalid(format!(
                "topic '{name}' has no partition {partition}"
            )));
        }
        let lw = t.low_watermarks.entry(partition).or_insert(0);
        *lw = (*lw).max(low_watermark);
        None
    }

    /// Marks a replica offline (out of the ISR; no longer the leader) or online again.
    fn replica_storage(
        &mut self,
        topic_id: &[u8; 16],
        partition: i32,
        broker: i32,
        offline: bool,
    ) -> Option<Rejection> {
        let Some(t) = self.topics.values_mut().find(|t| &t.record.id == topic_id) else {
            return Some(Rejection::UnknownTopic(format!("{topic_id:02x?}")));
        };
        let Some(p) = usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
        else {
            return Some(Rejection::Invalid(format!(
                "topic '{}' has no partition {partition}",
                t.record.name
            )));
        };
        if offline {
            p.isr.retain(|b| *b != broker);
            if p.leader == broker {
                // Its successor reports a newer epoch; until then there is no leader.
                p.leader = -1;
            }
            t.offline.entry(partition).or_default().insert(broker);
        } else if let Some(set) = t.offline.get_mut(&partition) {
            set.remove(&broker);
            if set.is_empty() {
                t.offline.remove(&partition);
            }
        }
        None
    }

    /// Brokers whose replica of the partition is offline after a storage error.
    pub fn offline_replicas(&self, topic_id: &[u8; 16], partition: i32) -> BTreeSet<i32> {
        self.topic_by_id(topic_id)
            .and_then(|t| t.offline.get(&partition))
            .cloned()
            .unwrap_or_default()
    }

    /// The DeleteRecords low watermark of a partition (0 when none was requested).
    pub fn low_watermark(&self, name: &str, partition: i32) -> i64 {
        self.topics
            .get(name)
            .and_then(|t| t.low_watermarks.get(&partition))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_records_only_raises_the_low_watermark() {
        let mut s = three_brokers();
        s.apply(&topic("t", 7, vec![vec![1, 2, 3], vec![2, 3, 1]]));
        let del = |lw: i64, id: u8, partition: i32| MetaCommand::DeleteRecords {
            name: "t".into(),
            topic_id: [id; 16],
            partition,
            low_watermark: lw,
        };
        assert_eq!(s.apply(&del(100, 7, 1)).rejected, None);
        assert_eq!(s.low_watermark("t", 1), 100);
        assert_eq!(s.low_watermark("t", 0), 0);
        assert_eq!(s.apply(&del(50, 7, 1)).rejected, None);
        assert_eq!(s.low_watermark("t", 1), 100, "never lowered");
        assert!(
            s.apply(&del(200, 8, 1)).rejected.is_some(),
            "another topic id"
        );
        assert!(
            s.apply(&del(200, 7, 2)).rejected.is_some(),
            "no such partition"
        );
        assert_eq!(s.low_watermark("t", 1), 100);
        // Older snapshots (without the field) still decode.
        let json = serde_json::to_value(&s).expect("json");
        let mut t = json["topics"]["t"].clone();
        t.as_object_mut().expect("object").remove("low_watermarks");
        let back: TopicState = serde_json::from_value(t).expect("decode");
        assert!(back.low_watermarks.is_empty());
    }

    fn broker(id: i32) -> MetaCommand {
        broker_with(id, Some(SequencerKind::Ring))
    }

    fn broker_with(id: i32, sequencer: Option<SequencerKind>) -> MetaCommand {
        MetaCommand::RegisterBroker {
            info: BrokerInfo {
                id,
                raft_addr: format!("b{id}:9093"),
                endpoints: vec![],
                sequencer,
            },
            cluster_id: format!("c{id}"),
        }
    }

    #[test]
    fn the_first_registration_fixes_the_number_source() {
        use SequencerKind::{Local, Ring};
        let mut s = ClusterState::default();
        assert!(s.apply(&broker_with(1, Some(Local))).rejected.is_none());
        assert_eq!(s.sequencer, Some(Local));
        // A second broker with another sequencer is refused and changes nothing.
        let r = s.apply(&broker_with(2, Some(Ring))).rejected;
        let Some(Rejection::SequencerMismatch(why)) = r else {
            panic!("not refused: {r:?}");
        };
        assert!(
            why.contains("broker 2") && why.contains("--sequencer local"),
            "{why}"
        );
        assert_eq!(s.brokers.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.sequencer, Some(Local));
        // The same kind joins.
        assert!(s.apply(&broker_with(3, Some(Local))).rejected.is_none());
        // Now that others are registered, a member cannot switch either.
        let r = s.apply(&broker_with(1, Some(Ring))).rejected;
        assert!(matches!(r, Some(Rejection::SequencerMismatch(_))), "{r:?}");
        assert_eq!(s.brokers[&1].sequencer, Some(Local));
    }

    #[test]
    fn a_cluster_of_one_may_change_its_sequencer() {
        use SequencerKind::{Local, Ring};
        let mut s = ClusterState::default();
        s.apply(&broker_with(1, Some(Local)));
        assert!(s.apply(&broker_with(1, Some(Ring))).rejected.is_none());
        assert_eq!(s.sequencer, Some(Ring));
        assert!(s.apply(&broker_with(2, Some(Ring))).rejected.is_none());
        assert!(s.sequencer_conflict(3, Some(Local)).is_some());
        assert!(s.sequencer_conflict(3, Some(Ring)).is_none());
    }

    #[test]
    fn registrations_without_a_sequencer_still_apply() {
        // Entries and snapshots written before brokers reported their sequencer.
        let mut s = ClusterState::default();
        assert!(s.apply(&broker_with(1, None)).rejected.is_none());
        assert_eq!(s.sequencer, None);
        assert!(s
            .apply(&broker_with(2, Some(SequencerKind::Ring)))
            .rejected
            .is_none());
        assert_eq!(s.sequencer, Some(SequencerKind::Ring));
        assert!(s.apply(&broker_with(3, None)).rejected.is_none());
        let old: ClusterState = serde_json::from_str(
            r#"{"cluster_id":"c","brokers":{"1":{"id":1,"raft_addr":"b1:9093","endpoints":[]}},"topics":{}}"#,
        )
        .expect("old snapshot");
        assert_eq!(old.sequencer, None);
        assert_eq!(old.brokers[&1].sequencer, None);
        let json = serde_json::to_string(&s).expect("encode");
        let back: ClusterState = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.sequencer, Some(SequencerKind::Ring));
        assert_eq!(back.brokers[&2].sequencer, Some(SequencerKind::Ring));
    }

    fn topic(name: &str, id: u8, replicas: Vec<Vec<i32>>) -> MetaCommand {
        MetaCommand::CreateTopic(TopicRecord {
            name: name.into(),
            id: [id; 16],
            partitions: replicas.len() as i32,
            configs: BTreeMap::new(),
            replicas,
        })
    }

    fn alter(target: ConfigTarget, replace: bool, ops: Vec<ConfigOp>) -> MetaCommand {
        MetaCommand::AlterConfigs {
            target,
            replace,
            ops,
        }
    }

    #[test]
    fn alter_configs_replace_increment_and_validate() {
        let mut s = three_brokers();
        s.apply(&topic("t", 1, vec![vec![1]]));
        let t = || ConfigTarget::Topic("t".into());
        let set = |n: &str, v: &str| ConfigOp::Set(n.into(), v.into());
        let configs = |s: &ClusterState| s.topics["t"].record.configs.clone();
        assert!(s
            .apply(&alter(t(), false, vec![set("retention.ms", "1000")]))
            .rejected
            .is_none());
        // Incremental: other keys stay.
        s.apply(&alter(t(), false, vec![set("segment.bytes", "4096")]));
        assert_eq!(configs(&s).len(), 2);
        // APPEND to a list starts from the default ("delete").
        s.apply(&alter(
            t(),
            false,
            vec![ConfigOp::Append("cleanup.policy".into(), "compact".into())],
        ));
        assert_eq!(configs(&s)["cleanup.policy"], "delete,compact");
        s.apply(&alter(
            t(),
            false,
            vec![ConfigOp::Subtract("cleanup.policy".into(), "delete".into())],
        ));
        assert_eq!(configs(&s)["cleanup.policy"], "compact");
        // APPEND on a non-list, bad values and unknown names change nothing.
        let before = configs(&s);
        for bad in [
            ConfigOp::Append("retention.ms".into(), "1".into()),
            set("retention.ms", "soon"),
            set("no.such.config", "1"),
        ] {
            let r = s.apply(&alter(t(), false, vec![bad.clone()]));
            assert!(matches!(r.rejected, Some(Rejection::Invalid(_))), "{bad:?}");
            assert_eq!(configs(&s), before);
        }
        // Replace: only what the request names remains.
        s.apply(&alter(t(), true, vec![set("retention.bytes", "10")]));
        assert_eq!(
            configs(&s).keys().collect::<Vec<_>>(),
            vec!["retention.bytes"]
        );
        let r = s.apply(&alter(ConfigTarget::Topic("nope".into()), false, vec![]));
        assert_eq!(r.rejected, Some(Rejection::UnknownTopic("nope".into())));
    }

    #[test]
    fn dynamic_broker_configs_take_broker_names_only() {
        let mut s = three_brokers();
        let b = |id: &str| ConfigTarget::Broker(id.into());
        let set = |n: &str, v: &str| ConfigOp::Set(n.into(), v.into());
        assert!(s
            .apply(&alter(b(""), false, vec![set("log.retention.ms", "5000")]))
            .rejected
            .is_none());
        assert!(s
            .apply(&alter(b("2"), false, vec![set("message.max.bytes", "100")]))
            .rejected
            .is_none());
        assert_eq!(s.broker_configs[""]["log.retention.ms"], "5000");
        // The topic name is not a broker config; static-only configs are refused.
        for name in ["retention.ms", "broker.id", "log.dirs"] {
            let r = s.apply(&alter(b(""), false, vec![set(name, "1")]));
            assert!(matches!(r.rejected, Some(Rejection::Invalid(_))), "{name}");
        }
        // Deleting the last key forgets the resource.
        s.apply(&alter(
            b("2"),
            false,
            vec![ConfigOp::Delete("message.max.bytes".into())],
        ));
        assert!(!s.broker_configs.contains_key("2"));
    }

    fn three_brokers() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&broker(id));
        }
        s
    }

    #[test]
    fn topics_remember_the_index_that_created_their_partitions() {
        let mut s = three_brokers();
        s.applied_index = 7;
        s.apply(&topic("a", 1, vec![vec![1, 2, 3]]));
        assert_eq!(s.topics["a"].created_index, 7);
        s.applied_index = 9;
        s.apply(&MetaCommand::AddPartitions {
            name: "a".into(),
            replicas: vec![vec![2, 3, 1]],
        });
        assert_eq!(
            s.topics["a"].created_index, 9,
            "new partitions: the later entry"
        );
        s.applied_index = 11;
        s.apply(&MetaCommand::AlterTopicConfigs {
            name: "a".into(),
            configs: BTreeMap::new(),
        });
        assert_eq!(s.topics["a"].created_index, 9, "other commands leave it");
    }

    #[test]
    fn first_registration_fixes_the_cluster_id() {
        let s = three_brokers();
        assert_eq!(s.cluster_id.as_deref(), Some("c1"));
        assert_eq!(s.brokers.len(), 3);
    }

    #[test]
    fn placement_balances_preferred_leaders() {
        let mut s = three_brokers();
        let r = s.place(12, 3).expect("place");
        let mut leaders = BTreeMap::new();
        for list in &r {
            assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), 3);
            *leaders.entry(list[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
        // Single-partition topics rotate their leader.
        let mut firsts = Vec::new();
        for i in 0..3u8 {
            let r = s.place(1, 1).expect("place");
            firsts.push(r[0][0]);
            s.apply(&topic(&format!("t{i}"), i, r));
        }
        firsts.sort();
        assert_eq!(firsts, vec![1, 2, 3]);
        assert!(s.place(1, 4).is_err());
    }

    #[test]
    fn topics_are_created_once_and_deleted() {
        let mut s = three_brokers();
        let cmd = topic("a", 1, vec![vec![1, 2, 3]]);
        assert!(s.apply(&cmd).rejected.is_none());
        assert_eq!(
            s.apply(&cmd).rejected,
            Some(Rejection::TopicExists("a".into()))
        );
        assert_eq!(s.topics["a"].partitions[0].leader, -1);
        s.apply(&MetaCommand::AddPartitions {
            name: "a".into(),
            replicas: vec![vec![2, 3, 1]],
        });
        assert_eq!(s.topics["a"].record.partitions, 2);
        assert!(s
            .apply(&MetaCommand::DeleteTopic { name: "a".into() })
            .rejected
            .is_none());
        assert!(s.topics.is_empty());
    }

    /// A leader's report for partition 0 of the topic with id [1; 16].
    fn report(leader: i32, epoch: i32, isr: Vec<i32>) -> MetaCommand {
        MetaCommand::PartitionStates(vec![PartitionReport {
            topic_id: [1; 16],
            partition: 0,
            leader,
            epoch,
            isr,
        }])
    }

    #[test]
    fn stale_leader_reports_are_ignored() {
        let mut s = three_brokers();
        s.apply(&topic("a", 1, vec![vec![1, 2, 3]]));
        s.apply(&report(1, 3, vec![1, 2, 3]));
        s.apply(&report(2, 4, vec![2, 3]));
        // The old leader wakes up and reports its old term: ignored.
        s.apply(&report(1, 3, vec![1]));
        // Same epoch, other leader: impossible in Raft, ignored.
        s.apply(&report(3, 4, vec![3]));
        let p = &s.topics["a"].partitions[0];
        assert_eq!((p.leader, p.epoch, p.isr.clone()), (2, 4, vec![2, 3]));
        // The leader's ISR change is taken.
        s.apply(&report(2, 4, vec![1, 2, 3]));
        assert_eq!(s.topics["a"].partitions[0].isr, vec![1, 2, 3]);
    }

    #[test]
    fn producer_id_blocks_are_disjoint_and_survive_a_snapshot() {
        let mut s = three_brokers();
        let a = s.apply(&MetaCommand::AllocateProducerIds { count: 1000 });
        let b = s.apply(&MetaCommand::AllocateProducerIds { count: 1000 });
        assert_eq!(a.producer_ids, Some((0, 1000)));
        assert_eq!(b.producer_ids, Some((1000, 2000)));
        // The state is what a snapshot holds (JSON); a restored state continues after it.
        let mut restored: ClusterState =
            serde_json::from_slice(&serde_json::to_vec(&s).expect("encode")).expect("decode");
        let c = restored.apply(&MetaCommand::AllocateProducerIds { count: 5 });
        assert_eq!(c.producer_ids, Some((2000, 2005)));
        // A snapshot written before producer ids existed starts at 0.
        let old: ClusterState =
            serde_json::from_str(r#"{"cluster_id":null,"brokers":{},"topics":{}}"#)
                .expect("old snapshot");
        assert_eq!(old.next_producer_id, 0);
        // Nothing, or past the last id, is refused and changes nothing.
        assert!(restored
            .apply(&MetaCommand::AllocateProducerIds { count: 0 })
            .rejected
            .is_some());
        restored.next_producer_id = i64::MAX - 1;
        let r = restored.apply(&MetaCommand::AllocateProducerIds { count: 5 });
        assert!(r.rejected.is_some() && r.producer_ids.is_none());
        assert_eq!(restored.next_producer_id, i64::MAX - 1);
    }

    #[test]
    fn an_offline_replica_leaves_the_isr_and_cannot_lead_until_it_is_back() {
        let mut s = three_brokers();
        s.apply(&topic("a", 1, vec![vec![1, 2, 3], vec![2, 3, 1]]));
        let storage = |broker, offline| MetaCommand::ReplicaStorage {
            topic_id: [1; 16],
            partition: 0,
            broker,
            offline,
        };
        s.apply(&report(1, 3, vec![1, 2, 3]));
        assert!(s.apply(&storage(1, true)).rejected.is_none());
        let p = &s.topics["a"].partitions[0];
        assert_eq!((p.leader, p.epoch, p.isr.clone()), (-1, 3, vec![2, 3]));
        assert_eq!(s.offline_replicas(&[1; 16], 0), BTreeSet::from([1]));
        assert!(s.offline_replicas(&[1; 16], 1).is_empty());
        // A report the failed leader sent just before is ignored.
        s.apply(&report(1, 3, vec![1, 2, 3]));
        assert_eq!(s.topics["a"].partitions[0].leader, -1);
        // The successor's ISR never holds the offline replica.
        s.apply(&report(2, 4, vec![1, 2, 3]));
        let p = &s.topics["a"].partitions[0];
        assert_eq!((p.leader, p.epoch, p.isr.clone()), (2, 4, vec![2, 3]));
        // Back after a restart: listed online, taken into the ISR by the next report.
        s.apply(&storage(1, false));
        assert!(s.offline_replicas(&[1; 16], 0).is_empty());
        assert!(s.topics["a"].offline.is_empty());
        s.apply(&report(2, 4, vec![1, 2, 3]));
        assert_eq!(s.topics["a"].partitions[0].isr, vec![1, 2, 3]);
        // Unknown topic or partition: refused.
        let bad = MetaCommand::ReplicaStorage {
            topic_id: [9; 16],
            partition: 0,
            broker: 1,
            offline: true,
        };
        assert!(s.apply(&bad).rejected.is_some());
        let bad = MetaCommand::ReplicaStorage {
            topic_id: [1; 16],
            partition: 7,
            broker: 1,
            offline: true,
        };
        assert!(s.apply(&bad).rejected.is_some());
    }

    #[test]
    fn assignments_are_checked() {
        let s = three_brokers();
        assert!(s.check_assignment(&[vec![1, 2], vec![2, 3]]).is_ok());
        assert!(s.check_assignment(&[vec![1, 1]]).is_err());
        assert!(s.check_assignment(&[vec![1, 2], vec![3]]).is_err());
        assert!(s.check_assignment(&[vec![1, 9]]).is_err());
    }
}
