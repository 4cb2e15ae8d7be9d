"""The broker on the switch ring, as real processes on loopback: softswitches, 3 ring
controllers, one broker with --sequencer ring, producers running throughout.

1. Faults on a ring of 3: kill -9 the broker's home switch, kill -9 the controller leader,
   add a switch back by a live resize.
2. Live resize 2 -> 4 -> 3 switches, and one produce batch of 200,000 records (more than
   the old default W of 65,536 numbers per request) in the middle of it.

Checked: no acknowledged record lost, no offset used twice, offsets increasing per
partition, the big batch's records on consecutive offsets, and how long producers stalled
(printed; bounded generously)."""

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import kproto as kp
from brokerproc import BrokerProcess, broker_bin, free_ports
from kafkatest import CheckedThread

TOPICS = ("ring-0", "ring-1")
STALL_LIMIT_S = 15.0


def udp_ports(n):
    # free_ports checks UDP as well as TCP.
    return free_ports(n)


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return r.read().decode()


class Ring:
    """Softswitches and controllers started by hand, every process killed at the end."""

    def __init__(self, tmp: Path, switches: int = 3, roster: int | None = None):
        """`switches` softswitch processes; the controllers' initial roster holds the
        first `roster` of them (all by default)."""
        self.bin = broker_bin().parent
        self.tmp = tmp
        self.switch_ports = udp_ports(switches)
        self.ctrl_udp = udp_ports(3)
        raft, admin = free_ports(3), free_ports(3)
        self.ctrl_admin = admin
        self.ctrl_raft = raft
        self.switch_procs = {}
        self.ctrl_procs = {}
        for i in range(switches):
            self.start_switch(i)
        peers = ",".join(f"{c + 1}=127.0.0.1:{raft[c]}" for c in range(3))
        roster = ",".join(f"{i}=127.0.0.1:{p}"
                          for i, p in enumerate(self.switch_ports[:roster or switches]))
        for c in range(3):
            self.ctrl_procs[c] = self.spawn(
                f"ctrl-{c + 1}", self.bin / "ring-controller",
                "--id", str(c + 1), "--peers", peers,
                "--raft-listen", f"127.0.0.1:{raft[c]}",
                "--udp-listen", f"127.0.0.1:{self.ctrl_udp[c]}",
                "--admin-listen", f"127.0.0.1:{admin[c]}",
                "--switches", roster, "--data-dir", str(tmp / f"ctrl-{c + 1}"))
        self.wait(lambda: self.config().get("epoch", 0) >= 1, "epoch 1 installed")

    def spawn(self, name, binary, *args):
        if not Path(binary).exists():
            raise FileNotFoundError(f"{binary} not built: cargo build --release --workspace")
        log = open(self.tmp / f"{name}.log", "ab")
        return subprocess.Popen([str(binary), *args], stdout=log, stderr=log)

    def start_switch(self, i):
        self.switch_procs[i] = self.spawn(
            f"switch-{i}", self.bin / "softswitch", "--id", str(i),
            "--listen", f"127.0.0.1:{self.switch_ports[i]}",
            "--controller", f"127.0.0.1:{self.ctrl_udp[0]}",
            "--metrics-listen", f"127.0.0.1:{free_ports(1)[0]}")

    def config(self):
        for c, port in enumerate(self.ctrl_admin):
            if self.ctrl_procs.get(c) is None:
                continue
            try:
                return json.loads(http_get(port, "/ring"))
            except OSError:
                continue
        return {}

    def leader(self):
        for c, port in enumerate(self.ctrl_admin):
            if self.ctrl_procs.get(c) is None:
                continue
            try:
                lines = http_get(port, "/metrics").splitlines()
                if "ring_controller_is_leader 1" in lines:
                    return c
            except OSError:
                continue
        return None

    def resize(self, switch_ids):
        """POSTs to whichever controller leads; a replica that lost or has not yet taken
        leadership answers 421, so try again until one accepts."""
        query = ",".join(f"{i}=127.0.0.1:{self.switch_ports[i]}" for i in switch_ids)

        def attempt():
            leader = self.leader()
            if leader is None:
                return False
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.ctrl_admin[leader]}/resize?switches={query}",
                method="POST")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        self.wait(attempt, f"a controller leader to accept resize to {query}")

    def members(self):
        return [m["switch_id"] for m in self.config().get("members", [])]

    def wait(self, cond, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = cond()
            if got is not None and got is not False:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def kill9(self, proc):
        proc.kill()
        proc.wait(10)

    def close(self):
        for p in [*self.switch_procs.values(), *self.ctrl_procs.values()]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


class Load(CheckedThread):
    """Produces with acks=all to TOPICS until stopped; records acks and their times."""

    def __init__(self, bootstrap):
        super().__init__(name="producer")
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "linger.ms": 2, "message.timeout.ms": 60000})
        self.acked, self.ack_times, self.errors = [], [], []
        self.stop = threading.Event()
        self.sent = 0

    def on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
            return
        self.acked.append((msg.topic(), msg.offset(), msg.value()))
        self.ack_times.append(time.monotonic())

    def work(self):
        while not self.stop.is_set():
            topic = TOPICS[self.sent % 2]
            self.producer.produce(topic, str(self.sent).encode(), partition=0,
                                  on_delivery=self.on_delivery)
            self.sent += 1
            if self.sent % 100 == 0:
                self.producer.poll(0)
                time.sleep(0.005)
        left = self.producer.flush(60)
        assert left == 0, f"{left} records still unacknowledged after flush"

    def stall_since(self, t0):
        """Longest gap between acks after t0 (seconds)."""
        times = [t for t in self.ack_times if t >= t0]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def consume_all(bootstrap, expect=None):
    """Every record of TOPICS, read from the beginning. Reads a topic until it has
    `expect[topic]` records (if given) or nothing new came for 10 s: a loaded machine may
    take seconds to answer the first fetch."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ring-check",
                  "enable.auto.commit": False})
    got = []
    try:
        for t in TOPICS:
            want = (expect or {}).get(t)
            c.assign([TopicPartition(t, 0, 0)])
            n, idle = 0, time.monotonic()
            while time.monotonic() - idle < 10 and (want is None or n < want):
                m = c.poll(0.5)
                if m is not None and m.error() is None:
                    got.append((m.topic(), m.offset(), m.value()))
                    n += 1
                    idle = time.monotonic()
    finally:
        c.close()
    return got


@pytest.fixture
def ring(tmp_path):
    r = Ring(tmp_path)
    yield r
    r.close()


def test_broker_on_ring_survives_switch_and_controller_faults(ring, tmp_path):
    controllers = ",".join(f"127.0.0.1:{p}" for p in ring.ctrl_admin)
    broker = BrokerProcess.start(broker_bin(), tmp_path / "broker", sequencer="ring",
                                 ring_controllers=controllers)
    try:
        broker.wait_ready()
        load = Load(broker.bootstrap)
        load.start()
        ring.wait(lambda: len(load.acked) > 2000, "first acks")
        stalls = {}

        # 1. kill -9 the broker's home switch (node 1 of 3 members: switch 1).
        t0 = time.monotonic()
        ring.kill9(ring.switch_procs[1])
        ring.wait(lambda: ring.config().get("epoch", 0) >= 2, "epoch without switch 1")
        n = len(load.acked)
        ring.wait(lambda: len(load.acked) > n + 2000, "acks after the switch died")
        stalls["kill switch"] = load.stall_since(t0)

        # 2. kill -9 the controller leader: sequencing must not notice.
        t0 = time.monotonic()
        leader = ring.wait(ring.leader, "a controller leader")
        ring.kill9(ring.ctrl_procs[leader])
        ring.ctrl_procs[leader] = None
        n = len(load.acked)
        ring.wait(lambda: len(load.acked) > n + 2000, "acks after the leader died")
        stalls["kill controller leader"] = load.stall_since(t0)

        # 3. restart switch 1 and grow the ring back to 3 live.
        t0 = time.monotonic()
        epoch = ring.config()["epoch"]
        ring.start_switch(1)
        ring.resize([0, 1, 2])
        ring.wait(lambda: ring.config().get("epoch", 0) > epoch
                  and len(ring.config().get("members", [])) == 3, "ring of 3 again")
        n = len(load.acked)
        ring.wait(lambda: len(load.acked) > n + 2000, "acks after the resize")
        stalls["add switch"] = load.stall_since(t0)

        load.stop.set()
        load.join_checked(90)
        assert not load.is_alive(), "producer did not finish"
        assert not load.errors, load.errors[:3]

        got = consume_all(broker.bootstrap,
                          {t: sum(1 for a in load.acked if a[0] == t) for t in TOPICS})
        offsets = [o for _, o, _ in load.acked]
        print("\nring faults: acked", len(load.acked),
              " stall seconds:", {k: round(v, 3) for k, v in stalls.items()})
        assert len(set(offsets)) == len(offsets), "an offset was used twice"
        for t in TOPICS:
            mine = [o for topic, o, _ in load.acked if topic == t]
            assert all(a < b for a, b in zip(mine, mine[1:])), f"{t}: offsets not increasing"
        lost = set(load.acked) - set(got)
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:3]}"
        for fault, stall in stalls.items():
            assert stall < STALL_LIMIT_S, f"producers stalled {stall:.1f}s after: {fault}"
    finally:
        broker.cleanup()


def produce_big_batch(port, topic, n):
    """One RecordBatch of n tiny records in one Produce v3 request (acks=all); returns
    (error_code, base_offset)."""
    recs = []
    for i in range(n):
        v = b"b"
        body = (kp.i8(0) + kp.varint(0) + kp.varint(i) + kp.varint(-1)
                + kp.varint(len(v)) + v + kp.varint(0))
        recs.append(kp.varint(len(body)) + body)
    values = [b""] * n  # only the count matters: the records are given encoded
    batch = kp.record_batch(values, int(time.time() * 1000), records=b"".join(recs))
    with kp.Conn(port, timeout=60) as c:
        assert c.send(kp.produce_v3(7, topic, 0, batch, acks=-1))
        payload = c.recv_frame()
    assert payload is not None, "broker closed the connection"
    _, parts = kp.parse_produce_v3(payload)
    (_, _, err, base), = parts
    return err, base


def test_resize_2_4_3_under_load_with_a_batch_larger_than_the_old_w(tmp_path):
    ring = Ring(tmp_path, switches=4, roster=2)
    controllers = ",".join(f"127.0.0.1:{p}" for p in ring.ctrl_admin)
    broker = None
    try:
        assert ring.members() == [0, 1]
        broker = BrokerProcess.start(broker_bin(), tmp_path / "broker", sequencer="ring",
                                     ring_controllers=controllers)
        broker.wait_ready()
        load = Load(broker.bootstrap)
        load.start()
        ring.wait(lambda: len(load.acked) > 2000, "first acks")
        stalls = {}

        for step, ids in (("grow 2 -> 4", [0, 1, 2, 3]), ("shrink 4 -> 3", [0, 1, 3])):
            t0 = time.monotonic()
            epoch = ring.config()["epoch"]
            ring.resize(ids)
            ring.wait(lambda: ring.config().get("epoch", 0) > epoch
                      and ring.members() == ids, f"ring {ids}")
            n = len(load.acked)
            ring.wait(lambda: len(load.acked) > n + 2000, f"acks after {step}")
            stalls[step] = load.stall_since(t0)
            if step.startswith("grow"):
                # A batch needs consecutive numbers from one ring request: with the
                # default W (2^28) 80,000 records fit; the old W (65,536) refused them.
                # (80,000 one-byte records stay under the topic's 1 MB batch limit.)
                big = 80_000
                err, big_base = produce_big_batch(broker.port, TOPICS[0], big)
                assert err == 0, f"produce of {big} records failed with error {err}"

        load.stop.set()
        load.join_checked(90)
        assert not load.is_alive(), "producer did not finish"
        assert not load.errors, load.errors[:3]

        expect = {t: sum(1 for a in load.acked if a[0] == t) for t in TOPICS}
        expect[TOPICS[0]] += big
        got = consume_all(broker.bootstrap, expect)
        offsets = [o for _, o, _ in load.acked]
        print("\nring resize: acked", len(load.acked), "big batch at", big_base,
              " stall seconds:", {k: round(v, 3) for k, v in stalls.items()})
        assert len(set(offsets)) == len(offsets), "an offset was used twice"
        assert not [o for o in offsets if big_base <= o < big_base + big], \
            "the big batch's offsets were given to other records too"
        for t in TOPICS:
            mine = [o for topic, o, _ in load.acked if topic == t]
            assert all(a < b for a, b in zip(mine, mine[1:])), f"{t}: offsets not increasing"
        lost = set(load.acked) - set(got)
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:3]}"
        big_got = sorted(o for t, o, v in got if t == TOPICS[0] and v == b"b")
        assert big_got == list(range(big_base, big_base + big)), \
            "the big batch is not on consecutive offsets"
        for step, stall in stalls.items():
            assert stall < STALL_LIMIT_S, f"producers stalled {stall:.1f}s after: {step}"
    finally:
        if broker is not None:
            broker.cleanup()
        ring.close()
