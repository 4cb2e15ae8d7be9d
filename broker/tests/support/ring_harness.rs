//! An in-process switch ring on 127.0.0.1 for tests and the ring benchmark: N
//! `sequencer_p4::pipeline::Pipeline`s, each a tokio task with its own UDP socket, plus a
//! hand-driven control plane (seal, install, inject over UDP, as `ring-controller` does) and a
//! fake controller admin endpoint serving `GET /ring`. Every control exchange retransmits
//! until a generous deadline, so outcomes never depend on timing.
#![allow(dead_code)]

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sequencer_p4::config::{RingConfig, RingMember};
use sequencer_p4::pipeline::{Config as SwitchConfig, Pipeline};
use sequencer_p4::wire::{
    install_flags, AlarmKind, Inject, Install, Message, Seal, Status, MAX_PACKET,
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
    ctrl: UdpSocket,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SoftRing {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One switch: packets in, pipeline, packets out. Tokens are forwarded after `hop_delay`
/// (0 = at once), which emulates a link and keeps an idle ring from spinning a core.
async fn run_switch(sock: Arc<UdpSocket>, mut pipeline: Pipeline, hop_delay: Duration) {
    let mut buf = vec![0u8; MAX_PACKET + 1];
    loop {
        let Ok((len, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(msg) = Message::decode(&buf[..len]) else {
            continue;
        };
        for (to, out) in pipeline.process(v4(from), &msg) {
            let bytes = out.to_bytes();
            if matches!(out, Message::Token(_)) && !hop_delay.is_zero() {
                let sock = Arc::clone(&sock);
                tokio::spawn(async move {
                    tokio::time::sleep(hop_delay).await;
                    let _ = sock.send_to(&bytes, to).await;
                });
            } else {
                let _ = sock.send_to(&bytes, to).await;
            }
        }
    }
}

impl SoftRing {
    pub async fn start(n: u16, hop_delay: Duration) -> Self {
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
            tasks.push(tokio::spawn(run_switch(
                Arc::new(sock),
                pipeline,
                hop_delay,
            )));
            switches.push((id, addr, boot));
        }
        Self {
            switches,
            ctrl,
            tasks,
        }
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
