"""Idempotent producer on the 3-broker cluster: the partition leader is killed
(SIGKILL) while an idempotent confluent-kafka producer sends numbered records.
Everything acknowledged is consumed exactly once and in order, with no
duplicates and no gaps among the acknowledged numbers; the restarted broker
serves the same log."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import defaultdict

from confluent_kafka import Consumer, Producer, TopicPartition

from kafkatest import CheckedThread
from test_cluster import cluster, wait  # noqa: F401  (the fixture)

PARTS = 2


class NumberedLoad(CheckedThread):
    """enable.idempotence=true; record i of partition p carries "p:i"."""

    def __init__(self, bootstrap, topic):
        super().__init__(name="idempotent producer")
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "linger.ms": 2, "batch.num.messages": 20,
                                  "message.timeout.ms": 90000})
        self.lock = threading.Lock()
        self.acked = defaultdict(list)  # partition -> numbers, in ack order
        self.errors = []
        self.next = [0] * PARTS
        self.stop = threading.Event()
        self.flushed = threading.Event()

    def on_delivery(self, err, msg):
        with self.lock:
            if err is not None:
                self.errors.append(str(err))
                return
            p, i = msg.value().split(b":")
            self.acked[int(p)].append(int(i))

    def acked_count(self):
        with self.lock:
            return sum(len(v) for v in self.acked.values())

    def work(self):
        k = 0
        while not self.stop.is_set():
            p = k % PARTS
            try:
                self.producer.produce(self.topic, b"%d:%d" % (p, self.next[p]), partition=p,
                                      on_delivery=self.on_delivery)
                self.next[p] += 1
                k += 1
            except BufferError:
                self.producer.poll(0.05)
            if k % 20 == 0:
                self.producer.poll(0)
                time.sleep(0.002)
        left = self.producer.flush(120)
        assert left == 0, f"{left} records still unacknowledged after flush"
        self.flushed.set()


def consume_numbers(bootstrap, topic, expect):
    """partition -> numbers in offset order, read until `expect` records and quiet."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "idem-check",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    got = defaultdict(list)
    n = 0
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTS)])
        deadline = time.monotonic() + 120
        idle = time.monotonic()
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                p, i = m.value().split(b":")
                assert int(p) == m.partition()
                got[m.partition()].append(int(i))
                n += 1
                idle = time.monotonic()
            elif n >= expect and time.monotonic() - idle > 3:
                break
    finally:
        c.close()
    return got


def duplicates_answered(cluster):  # noqa: F811
    """Sum of kafka_produce_duplicate_batches_total over the running brokers."""
    total = 0.0
    for b in cluster.alive():
        url = f"http://127.0.0.1:{b.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("kafka_produce_duplicate_batches_total "):
                    total += float(line.split()[1])
    return int(total)


def check_exactly_once(load, consumed):
    for p in range(PARTS):
        seen = consumed[p]
        dups = len(seen) - len(set(seen))
        assert dups == 0, f"partition {p}: {dups} duplicate records"
        assert seen == sorted(seen), f"partition {p}: records out of order"
        acked = set(load.acked[p])
        missing = acked - set(seen)
        assert not missing, f"partition {p}: {len(missing)} acknowledged records lost"
        # No gap among acknowledged numbers: everything below the highest acked number is
        # there (an unacknowledged record may be stored, but never skipped before an acked one).
        top = max(acked)
        assert set(range(top + 1)) <= set(seen), f"partition {p}: gap below {top}"


def test_idempotent_producer_survives_leader_kill(cluster):  # noqa: F811
    topic = "idem-failover"
    # Broker 1 is every partition's preferred replica: it leads them all before the fault
    # and again after its restart, so its own copy can be read afterwards.
    victim = 1
    cluster.create(topic, PARTS, preferred=victim)
    wait(lambda: cluster.leads_all(victim, topic, PARTS), "broker 1 to lead every partition")
    load = NumberedLoad(cluster.bootstrap(), topic)
    load.start()
    try:
        wait(lambda: load.acked_count() >= 1000, "1,000 acks before the fault")
        survivor = next(b for n, b in cluster.brokers.items() if n != victim)
        cluster.brokers[victim].kill9()
        wait(lambda: (lambda l: l if l not in (None, -1, victim) else None)(
            cluster.leader(topic, 0, survivor)), "a new leader of partition 0")
        at_kill = load.acked_count()
        wait(lambda: load.acked_count() >= at_kill + 1000, "1,000 more acks after the failover")
        cluster.brokers[victim].restart()
        wait(lambda: cluster.fully_replicated(topic, PARTS, 3), "the old leader back in every ISR")
    finally:
        load.stop.set()
        load.join_checked(150)
    assert load.flushed.is_set(), "producer did not finish"
    assert not load.errors, load.errors[:5]
    total = load.acked_count()
    assert total == sum(load.next), f"{sum(load.next)} sent, {total} acked"
    print(f"\nidempotent failover: {total} records acked, "
          f"{duplicates_answered(cluster)} retried batches answered as duplicates")
    consumed = consume_numbers(cluster.bootstrap(), topic, total)
    check_exactly_once(load, consumed)
    # With every record acknowledged, each partition holds exactly 0..n-1.
    for p in range(PARTS):
        assert consumed[p] == list(range(load.next[p])), f"partition {p}"
    # The restarted broker's copy of the log says the same once it leads again: every
    # partition fetched from it directly, not through a client's routing.
    wait(lambda: cluster.leads_all(victim, topic, PARTS),
         "the restarted broker to lead every partition again", 90)
    for p, recs in cluster.read_from(victim, topic, PARTS).items():
        again = [int(v.split(b":")[1]) for _, _, v in recs]
        assert again == consumed[p], f"partition {p} differs on the restarted broker"


def test_new_leader_recognises_retries_of_replicated_batches(cluster):  # noqa: F811
    """The producer state is derived from the replicated log: after the leader is killed, the
    new leader answers a retry of a batch the old leader stored with its original offset,
    and keeps checking the sequence. Producer ids are unique across the brokers."""
    from test_idempotence import (NONE, OUT_OF_ORDER_SEQUENCE_NUMBER, RawProducer, fetch_all,
                                  init_pid)
    ids = [init_pid(b.port)[1] for b in cluster.brokers.values() for _ in range(2)]
    assert len(set(ids)) == len(ids) and min(ids) >= 0, f"producer ids collide: {ids}"
    topic = "idem-raw-failover"
    cluster.create(topic, 1)
    pid = ids[0]
    leader = cluster.leader(topic, 0)
    p = RawProducer(cluster.brokers[leader].port, topic, pid)
    try:
        err, first = p.send(0, 0, [b"a", b"b"])
        assert err == NONE
        err, second = p.send(0, 2, [b"c"])
        assert err == NONE
    finally:
        p.close()
    survivor = next(b for n, b in cluster.brokers.items() if n != leader)
    cluster.brokers[leader].kill9()
    new_leader = wait(lambda: (lambda l: l if l not in (None, -1, leader) else None)(
        cluster.leader(topic, 0, survivor)), "a new leader")
    p = RawProducer(cluster.brokers[new_leader].port, topic, pid)
    try:
        assert wait(lambda: (lambda r: r if r[0] == NONE else None)(p.send(0, 2, [b"c"])),
                    "the new leader to answer the retry") == (NONE, second)
        assert p.send(0, 0, [b"a", b"b"]) == (NONE, first)
        assert p.send(0, 4, [b"gap"])[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
        err, third = p.send(0, 3, [b"d"])
        assert err == NONE and third > second
    finally:
        p.close()
    cluster.brokers[leader].restart()
    wait(lambda: cluster.fully_replicated(topic, 1, 3), "the old leader back in the ISR")
    batches = fetch_all(cluster.brokers[new_leader].port, topic)
    assert [b.base_offset for b in batches] == [first, second, third]
