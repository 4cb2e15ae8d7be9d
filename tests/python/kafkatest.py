"""Client-side helpers shared by the test modules (confluent-kafka based) and
the offset assertions that every test uses.

Offsets are global sequence numbers (GSNs): per partition they strictly
increase but have gaps, and no two records anywhere in the broker share one.
Nothing here assumes contiguous offsets.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from typing import Iterable, NamedTuple, Optional

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

DEFAULT_TIMEOUT_S = 60.0


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    timestamp: int = -1


class Out(NamedTuple):
    """A record to produce. partition=None lets the client's partitioner pick;
    timestamp=None lets the client stamp the current time."""
    topic: str
    partition: Optional[int]
    key: Optional[bytes]
    value: Optional[bytes]
    timestamp: Optional[int] = None


class CheckedThread(threading.Thread):
    """A test's background worker whose failure reaches the test: subclasses implement
    `work()`; whatever it raises (an assertion on a flush, a client error) is kept and
    re-raised by `join_checked()` in the test's thread. A plain Thread's exception only
    prints a warning and the test passes."""

    def __init__(self, name: str | None = None):
        super().__init__(daemon=True, name=name)
        self.exc: BaseException | None = None

    def work(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # noqa: BLE001 - re-raised by join_checked
            self.exc = e

    def join_checked(self, timeout: float) -> None:
        """Joins; fails if the thread is still running or raised."""
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"{self.name} did not finish within {timeout}s")
        if self.exc is not None:
            raise AssertionError(f"{self.name} failed: {self.exc!r}") from self.exc


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------
def assert_gsn_offsets(records: Iterable[Rec], what: str = "records") -> None:
    """`records` in the order a consumer returned them. Checks that within
    each (topic, partition) offsets strictly increase, and that no offset
    appears twice anywhere (any topic, any partition)."""
    last: dict[tuple[str, int], int] = {}
    seen: dict[int, tuple[str, int]] = {}
    for r in records:
        tp = (r.topic, r.partition)
        assert r.offset >= 0, f"{what}: negative offset {r.offset} in {tp}"
        prev = last.get(tp)
        assert prev is None or r.offset > prev, (
            f"{what}: offsets in {tp} not strictly increasing: {prev} then {r.offset}")
        last[tp] = r.offset
        other = seen.get(r.offset)
        assert other is None, (
            f"{what}: offset {r.offset} used twice: in {other} and in {tp} "
            f"(offsets are global sequence numbers and must be unique broker-wide)")
        seen[r.offset] = tp


def assert_same_records(delivered: Iterable[Rec], consumed: Iterable[Rec],
                        what: str = "records") -> None:
    """Delivered (acked) records and consumed records are the same set of
    (topic, partition, offset) -> (key, value)."""
    d = {(r.topic, r.partition, r.offset): (r.key, r.value) for r in delivered}
    c = {(r.topic, r.partition, r.offset): (r.key, r.value) for r in consumed}
    missing = sorted(set(d) - set(c))
    extra = sorted(set(c) - set(d))
    assert not missing, f"{what}: {len(missing)} acked records not consumed, e.g. {missing[:5]}"
    assert not extra, f"{what}: {len(extra)} consumed records never acked, e.g. {extra[:5]}"
    wrong = [k for k in d if d[k] != c[k]]
    assert not wrong, (f"{what}: {len(wrong)} records with different key/value at the "
                       f"same offset, e.g. {wrong[0]}: acked {d[wrong[0]]!r} consumed {c[wrong[0]]!r}")


def payload_multiset(records: Iterable[Rec]) -> Counter:
    return Counter((r.topic, r.key, r.value) for r in records)


# --------------------------------------------------------------------------
# confluent-kafka helpers
# --------------------------------------------------------------------------
def admin(bootstrap: str, **conf) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **conf})


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # keep polling, report the last error on timeout
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def create_topics(bootstrap: str, spec: dict[str, int]) -> None:
    a = admin(bootstrap)
    futs = a.create_topics([NewTopic(t, num_partitions=n, replication_factor=1)
                            for t, n in spec.items()], operation_timeout=10, request_timeout=20)
    for t, f in futs.items():
        f.result(timeout=30)
    for t, n in spec.items():
        parts = topic_partitions(bootstrap, t)
        assert parts == list(range(n)), f"{t}: expected partitions 0..{n - 1}, metadata says {parts}"


def topic_partitions(bootstrap: str, topic: str, timeout: float = 20.0) -> list[int]:
    """Partition ids of an existing topic, from Metadata (waits until the topic
    is listed with at least one partition)."""
    a = admin(bootstrap)

    def get():
        md = a.list_topics(timeout=5)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return None
        return sorted(t.partitions)
    return wait_for(get, timeout, f"topic {topic!r} in metadata")


def produce(bootstrap: str, records: Iterable[Out], timeout: float = DEFAULT_TIMEOUT_S,
            **conf) -> list[Rec]:
    """Produce records and wait for all delivery reports. Returns delivered
    records (with the offsets from the delivery reports) in delivery order.
    Fails if any delivery fails."""
    cfg = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
           "message.timeout.ms": int(timeout * 1000)}
    cfg.update({k.replace("_", "."): v for k, v in conf.items()})
    p = Producer(cfg)
    delivered: list[Rec] = []
    errors: list[str] = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(f"{msg.topic()}[{msg.partition()}] {msg.value()[:40]!r}: {err}")
        else:
            delivered.append(Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                 msg.value(), msg.timestamp()[1]))

    n = 0
    for r in records:
        kwargs = {"value": r.value, "key": r.key, "on_delivery": on_delivery}
        if r.partition is not None:
            kwargs["partition"] = r.partition
        if r.timestamp is not None:
            kwargs["timestamp"] = r.timestamp
        while True:
            try:
                p.produce(r.topic, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(timeout + 10)
    assert left == 0, f"{left} records still undelivered after {timeout + 10}s; errors: {errors[:5]}"
    assert not errors, f"{len(errors)} delivery failures, e.g. {errors[:5]}"
    assert len(delivered) == n, f"{n} produced but {len(delivered)} delivery reports"
    return delivered


def consume_all(bootstrap: str, tps: Iterable[tuple[str, int]], expect: Optional[int] = None,
                timeout: float = DEFAULT_TIMEOUT_S, **conf) -> list[Rec]:
    """Read every partition in `tps` from the beginning to its end (manual
    assign, no consumer group). Returns records in consumption order.

    Finishes when every partition has reported end-of-partition and (if given)
    at least `expect` records were read; fails after `timeout`."""
    tps = sorted(set(tps))
    cfg = {
        "bootstrap.servers": bootstrap,
        "group.id": unique_name("gsn-tests"),  # required by the client; never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
    }
    cfg.update({k.replace("_", "."): v for k, v in conf.items()})
    c = Consumer(cfg)
    try:
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in tps])
        out: list[Rec] = []
        at_eof: set[tuple[str, int]] = set()
        deadline = time.monotonic() + timeout
        while True:
            for m in c.consume(num_messages=5000, timeout=0.2):
                err = m.error()
                tp = (m.topic(), m.partition())
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof.add(tp)
                        continue
                    raise AssertionError(f"consumer error on {tp}: {err}")
                at_eof.discard(tp)
                out.append(Rec(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                               m.timestamp()[1]))
            if len(at_eof) == len(tps) and (expect is None or len(out) >= expect):
                return out
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"consume timed out after {timeout}s: {len(out)} records read"
                    + (f" of {expect}" if expect is not None else "")
                    + f"; partitions at end: {sorted(at_eof)} of {tps}")
    finally:
        c.close()


def by_partition(records: Iterable[Rec]) -> dict[tuple[str, int], list[Rec]]:
    d: dict[tuple[str, int], list[Rec]] = defaultdict(list)
    for r in records:
        d[(r.topic, r.partition)].append(r)
    return d


def assert_broker_usable(bootstrap: str, label: str = "check", n: int = 20) -> None:
    """A fresh client can still produce to a new (auto-created) topic and read
    back exactly what it wrote."""
    topic = unique_name(f"alive-{label}")
    values = [f"{label}-{i}".encode() for i in range(n)]
    delivered = produce(bootstrap, (Out(topic, None, None, v) for v in values), timeout=30)
    parts = {(r.topic, r.partition) for r in delivered}
    got = consume_all(bootstrap, parts, expect=n, timeout=30)
    assert sorted(r.value for r in got) == sorted(values), f"{label}: read back differs"
    assert_same_records(delivered, got, f"{label} round trip")
    assert_gsn_offsets(got, f"{label} round trip")
