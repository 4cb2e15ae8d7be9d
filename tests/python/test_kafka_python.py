"""kafka-python (pure Python, its own protocol code) against the broker."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import codec as kcodec
from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

import kproto as kp
from kafkatest import (Rec, assert_gsn_offsets, assert_same_records,
                       payload_multiset, unique_name, wait_for)

RECORDS_PER_CODEC = 10_000

# Every codec Kafka has. gzip needs nothing beyond the standard library; kafka-python
# needs an optional package for each of the others (.ci/run installs them). A missing
# package fails that codec's test, saying which: it is never skipped.
CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
CODEC_PACKAGES = {"snappy": (kcodec.has_snappy, "python-snappy"),
                  "lz4": (kcodec.has_lz4, "lz4"),
                  "zstd": (kcodec.has_zstd, "zstandard")}


def require_codec(codec) -> None:
    if codec in CODEC_PACKAGES:
        have, package = CODEC_PACKAGES[codec]
        if not have():
            pytest.fail(f"kafka-python cannot use {codec}: the Python package {package!r} is "
                        f"not installed (pip install {package}; .ci/run installs it)",
                        pytrace=False)


def producer(bootstrap: str, **conf) -> KafkaProducer:
    # enable_idempotence=False: these tests cover the plain producer path;
    # kafka-python 3's default (idempotence on) is tested in test_idempotence.py.
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                         linger_ms=5, request_timeout_ms=30000, **conf)


def consumer(bootstrap: str) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         fetch_max_wait_ms=100, request_timeout_ms=30000)


def consume_all(bootstrap: str, tps: list[TopicPartition], expect: int,
                timeout: float = 120) -> list[Rec]:
    c = consumer(bootstrap)
    try:
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Rec] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect:
            assert time.monotonic() < deadline, f"read {len(out)} of {expect} records in {timeout}s"
            for tp, msgs in c.poll(timeout_ms=500, max_records=5000).items():
                out += [Rec(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in msgs]
        # Nothing beyond what was expected, and every position is at the end.
        extra = c.poll(timeout_ms=500)
        assert not extra, f"more records than expected: {sum(len(v) for v in extra.values())}"
        ends = c.end_offsets(tps, timeout_ms=30000)
        for tp in tps:
            assert c.position(tp) == ends[tp], f"{tp}: position {c.position(tp)}, end offset {ends[tp]}"
        return out
    finally:
        c.close()


def test_kafka_python_admin_create_delete(broker):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        t1, t2 = unique_name("kp-admin1"), unique_name("kp-admin2")
        a.create_topics({t1: {"num_partitions": 3, "replication_factor": 1},
                         t2: {"num_partitions": 1, "replication_factor": 1}})
        a.wait_for_topics([t1, t2], timeout_ms=20000)
        desc = {t["name"]: t for t in a.describe_topics([t1, t2])}
        assert len(desc[t1]["partitions"]) == 3 and len(desc[t2]["partitions"]) == 1, desc

        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics({t1: {"num_partitions": 3, "replication_factor": 1}})

        a.delete_topics([t1])
        wait_for(lambda: t1 not in a.list_topics(), 20, f"{t1} to disappear")
        assert t2 in a.list_topics()

        with pytest.raises(UnknownTopicOrPartitionError):
            a.delete_topics([unique_name("kp-never")])
    finally:
        a.close()


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c or "none")
def test_kafka_python_roundtrip(broker, codec):
    """10,000 records compressed with `codec` over 5 partitions of two topics: every
    record read back at its acknowledged offset, and the stored batches really use the
    codec."""
    require_codec(codec)
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    topics = {unique_name("kp-a"): 3, unique_name("kp-b"): 2}
    try:
        a.create_topics({t: {"num_partitions": n, "replication_factor": 1} for t, n in topics.items()})
        a.wait_for_topics(list(topics), timeout_ms=20000)
    finally:
        a.close()
    names = list(topics)

    delivered: list[Rec] = []
    produced = []
    p = producer(broker.bootstrap, compression_type=codec)
    try:
        futures = []
        for i in range(RECORDS_PER_CODEC):
            t = names[i % 2]
            part = (i // 2) % topics[t]
            key = f"k{i}".encode()
            value = f"{codec}|{i}|".encode() + b"z" * (i % 200)
            produced.append(Rec(t, part, -1, key, value))
            futures.append((key, value, p.send(t, key=key, value=value, partition=part)))
        p.flush(timeout=60)
        for key, value, f in futures:
            md = f.get(timeout=60)
            delivered.append(Rec(md.topic, md.partition, md.offset, key, value))
    finally:
        p.close(timeout=10)

    assert payload_multiset(delivered) == payload_multiset(produced)
    assert_gsn_offsets(sorted(delivered, key=lambda r: r.offset), "acked offsets")

    tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    got = consume_all(broker.bootstrap, tps, expect=len(delivered))
    assert len(got) == len(delivered)
    assert_gsn_offsets(got, "kafka-python consumed")
    assert_same_records(delivered, got, "kafka-python round trip")
    stored = set().union(*(kp.stored_codecs(broker.handle.port, t.topic, t.partition)
                           for t in tps))
    want = kp.CODEC_IDS[codec]
    assert want in stored and stored <= {0, want}, \
        f"asked for {codec} (codec id {want}); the stored batches use codec ids {stored}"


def test_kafka_python_offsets_for_times(broker):
    topic = unique_name("kp-time")
    base = int(time.time() * 1000) - 300_000
    p = producer(broker.bootstrap, max_in_flight_requests_per_connection=1)  # stored order = sent order
    try:
        futs = [p.send(topic, value=f"t{i}".encode(), partition=0, timestamp_ms=base + 10 * i)
                for i in range(100)]
        p.flush(timeout=60)
        mds = [f.get(timeout=60) for f in futs]
    finally:
        p.close(timeout=10)
    offsets = [m.offset for m in mds]
    assert offsets == sorted(offsets) and len(set(offsets)) == 100, "acked offsets not increasing"

    c = consumer(broker.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        res = c.offsets_for_times({tp: base + 10 * 42 + 3}, timeout_ms=30000)
        assert res[tp] is not None and res[tp].offset == offsets[43], res
        assert res[tp].timestamp == base + 430, res
        res = c.offsets_for_times({tp: base + 10 * 99 + 1}, timeout_ms=30000)
        assert res[tp] is None, f"nothing at/after the query, expected None, got {res[tp]}"
        assert c.end_offsets([tp], timeout_ms=30000)[tp] == offsets[-1] + 1
        assert c.beginning_offsets([tp], timeout_ms=30000)[tp] <= offsets[0]
    finally:
        c.close()
