//! The group state machine driven step by step with a fake clock: no sockets, no tasks.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError as E;

use super::*;
use crate::group::store::{LogError, Record};
use crate::group::GroupConfig;

const DELAY: i64 = 100;
const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn c(e: E) -> i16 {
    e.code()
}

/// Consumer-protocol subscription metadata: version 0, topics, no user data.
fn subscription(topics: &[&str]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(topics.len() as i32);
    for t in topics {
        b.put_i16(t.len() as i16);
        b.put_slice(t.as_bytes());
    }
    b.put_i32(-1);
    b.freeze()
}

fn protocols(names: &[&str]) -> Vec<(String, Bytes)> {
    names
        .iter()
        .map(|n| (n.to_string(), subscription(&["orders"])))
        .collect()
}

/// A shard plus the fake world around it: a clock, waiters, and a log that acknowledges
/// writes at once (or holds them when `hold_writes` is set).
struct World {
    shard: GroupShard,
    now: i64,
    next_waiter: Waiter,
    replies: HashMap<Waiter, Reply>,
    held: Vec<(WriteId, Vec<Record>)>,
    hold_writes: bool,
    /// Every record acknowledged, with its log offset, in log order.
    log: Vec<(i64, Record)>,
    next_offset: i64,
}

impl World {
    fn new() -> Self {
        Self::with(GroupConfig {
            initial_rebalance_delay_ms: DELAY,
            min_session_timeout_ms: 1000,
            ..GroupConfig::default()
        })
    }

    fn with(config: GroupConfig) -> Self {
        World {
            shard: GroupShard::new(config, 7),
            now: 1_000_000,
            next_waiter: 1,
            replies: HashMap::new(),
            held: Vec::new(),
            hold_writes: false,
            log: Vec::new(),
            next_offset: 0,
        }
    }

    fn pump(&mut self) {
        loop {
            let outputs = self.shard.drain();
            if outputs.is_empty() {
                return;
            }
            for out in outputs {
                match out {
                    Output::Reply(w, r) => {
                        assert!(
                            self.replies.insert(w, r).is_none(),
                            "waiter {w} answered twice"
                        );
                    }
                    Output::Write(id, records) if self.hold_writes => self.held.push((id, records)),
                    Output::Write(id, records) => self.ack(id, records),
                }
            }
        }
    }

    fn ack(&mut self, id: WriteId, records: Vec<Record>) {
        // GSN-like offsets: increasing, with gaps.
        let base = self.next_offset + 3;
        self.next_offset = base + records.len() as i64;
        for (i, r) in records.into_iter().enumerate() {
            self.log.push((base + i as i64, r));
        }
        self.shard.write_done(self.now, id, Ok(base));
    }

    fn release_writes(&mut self) {
        for (id, records) in std::mem::take(&mut self.held) {
            self.ack(id, records);
        }
        self.pump();
    }

    fn fail_writes(&mut self, e: LogError) {
        for (id, _) in std::mem::take(&mut self.held) {
            self.shard.write_done(self.now, id, Err(e.clone()));
        }
        self.pump();
    }

    fn waiter(&mut self) -> Waiter {
        self.next_waiter += 1;
        self.next_waiter
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        self.shard.tick(self.now);
        self.pump();
    }

    fn join_req(
        &mut self,
        group: &str,
        member: &str,
        instance: Option<&str>,
        protos: &[&str],
    ) -> Waiter {
        let w = self.waiter();
        let req = JoinRequest {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: instance.map(String::from),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION,
            rebalance_timeout_ms: REBALANCE,
            protocol_type: "consumer".into(),
            protocols: protocols(protos),
            require_known_member_id: true,
        };
        self.shard.join(self.now, req, w);
        self.pump();
        w
    }

    fn take(&mut self, w: Waiter) -> Option<Reply> {
        self.replies.remove(&w)
    }

    fn join_reply(&mut self, w: Waiter) -> JoinResponse {
        match self.take(w) {
            Some(Reply::Join(r)) => r,
            other => panic!("expected a join answer for {w}, got {other:?}"),
        }
    }

    fn sync_reply(&mut self, w: Waiter) -> SyncResponse {
        match self.take(w) {
            Some(Reply::Sync(r)) => r,
            other => panic!("expected a sync answer for {w}, got {other:?}"),
        }
    }

    /// A new dynamic member: MEMBER_ID_REQUIRED, then the real join (pending answer).
    fn new_member(&mut self, group: &str, protos: &[&str]) -> (String, Waiter) {
        let w = self.join_req(group, "", None, protos);
        let r = self.join_reply(w);
        assert_eq!(r.error, c(E::MemberIdRequired));
        assert!(r.member_id.starts_with("client-"), "{}", r.member_id);
        let id = r.member_id;
        let w = self.join_req(group, &id, None, protos);
        (id, w)
    }

    fn sync(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: &[(&str, &str)],
    ) -> Waiter {
        let w = self.waiter();
        let req = SyncRequest {
            group_id: group.into(),
            generation,
            member_id: member.into(),
            instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: None,
            assignments: assignments
                .iter()
                .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
                .collect(),
        };
        self.shard.sync(self.now, req, w);
        self.pump();
        w
    }

    fn heartbeat(&mut self, group: &str, member: &str, generation: i32) -> i16 {
        let r = self
            .shard
            .heartbeat(self.now, group, member, None, generation);
        self.pump();
        r
    }

    fn state(&self, group: &str) -> Option<GroupState> {
        self.shard.describe(group).map(|g| g.state)
    }

    fn commit(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(&str, i32, i64, Option<&str>)],
    ) -> Waiter {
        let w = self.waiter();
        let req = CommitRequest {
            group_id: group.into(),
            generation,
            member_id: member.into(),
            instance_id: None,
            offsets: offsets
                .iter()
                .map(|(t, p, o, m)| CommitOffset {
                    topic: t.to_string(),
                    partition: *p,
                    offset: *o,
                    leader_epoch: 5,
                    metadata: m.map(String::from),
                })
                .collect(),
        };
        self.shard.commit(self.now, req, w);
        self.pump();
        w
    }

    fn commit_reply(&mut self, w: Waiter) -> PartitionErrors {
        match self.take(w) {
            Some(Reply::Commit(r)) => r,
            other => panic!("expected a commit answer, got {other:?}"),
        }
    }

    /// One member joined, synced, stable at generation 1.
    fn stable_single(&mut self, group: &str) -> String {
        let (a, w) = self.new_member(group, &["range"]);
        self.advance(DELAY);
        let r = self.join_reply(w);
        assert_eq!(
            (r.error, r.generation, r.leader.as_str()),
            (0, 1, a.as_str())
        );
        let s = self.sync(group, &a, 1, &[(&a, "a-assignment")]);
        assert_eq!(self.sync_reply(s).assignment, Bytes::from("a-assignment"));
        a
    }

    /// Two members, stable at generation 2 (a is the leader).
    fn stable_pair(&mut self, group: &str) -> (String, String) {
        let a = self.stable_single(group);
        let (b, wb) = self.new_member(group, &["range"]);
        assert_eq!(self.state(group), Some(GroupState::PreparingRebalance));
        assert_eq!(self.heartbeat(group, &a, 1), c(E::RebalanceInProgress));
        let wa = self.join_req(group, &a, None, &["range"]);
        let ra = self.join_reply(wa);
        let rb = self.join_reply(wb);
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!(ra.members.len(), 2);
        assert!(rb.members.is_empty());
        let sb = self.sync(group, &b, 2, &[]);
        assert!(self.take(sb).is_none(), "follower waits for the leader");
        let sa = self.sync(group, &a, 2, &[(&a, "p0"), (&b, "p1")]);
        assert_eq!(self.sync_reply(sa).assignment, Bytes::from("p0"));
        assert_eq!(self.sync_reply(sb).assignment, Bytes::from("p1"));
        assert_eq!(self.state(group), Some(GroupState::Stable));
        (a, b)
    }
}

#[test]
fn first_member_needs_an_id_and_waits_for_the_initial_delay() {
    let mut w = World::new();
    let (a, wa) = w.new_member("g", &["range"]);
    assert_eq!(w.state("g"), Some(GroupState::PreparingRebalance));
    w.advance(DELAY - 1);
    assert!(w.take(wa).is_none(), "the initial delay is not over");
    w.advance(1);
    let r = w.join_reply(wa);
    assert_eq!(r.error, 0);
    assert_eq!(r.generation, 1);
    assert_eq!(r.leader, a);
    assert_eq!(r.member_id, a);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].metadata, subscription(&["orders"]));
    assert_eq!(w.state("g"), Some(GroupState::CompletingRebalance));
}

#[test]
fn new_members_extend_the_initial_delay_up_to_the_rebalance_timeout() {
    let mut w = World::new();
    let (_, wa) = w.new_member("g", &["range"]);
    w.advance(DELAY - 10);
    let (_, wb) = w.new_member("g", &["range"]);
    w.advance(10);
    assert!(
        w.take(wa).is_none() && w.take(wb).is_none(),
        "delay extended"
    );
    w.advance(DELAY);
    assert_eq!(w.join_reply(wa).generation, 1);
    assert_eq!(w.join_reply(wb).generation, 1);
}

#[test]
fn a_second_member_rebalances_and_the_leader_assigns() {
    let mut w = World::new();
    let (a, b) = w.stable_pair("g");
    assert_eq!(w.heartbeat("g", &a, 2), 0);
    assert_eq!(w.heartbeat("g", &b, 2), 0);
    let d = w.shard.describe("g").expect("exists");
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 2);
    let ma = d
        .members
        .iter()
        .find(|m| m.member_id == a)
        .expect("a listed");
    assert_eq!(ma.assignment, Bytes::from("p0"));
    assert_eq!(ma.client_host, "/127.0.0.1");
}

#[test]
fn protocol_is_the_one_all_members_support() {
    let mut w = World::new();
    let (_, wa) = w.new_member("g", &["cooperative-sticky", "range"]);
    let (_, wb) = w.new_member("g", &["range", "roundrobin"]);
    // No common protocol / another protocol type: refused.
    let wc = w.join_req("g", "", None, &["roundrobin"]);
    assert_eq!(w.join_reply(wc).error, c(E::InconsistentGroupProtocol));
    let wd = w.waiter();
    let req = JoinRequest {
        group_id: "g".into(),
        protocol_type: "connect".into(),
        protocols: protocols(&["range"]),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        ..JoinRequest::default()
    };
    w.shard.join(w.now, req, wd);
    w.pump();
    assert_eq!(w.join_reply(wd).error, c(E::InconsistentGroupProtocol));
    // b joined during a's initial delay, which is therefore extended once.
    w.advance(DELAY);
    w.advance(DELAY);
    assert_eq!(w.join_reply(wa).protocol_name.as_deref(), Some("range"));
    assert_eq!(w.join_reply(wb).protocol_name.as_deref(), Some("range"));
}

#[test]
fn bad_requests_get_kafkas_errors() {
    let mut w = World::new();
    let wj = w.waiter();
    let req = JoinRequest {
        group_id: "g".into(),
        protocol_type: "consumer".into(),
        protocols: protocols(&["range"]),
        session_timeout_ms: 10,
        rebalance_timeout_ms: REBALANCE,
        ..JoinRequest::default()
    };
    w.shard.join(w.now, req, wj);
    w.pump();
    assert_eq!(w.join_reply(wj).error, c(E::InvalidSessionTimeout));
    let wj = w.join_req("", "", None, &["range"]);
    assert_eq!(w.join_reply(wj).error, c(E::InvalidGroupId));
    // A member id the group never issued.
    let wj = w.join_req("g", "made-up", None, &["range"]);
    assert_eq!(w.join_reply(wj).error, c(E::UnknownMemberId));
    assert_eq!(w.heartbeat("nope", "m", 1), c(E::UnknownMemberId));
    assert_eq!(w.heartbeat("", "m", 1), c(E::InvalidGroupId));
    let a = w.stable_single("g");
    assert_eq!(w.heartbeat("g", &a, 0), c(E::IllegalGeneration));
    assert_eq!(w.heartbeat("g", "other", 1), c(E::UnknownMemberId));
    let s = w.sync("g", &a, 7, &[]);
    assert_eq!(w.sync_reply(s).error, c(E::IllegalGeneration));
    let s = w.sync("g", "other", 1, &[]);
    assert_eq!(w.sync_reply(s).error, c(E::UnknownMemberId));
    let s = w.sync("nope", "other", 1, &[]);
    assert_eq!(w.sync_reply(s).error, c(E::UnknownMemberId));
}

#[test]
fn group_size_is_bounded() {
    let mut w = World::with(GroupConfig {
        initial_rebalance_delay_ms: DELAY,
        min_session_timeout_ms: 1000,
        max_size: 2,
        ..GroupConfig::default()
    });
    w.new_member("g", &["range"]);
    w.new_member("g", &["range"]);
    let wc = w.join_req("g", "", None, &["range"]);
    assert_eq!(w.join_reply(wc).error, c(E::GroupMaxSizeReached));
}

#[test]
fn an_expired_session_removes_the_member_and_rebalances() {
    let mut w = World::new();
    let (a, b) = w.stable_pair("g");
    // a keeps heartbeating, b goes silent.
    for _ in 0..3 {
        w.advance(i64::from(SESSION) / 4);
        assert_eq!(w.heartbeat("g", &a, 2), 0);
    }
    w.advance(i64::from(SESSION) / 4 - 1);
    assert_eq!(w.state("g"), Some(GroupState::Stable));
    w.advance(1);
    assert_eq!(w.state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(w.heartbeat("g", &b, 2), c(E::UnknownMemberId));
    let wa = w.join_req("g", &a, None, &["range"]);
    let r = w.join_reply(wa);
    assert_eq!((r.generation, r.members.len()), (3, 1));
}

#[test]
fn a_member_that_misses_the_join_phase_is_removed_after_the_rebalance_timeout() {
    let mut w = World::new();
    let (a, b) = w.stable_pair("g");
    let (c_id, wc) = w.new_member("g", &["range"]);
    let wa = w.join_req("g", &a, None, &["range"]);
    // b still heartbeats (max.poll.interval exceeded, but the process is alive): it is told
    // to rejoin, never does, and is dropped when the rebalance timeout ends the join phase.
    let mut waited = 0;
    while waited < i64::from(REBALANCE) - 1000 {
        w.advance(1000);
        waited += 1000;
        assert_eq!(w.heartbeat("g", &b, 2), c(E::RebalanceInProgress));
        assert!(w.take(wa).is_none());
    }
    w.advance(1000);
    let ra = w.join_reply(wa);
    let rc = w.join_reply(wc);
    assert_eq!((ra.generation, rc.generation), (3, 3));
    let ids: Vec<&str> = ra.members.iter().map(|m| m.member_id.as_str()).collect();
    assert!(
        ids.contains(&a.as_str()) && ids.contains(&c_id.as_str()) && !ids.contains(&b.as_str())
    );
    assert_eq!(w.heartbeat("g", &b, 2), c(E::UnknownMemberId));
}

#[test]
fn a_follower_that_never_syncs_is_removed() {
    let mut w = World::new();
    let a = w.stable_single("g");
    let (b, wb) = w.new_member("g", &["range"]);
    let wa = w.join_req("g", &a, None, &["range"]);
    w.join_reply(wa);
    w.join_reply(wb);
    let sa = w.sync("g", &a, 2, &[(&a, "x"), (&b, "y")]);
    assert_eq!(w.sync_reply(sa).assignment, Bytes::from("x"));
    // b heartbeats but never sends SyncGroup: the rebalance timeout removes it.
    for _ in 0..5 {
        w.advance(5000);
        assert_eq!(w.heartbeat("g", &a, 2), 0);
        assert_eq!(w.heartbeat("g", &b, 2), 0);
    }
    w.advance(5000);
    assert_eq!(w.state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(w.heartbeat("g", &b, 2), c(E::UnknownMemberId));
}

#[test]
fn leave_group_by_member_id_and_by_instance_id() {
    let mut w = World::new();
    let (a, b) = w.stable_pair("g");
    let r = w.shard.leave(
        w.now,
        "g",
        vec![
            MemberIdentity {
                member_id: b.clone(),
                instance_id: None,
            },
            MemberIdentity {
                member_id: "ghost".into(),
                instance_id: None,
            },
        ],
    );
    w.pump();
    assert_eq!(r.error, 0);
    assert_eq!(r.members[0].1, 0);
    assert_eq!(r.members[1].1, c(E::UnknownMemberId));
    assert_eq!(w.state("g"), Some(GroupState::PreparingRebalance));
    // The last member leaving ends the join phase with an empty generation.
    let r = w.shard.leave(
        w.now,
        "g",
        vec![MemberIdentity {
            member_id: a.clone(),
            instance_id: None,
        }],
    );
    w.pump();
    assert_eq!(r.members[0].1, 0);
    assert_eq!(w.state("g"), Some(GroupState::Empty));
    let unknown = w.shard.leave(
        w.now,
        "nope",
        vec![MemberIdentity {
            member_id: a,
            instance_id: None,
        }],
    );
    assert_eq!(unknown.members[0].1, c(E::UnknownMemberId));
}

#[test]
fn static_member_rejoins_without_a_rebalance_and_fences_its_old_id() {
    let mut w = World::new();
    // Static members get their id at once (no MEMBER_ID_REQUIRED).
    let wa = w.join_req("g", "", Some("instance-a"), &["range"]);
    let wb = w.join_req("g", "", Some("instance-b"), &["range"]);
    w.advance(DELAY);
    w.advance(DELAY);
    let ra = w.join_reply(wa);
    let rb = w.join_reply(wb);
    assert!(ra.member_id.starts_with("instance-a-"));
    let (a, b) = (ra.member_id.clone(), rb.member_id.clone());
    let leader = ra.leader.clone();
    assert_eq!(leader, a);
    let sb = w.sync("g", &b, 1, &[]);
    let sa = w.sync("g", &a, 1, &[(&a, "pa"), (&b, "pb")]);
    w.sync_reply(sa);
    w.sync_reply(sb);
    let written = w.log.len();

    // b restarts: a new process, same group.instance.id, no member id.
    let wb2 = w.join_req("g", "", Some("instance-b"), &["range"]);
    let rb2 = w.join_reply(wb2);
    assert_eq!(rb2.error, 0);
    assert_ne!(rb2.member_id, b);
    assert_eq!(rb2.generation, 1, "no new generation");
    assert_eq!(rb2.leader, leader);
    assert_eq!(w.state("g"), Some(GroupState::Stable));
    assert_eq!(w.log.len(), written + 1, "the new member id was stored");
    // Its assignment is the old one; a's session goes on undisturbed.
    let s = w.sync("g", &rb2.member_id, 1, &[]);
    assert_eq!(w.sync_reply(s).assignment, Bytes::from("pb"));
    assert_eq!(w.heartbeat("g", &a, 1), 0);
    // The old incarnation is fenced.
    let fenced = w.shard.heartbeat(w.now, "g", &b, Some("instance-b"), 1);
    assert_eq!(fenced, c(E::FencedInstanceId));
    let wj = w.join_req("g", &b, Some("instance-b"), &["range"]);
    assert_eq!(w.join_reply(wj).error, c(E::FencedInstanceId));
}

#[test]
fn static_member_that_does_not_rejoin_stays_in_the_group() {
    let mut w = World::new();
    let wa = w.join_req("g", "", Some("ia"), &["range"]);
    let wb = w.join_req("g", "", Some("ib"), &["range"]);
    w.advance(DELAY);
    w.advance(DELAY);
    let a = w.join_reply(wa).member_id;
    let b = w.join_reply(wb).member_id;
    let sa = w.sync("g", &a, 1, &[(&a, "pa"), (&b, "pb")]);
    w.sync_reply(sa);
    // a asks for a rebalance (leader rejoin); b is slow but keeps its session.
    let wa = w.join_req("g", &a, Some("ia"), &["range"]);
    for _ in 0..5 {
        w.advance(5000);
        let hb = w.shard.heartbeat(w.now, "g", &b, Some("ib"), 1);
        assert_eq!(hb, c(E::RebalanceInProgress));
        assert!(w.take(wa).is_none());
    }
    w.advance(5000);
    let ra = w.join_reply(wa);
    assert_eq!(ra.generation, 2);
    assert_eq!(ra.members.len(), 2, "the static member is still listed");
}

#[test]
fn leader_rejoin_rebalances_follower_rejoin_does_not() {
    let mut w = World::new();
    let (a, b) = w.stable_pair("g");
    let wb = w.join_req("g", &b, None, &["range"]);
    let rb = w.join_reply(wb);
    assert_eq!((rb.generation, rb.leader.as_str()), (2, a.as_str()));
    assert_eq!(w.state("g"), Some(GroupState::Stable));
    let wa = w.join_req("g", &a, None, &["range"]);
    assert!(w.take(wa).is_none());
    assert_eq!(w.state("g"), Some(GroupState::PreparingRebalance));
}

#[test]
fn a_member_that_missed_its_join_answer_gets_it_again() {
    let mut w = World::new();
    let a = w.stable_single("g");
    let (b, wb) = w.new_member("g", &["range"]);
    let wa = w.join_req("g", &a, None, &["range"]);
    let first = w.join_reply(wa);
    w.join_reply(wb);
    assert_eq!(w.state("g"), Some(GroupState::CompletingRebalance));
    let wa2 = w.join_req("g", &a, None, &["range"]);
    let again = w.join_reply(wa2);
    assert_eq!(again, first);
    // Commits are refused until the assignment is out.
    let cw = w.commit("g", &b, 2, &[("orders", 0, 5, None)]);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::RebalanceInProgress));
}

#[test]
fn offsets_round_trip_with_metadata_and_follow_the_generation() {
    let mut w = World::new();
    // A group that only stores offsets (generation -1).
    let cw = w.commit(
        "simple",
        "",
        -1,
        &[("orders", 0, 42, Some("meta-0")), ("orders", 1, 7, None)],
    );
    assert_eq!(
        w.commit_reply(cw),
        vec![("orders".into(), 0, 0), ("orders".into(), 1, 0)]
    );
    let got = w
        .shard
        .fetch_offsets("simple", Some(vec![("orders".into(), vec![0, 1, 2])]));
    assert_eq!(
        got[0]
            .2
            .as_ref()
            .map(|v| (v.offset, v.leader_epoch, v.metadata.as_str())),
        Some((42, 5, "meta-0"))
    );
    assert_eq!(got[1].2.as_ref().map(|v| v.metadata.as_str()), Some(""));
    assert!(got[2].2.is_none());
    assert_eq!(w.shard.fetch_offsets("simple", None).len(), 2);
    assert!(w.shard.fetch_offsets("none", None).is_empty());

    // Metadata over the limit is refused per partition.
    let big = "x".repeat(OFFSET_METADATA_MAX_BYTES_FOR_TEST + 1);
    let cw = w.commit(
        "simple",
        "",
        -1,
        &[("orders", 0, 50, Some(&big)), ("orders", 2, 1, None)],
    );
    let r = w.commit_reply(cw);
    assert!(r.contains(&("orders".into(), 0, c(E::OffsetMetadataTooLarge))));
    assert!(r.contains(&("orders".into(), 2, 0)));

    // Managed group: generation and membership are checked.
    let a = w.stable_single("g");
    let cw = w.commit("g", &a, 1, &[("orders", 0, 10, Some("m"))]);
    assert_eq!(w.commit_reply(cw)[0].2, 0);
    let cw = w.commit("g", &a, 0, &[("orders", 0, 11, None)]);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::IllegalGeneration));
    let cw = w.commit("g", "stranger", 1, &[("orders", 0, 11, None)]);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::UnknownMemberId));
    let cw = w.commit("g", "", -1, &[("orders", 0, 11, None)]);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::UnknownMemberId));
    let cw = w.commit("new-group", "m", 3, &[("orders", 0, 11, None)]);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::IllegalGeneration));
}

const OFFSET_METADATA_MAX_BYTES_FOR_TEST: usize = crate::group::OFFSET_METADATA_MAX_BYTES;

#[test]
fn offsets_become_visible_only_once_written() {
    let mut w = World::new();
    let cw = w.commit("g", "", -1, &[("orders", 0, 1, None)]);
    w.commit_reply(cw);
    w.hold_writes = true;
    let cw = w.commit("g", "", -1, &[("orders", 0, 2, None)]);
    assert!(w.take(cw).is_none(), "answered only after the write");
    let offset = |w: &World| {
        w.shard.fetch_offsets("g", None)[0]
            .2
            .as_ref()
            .map(|v| v.offset)
    };
    assert_eq!(offset(&w), Some(1));
    w.release_writes();
    assert_eq!(w.commit_reply(cw)[0].2, 0);
    assert_eq!(offset(&w), Some(2));
    // A failed write is reported with Kafka's mapping and changes nothing.
    let cw = w.commit("g", "", -1, &[("orders", 0, 3, None)]);
    w.fail_writes(LogError::Timeout);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::RequestTimedOut));
    let cw = w.commit("g", "", -1, &[("orders", 0, 3, None)]);
    w.fail_writes(LogError::NotLeader);
    assert_eq!(w.commit_reply(cw)[0].2, c(E::NotCoordinator));
    assert_eq!(offset(&w), Some(2));
}

#[test]
fn a_failed_assignment_write_fails_the_sync_and_rebalances() {
    let mut w = World::new();
    let (a, wa) = w.new_member("g", &["range"]);
    w.advance(DELAY);
    w.join_reply(wa);
    w.hold_writes = true;
    let s = w.sync("g", &a, 1, &[(&a, "x")]);
    assert!(w.take(s).is_none());
    w.fail_writes(LogError::NotLeader);
    assert_eq!(w.sync_reply(s).error, c(E::NotCoordinator));
    assert_eq!(w.state("g"), Some(GroupState::PreparingRebalance));
}

#[test]
fn delete_groups_only_when_empty() {
    let mut w = World::new();
    let a = w.stable_single("busy");
    let cw = w.commit("busy", &a, 1, &[("orders", 0, 1, None)]);
    w.commit_reply(cw);
    let cw = w.commit(
        "idle",
        "",
        -1,
        &[("orders", 0, 1, None), ("orders", 1, 1, None)],
    );
    w.commit_reply(cw);
    let before = w.log.len();
    let dw = w.waiter();
    w.shard.delete_groups(
        w.now,
        vec!["busy".into(), "idle".into(), "ghost".into()],
        dw,
    );
    w.pump();
    let r = match w.take(dw) {
        Some(Reply::DeleteGroups(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        r,
        vec![
            ("busy".into(), c(E::NonEmptyGroup)),
            ("idle".into(), 0),
            ("ghost".into(), c(E::GroupIdNotFound)),
        ]
    );
    // Two offset tombstones and a group tombstone.
    let tombstones: Vec<&Record> = w.log[before..].iter().map(|(_, r)| r).collect();
    assert_eq!(tombstones.len(), 3);
    assert!(tombstones.iter().all(|r| matches!(
        r,
        Record::Offset { value: None, .. } | Record::Group { value: None, .. }
    )));
    assert!(w.shard.fetch_offsets("idle", None).is_empty());
    assert!(w.state("idle").is_none());
}

#[test]
fn offset_delete_refuses_subscribed_topics_of_active_groups() {
    let mut w = World::new();
    let a = w.stable_single("g");
    let cw = w.commit("g", &a, 1, &[("orders", 0, 1, None), ("audit", 0, 1, None)]);
    w.commit_reply(cw);
    let dw = w.waiter();
    w.shard.offset_delete(
        w.now,
        "g",
        vec![("orders".into(), 0), ("audit".into(), 0)],
        dw,
    );
    w.pump();
    match w.take(dw) {
        Some(Reply::OffsetDelete(0, r)) => {
            assert!(r.contains(&("orders".into(), 0, c(E::GroupSubscribedToTopic))));
            assert!(r.contains(&("audit".into(), 0, 0)));
        }
        other => panic!("{other:?}"),
    }
    let left = w.shard.fetch_offsets("g", None);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "orders");
    let dw = w.waiter();
    w.shard.offset_delete(w.now, "ghost", vec![], dw);
    w.pump();
    assert_eq!(
        w.take(dw),
        Some(Reply::OffsetDelete(c(E::GroupIdNotFound), vec![]))
    );
}

#[test]
fn replaying_the_log_restores_groups_and_offsets() {
    let mut w = World::new();
    let (a, b) = w.stable_pair("g");
    let cw = w.commit("g", &a, 2, &[("orders", 0, 100, Some("from-a"))]);
    w.commit_reply(cw);
    let cw = w.commit("g", &b, 2, &[("orders", 1, 200, Some("from-b"))]);
    w.commit_reply(cw);
    let cw = w.commit("g", &b, 2, &[("orders", 1, 201, Some("again"))]);
    w.commit_reply(cw);
    let cw = w.commit("gone", "", -1, &[("orders", 0, 1, None)]);
    w.commit_reply(cw);
    let dw = w.waiter();
    w.shard.delete_groups(w.now, vec!["gone".into()], dw);
    w.pump();

    // Another broker takes over: it replays the partition from its start.
    let mut other = GroupShard::new(w.shard.config.clone(), 8);
    for (offset, record) in w.log.clone() {
        other.replay(offset, record);
    }
    let later = w.now + 5000;
    other.finish_load(later);
    let d = other.describe("g").expect("group restored");
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.protocol, "range");
    let assigned: Vec<(String, Bytes)> = d
        .members
        .iter()
        .map(|m| (m.member_id.clone(), m.assignment.clone()))
        .collect();
    assert!(assigned.contains(&(a.clone(), Bytes::from("p0"))));
    assert!(assigned.contains(&(b.clone(), Bytes::from("p1"))));
    // Members carry on without a rebalance.
    assert_eq!(other.heartbeat(later, "g", &a, None, 2), 0);
    assert_eq!(other.heartbeat(later, "g", &b, None, 2), 0);
    let offsets = other.fetch_offsets("g", None);
    let view: Vec<(i32, i64, &str)> = offsets
        .iter()
        .map(|(_, p, v)| {
            let v = v.as_ref().expect("committed");
            (*p, v.offset, v.metadata.as_str())
        })
        .collect();
    assert_eq!(view, vec![(0, 100, "from-a"), (1, 201, "again")]);
    assert!(other.describe("gone").is_none());
}

#[test]
fn unloading_tells_everyone_waiting_not_coordinator() {
    let mut w = World::new();
    let (_, wa) = w.new_member("g", &["range"]);
    w.hold_writes = true;
    let cw = w.commit("s", "", -1, &[("orders", 0, 1, None)]);
    w.shard.unload();
    w.pump();
    assert_eq!(w.join_reply(wa).error, c(E::NotCoordinator));
    assert_eq!(w.commit_reply(cw)[0].2, c(E::NotCoordinator));
    assert_eq!(w.shard.group_count(), 0);
}

#[test]
fn idle_empty_groups_are_forgotten() {
    let mut w = World::new();
    let (a, wa) = w.new_member("g", &["range"]);
    w.advance(DELAY);
    w.join_reply(wa);
    w.shard.leave(
        w.now,
        "g",
        vec![MemberIdentity {
            member_id: a,
            instance_id: None,
        }],
    );
    w.pump();
    assert_eq!(w.state("g"), Some(GroupState::Empty));
    w.advance(EMPTY_GROUP_RETENTION_MS);
    assert!(w.state("g").is_none());
    assert!(matches!(
        w.log.last(),
        Some((_, Record::Group { value: None, .. }))
    ));
}

#[test]
fn timers_are_exact_and_cheap() {
    let mut w = World::new();
    let a = w.stable_single("g");
    let due = w.shard.next_deadline().expect("a session is running");
    assert_eq!(due, w.now + i64::from(SESSION));
    assert_eq!(w.heartbeat("g", &a, 1), 0);
    w.advance(i64::from(SESSION) - 1);
    assert_eq!(w.state("g"), Some(GroupState::Stable));
    w.advance(1);
    // No heartbeat for a whole session after the last one.
    assert_eq!(w.state("g"), Some(GroupState::Empty));
}
