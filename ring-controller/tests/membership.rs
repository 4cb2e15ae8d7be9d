//! Changing the controller replica set at run time (openraft membership changes over the
//! real TCP transport on loopback): a fourth replica joins and receives the stored ring,
//! a replica is removed and the rest still store configurations, a replica that never
//! answers is refused as a voter and can be removed again. Waits are bounded polls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::time::Duration;

use ring_controller::replica::{MembershipError, Replica};
use sequencer_p4::config::{RingConfig, RingMember};
use tokio::net::TcpListener;

fn config(epoch: u32) -> RingConfig {
    RingConfig {
        epoch,
        base: u64::from(epoch) * 1000,
        limit: u64::from(epoch) * 1000 + 500,
        max_visit: 10,
        members: vec![RingMember {
            switch_id: 0,
            addr: SocketAddrV4::new([127, 0, 0, 1].into(), 7650),
            boot: 1,
        }],
        head: 0,
    }
}

async fn leader_of(replicas: &[Replica]) -> Replica {
    for _ in 0..1000 {
        if let Some(r) = replicas.iter().find(|r| r.is_leader()) {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within 10 s");
}

async fn wait_epoch(r: &Replica, epoch: u32) {
    for _ in 0..1000 {
        if r.state().epoch() == epoch {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("replica {} never applied epoch {epoch}", r.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_and_leave_at_run_time() {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        peers.insert(id, l.local_addr().expect("addr"));
        listeners.push((id, l));
    }
    let mut replicas = Vec::new();
    for (id, l) in listeners {
        replicas.push(
            Replica::start(id, peers.clone(), l, None)
                .await
                .expect("start"),
        );
    }
    let leader = leader_of(&replicas).await;
    assert!(leader.install(0, config(1)).await.expect("install").won);

    // A fourth replica joins: it is added as a learner, catches up, becomes a voter, and
    // holds the configuration stored before it existed.
    let l4 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a4 = l4.local_addr().expect("addr");
    let r4 = Replica::join(4, l4, None).await.expect("join");
    let voters = leader
        .add_member(4, a4, Duration::from_secs(10))
        .await
        .expect("add replica 4");
    assert_eq!(voters, BTreeSet::from([1, 2, 3, 4]));
    wait_epoch(&r4, 1).await;
    // Adding it again changes nothing.
    assert_eq!(
        leader
            .add_member(4, a4, Duration::from_secs(1))
            .await
            .expect("idempotent"),
        voters
    );

    // A follower cannot change the membership.
    let follower = replicas
        .iter()
        .find(|r| r.id != leader.id)
        .expect("a follower");
    assert!(matches!(
        follower.remove_member(4).await,
        Err(MembershipError::NotLeader(_))
    ));

    // Remove the leader itself: the other three elect a new leader and keep storing.
    let gone = leader.id;
    let voters = leader.remove_member(gone).await.expect("remove the leader");
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&gone));
    let mut rest: Vec<Replica> = replicas.into_iter().filter(|r| r.id != gone).collect();
    rest.push(r4.clone());
    let new_leader = leader_of(&rest).await;
    assert!(
        new_leader
            .install(1, config(2))
            .await
            .expect("install after removal")
            .won
    );
    for r in &rest {
        wait_epoch(r, 2).await;
    }

    // A replica that never answers is not made a voter; it can be removed again.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    match new_leader
        .add_member(9, dead_addr, Duration::from_millis(500))
        .await
    {
        Err(MembershipError::NotCaughtUp(9, _)) => {}
        other => panic!("expected NotCaughtUp: {other:?}"),
    }
    assert!(!new_leader.voters().contains(&9));
    assert!(new_leader.nodes().contains_key(&9), "left as a learner");
    new_leader
        .remove_member(9)
        .await
        .expect("remove the learner");
    assert!(!new_leader.nodes().contains_key(&9));
    assert!(matches!(
        new_leader.remove_member(9).await,
        Err(MembershipError::NotAMember(9))
    ));
}
