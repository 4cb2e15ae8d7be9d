//! A switch ring on 127.0.0.1 for tests and the ring benchmark: N switches — either
//! in-process (each a tokio task running `sequencer_p4::host`, the softswitch's own host loop
//! around the pipeline, on its own UDP socket) or real `softswitch` processes — plus a
//! hand-driven control plane (seal, install, inject over UDP, as `ring-controller` does) and a
//! fake controller admin endpoint serving `GET /ring`. Every control exchange retransmits
//! until a generous deadline, so outcomes never depend on timing.
#![allow(dead_code)]

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sequencer_p4::config::{RingConfig, RingMember};
pub use sequencer_p4::host::HostOptions;
use sequencer_p4::host::{self, Host};
use sequencer_p4::pipeline::{Config as SwitchConfig, Pipeline};
use sequencer_p4::wire::{
    install_flags, AlarmKind, Inject, Install, Message, Probe, Seal, Status, MAX_PACKET,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);
const RETRY: Duration = Duration::from_millis(100);

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("loopback is IPv4"),
    }
}

pub struct SoftRing {
    /// (switch_id, data-plane address, boot id), in ring order.
    pub switches: Vec<(u16, SocketAddrV4, u64)>,
    /// Process ids of the switches when they are `softswitch` processes.
    pub pids: Vec<u32>,
    ctrl: UdpSocket,
    tasks: Vec<JoinHandle<()>>,
    children: Vec<Child>,
}

impl Drop for SoftRing {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl SoftRing {
    /// N in-process switches running the softswitch's host loop with `opts` (idle pacing,
    /// emulated link delay).
    pub async fn start(n: u16, opts: HostOptions) -> Self {
        let ctrl = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind controller");
        let ctrl_addr = v4(ctrl.local_addr().expect("addr"));
        let mut switches = Vec::new();
        let mut tasks = Vec::new();
        for id in 0..n {
            let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind switch");
            let addr = v4(sock.local_addr().expect("addr"));
            let boot = 0xB007_0000 + u64::from(id) + 1;
            let pipeline = Pipeline::new(SwitchConfig {
                switch_id: id,
                boot,
                controller: Some(ctrl_addr),
                default_successor: None,
            });
            let mut h = Host::new(pipeline, opts);
            tasks.push(tokio::spawn(async move {
                host::serve(&sock, &mut h, |_| {}, || {}, std::future::pending()).await;
            }));
            switches.push((id, addr, boot));
        }
        Self {
            switches,
            pids: Vec::new(),
            ctrl,
            tasks,
            children: Vec::new(),
        }
    }

    /// N `softswitch` processes (the binary at `bin`) on free loopback ports, each given
    /// `extra` flags (e.g. `--idle-hold-us 0`).
    pub async fn spawn(bin: &Path, n: u16, extra: &[String]) -> Self {
        let ctrl = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind controller");
        let ctrl_addr = v4(ctrl.local_addr().expect("addr"));
        let mut switches = Vec::new();
        let mut children = Vec::new();
        let mut pids = Vec::new();
        for id in 0..n {
            // A free port: bind, note it, release it for the switch.
            let port = {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe port");
                s.local_addr().expect("addr").port()
            };
            let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
            let boot = 0xB007_0000 + u64::from(id) + 1;
            let child = Command::new(bin)
                .args(["--id", &id.to_string(), "--listen", &addr.to_string()])
                .args(["--controller", &ctrl_addr.to_string()])
                .args(["--boot", &boot.to_string()])
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            pids.push(child.id());
            children.push(child);
            switches.push((id, addr, boot));
        }
        let ring = Self {
            switches,
            pids,
            ctrl,
            tasks: Vec::new(),
            children,
        };
        // Up when each answers a probe.
        for &(id, addr, _) in &ring.switches {
            ring.exchange(addr, Message::Probe(Probe {}), |m| match m {
                Message::Status(st) if st.switch_id == id => Some(()),
                _ => None,
            })
            .await;
        }
        ring
    }

    /// Sends `msg` to `to` every RETRY until `accept` returns a value.
    async fn exchange<T>(
        &self,
        to: SocketAddrV4,
        msg: Message,
        mut accept: impl FnMut(Message) -> Option<T>,
    ) -> T {
        let mut buf = vec![0u8; MAX_PACKET + 1];
        let give_up = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < give_up {
            self.ctrl.send_to(&msg.to_bytes(), to).await.expect("send");
            let round = tokio::time::Instant::now() + RETRY;
            while let Ok(Ok((len, _))) =
                tokio::time::timeout_at(round, self.ctrl.recv_from(&mut buf)).await
            {
                if let Some(v) = Message::decode(&buf[..len]).ok().and_then(&mut accept) {
                    return v;
                }
            }
        }
        panic!("no answer to {msg:?} within {DEADLINE:?}");
    }

    /// Installs `epoch` on every switch (switch 0 is the head) and returns the
    /// configuration brokers should fetch.
    pub async fn install(&self, epoch: u32, base: u64, limit: u64, max_visit: u32) -> RingConfig {
        let n = self.switches.len();
        for (i, &(id, addr, boot)) in self.switches.iter().enumerate() {
            let mut install = Install {
                epoch,
                switch_id: id,
                flags: if i == 0 { install_flags::HEAD } else { 0 },
                report_shift: 30,
                max_visit,
                boot,
                base,
                limit,
                ..Install::default()
            };
            install.set_successor(self.switches[(i + 1) % n].1);
            self.exchange(addr, Message::Install(install), |m| match m {
                Message::Status(st) if st.switch_id == id && st.epoch == epoch => Some(()),
                _ => None,
            })
            .await;
        }
        RingConfig {
            epoch,
            base,
            limit,
            max_visit,
            members: self
                .switches
                .iter()
                .map(|&(switch_id, addr, boot)| RingMember {
                    switch_id,
                    addr,
                    boot,
                })
                .collect(),
            head: self.switches[0].0,
        }
    }

    /// Creates the epoch's token at the head; returns once its first visit reported.
    pub async fn inject(&self, epoch: u32) {
        let head = self.switches[0].1;
        self.exchange(head, Message::Inject(Inject { epoch }), |m| match m {
            Message::Alarm(a) if a.kind == AlarmKind::Progress as u8 && a.epoch == epoch => {
                Some(())
            }
            _ => None,
        })
        .await;
    }

    /// Seals `epoch` on every switch; returns each switch's acknowledging Status.
    pub async fn seal(&self, epoch: u32) -> Vec<Status> {
        let mut reports = Vec::new();
        for &(id, addr, _) in &self.switches {
            let st = self
                .exchange(addr, Message::Seal(Seal { epoch }), |m| match m {
                    Message::Status(st) if st.switch_id == id && st.seal_floor >= epoch => Some(st),
                    _ => None,
                })
                .await;
            reports.push(st);
        }
        reports
    }
}

/// A fake ring controller admin endpoint: `GET /ring` answers the current configuration
/// (503 while there is none).
pub struct FakeController {
    pub addr: SocketAddr,
    pub config: Arc<Mutex<Option<RingConfig>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeController {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let addr = listener.local_addr().expect("addr");
        let config: Arc<Mutex<Option<RingConfig>>> = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let cfg = shared.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let (status, body) = match cfg {
                        Some(c) if head.starts_with(b"GET /ring ") => {
                            ("200 OK", serde_json::to_vec(&c).expect("json"))
                        }
                        _ => ("503 Service Unavailable", b"no ring".to_vec()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        Self { addr, config, task }
    }

    pub fn set(&self, cfg: RingConfig) {
        *self.config.lock().expect("lock") = Some(cfg);
    }
}
