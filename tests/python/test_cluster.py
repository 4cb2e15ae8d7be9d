"""Three brokers replicating partitions with Raft, as real processes on loopback, numbered by
a ring of two softswitches and three ring controllers.

Checked: every broker's Metadata lists the three brokers, replicas, ISR and balanced
leaders; a topic created through one broker is served by all; produce or fetch at a
non-leader gets NOT_LEADER_OR_FOLLOWER; kill -9 of a partition leader under acks=all load
elects a new leader (the time is printed), loses no acknowledged record, and the old leader
rejoins and catches up; min.insync.replicas refuses acks=all when the ISR is too small; the
internal listener advertises its own addresses. Waits are condition polls with deadlines.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kproto as kp
from brokerproc import BrokerProcess, broker_bin, free_ports
from kafkatest import CheckedThread
from test_ring import Ring

ERR_NOT_LEADER = 6
ERR_NOT_ENOUGH_REPLICAS = 19


def wait(cond, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = cond()
        except Exception as e:  # a broker mid-restart: try again
            got, last = None, e
        if got is not None and got is not False:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class Cluster:
    """N brokers with --seeds, on a shared ring; every process killed at the end."""

    def __init__(self, tmp, ring: Ring, n: int = 3, per_broker=None, **extra_args):
        """`per_broker`: node -> extra BrokerProcess.start arguments (env, wrapper)."""
        self.tmp = tmp
        # Every port of every broker in one call, so they cannot collide with each other.
        ports = free_ports(4 * n)
        kafka, metrics, raft, internal = (ports[k * n:(k + 1) * n] for k in range(4))
        self.internal_ports = {i + 1: internal[i] for i in range(n)}
        seeds = ",".join(f"{i + 1}@127.0.0.1:{raft[i]}" for i in range(n))
        controllers = ",".join(f"127.0.0.1:{p}" for p in ring.ctrl_admin)
        self.brokers: dict[int, BrokerProcess] = {}
        for i in range(n):
            node = i + 1
            self.brokers[node] = BrokerProcess.start(
                broker_bin(), tmp / f"broker-{node}", tmp / f"broker-{node}.log",
                ports=(kafka[i], metrics[i]), node_id=node, seeds=seeds, raft_listen=f"127.0.0.1:{raft[i]}",
                sequencer="ring", ring_controllers=controllers, ring_listen="127.0.0.1:0",
                internal_listen=f"127.0.0.1:{internal[i]}",
                internal_advertised=f"127.0.0.1:{internal[i]}",
                raft_heartbeat_ms=100, raft_election_ms=400,
                replica_lag_time_max_ms=2000, leader_rebalance_interval_ms=2000,
                **(per_broker or {}).get(node, {}), **extra_args)
        wait(lambda: all(len(self.metadata(b).brokers) == n for b in self.alive()),
             f"every broker to list {n} brokers")

    def alive(self):
        return [b for b in self.brokers.values() if b.alive()]

    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.alive())

    def admin(self, broker=None):
        target = broker.bootstrap if broker else self.bootstrap()
        return AdminClient({"bootstrap.servers": target})

    def metadata(self, broker=None, topic=None):
        return self.admin(broker).list_topics(topic, timeout=5)

    def partitions(self, topic, broker=None):
        # All topics: asking for one by name lets librdkafka's admin client auto-create it.
        md = self.metadata(broker)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return None
        return t.partitions

    def create(self, topic, partitions, rf=3, config=None, via=None, preferred=None):
        """preferred: a broker id that becomes every partition's first (preferred)
        replica, so the leader rebalance hands it all of them (a test can then read every
        partition from that broker alone)."""
        admin = self.admin(via)
        if preferred is None:
            new = NewTopic(topic, partitions, rf, config=config or {})
        else:
            others = [b for b in sorted(self.brokers) if b != preferred]
            assignment = [[preferred] + (others[p % 2:] + others[:p % 2])[:rf - 1]
                          for p in range(partitions)]
            new = NewTopic(topic, partitions, -1, replica_assignment=assignment,
                           config=config or {})
        fut = admin.create_topics([new])
        fut[topic].result(30)
        wait(lambda: self.fully_replicated(topic, partitions, rf), f"{topic} to be led and in sync")

    def fully_replicated(self, topic, partitions, rf):
        for b in self.alive():
            parts = self.partitions(topic, b)
            if parts is None or len(parts) != partitions:
                return False
            for p in parts.values():
                if p.leader < 0 or len(p.isrs) != rf or len(p.replicas) != rf:
                    return False
        return True

    def leader(self, topic, partition, broker=None):
        parts = self.partitions(topic, broker)
        return None if parts is None else parts[partition].leader

    def leads_all(self, node, topic, partitions):
        """Broker `node` leads every partition, in its own view and in another's."""
        views = [self.brokers[node]] + [b for n, b in self.brokers.items()
                                        if n != node and b.alive()][:1]
        return all(self.leader(topic, p, b) == node for b in views for p in range(partitions))

    def read_from(self, node, topic, partitions, start=0):
        """{partition: [(offset, key, value)]} fetched from broker `node` itself (a direct
        Fetch, no client routing): its own copy of the log."""
        return {p: kp.read_partition(self.brokers[node].port, topic, p, start)
                for p in range(partitions)}

    def close(self):
        for b in self.brokers.values():
            b.cleanup()


@contextlib.contextmanager
def running_cluster(tmp_path, **flags):
    """3 brokers (extra flags for each) on a 2-switch ring, stopped at the end; a broker that
    logged a Rust panic fails the test."""
    ring = Ring(tmp_path, switches=2)
    c = None
    try:
        c = Cluster(tmp_path, ring, **flags)
        yield c
    finally:
        if c is not None:
            c.close()
            for i, b in c.brokers.items():
                panic = b.first_log_line_with("panicked at")
                assert panic is None, f"broker {i} panicked: {panic}"
        ring.close()


@pytest.fixture
def cluster(tmp_path):
    with running_cluster(tmp_path) as c:
        yield c


class Load(CheckedThread):
    """acks=all producer (retries on, idempotence off) over every partition of a topic."""

    def __init__(self, bootstrap, topic, partitions):
        super().__init__(name="producer")
        self.topic, self.partitions = topic, partitions
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "linger.ms": 2, "message.timeout.ms": 60000,
                                  "enable.idempotence": False})
        self.acked, self.ack_times, self.errors = [], [], []
        self.stop = threading.Event()
        self.sent = 0

    def on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
            return
        self.acked.append((msg.partition(), msg.offset(), msg.value()))
        self.ack_times.append(time.monotonic())

    def work(self):
        while not self.stop.is_set():
            self.producer.produce(self.topic, b"v%d" % self.sent,
                                  partition=self.sent % self.partitions,
                                  on_delivery=self.on_delivery)
            self.sent += 1
            if self.sent % 50 == 0:
                self.producer.poll(0)
                time.sleep(0.005)
        left = self.producer.flush(90)
        assert left == 0, f"{left} records still unacknowledged after flush"

    def stall_since(self, t0):
        times = [t for t in self.ack_times if t >= t0]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def consume(bootstrap, topic, partitions, expect_at_least):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cluster-check",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    got = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + 90
        idle = time.monotonic()
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append((m.partition(), m.offset(), m.value()))
                idle = time.monotonic()
            elif len(got) >= expect_at_least and time.monotonic() - idle > 3:
                break
    finally:
        c.close()
    return got


def check(acked, consumed):
    """No acknowledged record lost, no offset used twice, order kept, GSNs unique."""
    stored = {(p, o): v for p, o, v in consumed}
    lost = [a for a in acked if stored.get((a[0], a[1])) != a[2]]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    per_part = defaultdict(list)
    for p, o, _ in consumed:
        per_part[p].append(o)
    for p, offs in per_part.items():
        assert offs == sorted(set(offs)), f"partition {p}: offsets repeat or go backwards"
    all_offsets = [o for _, o, _ in consumed]
    assert len(all_offsets) == len(set(all_offsets)), "an offset appears in two partitions"


def test_metadata_replicas_and_balanced_leaders(cluster):
    cluster.create("rep", 6, via=cluster.brokers[2])
    for b in cluster.alive():
        md = cluster.metadata(b)
        assert sorted(md.brokers) == [1, 2, 3]
        assert md.controller_id in (1, 2, 3)
        # The internal listener advertises the internal ports.
    inner = AdminClient({"bootstrap.servers": f"127.0.0.1:{cluster.internal_ports[1]}"})
    ports = sorted(b.port for b in inner.list_topics(timeout=5).brokers.values())
    assert ports == sorted(cluster.internal_ports.values())

    def balanced():
        leaders = defaultdict(int)
        for p in cluster.partitions("rep").values():
            leaders[p.leader] += 1
        return sorted(leaders.values()) == [2, 2, 2]

    wait(balanced, "6 partitions to be led 2 per broker")
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    acked = []
    for i in range(600):
        p.produce("rep", b"r%d" % i, partition=i % 6,
                  on_delivery=lambda e, m: acked.append((m.partition(), m.offset(), m.value()))
                  if e is None else None)
    assert p.flush(30) == 0
    assert len(acked) == 600
    check(acked, consume(cluster.bootstrap(), "rep", 6, 600))


def test_non_leader_answers_not_leader_or_follower(cluster):
    cluster.create("nl", 1, rf=2)
    leader = cluster.leader("nl", 0)
    replicas = cluster.partitions("nl")[0].replicas
    for node, b in cluster.brokers.items():
        if node == leader:
            continue
        batch = kp.record_batch([b"x"], int(time.time() * 1000))
        with kp.Conn(b.port) as c:
            assert c.send(kp.produce_v3(1, "nl", 0, batch))
            _, ((_, _, err, _),) = kp.parse_produce_v3(c.recv_frame())
            assert err == ERR_NOT_LEADER, f"produce at broker {node} (replica: {node in replicas})"
            assert c.send(kp.fetch_v4(2, "nl", 0, 0))
            _, ((_, _, err, _, _),) = kp.parse_fetch_v4(c.recv_frame())
            assert err == ERR_NOT_LEADER, f"fetch at broker {node}"


def test_leader_kill_loses_no_acknowledged_record(cluster):
    topic, parts = "failover", 3
    # Broker 1 is every partition's preferred replica: it leads them all before the fault
    # and again after its restart, so its own copy can be read afterwards.
    cluster.create(topic, parts, preferred=1)
    wait(lambda: cluster.leads_all(1, topic, parts), "broker 1 to lead every partition")
    load = Load(cluster.bootstrap(), topic, parts)
    load.start()
    wait(lambda: len(load.acked) >= 500, "500 acks before the fault")
    victim = 1
    survivor = next(b for n, b in cluster.brokers.items() if n != victim)
    t0 = time.monotonic()
    cluster.brokers[victim].kill9()
    new_leader = wait(lambda: (lambda l: l if l not in (None, -1, victim) else None)(
        cluster.leader(topic, 0, survivor)), "a new leader of partition 0")
    failover = time.monotonic() - t0
    acked_at_kill = len(load.acked)
    wait(lambda: len(load.acked) >= acked_at_kill + 500, "500 more acks after the failover")
    cluster.brokers[victim].restart()
    wait(lambda: cluster.fully_replicated(topic, parts, 3), "the old leader back in every ISR")
    time.sleep(0.5)
    load.stop.set()
    load.join_checked(120)
    stall = load.stall_since(t0)
    print(f"\nleader kill: node {victim} -> {new_leader}: new leader after {failover:.2f} s, "
          f"producer stall {stall:.2f} s, {len(load.acked)} acked, {len(load.errors)} errors")
    assert not load.errors, load.errors[:5]
    consumed = consume(cluster.bootstrap(), topic, parts, len(load.acked))
    check(load.acked, consumed)
    # The restarted broker serves the same data once it leads again (preferred leader):
    # every partition fetched from it directly, not through a client's routing.
    wait(lambda: cluster.leads_all(victim, topic, parts),
         "the restarted broker to lead every partition again", 90)
    own = [(p, o, v) for p, recs in cluster.read_from(victim, topic, parts).items()
           for o, _, v in recs]
    check(load.acked, own)
    assert sorted(own) == sorted(consumed), \
        "the restarted broker's log differs from what consumers read before"


def test_min_insync_replicas_refuses_acks_all(cluster):
    cluster.create("isr", 1, config={"min.insync.replicas": "3"})
    leader = cluster.leader("isr", 0)
    follower = next(n for n in cluster.brokers if n != leader)
    cluster.brokers[follower].kill9()
    wait(lambda: len(cluster.partitions("isr")[0].isrs) == 2, "the ISR to shrink to 2")
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all", "retries": 0,
                  "enable.idempotence": False, "message.timeout.ms": 10000})
    errors = []
    p.produce("isr", b"x", partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(20)
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.NOT_ENOUGH_REPLICAS, errors[0]
    cluster.brokers[follower].restart()
    wait(lambda: len(cluster.partitions("isr")[0].isrs) == 3, "the ISR to grow back to 3")
    ok = []
    p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    p.produce("isr", b"y", partition=0, on_delivery=lambda e, m: ok.append(e))
    p.flush(20)
    assert ok == [None]


def test_topic_deleted_through_any_broker(cluster):
    cluster.create("gone", 2)
    admin = cluster.admin(cluster.brokers[3])
    admin.delete_topics(["gone"])["gone"].result(30)
    wait(lambda: all(cluster.partitions("gone", b) is None for b in cluster.alive()),
         "every broker to forget the topic")
