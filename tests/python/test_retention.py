"""Retention against a real broker: retention.bytes / retention.ms delete whole old
segments (through a Raft snapshot of the partition), the log start offset moves up and is
what ListOffsets EARLIEST, Fetch and consumers see, and a restart keeps it."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from kafkatest import Out, admin, consume_all, produce, unique_name, wait_for

SEGMENT = 1024
CHUNK = 8  # records per flush: one ~1.1 KB batch, so one segment each


def create(bootstrap: str, topic: str, **configs) -> None:
    a = admin(bootstrap)  # kept alive until the futures resolve
    fs = a.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1,
                  config={"segment.bytes": str(SEGMENT), **configs})],
        operation_timeout=10, request_timeout=20)
    for f in fs.values():
        f.result(timeout=30)


def produce_chunks(bootstrap: str, topic: str, chunks: int, timestamp=None, tag=b"r"):
    delivered = []
    for c in range(chunks):
        delivered += produce(bootstrap, [Out(topic, 0, None, tag + b"-%d-%d-" % (c, i) + b"x" * 100,
                                             timestamp) for i in range(CHUNK)],
                             linger_ms=50)
    return delivered


def watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    # read_uncommitted: the high watermark (read_committed's end is the stable frontier F).
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("wm"),
                  "isolation.level": "read_uncommitted"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()


def settled_log_start(bootstrap: str, topic: str, timeout: float = 30) -> int:
    """The log start once retention has moved it and stopped (the same value over more
    than four retention passes)."""
    seen = {"low": None, "since": 0.0}

    def settled():
        low = watermarks(bootstrap, topic)[0]
        now = time.monotonic()
        if low != seen["low"]:
            seen["low"], seen["since"] = low, now
        return low if low > 0 and now - seen["since"] >= 1.0 else None
    return wait_for(settled, timeout, "retention to move the log start and settle")


def segment_files(data_dir, topic: str) -> list[Path]:
    dirs = list(Path(data_dir).glob(f"topics/{topic}-0.*"))
    assert len(dirs) == 1, dirs
    return sorted(dirs[0].glob("*.log"))


def metric(handle, name: str) -> float:
    url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_retention_bytes_deletes_old_segments(broker_factory):
    b = broker_factory(log_retention_check_interval_ms=200)
    topic = unique_name("ret-bytes")
    create(b.bootstrap, topic, **{"retention.bytes": str(4 * SEGMENT)})
    delivered = produce_chunks(b.bootstrap, topic, 20)
    first_files = segment_files(b.data_dir, topic)
    assert first_files, "no segment files"

    low = settled_log_start(b.bootstrap, topic)
    files = segment_files(b.data_dir, topic)
    assert len(files) <= 6, files
    assert first_files[0] not in files, "the oldest segment file is still there"
    assert sum(f.stat().st_size for f in files) >= 4 * SEGMENT - 2 * SEGMENT
    kept = [r for r in delivered if r.offset >= low]
    assert low in {r.offset for r in delivered}, "the log start is a record's offset"
    assert 0 < len(kept) < len(delivered)
    got = consume_all(b.bootstrap, [(topic, 0)], expect=len(kept))
    assert [r.value for r in got] == [r.value for r in kept]
    assert metric(b.handle, "gsn_log_segments_deleted_total") >= 1
    assert metric(b.handle, "gsn_log_bytes_deleted_total") >= SEGMENT

    # A restart keeps the log start offset.
    b.handle.terminate()
    b.handle.restart()
    assert watermarks(b.bootstrap, topic)[0] >= low


def test_retention_ms_deletes_expired_segments_only(broker_factory):
    b = broker_factory(log_retention_check_interval_ms=200)
    topic = unique_name("ret-ms")
    create(b.bootstrap, topic, **{"retention.ms": "60000"})
    old = int(time.time() * 1000) - 3_600_000
    expired = produce_chunks(b.bootstrap, topic, 5, timestamp=old, tag=b"old")
    fresh = produce_chunks(b.bootstrap, topic, 5, tag=b"new")
    low = settled_log_start(b.bootstrap, topic)
    assert low == fresh[0].offset, (low, fresh[0].offset)
    got = consume_all(b.bootstrap, [(topic, 0)], expect=len(fresh))
    assert [r.value for r in got] == [r.value for r in fresh]
    assert expired  # produced and acknowledged before they expired


def test_fetch_below_the_log_start_is_out_of_range(broker_factory):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.errors import OffsetOutOfRangeError

    b = broker_factory(log_retention_check_interval_ms=200)
    topic = unique_name("ret-oor")
    create(b.bootstrap, topic, **{"retention.bytes": str(2 * SEGMENT)})
    delivered = produce_chunks(b.bootstrap, topic, 10)
    low = settled_log_start(b.bootstrap, topic)
    tp = KTP(topic, 0)

    strict = KafkaConsumer(bootstrap_servers=b.bootstrap, auto_offset_reset="none",
                           enable_auto_commit=False)
    try:
        strict.assign([tp])
        strict.seek(tp, delivered[0].offset)
        with pytest.raises(OffsetOutOfRangeError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                strict.poll(timeout_ms=500)
    finally:
        strict.close()

    # auto.offset.reset=earliest recovers at the log start (kafka-python and librdkafka).
    lenient = KafkaConsumer(bootstrap_servers=b.bootstrap, auto_offset_reset="earliest",
                            enable_auto_commit=False)
    try:
        lenient.assign([tp])
        lenient.seek(tp, delivered[0].offset)
        first = wait_for(lambda: next(iter(lenient.poll(timeout_ms=500).get(tp, [])), None),
                         20, "a record after the reset")
        assert first.offset == low
    finally:
        lenient.close()
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_name("oor"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, delivered[0].offset)])
        m = wait_for(lambda: (lambda m: m if m is not None and m.error() is None else None)(
            c.poll(0.5)), 20, "a record after the reset")
        assert m.offset() == low
    finally:
        c.close()


def test_describe_log_dirs_reports_partition_sizes(broker_factory):
    from kafka.admin import KafkaAdminClient

    b = broker_factory()
    topic = unique_name("logdirs")
    create(b.bootstrap, topic, **{"segment.bytes": str(1 << 20)})
    produce_chunks(b.bootstrap, topic, 3)
    on_disk = sum(f.stat().st_size for f in segment_files(b.data_dir, topic))
    a = KafkaAdminClient(bootstrap_servers=b.bootstrap)
    try:
        answers = a.describe_log_dirs()
        assert len(answers) == 1, answers
        dirs = answers[0]["log_dirs"]
        assert len(dirs) == 1, dirs
        d = dirs[0]
        assert d["error_code"] == 0 and Path(d["log_dir"]) == Path(b.data_dir), d
        assert d["total_bytes"] > 0 and 0 <= d["usable_bytes"] <= d["total_bytes"], d
        mine = [t for t in d["topics"] if t["name"] == topic]
        assert len(mine) == 1, d["topics"]
        parts = mine[0]["partitions"]
        assert [p["partition_index"] for p in parts] == [0]
        assert parts[0]["partition_size"] == on_disk > 0
        assert parts[0]["offset_lag"] == 0 and parts[0]["is_future_key"] is False
        # Asking for a topic the broker does not hold lists nothing.
        none = a.describe_log_dirs(topic_partitions={"no-such-topic": [0]})
        assert none[0]["log_dirs"][0]["topics"] == [], none
    finally:
        a.close()


def test_delete_records_moves_the_log_start(broker_factory):
    from confluent_kafka import KafkaError, KafkaException
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient

    b = broker_factory(log_retention_check_interval_ms=200)
    topic = unique_name("delrec")
    create(b.bootstrap, topic)  # no retention: only DeleteRecords deletes
    delivered = produce_chunks(b.bootstrap, topic, 10)
    first_file = segment_files(b.data_dir, topic)[0]
    a = admin(b.bootstrap)

    # confluent-kafka: delete below a record in the middle of a batch.
    cut = delivered[25].offset
    res = a.delete_records([TopicPartition(topic, 0, cut)], operation_timeout=20)
    deleted = list(res.values())[0].result(timeout=30)
    assert deleted.low_watermark == cut
    assert watermarks(b.bootstrap, topic)[0] == cut
    got = consume_all(b.bootstrap, [(topic, 0)], expect=len(delivered) - 25)
    assert [r.value for r in got] == [r.value for r in delivered[25:]]
    wait_for(lambda: not first_file.exists(), 20, "the segment below the low watermark to go")

    # Beyond the high watermark: OFFSET_OUT_OF_RANGE.
    high = watermarks(b.bootstrap, topic)[1]
    res = a.delete_records([TopicPartition(topic, 0, high + 1000)], operation_timeout=20)
    with pytest.raises(KafkaException) as e:
        list(res.values())[0].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE

    # kafka-python admin.
    k = KafkaAdminClient(bootstrap_servers=b.bootstrap)
    try:
        cut2 = delivered[50].offset
        out = k.delete_records({KTP(topic, 0): cut2}, timeout_ms=20000)
        assert list(out.values())[0]["low_watermark"] == cut2, out
    finally:
        k.close()
    assert watermarks(b.bootstrap, topic)[0] == cut2

    # -1: everything up to the high watermark.
    res = a.delete_records([TopicPartition(topic, 0, -1)], operation_timeout=20)
    assert list(res.values())[0].result(timeout=30).low_watermark == high
    b.handle.terminate()
    b.handle.restart()
    assert watermarks(b.bootstrap, topic) == (high, high)
