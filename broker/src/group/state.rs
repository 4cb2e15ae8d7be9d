//! The classic consumer-group protocol as a state machine, free of I/O.
//!
//! A [`GroupShard`] holds every group of one `__consumer_offsets` partition. Requests go in
//! with the current time (milliseconds) and a [`Waiter`] naming where the answer goes;
//! answers and log writes come out as [`Output`]s, which the caller drains after each call.
//! Long polls (JoinGroup, SyncGroup) are answers that come out later, from another call:
//! another member's join, a timer ([`GroupShard::tick`]) or a finished write
//! ([`GroupShard::write_done`]). Nothing here reads a clock, spawns, or touches a socket,
//! so the unit tests below drive it step by step with a fake clock.
//!
//! The transitions follow Kafka's classic group coordinator: states Empty,
//! PreparingRebalance, CompletingRebalance, Stable (Dead = removed); the join phase ends when
//! every member rejoined or the rebalance timeout passed (for an empty group, after
//! `group.initial.rebalance.delay.ms`, extended while new members keep arriving); the leader's
//! SyncGroup assignment is written to the log before anyone gets it; members are removed when
//! their session expires, when they miss the join phase, or when they never sync.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use kafka_protocol::ResponseError as E;

use super::store::{GroupValue, LogError, MemberValue, OffsetValue, Record};
use super::GroupConfig;

/// Names a pending answer: the caller maps it to whoever is waiting.
pub type Waiter = u64;
/// Names a log write the shard asked for.
pub type WriteId = u64;

const NONE: i16 = 0;

fn code(e: E) -> i16 {
    e.code()
}

/// Longest group id, member id, instance id, client id or protocol name kept (they are
/// stored as Kafka strings, at most i16::MAX bytes).
pub const MAX_ID_BYTES: usize = 8192;
/// Most protocol metadata one member may send (all protocols together).
pub const MAX_MEMBER_METADATA: usize = 1 << 20;
/// An empty group without offsets is forgotten this long after it became empty.
pub const EMPTY_GROUP_RETENTION_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka reports (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

// ---- requests and answers ------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a member without an id first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata, for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    pub fn error(member_id: &str, error: i16) -> Self {
        JoinResponse {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub fn error(error: i16) -> Self {
        SyncResponse {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberIdentity {
    pub member_id: String,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveResult {
    pub error: i16,
    pub members: Vec<(MemberIdentity, i16)>,
}

#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub offsets: Vec<CommitOffset>,
}

#[derive(Debug, Clone)]
pub struct CommitOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Per partition: (topic, partition, error code).
pub type PartitionErrors = Vec<(String, i32, i16)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(JoinResponse),
    Sync(SyncResponse),
    Commit(PartitionErrors),
    DeleteGroups(Vec<(String, i16)>),
    /// Top-level error, per-partition errors.
    OffsetDelete(i16, PartitionErrors),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Answer the request waiting as `Waiter`.
    Reply(Waiter, Reply),
    /// Append these records (acks=all) and report back with `write_done(id, ..)`.
    Write(WriteId, Vec<Record>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

/// A committed offset as OffsetFetch reports it.
pub type FetchedOffset = (String, i32, Option<OffsetValue>);

// ---- groups ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<Waiter>,
    sync_waiter: Option<Waiter>,
    last_heartbeat: i64,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// When the session expires; none while a JoinGroup or SyncGroup of it is pending
    /// (the rebalance timeout governs those).
    fn session_deadline(&self) -> Option<i64> {
        if self.join_waiter.is_some() || self.sync_waiter.is_some() {
            None
        } else {
            Some(self.last_heartbeat + i64::from(self.session_timeout_ms))
        }
    }
}

#[derive(Debug, Clone)]
struct Committed {
    value: OffsetValue,
    /// Log offset of the record, so a late acknowledgement never overwrites a newer commit.
    log_offset: i64,
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    state: GroupState,
    state_timestamp: i64,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// group.instance.id → member id.
    static_members: HashMap<String, String>,
    /// Members told MEMBER_ID_REQUIRED, with the time they must rejoin by.
    pending_members: HashMap<String, i64>,
    /// Members of the current generation that have not sent SyncGroup yet.
    pending_sync: HashSet<String>,
    join_deadline: Option<i64>,
    /// Initial delayed join of an empty group: rebalance time left after the current delay.
    initial_join_remaining: Option<i64>,
    new_member_added: bool,
    sync_deadline: Option<i64>,
    offsets: BTreeMap<(String, i32), Committed>,
}

impl Group {
    fn new(id: &str, now: i64) -> Self {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            state_timestamp: now,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            join_deadline: None,
            initial_join_remaining: None,
            new_member_added: false,
            sync_deadline: None,
            offsets: BTreeMap::new(),
        }
    }

    fn transition(&mut self, state: GroupState, now: i64) {
        self.state = state;
        self.state_timestamp = now;
    }

    fn size(&self) -> usize {
        self.members.len() + self.pending_members.len()
    }

    fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|m| m != member_id)
    }

    fn rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> BTreeSet<&str> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return BTreeSet::new();
        };
        let mut set: BTreeSet<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for m in members {
            let theirs: BTreeSet<&str> = m.protocols.iter().map(|(n, _)| n.as_str()).collect();
            set = set.intersection(&theirs).copied().collect();
        }
        set
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type) && {
            let candidates = self.candidate_protocols();
            protocols
                .iter()
                .any(|(n, _)| candidates.contains(n.as_str()))
        }
    }

    /// Kafka's vote: each member names its most preferred protocol that all support; the
    /// one with most votes wins (ties: the leader's preference order).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(n.as_str()))
            {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        let order: Vec<&str> = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .or_else(|| self.members.values().next())
            .map(|m| m.protocols.iter().map(|(n, _)| n.as_str()).collect())
            .unwrap_or_default();
        order
            .into_iter()
            .find(|n| votes.get(n) == Some(&best))
            .or_else(|| votes.iter().find(|(_, v)| **v == best).map(|(n, _)| *n))
            .map(str::to_string)
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    fn current_member_metadata(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata(&protocol),
            })
            .collect()
    }

    fn join_result(&self, member_id: &str, members: Vec<JoinedMember>, leader: String) -> Reply {
        Reply::Join(JoinResponse {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        })
    }

    /// The record that stores this group (with `assignment` for its members, when given).
    fn value(&self, assignment: Option<&HashMap<String, Bytes>>) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: match assignment {
                        Some(a) => a.get(&m.id).cloned().unwrap_or_default(),
                        None => m.assignment.clone(),
                    },
                })
                .collect(),
        }
    }

    fn record(&self, assignment: Option<&HashMap<String, Bytes>>) -> Record {
        Record::Group {
            group: self.id.clone(),
            value: Some(self.value(assignment)),
        }
    }

    /// Topics the members of a consumer group subscribe to (None: unknown / not a consumer
    /// group).
    fn subscribed_topics(&self) -> Option<HashSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_ref()?;
        let mut topics = HashSet::new();
        for m in self.members.values() {
            topics.extend(consumer_subscription_topics(&m.metadata(protocol))?);
        }
        Some(topics)
    }

    fn next_deadline(&self) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut at = |t: i64| next = Some(next.map_or(t, |n| n.min(t)));
        for d in self.pending_members.values() {
            at(*d);
        }
        for m in self.members.values() {
            if let Some(d) = m.session_deadline() {
                at(d);
            }
        }
        if self.state == GroupState::PreparingRebalance {
            if let Some(d) = self.join_deadline {
                at(d);
            }
        }
        if !self.pending_sync.is_empty() {
            if let Some(d) = self.sync_deadline {
                at(d);
            }
        }
        if self.state == GroupState::Empty && self.offsets.is_empty() {
            at(self.state_timestamp + EMPTY_GROUP_RETENTION_MS);
        }
        next
    }
}

/// Topics of a consumer-protocol subscription (version i16, then an array of strings).
fn consumer_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut rest = metadata.get(2..)?;
    let count = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    rest = &rest[4..];
    let count = usize::try_from(count).ok()?;
    let mut topics = Vec::with_capacity(count.min(rest.len() / 2));
    for _ in 0..count {
        let len = i16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        let name = rest.get(2..2 + len)?;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
        rest = &rest[2 + len..];
    }
    Some(topics)
}

// ---- pending writes -------------------------------------------------------------------------

#[derive(Debug)]
enum PendingWrite {
    /// Offsets to apply once written; `errors` holds partitions refused before the write.
    Commit {
        waiter: Waiter,
        group: String,
        offsets: Vec<(String, i32, OffsetValue)>,
        errors: PartitionErrors,
    },
    /// The leader's assignment for `generation`.
    SyncStore {
        group: String,
        generation: i32,
        assignment: HashMap<String, Bytes>,
    },
    /// A static member replaced its predecessor in a stable group.
    StaticJoin {
        waiter: Waiter,
        group: String,
        member_id: String,
        leader: String,
    },
    DeleteGroups {
        waiter: Waiter,
        results: Vec<(String, i16)>,
        deleted: Vec<Group>,
    },
    OffsetDelete {
        waiter: Waiter,
        results: PartitionErrors,
    },
    /// Nobody waits (an empty generation, a forgotten group).
    Background,
}

/// Kafka's mapping of append errors for group metadata writes.
fn store_group_error(e: &LogError) -> i16 {
    match e {
        LogError::NotLeader => code(E::NotCoordinator),
        LogError::Unavailable(_) | LogError::Timeout | LogError::Read(_) => {
            code(E::CoordinatorNotAvailable)
        }
        LogError::TooLarge(_) => code(E::UnknownServerError),
    }
}

/// ... and for offset commits.
fn store_offsets_error(e: &LogError) -> i16 {
    match e {
        LogError::NotLeader => code(E::NotCoordinator),
        LogError::Unavailable(_) | LogError::Read(_) => code(E::CoordinatorNotAvailable),
        LogError::Timeout => code(E::RequestTimedOut),
        LogError::TooLarge(_) => code(E::InvalidCommitOffsetSize),
    }
}

// ---- the shard ------------------------------------------------------------------------------

/// All groups of one offsets-topic partition.
pub struct GroupShard {
    config: GroupConfig,
    groups: HashMap<String, Group>,
    timers: BTreeSet<(i64, String)>,
    scheduled: HashMap<String, i64>,
    pending_writes: HashMap<WriteId, PendingWrite>,
    next_write: WriteId,
    id_seed: u64,
    id_counter: u64,
    out: Vec<Output>,
}

impl GroupShard {
    /// `id_seed` makes generated member ids unique across shard incarnations.
    pub fn new(config: GroupConfig, id_seed: u64) -> Self {
        GroupShard {
            config,
            groups: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: HashMap::new(),
            pending_writes: HashMap::new(),
            next_write: 1,
            id_seed,
            id_counter: 0,
            out: Vec::new(),
        }
    }

    /// Answers and writes produced since the last drain, in order.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn reply(&mut self, waiter: Waiter, reply: Reply) {
        self.out.push(Output::Reply(waiter, reply));
    }

    fn write(&mut self, records: Vec<Record>, pending: PendingWrite) {
        let id = self.next_write;
        self.next_write += 1;
        self.pending_writes.insert(id, pending);
        self.out.push(Output::Write(id, records));
    }

    fn new_member_id(&mut self, prefix: &str) -> String {
        self.id_counter += 1;
        let mut end = prefix.len().min(255);
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        // Both halves are bijections of the counter: unique, and random-looking.
        let high = self.id_seed ^ self.id_counter.rotate_left(32);
        let low = self.id_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.id_seed;
        let uuid = uuid::Uuid::from_u64_pair(high, low);
        format!("{}-{}", &prefix[..end], uuid.hyphenated())
    }

    /// Re-files the group's next timer after a change.
    fn reschedule(&mut self, group_id: &str) {
        let next = self.groups.get(group_id).and_then(Group::next_deadline);
        let old = self.scheduled.get(group_id).copied();
        if old == next {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, group_id.to_string()));
            self.scheduled.remove(group_id);
        }
        if let Some(next) = next {
            self.timers.insert((next, group_id.to_string()));
            self.scheduled.insert(group_id.to_string(), next);
        }
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        self.timers.first().map(|(t, _)| *t)
    }

    // ---- JoinGroup --------------------------------------------------------------------------

    pub fn join(&mut self, now: i64, req: JoinRequest, waiter: Waiter) {
        let group_id = req.group_id.clone();
        if let Some(error) = self.check_join(&req) {
            self.reply(
                waiter,
                Reply::Join(JoinResponse::error(&req.member_id, error)),
            );
            return;
        }
        let unknown = req.member_id.is_empty();
        if !self.groups.contains_key(&group_id) {
            if !unknown {
                let r = JoinResponse::error(&req.member_id, code(E::UnknownMemberId));
                self.reply(waiter, Reply::Join(r));
                return;
            }
            if self.groups.len() >= self.config.max_groups {
                tracing::warn!(group = %group_id, limit = self.config.max_groups, "too many groups");
                let r = JoinResponse::error("", code(E::CoordinatorNotAvailable));
                self.reply(waiter, Reply::Join(r));
                return;
            }
            self.groups
                .insert(group_id.clone(), Group::new(&group_id, now));
        }
        self.with_group(&group_id, |shard, g| {
            let member_known = g.members.get(&req.member_id);
            let over_capacity = g.members.len() > shard.config.max_size
                && member_known.is_some_and(|m| m.join_waiter.is_none());
            if over_capacity || (unknown && g.size() >= shard.config.max_size) {
                if over_capacity {
                    // Shed members that have not rejoined (the limit was lowered).
                    shard.remove_member(g, &req.member_id, now);
                }
                let r = JoinResponse::error("", code(E::GroupMaxSizeReached));
                shard.reply(waiter, Reply::Join(r));
            } else if unknown {
                shard.join_unknown(g, req, waiter, now);
            } else {
                shard.join_known(g, req, waiter, now);
            }
            if g.state == GroupState::PreparingRebalance {
                shard.try_complete_join(g, now);
            }
        });
    }

    fn check_join(&self, req: &JoinRequest) -> Option<i16> {
        if req.group_id.is_empty() || req.group_id.len() > MAX_ID_BYTES {
            return Some(code(E::InvalidGroupId));
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return Some(code(E::InvalidSessionTimeout));
        }
        let metadata: usize = req.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        let long_id = [&req.member_id, &req.protocol_type]
            .iter()
            .any(|s| s.len() > MAX_ID_BYTES)
            || req
                .instance_id
                .as_ref()
                .is_some_and(|s| s.len() > MAX_ID_BYTES)
            || req.protocols.iter().any(|(n, _)| n.len() > MAX_ID_BYTES);
        if metadata > MAX_MEMBER_METADATA || long_id || req.rebalance_timeout_ms < 0 {
            return Some(code(E::InvalidRequest));
        }
        None
    }

    /// Runs `f` on a group taken out of the map (so `f` may use the rest of the shard), puts
    /// it back unless it died, and re-files its timer.
    fn with_group<T>(&mut self, id: &str, f: impl FnOnce(&mut Self, &mut Group) -> T) -> Option<T> {
        let mut g = self.groups.remove(id)?;
        let out = f(self, &mut g);
        if g.state != GroupState::Dead {
            self.groups.insert(id.to_string(), g);
        }
        self.reschedule(id);
        Some(out)
    }

    fn join_unknown(&mut self, g: &mut Group, req: JoinRequest, waiter: Waiter, now: i64) {
        if !g.supports(&req.protocol_type, &req.protocols) {
            let r = JoinResponse::error("", code(E::InconsistentGroupProtocol));
            self.reply(waiter, Reply::Join(r));
            return;
        }
        let prefix = req.instance_id.as_deref().unwrap_or(&req.client_id);
        let new_id = self.new_member_id(prefix);
        let known_instance = req
            .instance_id
            .as_ref()
            .and_then(|i| g.static_members.get(i))
            .cloned();
        if let Some(old_id) = known_instance {
            self.replace_static_member(g, &old_id, new_id, req, waiter, now);
        } else if req.require_known_member_id && req.instance_id.is_none() {
            let deadline = now + i64::from(req.session_timeout_ms);
            g.pending_members.insert(new_id.clone(), deadline);
            let r = JoinResponse::error(&new_id, code(E::MemberIdRequired));
            self.reply(waiter, Reply::Join(r));
        } else {
            self.add_member_and_rebalance(g, new_id, req, waiter, now);
        }
    }

    fn replace_static_member(
        &mut self,
        g: &mut Group,
        old_id: &str,
        new_id: String,
        req: JoinRequest,
        waiter: Waiter,
        now: i64,
    ) {
        let Some(mut member) = g.members.remove(old_id) else {
            return;
        };
        tracing::info!(group = %g.id, old = old_id, new = %new_id, "static member rejoined, replacing its old member id");
        let fenced = code(E::FencedInstanceId);
        if let Some(w) = member.join_waiter.take() {
            self.reply(w, Reply::Join(JoinResponse::error(old_id, fenced)));
        }
        if let Some(w) = member.sync_waiter.take() {
            self.reply(w, Reply::Sync(SyncResponse::error(fenced)));
        }
        let current_leader = g.leader.clone().unwrap_or_default();
        if g.leader.as_deref() == Some(old_id) {
            g.leader = Some(new_id.clone());
        }
        if g.pending_sync.remove(old_id) {
            g.pending_sync.insert(new_id.clone());
        }
        member.id = new_id.clone();
        member.client_id = req.client_id;
        member.client_host = req.client_host;
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.last_heartbeat = now;
        let protocols_changed = !member.matches(&req.protocols);
        member.protocols = req.protocols;
        if let Some(instance) = &member.instance_id {
            g.static_members.insert(instance.clone(), new_id.clone());
        }
        match g.state {
            GroupState::Stable if !protocols_changed => {
                // No rebalance: store the new member id, then answer with the current
                // generation and the *old* leader id, so that a rejoining leader does not
                // compute an assignment a stable group would never hand out.
                g.members.insert(new_id.clone(), member);
                let record = g.record(None);
                self.write(
                    vec![record],
                    PendingWrite::StaticJoin {
                        waiter,
                        group: g.id.clone(),
                        member_id: new_id,
                        leader: current_leader,
                    },
                );
            }
            _ => {
                // Mid-rebalance (the leader may be assigning to the old id) or changed
                // subscriptions: rebalance with the new id.
                member.join_waiter = Some(waiter);
                g.members.insert(new_id, member);
                self.maybe_prepare_rebalance(g, now);
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        g: &mut Group,
        member_id: String,
        req: JoinRequest,
        waiter: Waiter,
        now: i64,
    ) {
        if g.state == GroupState::PreparingRebalance && g.generation == 0 {
            g.new_member_added = true;
        }
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        if g.leader.is_none() {
            g.leader = Some(member_id.clone());
        }
        if let Some(instance) = &req.instance_id {
            g.static_members.insert(instance.clone(), member_id.clone());
        }
        g.pending_members.remove(&member_id);
        g.members.insert(
            member_id.clone(),
            Member {
                id: member_id,
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocols: req.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(waiter),
                sync_waiter: None,
                last_heartbeat: now,
            },
        );
        self.maybe_prepare_rebalance(g, now);
    }

    fn join_known(&mut self, g: &mut Group, req: JoinRequest, waiter: Waiter, now: i64) {
        let id = req.member_id.clone();
        if !g.supports(&req.protocol_type, &req.protocols) {
            let r = JoinResponse::error(&id, code(E::InconsistentGroupProtocol));
            self.reply(waiter, Reply::Join(r));
            return;
        }
        if g.pending_members.contains_key(&id) {
            if req.instance_id.is_some() {
                let r = JoinResponse::error(&id, code(E::UnknownMemberId));
                self.reply(waiter, Reply::Join(r));
            } else {
                self.add_member_and_rebalance(g, id, req, waiter, now);
            }
            return;
        }
        let instance = req.instance_id.as_deref();
        if g.is_fenced(&id, instance) {
            let r = JoinResponse::error(&id, code(E::FencedInstanceId));
            self.reply(waiter, Reply::Join(r));
            return;
        }
        let instance_unknown = instance.is_some_and(|i| !g.static_members.contains_key(i));
        if !g.members.contains_key(&id) || instance_unknown {
            let r = JoinResponse::error(&id, code(E::UnknownMemberId));
            self.reply(waiter, Reply::Join(r));
            return;
        }
        let (matches, is_leader) = match g.members.get(&id) {
            Some(m) => (m.matches(&req.protocols), g.leader.as_deref() == Some(&id)),
            None => return,
        };
        match g.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(g, req, waiter, now),
            GroupState::CompletingRebalance if matches => {
                // It missed its JoinGroup answer: give it the current generation again.
                let members = if is_leader {
                    g.current_member_metadata()
                } else {
                    Vec::new()
                };
                let leader = g.leader.clone().unwrap_or_default();
                let r = g.join_result(&id, members, leader);
                self.reply(waiter, r);
            }
            GroupState::Stable if matches && !is_leader => {
                let leader = g.leader.clone().unwrap_or_default();
                let r = g.join_result(&id, Vec::new(), leader);
                self.reply(waiter, r);
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                // Changed metadata, or the leader asking for a rebalance.
                self.update_member_and_rebalance(g, req, waiter, now)
            }
            GroupState::Empty | GroupState::Dead => {
                let r = JoinResponse::error(&id, code(E::UnknownMemberId));
                self.reply(waiter, Reply::Join(r));
            }
        }
    }

    fn update_member_and_rebalance(
        &mut self,
        g: &mut Group,
        req: JoinRequest,
        waiter: Waiter,
        now: i64,
    ) {
        let Some(m) = g.members.get_mut(&req.member_id) else {
            return;
        };
        m.protocols = req.protocols;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.last_heartbeat = now;
        let previous = m.join_waiter.replace(waiter);
        if let Some(old) = previous {
            let r = JoinResponse::error(&req.member_id, code(E::RebalanceInProgress));
            self.reply(old, Reply::Join(r));
        }
        self.maybe_prepare_rebalance(g, now);
    }

    fn maybe_prepare_rebalance(&mut self, g: &mut Group, now: i64) {
        if matches!(
            g.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(g, now);
        }
    }

    fn prepare_rebalance(&mut self, g: &mut Group, now: i64) {
        if g.state == GroupState::CompletingRebalance {
            self.propagate_assignment_error(g, code(E::RebalanceInProgress), now);
        }
        let delay = self.config.initial_rebalance_delay_ms;
        if g.state == GroupState::Empty {
            g.initial_join_remaining = Some((g.rebalance_timeout() - delay).max(0));
            g.join_deadline = Some(now + delay);
        } else {
            g.initial_join_remaining = None;
            g.join_deadline = Some(now + g.rebalance_timeout());
        }
        g.pending_sync.clear();
        g.sync_deadline = None;
        tracing::info!(group = %g.id, generation = g.generation, from = g.state.name(), "preparing to rebalance");
        g.transition(GroupState::PreparingRebalance, now);
        // Everyone may already be there (e.g. the last member just left).
        self.try_complete_join(g, now);
    }

    fn try_complete_join(&mut self, g: &mut Group, now: i64) {
        if g.state == GroupState::PreparingRebalance
            && g.initial_join_remaining.is_none()
            && g.all_joined()
        {
            self.complete_join(g, now);
        }
    }

    fn complete_join(&mut self, g: &mut Group, now: i64) {
        // Dynamic members that did not rejoin in time are gone.
        let missing: Vec<String> = g
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            tracing::info!(group = %g.id, member = %id, "member did not rejoin in time; removing it");
            self.remove_member_only(g, &id);
        }
        if !self.elect_joined_leader(g) && !g.members.is_empty() {
            // Only static members that have not rejoined are left: wait another round.
            g.initial_join_remaining = None;
            g.join_deadline = Some(now + g.rebalance_timeout());
            return;
        }
        g.generation += 1;
        g.initial_join_remaining = None;
        g.join_deadline = None;
        g.new_member_added = false;
        if g.members.is_empty() {
            g.protocol = None;
            g.transition(GroupState::Empty, now);
            tracing::info!(group = %g.id, generation = g.generation, "group is now empty");
            let record = g.record(None);
            self.write(vec![record], PendingWrite::Background);
            return;
        }
        g.protocol = g.select_protocol();
        g.transition(GroupState::CompletingRebalance, now);
        tracing::info!(
            group = %g.id,
            generation = g.generation,
            members = g.members.len(),
            protocol = g.protocol.as_deref().unwrap_or(""),
            "join phase complete"
        );
        let leader = g.leader.clone().unwrap_or_default();
        let all = g.current_member_metadata();
        let ids: Vec<String> = g.members.keys().cloned().collect();
        for id in ids {
            let members = if id == leader {
                all.clone()
            } else {
                Vec::new()
            };
            let reply = g.join_result(&id, members, leader.clone());
            if let Some(m) = g.members.get_mut(&id) {
                m.last_heartbeat = now;
                if let Some(w) = m.join_waiter.take() {
                    self.reply(w, reply);
                }
            }
            g.pending_sync.insert(id);
        }
        g.sync_deadline = Some(now + g.rebalance_timeout());
    }

    /// Keeps the leader if it rejoined, else picks a member that did. False if none did.
    fn elect_joined_leader(&mut self, g: &mut Group) -> bool {
        let Some(leader) = g.leader.clone() else {
            return false;
        };
        if g.members
            .get(&leader)
            .is_some_and(|m| m.join_waiter.is_some())
        {
            return true;
        }
        match g.members.values().find(|m| m.join_waiter.is_some()) {
            Some(m) => {
                g.leader = Some(m.id.clone());
                true
            }
            None => false,
        }
    }

    /// Removes a member without touching the group's state.
    fn remove_member_only(&mut self, g: &mut Group, id: &str) -> Option<Member> {
        let mut m = g.members.remove(id)?;
        if let Some(w) = m.join_waiter.take() {
            let r = JoinResponse::error("", code(E::UnknownMemberId));
            self.reply(w, Reply::Join(r));
        }
        if let Some(w) = m.sync_waiter.take() {
            self.reply(
                w,
                Reply::Sync(SyncResponse::error(code(E::UnknownMemberId))),
            );
        }
        if let Some(i) = &m.instance_id {
            if g.static_members.get(i).is_some_and(|x| x == id) {
                g.static_members.remove(i);
            }
        }
        g.pending_sync.remove(id);
        if g.leader.as_deref() == Some(id) {
            g.leader = g.members.keys().next().cloned();
        }
        Some(m)
    }

    /// Removes a member and lets the group react (rebalance, or finish the join phase).
    fn remove_member(&mut self, g: &mut Group, id: &str, now: i64) {
        if self.remove_member_only(g, id).is_none() {
            return;
        }
        match g.state {
            GroupState::Dead | GroupState::Empty => {}
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(g, now)
            }
            GroupState::PreparingRebalance => self.try_complete_join(g, now),
        }
    }

    fn propagate_assignment_error(&mut self, g: &mut Group, error: i16, now: i64) {
        for m in g.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.sync_waiter.take() {
                m.last_heartbeat = now;
                self.out
                    .push(Output::Reply(w, Reply::Sync(SyncResponse::error(error))));
            }
        }
    }

    // ---- SyncGroup --------------------------------------------------------------------------

    pub fn sync(&mut self, now: i64, req: SyncRequest, waiter: Waiter) {
        let fail = |shard: &mut Self, e: E| {
            shard.reply(waiter, Reply::Sync(SyncResponse::error(code(e))));
        };
        if req.group_id.is_empty() {
            return fail(self, E::InvalidGroupId);
        }
        if !self.groups.contains_key(&req.group_id) {
            return fail(self, E::UnknownMemberId);
        }
        let group_id = req.group_id.clone();
        self.with_group(&group_id, |shard, g| {
            let id = req.member_id.as_str();
            if g.is_fenced(id, req.instance_id.as_deref()) {
                return fail(shard, E::FencedInstanceId);
            }
            if !g.members.contains_key(id) {
                return fail(shard, E::UnknownMemberId);
            }
            if req.generation != g.generation {
                return fail(shard, E::IllegalGeneration);
            }
            let type_mismatch = req
                .protocol_type
                .as_ref()
                .is_some_and(|t| Some(t) != g.protocol_type.as_ref());
            let name_mismatch = req
                .protocol_name
                .as_ref()
                .is_some_and(|n| Some(n) != g.protocol.as_ref());
            if type_mismatch || name_mismatch {
                return fail(shard, E::InconsistentGroupProtocol);
            }
            match g.state {
                GroupState::Empty | GroupState::Dead => fail(shard, E::UnknownMemberId),
                GroupState::PreparingRebalance => fail(shard, E::RebalanceInProgress),
                GroupState::CompletingRebalance => {
                    g.pending_sync.remove(id);
                    let previous = g
                        .members
                        .get_mut(id)
                        .and_then(|m| m.sync_waiter.replace(waiter));
                    if let Some(old) = previous {
                        let r = SyncResponse::error(code(E::RebalanceInProgress));
                        shard.reply(old, Reply::Sync(r));
                    }
                    if g.leader.as_deref() == Some(id) {
                        tracing::info!(group = %g.id, generation = g.generation, "assignment received from the leader");
                        let mut assignment: HashMap<String, Bytes> = g
                            .members
                            .keys()
                            .map(|m| (m.clone(), Bytes::new()))
                            .collect();
                        for (member, a) in req.assignments {
                            if let Some(slot) = assignment.get_mut(&member) {
                                *slot = a;
                            }
                        }
                        let record = g.record(Some(&assignment));
                        shard.write(
                            vec![record],
                            PendingWrite::SyncStore {
                                group: g.id.clone(),
                                generation: g.generation,
                                assignment,
                            },
                        );
                    }
                }
                GroupState::Stable => {
                    g.pending_sync.remove(id);
                    if let Some(m) = g.members.get_mut(id) {
                        m.last_heartbeat = now;
                        let r = SyncResponse {
                            error: NONE,
                            protocol_type: g.protocol_type.clone(),
                            protocol_name: g.protocol.clone(),
                            assignment: m.assignment.clone(),
                        };
                        shard.reply(waiter, Reply::Sync(r));
                    }
                }
            }
        });
    }

    // ---- Heartbeat and LeaveGroup -----------------------------------------------------------

    pub fn heartbeat(
        &mut self,
        now: i64,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if group_id.is_empty() {
            return code(E::InvalidGroupId);
        }
        self.with_group(group_id, |_, g| {
            if g.is_fenced(member_id, instance_id) {
                return code(E::FencedInstanceId);
            }
            let Some(m) = g.members.get_mut(member_id) else {
                return code(E::UnknownMemberId);
            };
            if generation != g.generation {
                return code(E::IllegalGeneration);
            }
            match g.state {
                GroupState::Empty | GroupState::Dead => code(E::UnknownMemberId),
                GroupState::PreparingRebalance => {
                    m.last_heartbeat = now;
                    code(E::RebalanceInProgress)
                }
                GroupState::CompletingRebalance | GroupState::Stable => {
                    m.last_heartbeat = now;
                    NONE
                }
            }
        })
        .unwrap_or(code(E::UnknownMemberId))
    }

    pub fn leave(&mut self, now: i64, group_id: &str, members: Vec<MemberIdentity>) -> LeaveResult {
        if group_id.is_empty() {
            return LeaveResult {
                error: code(E::InvalidGroupId),
                members: Vec::new(),
            };
        }
        let unknown = |members: Vec<MemberIdentity>| LeaveResult {
            error: NONE,
            members: members
                .into_iter()
                .map(|m| (m, code(E::UnknownMemberId)))
                .collect(),
        };
        if !self.groups.contains_key(group_id) {
            return unknown(members);
        }
        self.with_group(group_id, |shard, g| {
            let mut results = Vec::with_capacity(members.len());
            for identity in members {
                let id = identity.member_id.as_str();
                let instance = identity.instance_id.as_deref();
                let error = if !id.is_empty() && g.is_fenced(id, instance) {
                    code(E::FencedInstanceId)
                } else if g.pending_members.remove(id).is_some() {
                    shard.try_complete_join(g, now);
                    NONE
                } else {
                    let target = match instance.and_then(|i| g.static_members.get(i)) {
                        Some(m) => Some(m.clone()),
                        None if g.members.contains_key(id) => Some(id.to_string()),
                        None => None,
                    };
                    match target {
                        Some(target) => {
                            tracing::info!(group = %g.id, member = %target, "member left the group");
                            shard.remove_member(g, &target, now);
                            NONE
                        }
                        None => code(E::UnknownMemberId),
                    }
                };
                results.push((identity, error));
            }
            LeaveResult {
                error: NONE,
                members: results,
            }
        })
        .unwrap_or_else(|| LeaveResult {
            error: code(E::CoordinatorNotAvailable),
            members: Vec::new(),
        })
    }

    // ---- offsets ----------------------------------------------------------------------------

    pub fn commit(&mut self, now: i64, req: CommitRequest, waiter: Waiter) {
        let keys: Vec<(String, i32)> = req
            .offsets
            .iter()
            .map(|o| (o.topic.clone(), o.partition))
            .collect();
        let all = |e: E| -> PartitionErrors {
            keys.iter().map(|(t, p)| (t.clone(), *p, code(e))).collect()
        };
        if req.group_id.len() > MAX_ID_BYTES {
            let r = all(E::InvalidGroupId);
            return self.reply(waiter, Reply::Commit(r));
        }
        if !self.groups.contains_key(&req.group_id) {
            if req.generation >= 0 {
                let r = all(E::IllegalGeneration);
                return self.reply(waiter, Reply::Commit(r));
            }
            if self.groups.len() >= self.config.max_groups {
                tracing::warn!(group = %req.group_id, limit = self.config.max_groups, "too many groups");
                let r = all(E::CoordinatorNotAvailable);
                return self.reply(waiter, Reply::Commit(r));
            }
            let g = Group::new(&req.group_id, now);
            self.groups.insert(req.group_id.clone(), g);
        }
        let group_id = req.group_id.clone();
        self.with_group(&group_id, |shard, g| {
            let refuse = |shard: &mut Self, e: E| shard.reply(waiter, Reply::Commit(all(e)));
            let simple = req.generation < 0 && g.state == GroupState::Empty;
            if g.is_fenced(&req.member_id, req.instance_id.as_deref()) {
                return refuse(shard, E::FencedInstanceId);
            }
            if !simple {
                if !g.members.contains_key(&req.member_id) {
                    return refuse(shard, E::UnknownMemberId);
                }
                if req.generation != g.generation {
                    return refuse(shard, E::IllegalGeneration);
                }
                match g.state {
                    GroupState::CompletingRebalance => {
                        return refuse(shard, E::RebalanceInProgress)
                    }
                    GroupState::Stable | GroupState::PreparingRebalance => {
                        if let Some(m) = g.members.get_mut(&req.member_id) {
                            m.last_heartbeat = now;
                        }
                    }
                    GroupState::Empty | GroupState::Dead => {
                        return refuse(shard, E::UnknownMemberId)
                    }
                }
            }
            shard.store_offsets(g, req.offsets, waiter, now);
        });
    }

    fn store_offsets(
        &mut self,
        g: &mut Group,
        offsets: Vec<CommitOffset>,
        waiter: Waiter,
        now: i64,
    ) {
        let mut errors = Vec::new();
        let mut accepted = Vec::new();
        for o in offsets {
            let metadata = o.metadata.unwrap_or_default();
            if metadata.len() > self.config.offset_metadata_max_bytes {
                errors.push((o.topic, o.partition, code(E::OffsetMetadataTooLarge)));
                continue;
            }
            let value = OffsetValue {
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata,
                commit_timestamp: now,
            };
            accepted.push((o.topic, o.partition, value));
        }
        if accepted.is_empty() {
            return self.reply(waiter, Reply::Commit(errors));
        }
        let records = accepted
            .iter()
            .map(|(topic, partition, value)| Record::Offset {
                group: g.id.clone(),
                topic: topic.clone(),
                partition: *partition,
                value: Some(value.clone()),
            })
            .collect();
        self.write(
            records,
            PendingWrite::Commit {
                waiter,
                group: g.id.clone(),
                offsets: accepted,
                errors,
            },
        );
    }

    /// Committed offsets of a group: the requested partitions (None: every committed one).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<FetchedOffset> {
        let group = self.groups.get(group_id);
        match wanted {
            None => group
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.value.clone())))
                        .collect()
                })
                .unwrap_or_default(),
            Some(topics) => topics
                .into_iter()
                .flat_map(|(topic, partitions)| {
                    partitions.into_iter().map(move |p| (topic.clone(), p))
                })
                .map(|(topic, p)| {
                    let value = group
                        .and_then(|g| g.offsets.get(&(topic.clone(), p)))
                        .map(|c| c.value.clone());
                    (topic, p, value)
                })
                .collect(),
        }
    }

    pub fn offset_delete(
        &mut self,
        now: i64,
        group_id: &str,
        partitions: Vec<(String, i32)>,
        waiter: Waiter,
    ) {
        let not_found = Reply::OffsetDelete(code(E::GroupIdNotFound), Vec::new());
        if !self.groups.contains_key(group_id) {
            return self.reply(waiter, not_found);
        }
        self.with_group(group_id, |shard, g| {
            let (eligible, mut results): (Vec<(String, i32)>, PartitionErrors) = match g.state {
                GroupState::Dead => return shard.reply(waiter, not_found),
                GroupState::Empty => (partitions, Vec::new()),
                _ => match g.subscribed_topics() {
                    Some(subscribed) => {
                        let (busy, free): (Vec<_>, Vec<_>) = partitions
                            .into_iter()
                            .partition(|(t, _)| subscribed.contains(t));
                        let busy = busy
                            .into_iter()
                            .map(|(t, p)| (t, p, code(E::GroupSubscribedToTopic)))
                            .collect();
                        (free, busy)
                    }
                    None if g.protocol_type.as_deref() == Some("consumer") => {
                        (partitions, Vec::new())
                    }
                    None => {
                        let r = Reply::OffsetDelete(code(E::NonEmptyGroup), Vec::new());
                        return shard.reply(waiter, r);
                    }
                },
            };
            let mut records = Vec::new();
            for (topic, partition) in eligible {
                if g.offsets.remove(&(topic.clone(), partition)).is_some() {
                    records.push(Record::Offset {
                        group: g.id.clone(),
                        topic: topic.clone(),
                        partition,
                        value: None,
                    });
                }
                results.push((topic, partition, NONE));
            }
            if g.state == GroupState::Empty && g.offsets.is_empty() && !records.is_empty() {
                records.push(Record::Group {
                    group: g.id.clone(),
                    value: None,
                });
                g.transition(GroupState::Dead, now);
            }
            if records.is_empty() {
                shard.reply(waiter, Reply::OffsetDelete(NONE, results));
            } else {
                shard.write(records, PendingWrite::OffsetDelete { waiter, results });
            }
        });
    }

    pub fn delete_groups(&mut self, now: i64, ids: Vec<String>, waiter: Waiter) {
        let mut results = Vec::with_capacity(ids.len());
        let mut records = Vec::new();
        let mut deleted = Vec::new();
        for id in ids {
            let error = match self.groups.get(&id).map(|g| g.state) {
                None | Some(GroupState::Dead) => code(E::GroupIdNotFound),
                Some(GroupState::Empty) => {
                    if let Some(mut g) = self.groups.remove(&id) {
                        for (topic, partition) in g.offsets.keys() {
                            records.push(Record::Offset {
                                group: id.clone(),
                                topic: topic.clone(),
                                partition: *partition,
                                value: None,
                            });
                        }
                        records.push(Record::Group {
                            group: id.clone(),
                            value: None,
                        });
                        g.state_timestamp = now;
                        deleted.push(g);
                        self.reschedule(&id);
                    }
                    NONE
                }
                Some(_) => code(E::NonEmptyGroup),
            };
            results.push((id, error));
        }
        if records.is_empty() {
            self.reply(waiter, Reply::DeleteGroups(results));
        } else {
            tracing::info!(groups = deleted.len(), "deleting groups");
            self.write(
                records,
                PendingWrite::DeleteGroups {
                    waiter,
                    results,
                    deleted,
                },
            );
        }
    }

    // ---- reads ------------------------------------------------------------------------------

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        let g = self.groups.get(group_id)?;
        let stable = g.state == GroupState::Stable;
        let protocol = if stable {
            g.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        Some(GroupSummary {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .members
                .values()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        })
    }

    pub fn list(&self) -> Vec<GroupOverview> {
        let mut out: Vec<GroupOverview> = self
            .groups
            .values()
            .map(|g| GroupOverview {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    // ---- timers and writes ------------------------------------------------------------------

    /// Expires sessions, pending members, join and sync phases, and idle empty groups due at
    /// or before `now`.
    pub fn tick(&mut self, now: i64) {
        // Collected first: handling a group may file it again at a time that is still due
        // (an idle group with a commit in flight), which the next tick picks up.
        let due: Vec<(i64, String)> = self
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        for (at, id) in due {
            self.timers.remove(&(at, id.clone()));
            self.scheduled.remove(&id);
            self.expire(&id, now);
        }
    }

    fn expire(&mut self, id: &str, now: i64) {
        self.with_group(id, |shard, g| {
            let expired: Vec<String> = g
                .pending_members
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(m, _)| m.clone())
                .collect();
            for m in expired {
                tracing::info!(group = %g.id, member = %m, "pending member did not rejoin; forgetting it");
                g.pending_members.remove(&m);
                shard.try_complete_join(g, now);
            }
            let dead: Vec<String> = g
                .members
                .values()
                .filter(|m| m.session_deadline().is_some_and(|d| d <= now))
                .map(|m| m.id.clone())
                .collect();
            for m in dead {
                tracing::info!(group = %g.id, member = %m, "session expired; removing member");
                shard.remove_member(g, &m, now);
            }
            if g.state == GroupState::PreparingRebalance && g.join_deadline.is_some_and(|d| d <= now)
            {
                match g.initial_join_remaining {
                    Some(remaining) if g.new_member_added && remaining > 0 => {
                        let delay = shard.config.initial_rebalance_delay_ms.min(remaining);
                        g.new_member_added = false;
                        g.initial_join_remaining = Some((remaining - delay).max(0));
                        g.join_deadline = Some(now + delay);
                    }
                    _ => shard.complete_join(g, now),
                }
            }
            if !g.pending_sync.is_empty() && g.sync_deadline.is_some_and(|d| d <= now) {
                let laggards: Vec<String> = g.pending_sync.drain().collect();
                for m in laggards {
                    tracing::info!(group = %g.id, member = %m, "member did not sync in time; removing it");
                    shard.remove_member(g, &m, now);
                }
            }
            if g.pending_sync.is_empty() {
                g.sync_deadline = None;
            }
            let idle = g.state == GroupState::Empty
                && g.offsets.is_empty()
                && now >= g.state_timestamp + EMPTY_GROUP_RETENTION_MS;
            if idle && !shard.has_pending_commit(&g.id) {
                g.transition(GroupState::Dead, now);
                let tombstone = Record::Group {
                    group: g.id.clone(),
                    value: None,
                };
                shard.write(vec![tombstone], PendingWrite::Background);
            }
        });
    }

    fn has_pending_commit(&self, group: &str) -> bool {
        self.pending_writes
            .values()
            .any(|w| matches!(w, PendingWrite::Commit { group: g, .. } if g == group))
    }

    /// Reports the outcome of write `id`: the log offset it got, or why it failed.
    pub fn write_done(&mut self, now: i64, id: WriteId, result: Result<i64, LogError>) {
        let Some(pending) = self.pending_writes.remove(&id) else {
            return;
        };
        if let Err(e) = &result {
            tracing::warn!(write = id, error = %e, "offsets topic write failed");
        }
        match pending {
            PendingWrite::Commit {
                waiter,
                group,
                offsets,
                mut errors,
            } => match result {
                Ok(log_offset) => {
                    self.with_group(&group, |_, g| {
                        for (topic, partition, value) in &offsets {
                            let key = (topic.clone(), *partition);
                            let newer = g
                                .offsets
                                .get(&key)
                                .is_none_or(|c| c.log_offset <= log_offset);
                            if newer {
                                let value = value.clone();
                                g.offsets.insert(key, Committed { value, log_offset });
                            }
                        }
                    });
                    errors.extend(offsets.into_iter().map(|(t, p, _)| (t, p, NONE)));
                    self.reply(waiter, Reply::Commit(errors));
                }
                Err(e) => {
                    let c = store_offsets_error(&e);
                    errors.extend(offsets.into_iter().map(|(t, p, _)| (t, p, c)));
                    self.reply(waiter, Reply::Commit(errors));
                }
            },
            PendingWrite::SyncStore {
                group,
                generation,
                assignment,
            } => {
                self.with_group(&group, |shard, g| {
                    if g.state != GroupState::CompletingRebalance || g.generation != generation {
                        return;
                    }
                    match &result {
                        Ok(_) => {
                            for m in g.members.values_mut() {
                                m.assignment = assignment.get(&m.id).cloned().unwrap_or_default();
                                if let Some(w) = m.sync_waiter.take() {
                                    m.last_heartbeat = now;
                                    let r = SyncResponse {
                                        error: NONE,
                                        protocol_type: g.protocol_type.clone(),
                                        protocol_name: g.protocol.clone(),
                                        assignment: m.assignment.clone(),
                                    };
                                    shard.out.push(Output::Reply(w, Reply::Sync(r)));
                                }
                            }
                            g.transition(GroupState::Stable, now);
                            tracing::info!(group = %g.id, generation, "group is stable");
                        }
                        Err(e) => {
                            shard.propagate_assignment_error(g, store_group_error(e), now);
                            shard.maybe_prepare_rebalance(g, now);
                        }
                    }
                });
            }
            PendingWrite::StaticJoin {
                waiter,
                group,
                member_id,
                leader,
            } => {
                let reply = match &result {
                    Ok(_) => self
                        .groups
                        .get(&group)
                        .map(|g| g.join_result(&member_id, Vec::new(), leader.clone())),
                    Err(e) => Some(Reply::Join(JoinResponse::error("", store_group_error(e)))),
                };
                let reply = reply.unwrap_or_else(|| {
                    Reply::Join(JoinResponse::error("", code(E::UnknownMemberId)))
                });
                self.reply(waiter, reply);
            }
            PendingWrite::DeleteGroups {
                waiter,
                mut results,
                deleted,
            } => {
                if let Err(e) = &result {
                    let c = store_group_error(e);
                    for g in deleted {
                        if let Some(r) = results.iter_mut().find(|(id, _)| *id == g.id) {
                            r.1 = c;
                        }
                        if !self.groups.contains_key(&g.id) {
                            let id = g.id.clone();
                            self.groups.insert(id.clone(), g);
                            self.reschedule(&id);
                        }
                    }
                }
                self.reply(waiter, Reply::DeleteGroups(results));
            }
            PendingWrite::OffsetDelete {
                waiter,
                mut results,
            } => {
                if let Err(e) = &result {
                    let c = store_group_error(e);
                    for r in results.iter_mut() {
                        r.2 = c;
                    }
                }
                self.reply(waiter, Reply::OffsetDelete(NONE, results));
            }
            PendingWrite::Background => {}
        }
    }

    // ---- loading and unloading --------------------------------------------------------------

    /// Applies one record read back from the log (in log order) while loading.
    pub fn replay(&mut self, log_offset: i64, record: Record) {
        match record {
            Record::Offset {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(value) => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, value.commit_timestamp));
                    g.offsets
                        .insert((topic, partition), Committed { value, log_offset });
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            },
            Record::Group { group, value } => match value {
                Some(v) => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, v.state_timestamp));
                    g.generation = v.generation;
                    g.protocol_type = Some(v.protocol_type).filter(|t| !t.is_empty());
                    g.protocol = v.protocol;
                    g.leader = v.leader;
                    g.state_timestamp = v.state_timestamp;
                    g.static_members.clear();
                    g.members = v
                        .members
                        .into_iter()
                        .map(|m| {
                            if let Some(i) = &m.instance_id {
                                g.static_members.insert(i.clone(), m.member_id.clone());
                            }
                            let protocols =
                                vec![(g.protocol.clone().unwrap_or_default(), m.subscription)];
                            let member = Member {
                                id: m.member_id.clone(),
                                instance_id: m.instance_id,
                                client_id: m.client_id,
                                client_host: m.client_host,
                                session_timeout_ms: m.session_timeout_ms,
                                rebalance_timeout_ms: m.rebalance_timeout_ms,
                                protocols,
                                assignment: m.assignment,
                                join_waiter: None,
                                sync_waiter: None,
                                last_heartbeat: 0,
                            };
                            (m.member_id, member)
                        })
                        .collect();
                }
                None => {
                    self.groups.remove(&group);
                }
            },
        }
    }

    /// Ends loading: groups with members are Stable (their members get a fresh session),
    /// the others Empty.
    pub fn finish_load(&mut self, now: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            self.with_group(&id, |shard, g| {
                for m in g.members.values_mut() {
                    m.last_heartbeat = now;
                }
                if g.members.is_empty() {
                    g.state = GroupState::Empty;
                    g.protocol = None;
                    g.leader = None;
                } else {
                    g.state = GroupState::Stable;
                    if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
                        g.leader = g.members.keys().next().cloned();
                    }
                    if g.members.len() > shard.config.max_size {
                        shard.prepare_rebalance(g, now);
                    }
                }
                if g.state_timestamp <= 0 {
                    g.state_timestamp = now;
                }
            });
        }
    }

    /// This broker stops coordinating these groups: everyone waiting is told
    /// NOT_COORDINATOR.
    pub fn unload(&mut self) {
        let not_coordinator = code(E::NotCoordinator);
        let mut replies = Vec::new();
        for g in self.groups.values_mut() {
            for m in g.members.values_mut() {
                if let Some(w) = m.join_waiter.take() {
                    let r = JoinResponse::error(&m.id, not_coordinator);
                    replies.push(Output::Reply(w, Reply::Join(r)));
                }
                if let Some(w) = m.sync_waiter.take() {
                    let r = SyncResponse::error(not_coordinator);
                    replies.push(Output::Reply(w, Reply::Sync(r)));
                }
            }
        }
        self.out.extend(replies);
        let pending: Vec<WriteId> = self.pending_writes.keys().copied().collect();
        for id in pending {
            self.write_done(0, id, Err(LogError::NotLeader));
        }
        self.groups.clear();
        self.timers.clear();
        self.scheduled.clear();
    }
}

#[cfg(test)]
mod tests;
