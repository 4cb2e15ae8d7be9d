"""The stable frontier F and read_committed: stock clients read the global order live.

Checked, on one broker: kcat -e with isolation.level=read_committed reaches the end of every
partition (empty ones too) with every record; a read_committed fetch of a quiet partition
ends with a COMMIT marker up to F, so confluent-kafka's and kafka-python's positions move to
F on every partition; ListOffsets LATEST at READ_COMMITTED, the Fetch LastStableOffset and the
gsn_frontier metric agree; read_uncommitted is unchanged; an offset between the high
watermark and F is in range.

On three brokers with the switch ring: four idempotent producers on twelve partitions of two
topics and an ordered reader (assign every partition, read_committed, emit the buffered
records below the smallest position, in offset order) while a partition leader is killed
and restarted: the emitted offsets strictly increase, no record ever arrives below what was
emitted, every acknowledged record is emitted exactly once, a record acknowledged before
another was sent comes first, and F moves on after the failover.
"""

from __future__ import annotations

import heapq
import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition

import kproto as kp
from kafkatest import Out, create_topics, produce, unique_name, wait_for
from test_cluster import running_cluster, wait

READ_COMMITTED = 1
# Consumer errors that only say a broker went away (the test kills one).
TRANSIENT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
CONTROL_AND_TRANSACTIONAL = 0x30


def frontier_of(metrics_port: int) -> int:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    m = re.search(rb"^gsn_frontier (-?\d+)", body, re.M)
    assert m, "gsn_frontier missing from /metrics"
    return int(m.group(1))


def settled_frontier(metrics_port: int, newest_end: int) -> int:
    """F once it passed every record written so far (the cluster is idle)."""
    return wait_for(lambda: (f := frontier_of(metrics_port)) >= newest_end and f,
                    20, f"F to pass {newest_end}")


def raw(conn, request: bytes) -> bytes:
    conn.send(request)
    return conn.recv_frame()


# ---- one broker ---------------------------------------------------------------------------

@pytest.fixture
def quiet(broker_factory):
    """A broker with two topics of 3 partitions; records in only some partitions."""
    b = broker_factory(num_partitions=3)
    a, z = unique_name("fa"), unique_name("fz")
    create_topics(b.bootstrap, {a: 3, z: 3})
    # z's record after a's: a/1 then holds records below F and a gap up to F.
    acked = produce(b.bootstrap, [Out(a, 1, None, b"a1"), Out(a, 1, None, b"a2")])
    acked += produce(b.bootstrap, [Out(z, 2, None, b"z1")])
    end = max(r.offset for r in acked) + 1
    f = settled_frontier(b.handle.metrics_port, end)
    return b, a, z, acked, f


def test_kcat_read_committed_reaches_the_end_of_every_partition(quiet):
    b, a, z, acked, f = quiet
    out = subprocess.run(
        ["kcat", "-b", b.bootstrap, "-C", "-e", "-o", "beginning", "-f", "%t %p %o %s\n",
         "-X", "isolation.level=read_committed", "-t", a],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.split("\n")[:-1])
    assert lines == sorted(f"{a} 1 {r.offset} {r.value.decode()}" for r in acked if r.topic == a)
    eofs = re.findall(r"Reached end of topic \S+ \[(\d)\] at offset (\d+)", out.stderr)
    assert sorted(int(p) for p, _ in eofs) == [0, 1, 2], out.stderr
    assert {int(o) for _, o in eofs} == {f}, f"every partition ends at F={f}: {eofs}"


def test_positions_of_quiet_partitions_move_to_the_frontier(quiet):
    b, a, z, acked, f = quiet
    tps = [TopicPartition(t, p, 0) for t in (a, z) for p in range(3)]
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_name("g"),
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    got = []
    try:
        c.assign(tps)

        def at_frontier():
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                got.append(m.value())
            return all(p.offset == f for p in c.position(tps))
        wait_for(at_frontier, 20, f"confluent-kafka positions at F={f}")
    finally:
        c.close()
    assert Counter(got) == Counter(r.value for r in acked)

    kc = KafkaConsumer(bootstrap_servers=b.bootstrap, isolation_level="read_committed",
                       enable_auto_commit=False)
    try:
        ktps = [KTopicPartition(t, p) for t in (a, z) for p in range(3)]
        kc.assign(ktps)
        kc.seek_to_beginning()
        values = []

        def kafka_python_at_frontier():
            for recs in kc.poll(timeout_ms=200).values():
                values.extend(r.value for r in recs)
            return all(kc.position(tp) == f for tp in ktps)
        wait_for(kafka_python_at_frontier, 20, f"kafka-python positions at F={f}")
        assert Counter(values) == Counter(r.value for r in acked)
        assert set(kc.end_offsets(ktps).values()) == {f}
    finally:
        kc.close()


def test_fetch_lso_list_offsets_and_metric_agree(quiet):
    b, a, z, acked, f = quiet
    host, port = b.bootstrap.split(":")
    with kp.Conn(int(port), host=host) as conn:
        # A partition with records: the records, then a marker from the last one up to F.
        _, parts = kp.parse_fetch_v4_stable(raw(conn, kp.fetch_v4(1, a, 1, 0, READ_COMMITTED)))
        _, _, err, hw, lso, records = parts[0]
        assert (err, lso) == (0, f)
        batches = kp.parse_batches(records)
        data = [x for x in batches if not x.attributes & CONTROL_AND_TRANSACTIONAL]
        covered = {o for x in data for o in range(x.base_offset, x.base_offset + x.last_offset_delta + 1)}
        assert {r.offset for r in acked if r.topic == a} == covered
        marker = batches[-1]
        assert marker.attributes & CONTROL_AND_TRANSACTIONAL == CONTROL_AND_TRANSACTIONAL
        assert marker.base_offset == hw and marker.base_offset + marker.last_offset_delta == f - 1
        assert marker.count == 1 and marker.crc_ok
        assert marker.record_offset_deltas == [marker.last_offset_delta], "record at F-1"
        # An empty partition: only the marker, from the fetch offset.
        _, parts = kp.parse_fetch_v4_stable(raw(conn, kp.fetch_v4(2, a, 0, 0, READ_COMMITTED)))
        (only,) = kp.parse_batches(parts[0][5])
        assert (only.base_offset, only.base_offset + only.last_offset_delta) == (0, f - 1)
        # At F: nothing (no marker of length zero).
        _, parts = kp.parse_fetch_v4_stable(raw(conn, kp.fetch_v4(3, a, 0, f, READ_COMMITTED)))
        assert parts[0][2] == 0 and parts[0][5] == b""
        # read_uncommitted is unchanged: records only, LSO = HW; an offset between HW and
        # F is in range (nothing there, and nothing ever will be).
        _, parts = kp.parse_fetch_v4_stable(raw(conn, kp.fetch_v4(4, a, 1, 0)))
        _, _, err, hw, lso, records = parts[0]
        assert err == 0 and lso == hw
        assert all(not x.attributes & CONTROL_AND_TRANSACTIONAL for x in kp.parse_batches(records))
        _, parts = kp.parse_fetch_v4_stable(raw(conn, kp.fetch_v4(5, a, 1, f)))
        assert parts[0][2] == 0 and parts[0][5] == b"", "offset F is in range"
        # ListOffsets LATEST: the stable offset at READ_COMMITTED, the HW otherwise.
        (committed,) = kp.parse_list_offsets_v2(
            raw(conn, kp.list_offsets_v2(6, a, 0, -1, READ_COMMITTED)))
        (uncommitted,) = kp.parse_list_offsets_v2(raw(conn, kp.list_offsets_v2(7, a, 0, -1)))
        assert committed[2:] == (0, f)
        assert uncommitted[2:] == (0, 0)
    assert frontier_of(b.handle.metrics_port) == f, "idle: F does not move"


# ---- three brokers, the ring, a leader killed -----------------------------------------------

class OrderedReader(threading.Thread):
    """The README's recipe: every partition assigned, read_committed, records buffered and
    emitted in offset order below the smallest position. Records what it emitted and any
    record that arrived below what it had already emitted."""

    def __init__(self, bootstrap: str, tps: list[TopicPartition]):
        super().__init__(daemon=True)
        self.tps = tps
        # auto.offset.reset=error: a position the brokers call out of range or truncated
        # (KIP-320 validation after a leader change) is an error here, never a silent jump.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("ord"),
                                  "isolation.level": "read_committed",
                                  "auto.offset.reset": "error",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        self.emitted: list[tuple[int, str, int, bytes]] = []
        self.errors: list[str] = []
        self.late: list[tuple[int, int]] = []
        self.moves: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            self.read()
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.error = e
        finally:
            self.consumer.close()

    def read(self):
        self.consumer.assign(self.tps)
        buffered: list[tuple[int, str, int, bytes]] = []
        watermark = -1
        while not self.stop.is_set():
            m = self.consumer.poll(0.05)
            if m is not None and m.error() is not None:
                if m.error().code() not in TRANSIENT:
                    self.errors.append(str(m.error()))
            elif m is not None:
                if self.emitted and m.offset() <= self.emitted[-1][0]:
                    self.late.append((m.offset(), self.emitted[-1][0]))
                heapq.heappush(buffered, (m.offset(), m.topic(), m.partition(), m.value()))
            positions = [p.offset for p in self.consumer.position(self.tps)]
            if min(positions) < 0:
                continue
            low = min(positions)
            if low > watermark:
                watermark = low
                self.moves.append(time.monotonic())
            while buffered and buffered[0][0] < low:
                self.emitted.append(heapq.heappop(buffered))


class IdempotentLoad(threading.Thread):
    """One producer (its own librdkafka instance) sending numbered records round-robin."""

    def __init__(self, bootstrap: str, name: str, tps: list[tuple[str, int]]):
        super().__init__(daemon=True)
        self.name_, self.tps = name, tps
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 2,
                                  "message.timeout.ms": 90000})
        self.sent_at: dict[bytes, float] = {}
        self.acked: dict[bytes, tuple[str, int, int, float]] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked[msg.value()] = (msg.topic(), msg.partition(), msg.offset(), time.monotonic())

    def run(self):
        try:
            n = 0
            while not self.stop.is_set():
                topic, part = self.tps[n % len(self.tps)]
                value = f"{self.name_}:{n}".encode()
                self.sent_at[value] = time.monotonic()
                self.producer.produce(topic, value, partition=part, on_delivery=self.on_delivery)
                n += 1
                self.producer.poll(0)
                time.sleep(0.004)
            left = self.producer.flush(120)
            assert left == 0, f"{left} records never acknowledged"
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.error = e


@pytest.fixture
def cluster(tmp_path):
    with running_cluster(tmp_path) as c:
        yield c


def test_ordered_reader_gets_the_global_order_through_a_leader_kill(cluster):
    topics = [unique_name("oa"), unique_name("ob")]
    for t in topics:
        cluster.create(t, 6)
    tps = [(t, p) for t in topics for p in range(6)]
    reader = OrderedReader(cluster.bootstrap(), [TopicPartition(t, p, 0) for t, p in tps])
    loads = [IdempotentLoad(cluster.bootstrap(), f"p{i}", tps) for i in range(4)]
    reader.start()
    for load in loads:
        load.start()
    wait(lambda: all(len(load.acked) > 200 for load in loads), "every producer acknowledged")
    victim_id = cluster.leader(topics[0], 0)
    victim = cluster.brokers[victim_id]
    victim.kill9()
    killed_at = time.monotonic()
    wait(lambda: all(len([a for a in load.acked.values() if a[3] > killed_at + 1]) > 100
                     for load in loads), "acknowledgements after the leader kill", timeout=60)
    victim.restart()
    wait(lambda: cluster.fully_replicated(topics[0], 6, 3), "the old leader back in sync", 90)
    for load in loads:
        load.stop.set()
    for load in loads:
        load.join(150)
        assert load.error is None, f"producer failed: {load.error!r}"
        assert not load.errors, f"delivery failures: {load.errors[:3]}"
    acked = {v: a for load in loads for v, a in load.acked.items()}
    newest = max(a[2] for a in acked.values())
    wait(lambda: len(reader.emitted) >= len(acked) and reader.emitted[-1][0] >= newest,
         "the reader to emit every acknowledged record", timeout=60)
    reader.stop.set()
    reader.join(30)
    assert reader.error is None, f"reader failed: {reader.error!r}"

    offsets = [e[0] for e in reader.emitted]
    assert all(x < y for x, y in zip(offsets, offsets[1:])), "emitted offsets strictly increase"
    assert not reader.late, f"records arrived below what was emitted: {reader.late[:5]}"
    assert not reader.errors, f"the reader's position was refused: {reader.errors[:3]}"
    emitted = Counter(e[3] for e in reader.emitted)
    twice = [v for v, n in emitted.items() if n > 1]
    assert not twice, f"records emitted twice: {twice[:5]}"
    at = {e[3]: (e[1], e[2], e[0]) for e in reader.emitted}
    missing = [v for v in acked if v not in at]
    assert not missing, f"{len(missing)} acknowledged records never emitted: {missing[:5]}"
    moved = [v for v, a in acked.items() if at[v] != a[:3]]
    assert not moved, f"records emitted elsewhere than acknowledged: {moved[:5]}"
    # Real time: a record acknowledged before another was sent is earlier in the order.
    sent = {v: t for load in loads for v, t in load.sent_at.items()}
    order = sorted(acked, key=lambda v: acked[v][3])
    by_send = sorted(acked, key=lambda v: sent[v])
    latest_acked_offset, j = -1, 0
    for v in by_send:
        while j < len(order) and acked[order[j]][3] < sent[v]:
            latest_acked_offset = max(latest_acked_offset, acked[order[j]][2])
            j += 1
        assert acked[v][2] > latest_acked_offset, (
            f"{v!r} at {acked[v][2]} was sent after a record at {latest_acked_offset} was acknowledged")
    gaps = [b - a for a, b in zip(reader.moves, reader.moves[1:]) if a > killed_at - 1]
    print(f"\nordered reader: {len(offsets)} records; longest stall of its watermark "
          f"around the kill {max(gaps, default=0):.2f} s")
