//! The consensus-backed store: three replicas over the real TCP transport on loopback, and
//! the conditional write under racing proposers.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use ring_controller::replica::Replica;
use sequencer_p4::config::{RingConfig, RingMember};
use tokio::net::TcpListener;

fn config(epoch: u32, tag: u64) -> RingConfig {
    RingConfig {
        epoch,
        base: tag * 1000,
        limit: tag * 1000 + 500,
        max_visit: 10,
        members: vec![RingMember {
            switch_id: tag as u16,
            addr: SocketAddrV4::new([127, 0, 0, 1].into(), 7650),
            boot: tag,
        }],
        head: tag as u16,
    }
}

async fn cluster(n: u64) -> Vec<Replica> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=n {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        peers.insert(id, l.local_addr().expect("addr"));
        listeners.push((id, l));
    }
    let mut out = Vec::new();
    for (id, l) in listeners {
        out.push(
            Replica::start(id, peers.clone(), l, None)
                .await
                .expect("start replica"),
        );
    }
    out
}

async fn leader(replicas: &[Replica]) -> Replica {
    let id = replicas[0]
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader within 10 s");
    // The leader's own metrics may lag the follower's view by a heartbeat: poll (bounded).
    for _ in 0..200 {
        if let Some(r) = replicas.iter().find(|r| r.id == id && r.is_leader()) {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("leader {id} never saw itself as leader");
}

/// Polls (bounded) until every replica has applied `epoch`.
async fn converge(replicas: &[Replica], epoch: u32) -> RingConfig {
    for _ in 0..500 {
        let states: Vec<_> = replicas.iter().map(|r| r.state().config).collect();
        if states
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| c.epoch == epoch))
            && states.windows(2).all(|w| w[0] == w[1])
        {
            return states[0].clone().expect("config");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("replicas did not converge on epoch {epoch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_writes_have_one_winner() {
    let replicas = cluster(3).await;
    let leader = leader(&replicas).await;

    for round in 0..3u32 {
        // Eight proposers race to store epoch round+1 over the same expected epoch.
        let mut tasks = Vec::new();
        for p in 0..8u64 {
            let l = leader.clone();
            let cfg = config(round + 1, u64::from(round) * 10 + p + 1);
            tasks.push(tokio::spawn(async move {
                (cfg.clone(), l.install(round, cfg).await.expect("write"))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (cfg, r) = t.await.expect("join");
            assert_eq!(
                r.state.epoch(),
                round + 1,
                "every proposer sees the new epoch"
            );
            if r.won {
                winners.push(cfg);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        let stored = converge(&replicas, round + 1).await;
        assert_eq!(
            stored, winners[0],
            "every replica stores the winner's config"
        );
    }

    // A stale expectation never wins, and does not change anything.
    let r = leader.install(1, config(9, 99)).await.expect("write");
    assert!(!r.won);
    assert_eq!(r.state.epoch(), 3);
    // An epoch that does not grow is refused even with the right expectation.
    let r = leader.install(3, config(3, 98)).await.expect("write");
    assert!(!r.won);

    // Followers refuse writes (they would forward to the leader): no second writer path.
    let follower = replicas
        .iter()
        .find(|r| r.id != leader.id)
        .expect("a follower");
    assert!(follower.install(3, config(4, 97)).await.is_err());

    for r in &replicas {
        let _ = r.raft.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_config_survives_a_restart_from_the_json_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = l.local_addr().expect("addr");
    let peers: BTreeMap<u64, SocketAddr> = [(1, addr)].into();
    let r = Replica::start(1, peers.clone(), l, Some(dir.path().to_path_buf()))
        .await
        .expect("start");
    let r = leader(std::slice::from_ref(&r)).await;
    assert!(r.install(0, config(1, 7)).await.expect("write").won);
    r.raft.shutdown().await.expect("shutdown");
    drop(r);

    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let r = Replica::start(1, peers, l, Some(dir.path().to_path_buf()))
        .await
        .expect("restart");
    let stored = converge(std::slice::from_ref(&r), 1).await;
    assert_eq!(stored, config(1, 7));
    // The conditional write continues from the recovered epoch.
    let r = leader(std::slice::from_ref(&r)).await;
    assert!(!r.install(0, config(1, 8)).await.expect("write").won);
    assert!(r.install(1, config(2, 8)).await.expect("write").won);
    let _ = r.raft.shutdown().await;
}
