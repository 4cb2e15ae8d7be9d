"""Log compaction (cleanup.policy=compact) against a real broker: confluent-kafka,
kafka-python and kcat read the compacted view (latest value per key, original offsets,
tombstones gone after delete.retention.ms, empty batches skipped), keyless records are
refused with INVALID_RECORD, and __consumer_offsets is compacted without losing commits."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkatest import Out, Rec, admin, consume_all, produce, unique_name, wait_for

KCAT = shutil.which("kcat") or shutil.which("kafkacat")

# Small segments, a fast cleaner, any new rolled segment makes a partition due.
CLEANER_FLAGS = {"log_cleaner_backoff_ms": 200, "log_cleaner_min_cleanable_ratio": 0.0}
TOMBSTONE_MS = 3000


def create_compacted(bootstrap: str, topic: str, **extra: str) -> None:
    config = {"cleanup.policy": "compact", "segment.bytes": "1024",
              "delete.retention.ms": str(TOMBSTONE_MS), **extra}
    a = admin(bootstrap)
    futs = a.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1, config=config)],
        operation_timeout=10, request_timeout=20)
    for f in futs.values():
        f.result(timeout=30)


def segment_bases(data_dir: Path, topic: str, partition: int = 0) -> list[int]:
    dirs = list((Path(data_dir) / "topics").glob(f"{topic}-{partition}.*"))
    assert len(dirs) == 1, f"partition directories of {topic}: {dirs}"
    return sorted(int(p.name.split("-")[0]) for p in dirs[0].glob("*.log"))


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def compacted_view_ok(consumed: list[Rec], delivered: list[Rec], active_base: int,
                      gone: set[bytes]) -> str | None:
    """None when `consumed` is the compacted view of `delivered`, else what is wrong."""
    by_offset = {r.offset: (r.key, r.value) for r in delivered}
    latest: dict[bytes, Rec] = {}
    for r in delivered:
        latest[r.key] = r
    for r in consumed:
        if by_offset.get(r.offset) != (r.key, r.value):
            return f"offset {r.offset}: consumed {(r.key, r.value)}, produced {by_offset.get(r.offset)}"
    offsets = [r.offset for r in consumed]
    if offsets != sorted(set(offsets)):
        return "offsets not strictly increasing"
    got = {r.offset for r in consumed}
    for key, r in latest.items():
        if key in gone:
            continue
        if r.offset not in got:
            return f"latest record of {key!r} (offset {r.offset}) missing"
    seen: set[bytes] = set()
    for r in consumed:
        if r.offset >= active_base:
            continue
        if r.key in seen:
            return f"key {r.key!r} appears twice below the active segment ({active_base})"
        seen.add(r.key)
        if r.key in gone:
            return f"tombstoned key {r.key!r} still present at {r.offset}"
    return None


def kafka_python_consume(bootstrap: str, topic: str) -> list[Rec]:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_wait_ms=100,
                      request_timeout_ms=30000)
    try:
        tp = KTP(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        out: list[Rec] = []
        deadline = time.monotonic() + 60
        while c.position(tp) < end:
            assert time.monotonic() < deadline, (
                f"kafka-python stuck at position {c.position(tp)} of {end} after {len(out)} records")
            for recs in c.poll(timeout_ms=200).values():
                out += [Rec(topic, 0, m.offset, m.key, m.value, m.timestamp) for m in recs]
        return out
    finally:
        c.close()


def kcat_consume(bootstrap: str, topic: str) -> list[Rec]:
    if KCAT is None:
        pytest.fail("kcat is not installed", pytrace=False)
    cp = subprocess.run([KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e",
                         "-J", "-q", "-m", "20"], capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")[-2000:]
    out = []
    for line in cp.stdout.decode().splitlines():
        if line.strip():
            m = json.loads(line)
            key = None if m.get("key") is None else m["key"].encode()
            value = None if m.get("payload") is None else m["payload"].encode()
            out.append(Rec(topic, m["partition"], m["offset"], key, value))
    return out


def test_compacted_topic_keeps_latest_value_per_key_for_every_client(broker_factory):
    b = broker_factory(**CLEANER_FLAGS)
    topic = unique_name("compact")
    create_compacted(b.bootstrap, topic)
    keys = [f"key-{i}".encode() for i in range(5)]
    delivered: list[Rec] = []
    # Many updates of few keys, one batch per record and in small compressed batches.
    for codec, per_batch in (("none", 1), ("gzip", 8), ("snappy", 8), ("lz4", 8), ("zstd", 8)):
        delivered += produce(b.bootstrap, (Out(topic, 0, keys[i % 5], f"{codec}-{i}".encode())
                                           for i in range(120)),
                             compression_type=codec, batch_num_messages=per_batch)
    # A key written, then deleted (tombstone), then more updates roll its segment.
    delivered += produce(b.bootstrap, [Out(topic, 0, b"dead", b"alive"), Out(topic, 0, b"dead", None)])
    tombstone_written = time.monotonic()
    delivered += produce(b.bootstrap, (Out(topic, 0, keys[i % 5], f"late-{i}".encode())
                                       for i in range(60)), batch_num_messages=1)
    assert len(segment_bases(b.data_dir, topic)) > 10

    def compacted():
        active = segment_bases(b.data_dir, topic)[-1]
        got = consume_all(b.bootstrap, [(topic, 0)], timeout=30)
        problem = compacted_view_ok(got, delivered, active, {b"dead"})
        return (got, active) if problem is None else None

    got, active = wait_for(compacted, 60, "the cleaner to compact the rolled segments")
    assert time.monotonic() - tombstone_written >= TOMBSTONE_MS / 1000 * 0.9
    assert len(got) < len(delivered) / 4, f"{len(got)} of {len(delivered)} records left"
    assert metric(b.handle.metrics_port, "kafka_log_cleaner_records_removed_total") > 0
    assert metric(b.handle.metrics_port, "kafka_log_cleaner_runs_total") > 0
    # The other clients read the same compacted view through the empty batches.
    for name, reader in (("kafka-python", kafka_python_consume), ("kcat", kcat_consume)):
        other = reader(b.bootstrap, topic)
        problem = compacted_view_ok(other, delivered, active, {b"dead"})
        assert problem is None, f"{name}: {problem}"
        # Records the cleaner already removed cannot come back: the later view is a subset.
        assert {r.offset for r in other} <= {r.offset for r in got} | {
            r.offset for r in delivered if r.offset >= active}, name


def test_young_tombstone_stays_while_older_values_of_its_key_go(broker_factory):
    b = broker_factory(**CLEANER_FLAGS)
    topic = unique_name("compact-young")
    create_compacted(b.bootstrap, topic, **{"delete.retention.ms": "600000"})
    delivered = produce(b.bootstrap, (Out(topic, 0, b"dead", f"v{i}".encode()) for i in range(20)),
                        batch_num_messages=1)
    delivered += produce(b.bootstrap, [Out(topic, 0, b"dead", None)])
    delivered += produce(b.bootstrap, (Out(topic, 0, b"other", f"w{i}".encode()) for i in range(40)),
                         batch_num_messages=1)
    tombstone = delivered[20]

    def compacted():
        active = segment_bases(b.data_dir, topic)[-1]
        got = consume_all(b.bootstrap, [(topic, 0)], timeout=30)
        if tombstone.offset >= active or compacted_view_ok(got, delivered, active, set()):
            return None
        return got

    got = wait_for(compacted, 60, "the cleaner to compact the rolled segments")
    dead = [r for r in got if r.key == b"dead"]
    assert [(r.offset, r.value) for r in dead] == [(tombstone.offset, None)], dead


def test_keyless_record_to_compacted_topic_is_invalid_record(broker_factory):
    b = broker_factory(**CLEANER_FLAGS)
    topic = unique_name("compact-keyless")
    create_compacted(b.bootstrap, topic)
    errors = []
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "retries": 0,
                  "message.timeout.ms": 20000})
    p.produce(topic, value=b"no key", partition=0,
              on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]

    from kafka import KafkaProducer
    from kafka.errors import InvalidRecordError
    kp = KafkaProducer(bootstrap_servers=b.bootstrap, retries=0, enable_idempotence=False,
                       request_timeout_ms=30000)
    try:
        with pytest.raises(InvalidRecordError):
            kp.send(topic, value=b"no key", partition=0).get(timeout=30)
        # A keyed record to the same topic is fine.
        md = kp.send(topic, key=b"k", value=b"v", partition=0).get(timeout=30)
        assert md.offset >= 0
    finally:
        kp.close()


def test_consumer_offsets_compaction_keeps_committed_offsets(broker_factory):
    # segment.ms rolls __consumer_offsets (its segment.bytes is 100 MB) while commits go on.
    b = broker_factory(segment_ms=300, **CLEANER_FLAGS)
    topic = unique_name("committed")
    produce(b.bootstrap, (Out(topic, 0, b"k", str(i).encode()) for i in range(5)))
    groups = [unique_name("g") for _ in range(3)]
    last: dict[str, int] = {}
    consumers = {g: Consumer({"bootstrap.servers": b.bootstrap, "group.id": g,
                              "enable.auto.commit": False}) for g in groups}
    try:
        deadline = time.monotonic() + 4
        n = 0
        while time.monotonic() < deadline or n < 300:
            g = groups[n % 3]
            consumers[g].commit(offsets=[TopicPartition(topic, 0, 1000 + n)], asynchronous=False)
            last[g] = 1000 + n
            n += 1
            time.sleep(0.01)
    finally:
        for c in consumers.values():
            c.close()
    wait_for(lambda: metric(b.handle.metrics_port, "kafka_log_cleaner_records_removed_total") > n / 2,
             30, "the cleaner to compact __consumer_offsets")
    b.handle.restart()
    for g in groups:
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": g, "enable.auto.commit": False})
        try:
            got = wait_for(lambda: c.committed([TopicPartition(topic, 0)], timeout=10), 60,
                           f"committed offsets of {g} after restart")
            assert got[0].offset == last[g], (g, got[0].offset, last[g])
        finally:
            c.close()
