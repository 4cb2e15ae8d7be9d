"""Reads across leader changes on the 3-broker loopback cluster (test_cluster.py's fixture).

1. A fetch above the high watermark but not beyond the leader's log end is a valid position
   with nothing to read yet (Kafka), not OFFSET_OUT_OF_RANGE: a new leader's high watermark
   can lag its predecessor's, and consumers answered out of range would reset. Made
   deterministic by pausing both followers, so an acks=1 batch sits in the leader's log
   above the high watermark. OffsetForLeaderEpoch of the current epoch answers the log end.
2. KIP-320 fencing: Fetch v10, ListOffsets v4 and OffsetForLeaderEpoch v3 with an older
   current_leader_epoch get FENCED_LEADER_EPOCH, with a newer one UNKNOWN_LEADER_EPOCH, with
   the leader's own or -1 no error; after the leader is killed, its epoch is fenced at the
   new leader, which answers where that epoch ended (the offset after its last batch).
3. Real clients positioned mid-stream (librdkafka with auto.offset.reset=error, kafka-python
   with auto_offset_reset='none', both of which turn a reset or a detected truncation into an
   error) read through a kill -9 of the partition leader: every acknowledged record exactly
   once, in order, no errors.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTopicPartition

import kproto as kp
from test_cluster import cluster, wait  # noqa: F401  (fixture)

ERR_OFFSET_OUT_OF_RANGE = 1
ERR_FENCED_LEADER_EPOCH = 74
ERR_UNKNOWN_LEADER_EPOCH = 75
LATEST = -1


@contextmanager
def paused(brokers):
    """SIGSTOP the broker processes, SIGCONT them on the way out whatever happens."""
    for b in brokers:
        os.kill(b.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for b in brokers:
            os.kill(b.pid, signal.SIGCONT)


def ask(port, request, timeout=10.0):
    with kp.Conn(port, timeout=timeout) as c:
        assert c.send(request)
        answer = c.recv_frame()
    assert answer is not None, "the broker closed the connection"
    return answer


def produce(port, topic, values, acks):
    batch = kp.record_batch(values, int(time.time() * 1000))
    _, ((_, _, err, base),) = kp.parse_produce_v3(ask(port, kp.produce_v3(1, topic, 0, batch, acks)))
    assert err == 0, f"produce acks={acks}: error {err}"
    return base


def fetch(port, topic, offset, epoch=-1):
    _, top, ((_, _, err, hw, records),) = kp.parse_fetch_v10(
        ask(port, kp.fetch_v10(2, topic, 0, offset, epoch)))
    assert top == 0
    return err, hw, records


def list_latest(port, topic, epoch=-1):
    _, ((_, _, err, _, offset, leader_epoch),) = kp.parse_list_offsets_v4(
        ask(port, kp.list_offsets_v4(3, topic, 0, LATEST, epoch)))
    return err, offset, leader_epoch


def epoch_end(port, topic, leader_epoch, current=-1):
    _, ((_, _, err, epoch, end),) = kp.parse_offset_for_leader_epoch_v3(
        ask(port, kp.offset_for_leader_epoch_v3(4, topic, 0, leader_epoch, current)))
    return err, epoch, end


def leader_broker(cluster, topic, via=None):  # noqa: F811
    node = wait(lambda: (lambda n: n if n not in (None, -1) else None)(
        cluster.leader(topic, 0, via)), f"a leader of {topic}")
    return node, cluster.brokers[node]


def current_epoch(port, topic):
    err, _, epoch = list_latest(port, topic)
    assert err == 0 and epoch >= 0, (err, epoch)
    return epoch


@contextmanager
def uncommitted_batch(cluster, topic):  # noqa: F811
    """Both followers stopped under an acks=1 batch of 3 records: the batch sits in the
    leader's log above the high watermark. Yields (leader, high watermark, log end, epoch)."""
    cluster.create(topic, 1)
    node, leader = leader_broker(cluster, topic)
    base0 = produce(leader.port, topic, [b"committed"], acks=-1)
    followers = [b for n, b in cluster.brokers.items() if n != node]
    with paused(followers):
        # Answered once it is in the leader's log; no follower can take it.
        base1 = produce(leader.port, topic, [b"a", b"b", b"c"], acks=1)
        yield leader, base0 + 1, base1 + 3, current_epoch(leader.port, topic)


def test_fetch_above_the_high_watermark_is_empty_not_out_of_range(cluster):  # noqa: F811
    with uncommitted_batch(cluster, "above-hw") as (leader, hw, log_end, epoch):
        err, got_hw, records = fetch(leader.port, "above-hw", log_end, epoch)
        assert got_hw == hw < log_end, (got_hw, hw, log_end)
        assert (err, records) == (0, b""), f"fetch at the log end above hw {hw}: error {err}"
        err, _, records = fetch(leader.port, "above-hw", log_end - 2, epoch)
        assert (err, records) == (0, b""), f"fetch inside the uncommitted batch: error {err}"
        err, _, _ = fetch(leader.port, "above-hw", log_end + 1, epoch)
        assert err == ERR_OFFSET_OUT_OF_RANGE, f"beyond the log end: error {err}"


def test_the_current_epoch_ends_at_the_log_end(cluster):  # noqa: F811
    with uncommitted_batch(cluster, "epoch-end") as (leader, hw, log_end, epoch):
        # Kafka answers the leader's own epoch with its log end, not the high watermark
        # (a consumer validating a position between the two would seek back).
        got = epoch_end(leader.port, "epoch-end", epoch, epoch)
        assert got == (0, epoch, log_end), f"answered {got}; high watermark {hw}"


def test_reads_fence_stale_and_future_leader_epochs(cluster):  # noqa: F811
    topic = "fence"
    cluster.create(topic, 1)
    node, leader = leader_broker(cluster, topic)
    base = produce(leader.port, topic, [b"x", b"y"], acks=-1)
    epoch = current_epoch(leader.port, topic)
    for claimed, want in ((epoch - 1, ERR_FENCED_LEADER_EPOCH), (epoch + 1, ERR_UNKNOWN_LEADER_EPOCH),
                          (epoch, 0), (-1, 0)):
        assert fetch(leader.port, topic, base, claimed)[0] == want, f"Fetch, epoch {claimed}"
        assert list_latest(leader.port, topic, claimed)[0] == want, f"ListOffsets, epoch {claimed}"
        assert epoch_end(leader.port, topic, epoch, claimed)[0] == want, \
            f"OffsetForLeaderEpoch, epoch {claimed}"
    err, _, records = fetch(leader.port, topic, base, epoch)
    assert err == 0 and [b.base_offset for b in kp.parse_batches(records)] == [base]

    # The leader dies; its successor fences the old epoch and knows where it ended.
    survivor = next(b for n, b in cluster.brokers.items() if n != node)
    cluster.brokers[node].kill9()
    new_node = wait(lambda: (lambda n: n if n not in (None, -1, node) else None)(
        cluster.leader(topic, 0, survivor)), "a new leader")
    new_leader = cluster.brokers[new_node]
    new_epoch = wait(lambda: (lambda e: e if e > epoch else None)(
        current_epoch(new_leader.port, topic)), "the new leader's epoch")
    assert fetch(new_leader.port, topic, base, epoch)[0] == ERR_FENCED_LEADER_EPOCH
    assert list_latest(new_leader.port, topic, epoch)[0] == ERR_FENCED_LEADER_EPOCH
    # The old epoch ends after its last batch (base, base + 1): the consumer's position there
    # is valid, so librdkafka / kafka-python neither seek back nor reset.
    err, ended, end = epoch_end(new_leader.port, topic, epoch, new_epoch)
    assert (err, end) == (0, base + 2) and 0 <= ended <= epoch, (err, ended, end)
    err, _, records = fetch(new_leader.port, topic, base, new_epoch)
    assert err == 0 and [b.base_offset for b in kp.parse_batches(records)] == [base]


class Numbered(threading.Thread):
    """Idempotent acks=all producer of numbered records to partition 0 until stopped."""

    def __init__(self, bootstrap, topic):
        super().__init__(daemon=True)
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 5,
                                  "message.timeout.ms": 60000})
        self.acked, self.errors = [], []
        self.stop = threading.Event()
        self.failure = None

    def on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked.append((msg.offset(), msg.value()))

    def run(self):
        try:
            n = 0
            while not self.stop.is_set():
                self.producer.produce(self.topic, b"n%06d" % n, partition=0,
                                      on_delivery=self.on_delivery)
                n += 1
                self.producer.poll(0)
                time.sleep(0.004)
            left = self.producer.flush(90)
            assert left == 0, f"{left} records never acknowledged"
        except BaseException as e:  # reaches the test through `failure`
            self.failure = e


class Reader(threading.Thread):
    """Polls one consumer (librdkafka or kafka-python) and keeps records and errors."""

    def __init__(self, name, poll):
        super().__init__(daemon=True, name=name)
        self.poll = poll
        self.records, self.errors = [], []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                got, errors = self.poll()
            except Exception as e:  # kafka-python raises resets and truncations
                self.errors.append(repr(e))
                time.sleep(0.2)
                continue
            self.records.extend(got)
            self.errors.extend(errors)


def librdkafka_reader(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "epochs-rd",
                  "enable.auto.commit": False, "auto.offset.reset": "error",
                  "fetch.wait.max.ms": 100, "topic.metadata.refresh.interval.ms": 1000})
    c.assign([TopicPartition(topic, 0, 0)])

    def poll():
        m = c.poll(0.2)
        if m is None:
            return [], []
        if m.error() is not None:
            if m.error().code() == KafkaError._PARTITION_EOF:
                return [], []
            return [], [str(m.error())]
        return [(m.offset(), m.value())], []
    return Reader("librdkafka", poll), c.close


def kafka_python_reader(bootstrap, topic):
    c = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                      auto_offset_reset="none", fetch_max_wait_ms=100,
                      metadata_max_age_ms=1000)
    tp = KpTopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)

    def poll():
        batches = c.poll(timeout_ms=200)
        return [(r.offset, r.value) for recs in batches.values() for r in recs], []
    return Reader("kafka-python", poll), c.close


def test_consumers_read_through_a_leader_kill_without_reset_skip_or_replay(cluster):  # noqa: F811
    topic = "ride"
    cluster.create(topic, 1)
    producer = Numbered(cluster.bootstrap(), topic)
    producer.start()
    readers = []
    try:
        for make in (librdkafka_reader, kafka_python_reader):
            readers.append(make(cluster.bootstrap(), topic))
            readers[-1][0].start()
        wait(lambda: all(len(r.records) >= 300 for r, _ in readers), "both readers mid-stream", 90)
        victim, _ = leader_broker(cluster, topic)
        cluster.brokers[victim].kill9()
        at_kill = len(producer.acked)
        wait(lambda: len(producer.acked) >= at_kill + 300, "300 acks after the failover", 90)
        producer.stop.set()
        producer.join(120)
        assert producer.failure is None, producer.failure
        assert not producer.errors, producer.errors[:5]
        acked = sorted(producer.acked)
        wait(lambda: all(len(r.records) >= len(acked) for r, _ in readers),
             "both readers to catch up", 90)
        time.sleep(1.0)  # anything read twice would arrive now
    finally:
        producer.stop.set()
        for r, close in readers:
            r.stop.set()
            r.join(10)
            close()
    for r, _ in readers:
        assert not r.errors, f"{r.name}: {r.errors[:5]}"
        assert r.records == acked, (
            f"{r.name}: read {len(r.records)} records, {len(acked)} acknowledged; first "
            f"difference at {next((i for i, (a, b) in enumerate(zip(r.records, acked)) if a != b), None)}")
