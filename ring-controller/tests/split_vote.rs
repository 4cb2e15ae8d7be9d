//! Elections that collide every round must still end with a leader.
//!
//! openraft 0.9 draws each node's election timeout once and checks it on a tick of 1.5
//! heartbeats. Here every timeout rounds up to the same tick (heartbeat 100 ms: tick 150 ms,
//! timeouts 400–409 ms) and the replicas start together, so once the leader is gone the two
//! survivors campaign at the same moment, vote for themselves and refuse each other, round
//! after round. The split-vote breaker (`raft_support`) campaigns off the tick and ends it.
//! Without the breaker this test fails every time (3 of 3 runs: no leader within 15 s);
//! with it the survivors elect in about 2.5 s (15 of 15 rounds).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ring_controller::replica::Replica;
use tokio::net::TcpListener;
use tokio::time::Instant;

fn colliding_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "split-vote-test".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 410,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid config"))
}

async fn start_group() -> Vec<Replica> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind raft");
        peers.insert(id, l.local_addr().expect("addr"));
        listeners.push((id, l));
    }
    // Started concurrently, so that their ticks line up as closely as this process allows.
    let starts: Vec<_> = listeners
        .into_iter()
        .map(|(id, l)| {
            let start = Replica::start_with_config(id, peers.clone(), l, None, colliding_config());
            tokio::spawn(start)
        })
        .collect();
    let mut replicas = Vec::new();
    for s in starts {
        replicas.push(s.await.expect("start task").expect("replica"));
    }
    replicas
}

async fn wait_leader(replicas: &[&Replica], bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if replicas.iter().any(|r| r.is_leader()) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_elections_still_elect_a_leader() {
    // Breaker: stuck after 3 × 410 ms, polled every 615 ms, plus up to a tick and a round
    // trip; a bound of 15 s leaves room for a loaded machine, while a split vote that
    // nothing breaks lasts as long as the ticks stay aligned (a minute and more here).
    let bound = Duration::from_secs(15);
    // Busy tasks keep both worker threads saturated, as the switches do in loopback.rs:
    // timers are then served in batches, and ticks created together fire together.
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for round in 0..3 {
        let replicas = start_group().await;
        let all: Vec<&Replica> = replicas.iter().collect();
        assert!(
            wait_leader(&all, bound).await.is_some(),
            "round {round}: no first leader"
        );
        let leader = replicas
            .iter()
            .position(|r| r.is_leader())
            .expect("a leader");
        let _ = replicas[leader].raft.shutdown().await;
        let survivors: Vec<&Replica> = (0..3)
            .filter(|&i| i != leader)
            .map(|i| &replicas[i])
            .collect();
        let took = wait_leader(&survivors, bound).await;
        assert!(
            took.is_some(),
            "round {round}: the survivors elected no leader within {bound:?}"
        );
        eprintln!(
            "round {round}: new leader after {:?}",
            took.unwrap_or_default()
        );
        for r in survivors {
            let _ = r.raft.shutdown().await;
        }
    }
    for s in spinners {
        s.abort();
    }
}
