"""Idempotent producers: InitProducerId, Kafka's sequence rules on raw
requests, state recovered after a restart, and real clients with idempotence
on (confluent-kafka, kafka-python 3)."""

from __future__ import annotations

import time
import urllib.request

from confluent_kafka import Producer
from kafka import KafkaProducer

import kproto as kp
from kafkatest import consume_all, create_topics, topic_partitions, unique_name

NONE = 0
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
INVALID_REQUEST = 42
INVALID_RECORD = 87
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53


def init_pid(port: int, version: int = 4, txn: str | None = None) -> tuple[int, int, int]:
    """(error, producer id, epoch) from one InitProducerId request."""
    with kp.Conn(port, timeout=20) as c:
        assert c.send(kp.init_producer_id(7, version, txn))
        frame = c.recv_frame()
        assert frame is not None, "no InitProducerId answer"
        corr, err, pid, epoch = kp.parse_init_producer_id(frame, version)
        assert corr == 7
        return err, pid, epoch


class RawProducer:
    """One connection sending hand-built idempotent batches to partition 0."""

    def __init__(self, port: int, topic: str, pid: int):
        self.conn = kp.Conn(port, timeout=30)
        self.topic = topic
        self.pid = pid
        self.corr = 0

    def send(self, epoch: int, seq: int, values: list[bytes], acks: int = -1) -> tuple[int, int]:
        """(error code, base offset) of one batch."""
        batch = kp.record_batch(values, int(time.time() * 1000), producer_id=self.pid,
                                producer_epoch=epoch, base_sequence=seq)
        self.corr += 1
        assert self.conn.send(kp.produce_v3(self.corr, self.topic, 0, batch, acks=acks))
        frame = self.conn.recv_frame()
        assert frame is not None, "no produce answer"
        corr, parts = kp.parse_produce_v3(frame)
        assert corr == self.corr
        (_, _, err, base), = parts
        return err, base

    def close(self):
        self.conn.close()


def fetch_all(port: int, topic: str) -> list[kp.Batch]:
    """Every batch of partition 0, read from offset 0 to the high watermark."""
    out: list[kp.Batch] = []
    offset = 0
    with kp.Conn(port, timeout=20) as c:
        for corr in range(1, 1000):
            assert c.send(kp.fetch_v4(corr, topic, 0, offset))
            _, parts = kp.parse_fetch_v4(c.recv_frame())
            (_, _, err, hw, records), = parts
            assert err == NONE
            batches = kp.parse_batches(records)
            out += batches
            if not batches or batches[-1].base_offset + batches[-1].last_offset_delta + 1 >= hw:
                return out
            offset = batches[-1].base_offset + batches[-1].last_offset_delta + 1
    raise AssertionError("fetch did not reach the high watermark")


def metric(broker, name: str) -> float:
    url = f"http://127.0.0.1:{broker.handle.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"metric {name} not found")


def values_of(records) -> list[bytes]:
    return [r.value for r in records]


def test_init_producer_id_every_version_gives_new_ids(broker):
    port = broker.handle.port
    seen = set()
    for v in range(0, 6):
        err, pid, epoch = init_pid(port, v)
        assert (err, epoch) == (NONE, 0), f"v{v}"
        assert pid >= 0 and pid not in seen, f"v{v}: producer id {pid} handed out twice"
        seen.add(pid)
    # A v3+ request naming its old id and epoch still gets a new id (Kafka does the
    # same for a null transactional id).
    with kp.Conn(port, timeout=20) as c:
        old = max(seen)
        assert c.send(kp.init_producer_id(9, 4, None, producer_id=old, producer_epoch=0))
        _, err, pid, epoch = kp.parse_init_producer_id(c.recv_frame(), 4)
        assert (err, epoch) == (NONE, 0) and pid not in seen
    # Transactions are not served: a clear, non-retriable error.
    for v in (0, 3, 5):
        err, pid, epoch = init_pid(port, v, txn="orders-txn")
        assert (err, pid, epoch) == (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1)
        err, _, _ = init_pid(port, v, txn="")
        assert err == INVALID_REQUEST
    assert broker.handle.first_log_line_with("transactions are not served") is not None


def test_producer_ids_stay_unique_across_restart(broker):
    port = broker.handle.port
    before = {init_pid(port)[1] for _ in range(3)}
    broker.handle.restart()
    after = {init_pid(broker.handle.port)[1] for _ in range(3)}
    assert not before & after, f"ids reused after restart: {before & after}"


def test_retried_batch_is_answered_with_its_offset_and_stored_once(broker):
    topic = unique_name("idem-raw")
    create_topics(broker.bootstrap, {topic: 1})
    topic_partitions(broker.bootstrap, topic)
    err, pid, _ = init_pid(broker.handle.port)
    assert err == NONE
    p = RawProducer(broker.handle.port, topic, pid)
    try:
        err, first = p.send(0, 0, [b"a0", b"a1", b"a2"])
        assert err == NONE
        err, second = p.send(0, 3, [b"b3"])
        assert err == NONE and second > first
        # The same batches again (a retry): same offsets, nothing written.
        assert p.send(0, 0, [b"a0", b"a1", b"a2"]) == (NONE, first)
        assert p.send(0, 3, [b"b3"]) == (NONE, second)
        # acks=1 retries are recognised too.
        assert p.send(0, 3, [b"b3"], acks=1) == (NONE, second)
        assert metric(broker, "kafka_produce_duplicate_batches_total") == 3
        # A gap, and a sequence from the past that is no exact retry.
        assert p.send(0, 5, [b"gap"])[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
        assert p.send(0, 1, [b"x"])[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
        # The sequence continues where it was.
        err, third = p.send(0, 4, [b"c4", b"c5"])
        assert err == NONE and third > second
        # A new epoch must start at 0; then the old epoch is fenced.
        assert p.send(1, 6, [b"bad"])[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
        err, fourth = p.send(1, 0, [b"e1"])
        assert err == NONE and fourth > third
        assert p.send(0, 6, [b"zombie"])[0] == INVALID_PRODUCER_EPOCH
        # A producer id without a sequence is a malformed batch.
        assert p.send(0, -1, [b"noseq"])[0] == INVALID_RECORD
    finally:
        p.close()
    batches = fetch_all(broker.handle.port, topic)
    assert [b.base_offset for b in batches] == [first, second, third, fourth]
    assert [b.count for b in batches] == [3, 1, 2, 1]


def test_duplicates_are_recognised_after_a_restart(broker):
    topic = unique_name("idem-restart")
    create_topics(broker.bootstrap, {topic: 1})
    topic_partitions(broker.bootstrap, topic)
    _, pid, _ = init_pid(broker.handle.port)
    p = RawProducer(broker.handle.port, topic, pid)
    offsets = []
    try:
        for seq in range(0, 12, 2):
            err, base = p.send(0, seq, [b"r%d" % seq, b"r%d" % (seq + 1)])
            assert err == NONE
            offsets.append(base)
    finally:
        p.close()
    broker.handle.kill9()
    broker.handle.restart()
    topic_partitions(broker.bootstrap, topic)
    p = RawProducer(broker.handle.port, topic, pid)
    try:
        # The last five batches are known again from the log.
        for i, seq in enumerate(range(2, 12, 2), start=1):
            assert p.send(0, seq, [b"r%d" % seq, b"r%d" % (seq + 1)]) == (NONE, offsets[i])
        # The first is older than the window: refused, not written again.
        assert p.send(0, 0, [b"r0", b"r1"])[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
        err, nxt = p.send(0, 12, [b"r12"])
        assert err == NONE and nxt > offsets[-1]
        assert p.send(0, 14, [b"gap"])[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    finally:
        p.close()
    batches = fetch_all(broker.handle.port, topic)
    assert [b.base_offset for b in batches] == offsets + [nxt]


def test_confluent_idempotent_producer(broker):
    topic = unique_name("idem-confluent")
    create_topics(broker.bootstrap, {topic: 3})
    topic_partitions(broker.bootstrap, topic)
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                  "linger.ms": 2, "batch.num.messages": 50, "message.timeout.ms": 30000})
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))

    n = 3000
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=b"v%d" % i, key=b"k%d" % (i % 7), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    assert metric(broker, "kafka_producer_ids_issued_total") >= 1, "no InitProducerId seen"
    got = consume_all(broker.bootstrap, [(topic, q) for q in range(3)], expect=n)
    assert sorted(values_of(got)) == sorted(b"v%d" % i for i in range(n))
    # Per partition (one key = one partition) the order is the send order.
    for q in range(3):
        seq = [int(r.value[1:]) for r in got if r.partition == q]
        assert seq == sorted(seq)


def test_kafka_python_default_idempotent_producer(broker):
    topic = unique_name("idem-kpy")
    create_topics(broker.bootstrap, {topic: 2})
    topic_partitions(broker.bootstrap, topic)
    # kafka-python 3 turns idempotence on by default.
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, request_timeout_ms=30000)
    try:
        assert p.config["enable_idempotence"]
        futures = [p.send(topic, value=b"kp%d" % i, partition=i % 2) for i in range(1000)]
        p.flush(60)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        p.close()
    assert metric(broker, "kafka_producer_ids_issued_total") >= 1, "no InitProducerId seen"
    for q in range(2):
        offs = [m.offset for m in metas if m.partition == q]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    got = consume_all(broker.bootstrap, [(topic, 0), (topic, 1)], expect=1000)
    assert sorted(values_of(got)) == sorted(b"kp%d" % i for i in range(1000))
