//! Smoke test of the `softswitch` binary: three processes on 127.0.0.1, installed and
//! injected by hand (this test plays the controller), then sequential requests from one
//! broker socket. Every wait retransmits until a generous deadline, so the outcome does
//! not depend on timing; only a broken switch makes it fail.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sequencer_p4::wire::{install_flags, AlarmKind, Inject, Install, Message, Request, MAX_PACKET};

const N: u16 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

/// Kills the switches when the test ends, however it ends.
struct Ring(Vec<Child>);

impl Drop for Ring {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    s
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("loopback is IPv4"),
    }
}

fn recv(sock: &UdpSocket) -> Option<(SocketAddrV4, Message)> {
    let mut buf = [0u8; MAX_PACKET + 1];
    let (len, from) = sock.recv_from(&mut buf).ok()?;
    Some((
        v4(from),
        Message::decode(&buf[..len]).expect("switch sent a valid packet"),
    ))
}

/// Sends `msg` every 200 ms until `accept` returns a value.
fn exchange<T>(
    sock: &UdpSocket,
    to: SocketAddrV4,
    msg: Message,
    mut accept: impl FnMut(Message) -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut sent = None::<Instant>;
    while start.elapsed() < DEADLINE {
        if sent.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
            sock.send_to(&msg.to_bytes(), to).expect("send");
            sent = Some(Instant::now());
        }
        if let Some(value) = recv(sock).and_then(|(_, m)| accept(m)) {
            return value;
        }
    }
    panic!("no answer to {msg:?} within {DEADLINE:?}");
}

fn start_ring(ctrl: &UdpSocket) -> (Ring, BTreeMap<u16, (SocketAddrV4, u64)>) {
    let ctrl_addr = ctrl.local_addr().expect("addr").to_string();
    let ring = Ring(
        (0..N)
            .map(|id| {
                Command::new(env!("CARGO_BIN_EXE_softswitch"))
                    .args([
                        "--id",
                        &id.to_string(),
                        "--listen",
                        "127.0.0.1:0",
                        "--controller",
                        &ctrl_addr,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn softswitch")
            })
            .collect(),
    );
    // Each switch announces itself (and its ephemeral port) with its boot Status.
    let mut switches = BTreeMap::new();
    let start = Instant::now();
    while switches.len() < N as usize && start.elapsed() < DEADLINE {
        if let Some((from, Message::Status(st))) = recv(ctrl) {
            assert_eq!(st.epoch, 0, "a fresh switch has nothing installed");
            switches.insert(st.switch_id, (from, st.boot));
        }
    }
    assert_eq!(switches.len(), N as usize, "boot statuses: {switches:?}");
    (ring, switches)
}

fn install_epoch_one(ctrl: &UdpSocket, switches: &BTreeMap<u16, (SocketAddrV4, u64)>) {
    for (&id, &(addr, boot)) in switches {
        let mut install = Install {
            epoch: 1,
            switch_id: id,
            flags: if id == 0 { install_flags::HEAD } else { 0 },
            report_shift: 10,
            max_visit: 10_000,
            boot,
            base: 1_000,
            limit: 1 << 40,
            ..Install::default()
        };
        install.set_successor(switches[&((id + 1) % N)].0);
        exchange(ctrl, addr, Message::Install(install), |m| match m {
            Message::Status(st) if st.switch_id == id && st.epoch == 1 => Some(()),
            _ => None,
        });
    }
}

#[test]
fn three_softswitches_issue_increasing_disjoint_numbers() {
    let ctrl = socket();
    let broker = socket();
    let (_ring, switches) = start_ring(&ctrl);

    // Uninstalled switches refuse to issue numbers.
    let req = Request {
        epoch: 1,
        count: 5,
        client: 0xC11E,
        req_id: 1,
    };
    let refused = exchange(
        &broker,
        switches[&1].0,
        Message::Request(req),
        |m| match m {
            Message::Reject(r) => Some(r.epoch),
            _ => None,
        },
    );
    assert_eq!(refused, 0);

    install_epoch_one(&ctrl, &switches);
    exchange(
        &ctrl,
        switches[&0].0,
        Message::Inject(Inject { epoch: 1 }),
        |m| match m {
            Message::Alarm(a) if a.kind == AlarmKind::Progress as u8 && a.epoch == 1 => Some(()),
            _ => None,
        },
    );

    // Sequential requests to every switch: each completes before the next starts, so the
    // numbers must increase, and ranges never overlap.
    let mut last_end = 0u64;
    for req_id in 2..62u64 {
        let count = 1 + (req_id % 7) as u32;
        let home = switches[&((req_id % u64::from(N)) as u16)].0;
        let req = Request {
            epoch: 1,
            count,
            client: 0xC11E,
            req_id,
        };
        let mut ticket = None;
        let gsn = exchange(&broker, home, Message::Request(req), |m| match m {
            Message::Ticket(t) if t.req_id == req_id => {
                ticket = Some(t);
                None
            }
            Message::Grant(g) if g.req_id == req_id => Some(g.gsn),
            Message::Announce(a) => ticket
                .filter(|t| t.switch_id == a.switch_id && t.visit == a.visit)
                .map(|t| a.base + (t.local_off - a.local_lo)),
            _ => None,
        });
        assert!(
            gsn >= last_end.max(1_000),
            "request {req_id} got {gsn}, previous ended at {last_end}"
        );
        last_end = gsn + u64::from(count);
    }
}
