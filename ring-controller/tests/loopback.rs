//! A real ring on loopback: three switches (the `sequencer_p4` pipeline in tasks, each on its
//! own UDP socket, exactly as the softswitch runs it) and the controller over UDP. Epoch 1 is
//! bootstrapped and the token circulates; a switch is killed and a new epoch without it is
//! installed above everything the old epoch issued; the ring is then grown back by resize.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ring_controller::controller::{self, ControllerConfig, Metrics, SwitchSpec};
use ring_controller::replica::Replica;
use ring_controller::store::RosterEntry;
use sequencer_p4::config::RingConfig;
use sequencer_p4::pipeline::{Config, Pipeline};
use sequencer_p4::wire::{Message, MAX_PACKET};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// Generous against a loaded CI machine: all switches, the controller and Raft share this
/// process and two threads, and a starved process must not read as a lost token (that
/// would be a spurious epoch, which the tests assert against).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(3);
const GIVE_UP: Duration = Duration::from_secs(4);
/// Bound on every wait for the ring or the store; a failure takes
/// TOKEN_TIMEOUT + GIVE_UP plus a few Raft round trips to repair.
const WAIT_SECS: u64 = 40;

/// What the test can see of a running switch.
#[derive(Default)]
struct Seen {
    epoch: AtomicU64,
    visits: AtomicU64,
    fwd_base: AtomicU64,
}

struct Switch {
    addr: SocketAddrV4,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

async fn start_switch(id: u16, addr: SocketAddrV4, boot: u64, ctrl: SocketAddrV4) -> Switch {
    let sock = UdpSocket::bind(addr).await.expect("bind switch");
    let addr = match sock.local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("bound to v4"),
    };
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut p = Pipeline::new(Config {
            switch_id: id,
            boot,
            controller: Some(ctrl),
            default_successor: None,
        });
        for (to, m) in p.boot_messages() {
            let _ = sock.send_to(&m.to_bytes(), to).await;
        }
        let mut buf = vec![0u8; MAX_PACKET * 2];
        loop {
            let (n, src) = match sock.recv_from(&mut buf).await {
                Ok((n, SocketAddr::V4(src))) => (n, src),
                // ICMP errors from dead peers, v6 sources: ignore, like the softswitch.
                _ => continue,
            };
            let Ok(msg) = Message::decode(&buf[..n]) else {
                continue;
            };
            for (to, m) in p.process(src, &msg) {
                let _ = sock.send_to(&m.to_bytes(), to).await;
            }
            let st = p.status();
            s2.epoch.store(u64::from(st.epoch), Ordering::Relaxed);
            s2.visits.store(st.last_seq, Ordering::Relaxed);
            s2.fwd_base.fetch_max(st.fwd_base, Ordering::Relaxed);
            // The ring spins as fast as loopback allows; let the controller's tasks run on
            // the test's two worker threads.
            tokio::task::yield_now().await;
        }
    });
    Switch { addr, seen, task }
}

/// Logs go to the test's captured output: shown only when a test fails.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// Bounded polling: `f` must become true within `secs`.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn circulating(sw: &[&Switch], epoch: u32) -> Vec<u64> {
    sw.iter()
        .map(|s| {
            if s.seen.epoch.load(Ordering::Relaxed) == u64::from(epoch) {
                s.seen.visits.load(Ordering::Relaxed)
            } else {
                0
            }
        })
        .collect()
}

/// Waits until every switch in `sw` is installed in `epoch` and has accepted tokens, twice
/// apart, so the token is going round rather than having passed once.
async fn wait_circulating(sw: &[&Switch], epoch: u32) {
    eventually(WAIT_SECS, "token circulating", || {
        circulating(sw, epoch).iter().all(|v| *v > 0)
    })
    .await;
    let first = circulating(sw, epoch);
    eventually(WAIT_SECS, "token keeps circulating", || {
        circulating(sw, epoch)
            .iter()
            .zip(&first)
            .all(|(now, then)| now > then)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_kill_a_switch_then_grow_back() {
    init_logs();
    let ctrl_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind ctrl");
    let ctrl_addr = match ctrl_sock.local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let any = SocketAddrV4::new([127, 0, 0, 1].into(), 0);
    let mut switches = Vec::new();
    for i in 0..3u16 {
        switches.push(start_switch(i, any, 1000 + u64::from(i), ctrl_addr).await);
    }
    let roster: Vec<RosterEntry> = switches
        .iter()
        .enumerate()
        .map(|(i, s)| RosterEntry {
            switch_id: i as u16,
            addr: s.addr,
        })
        .collect();

    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind raft");
    let peers = BTreeMap::from([(1u64, l.local_addr().expect("addr"))]);
    let replica = Replica::start(1, peers, l, None).await.expect("replica");
    let metrics = Arc::new(Metrics::default());
    let cfg = ControllerConfig {
        retry: Duration::from_millis(20),
        probe_interval: Duration::from_millis(50),
        token_timeout: TOKEN_TIMEOUT,
        give_up: GIVE_UP,
        max_visit: 100,
        report_shift: 8,
        initial_roster: roster,
        ..ControllerConfig::default()
    };
    let (admin, ctrl_task) = controller::spawn(replica.clone(), ctrl_sock, cfg, metrics.clone());

    // Epoch 1 from the roster, token going round all three.
    let stored = |r: &Replica| r.state().config;
    eventually(WAIT_SECS, "epoch 1 stored", || {
        stored(&replica).is_some_and(|c| c.epoch >= 1)
    })
    .await;
    let e1: RingConfig = stored(&replica).expect("config");
    assert_eq!(e1.epoch, 1);
    assert_eq!(e1.base, 0);
    assert_eq!(
        e1.members.iter().map(|m| m.switch_id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(e1.members[1].boot, 1001, "boot ids learnt from Status");
    wait_circulating(&switches.iter().collect::<Vec<_>>(), 1).await;
    assert_eq!(
        stored(&replica).map(|c| c.epoch),
        Some(1),
        "no spurious epoch"
    );

    // Kill switch 1: its socket closes, the token dies at it.
    let dead = switches.remove(1);
    let Switch {
        addr: dead_addr,
        seen: dead_seen,
        task,
    } = dead;
    task.abort();
    let _ = task.await;
    eventually(WAIT_SECS, "epoch without switch 1", || {
        stored(&replica).is_some_and(|c| c.epoch >= 2 && c.members.iter().all(|m| m.switch_id != 1))
    })
    .await;
    let e2 = stored(&replica).expect("config");
    assert_eq!(
        e2.members.iter().map(|m| m.switch_id).collect::<Vec<_>>(),
        vec![0, 2]
    );
    // Above everything epoch 1 handed out: every fwd_base any switch reached.
    let issued = switches
        .iter()
        .map(|s| s.seen.fwd_base.load(Ordering::Relaxed))
        .chain(std::iter::once(dead_seen.fwd_base.load(Ordering::Relaxed)))
        .max()
        .unwrap_or(0);
    assert!(
        e2.base >= issued,
        "restart point {} below issued {issued}",
        e2.base
    );
    wait_circulating(&switches.iter().collect::<Vec<_>>(), e2.epoch).await;

    // Restart switch 1 (new incarnation, same address) and grow the ring back to three.
    let revived = start_switch(1, dead_addr, 2001, ctrl_addr).await;
    switches.insert(1, revived);
    let roster = admin
        .resize(
            (0..3)
                .map(|i| SwitchSpec {
                    switch_id: i,
                    addr: None,
                })
                .collect(),
        )
        .await
        .expect("resize");
    assert_eq!(roster.len(), 3);
    eventually(WAIT_SECS, "ring grown back to three", || {
        stored(&replica).is_some_and(|c| c.epoch > e2.epoch && c.members.len() == 3)
    })
    .await;
    let e3 = stored(&replica).expect("config");
    assert_eq!(e3.members[1].boot, 2001, "the new incarnation joined");
    assert!(e3.base >= e2.base);
    wait_circulating(&switches.iter().collect::<Vec<_>>(), e3.epoch).await;
    assert!(metrics.reconfigurations.load(Ordering::Relaxed) >= 3);

    ctrl_task.abort();
    for s in switches {
        s.task.abort();
    }
    let _ = replica.raft.shutdown().await;
}

/// Three controller replicas, each with its own UDP socket and loop. Killing the leader
/// (its Raft node and its loop) stops nothing: the ring keeps its epoch and its token, a new
/// leader takes over without reconfiguring, and it handles the next failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_leader_stops_nothing() {
    init_logs();
    let mut socks = Vec::new();
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind ctrl");
        socks.push(s);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind raft");
        peers.insert(id, l.local_addr().expect("addr"));
        listeners.push((id, l));
    }
    let first_ctrl = match socks[0].local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let any = SocketAddrV4::new([127, 0, 0, 1].into(), 0);
    let mut switches = Vec::new();
    for i in 0..3u16 {
        switches.push(start_switch(i, any, 500 + u64::from(i), first_ctrl).await);
    }
    let roster: Vec<RosterEntry> = switches
        .iter()
        .enumerate()
        .map(|(i, s)| RosterEntry {
            switch_id: i as u16,
            addr: s.addr,
        })
        .collect();
    let cfg = ControllerConfig {
        retry: Duration::from_millis(20),
        probe_interval: Duration::from_millis(50),
        token_timeout: TOKEN_TIMEOUT,
        give_up: GIVE_UP,
        max_visit: 100,
        report_shift: 8,
        initial_roster: roster,
        ..ControllerConfig::default()
    };
    let mut replicas = Vec::new();
    let mut loops = Vec::new();
    let mut metrics = Vec::new();
    for ((id, l), sock) in listeners.into_iter().zip(socks) {
        let r = Replica::start(id, peers.clone(), l, None)
            .await
            .expect("replica");
        let m = Arc::new(Metrics::default());
        let (_admin, task) = controller::spawn(r.clone(), sock, cfg.clone(), m.clone());
        replicas.push(r);
        loops.push(task);
        metrics.push(m);
    }

    eventually(WAIT_SECS, "epoch 1 on every replica", || {
        replicas
            .iter()
            .all(|r| r.state().config.is_some_and(|c| c.epoch == 1))
    })
    .await;
    wait_circulating(&switches.iter().collect::<Vec<_>>(), 1).await;

    // Kill the leader: its loop and its Raft node.
    let leader = replicas
        .iter()
        .position(|r| r.is_leader())
        .expect("a leader");
    loops[leader].abort();
    let _ = replicas[leader].raft.shutdown().await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // The ring does not notice: same epoch, token still going round, while a new leader is
    // elected and settles in (longer than the token timeout, to catch a spurious reseal).
    wait_circulating(&switches.iter().collect::<Vec<_>>(), 1).await;
    eventually(WAIT_SECS, "a new leader", || {
        survivors
            .iter()
            .any(|&i| metrics[i].is_leader.load(Ordering::Relaxed) == 1)
    })
    .await;
    // Observation window, not sync: longer than the token timeout.
    tokio::time::sleep(TOKEN_TIMEOUT + Duration::from_millis(500)).await;
    wait_circulating(&switches.iter().collect::<Vec<_>>(), 1).await;
    for &i in &survivors {
        assert_eq!(
            replicas[i].state().epoch(),
            1,
            "failover must not reconfigure"
        );
    }

    // The new leader handles the next failure.
    let dead = switches.remove(2);
    dead.task.abort();
    let _ = dead.task.await;
    eventually(WAIT_SECS, "new epoch from the new leader", || {
        survivors.iter().all(|&i| {
            replicas[i]
                .state()
                .config
                .is_some_and(|c| c.epoch >= 2 && c.members.iter().all(|m| m.switch_id != 2))
        })
    })
    .await;
    let e = replicas[survivors[0]].state().epoch();
    wait_circulating(&switches.iter().collect::<Vec<_>>(), e).await;

    for (i, t) in loops.into_iter().enumerate() {
        t.abort();
        if i != leader {
            let _ = replicas[i].raft.shutdown().await;
        }
    }
    for s in switches {
        s.task.abort();
    }
}
