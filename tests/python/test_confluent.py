"""confluent-kafka (modern librdkafka) against the broker: admin APIs, a
10,000-records-per-codec round trip, ListOffsets by time, watermarks,
DescribeConfigs, DeleteTopics, CreatePartitions."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import (ConfigResource, NewPartitions, NewTopic,
                                   OffsetSpec, ResourceType)

import kproto as kp
from kafkatest import (Out, admin, assert_gsn_offsets, assert_same_records,
                       by_partition, consume_all, create_topics,
                       payload_multiset, produce, topic_partitions,
                       unique_name, wait_for)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
RECORDS_PER_CODEC = 10_000


def kafka_error_code(exc: BaseException) -> int:
    assert isinstance(exc, KafkaException), f"expected KafkaException, got {exc!r}"
    return exc.args[0].code()


def plain_consumer(bootstrap: str) -> Consumer:
    # read_uncommitted: its watermarks are the partition's (high = last offset + 1);
    # librdkafka's default, read_committed, ends at the stable frontier F, which on a quiet
    # partition lies past its last record (ARCHITECTURE.md, The stable frontier F).
    return Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("gsn-tests"),
                     "enable.auto.commit": False, "isolation.level": "read_uncommitted"})


# --------------------------------------------------------------------------
def test_metadata_lists_this_broker_as_controller(broker):
    md = admin(broker.bootstrap).list_topics(timeout=10)
    assert set(md.brokers) == {1}, f"brokers in metadata: {md.brokers}"
    b = md.brokers[1]
    assert (b.host, b.port) == ("127.0.0.1", broker.handle.port), f"advertised {b.host}:{b.port}"
    assert md.controller_id == 1, f"controller_id {md.controller_id} is not a real broker id"


def test_describe_cluster(broker):
    a = admin(broker.bootstrap)  # keep the client alive until the future resolves
    res = a.describe_cluster(request_timeout=10).result(timeout=20)
    assert [n.id for n in res.nodes] == [1], f"nodes {res.nodes}"
    assert (res.nodes[0].host, res.nodes[0].port) == ("127.0.0.1", broker.handle.port)
    assert res.controller is not None and res.controller.id == 1, f"controller {res.controller}"


def test_roundtrip_all_codecs(broker):
    """10,000 records with each codec to several partitions of two topics,
    acks=all; read everything back and compare exactly."""
    topics = {unique_name("codec-a"): 4, unique_name("codec-b"): 3}
    create_topics(broker.bootstrap, topics)
    names = list(topics)

    delivered_all = []
    for codec in CODECS:
        records = []
        for i in range(RECORDS_PER_CODEC):
            t = names[i % 2]
            p = (i // 2) % topics[t]
            # Varying sizes, compressible content; unique per codec/index.
            value = f"{codec}|{i}|".encode() + b"x" * (i % 300) + bytes([i % 251])
            records.append(Out(t, p, f"k{i}".encode(), value))
        delivered = produce(broker.bootstrap, records, compression_type=codec,
                            linger_ms=20)
        assert len(delivered) == RECORDS_PER_CODEC
        assert_gsn_offsets(sorted(delivered, key=lambda r: r.offset),
                           f"delivery reports ({codec})")
        delivered_all += delivered
        expected = payload_multiset(Out(r.topic, r.partition, r.key, r.value) for r in records)
        got = payload_multiset(delivered)
        assert got == expected, f"{codec}: delivered payloads differ from produced ones"

    tps = [(t, p) for t, n in topics.items() for p in range(n)]
    consumed = consume_all(broker.bootstrap, tps, expect=len(delivered_all), timeout=120)
    assert len(consumed) == len(delivered_all), (
        f"consumed {len(consumed)} records, {len(delivered_all)} were acked")
    assert payload_multiset(consumed) == payload_multiset(delivered_all)
    assert_gsn_offsets(consumed, "consumed records")
    assert_same_records(delivered_all, consumed, "codec round trip")
    # Every partition got data (partitions were chosen explicitly).
    assert set(by_partition(consumed)) == set(tps)
    # Each codec is really in the log (the broker stores batches as they were sent).
    stored = set().union(*(kp.stored_codecs(broker.handle.port, t, p) for t, p in tps))
    assert stored == {kp.CODEC_IDS[c] for c in CODECS}, \
        f"stored batches use codec ids {stored}, expected one batch per codec at least"

    # Watermarks agree with what was read: low <= first offset, high == last + 1
    # (the consumer's position after the last record; EOF detection needs it).
    c = plain_consumer(broker.bootstrap)
    try:
        for (t, p), recs in by_partition(consumed).items():
            low, high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
            assert 0 <= low <= recs[0].offset, f"{t}[{p}] low watermark {low}, first offset {recs[0].offset}"
            assert high == recs[-1].offset + 1, (
                f"{t}[{p}] high watermark {high}, last offset {recs[-1].offset}")
    finally:
        c.close()


def test_offsets_for_times_and_list_offsets(broker):
    topic = unique_name("bytime")
    create_topics(broker.bootstrap, {topic: 3})
    base = int(time.time() * 1000) - 600_000
    # Partition 0: 200 records at base + 10*i, in 4 separate produce calls so
    # they land in several batches. Partition 1: 50 records at base+5+10*i.
    # Partition 2 stays empty.
    # One request in flight, so the stored order is the produced order
    # (pipelined-request ordering is tested in test_ordering.py).
    p0 = []
    for chunk in range(4):
        p0 += produce(broker.bootstrap,
                      [Out(topic, 0, None, f"p0-{i}".encode(), base + 10 * i)
                       for i in range(chunk * 50, chunk * 50 + 50)],
                      max_in_flight_requests_per_connection=1)
    p1 = produce(broker.bootstrap, [Out(topic, 1, None, f"p1-{i}".encode(), base + 5 + 10 * i)
                                    for i in range(50)], max_in_flight_requests_per_connection=1)
    p0.sort(key=lambda r: r.offset)
    p1.sort(key=lambda r: r.offset)
    assert [r.value for r in p0] == [f"p0-{i}".encode() for i in range(200)], "p0 order"
    ts0 = [base + 10 * i for i in range(200)]

    def expect_p0(query):
        for r, ts in zip(p0, ts0):
            if ts >= query:
                return r.offset
        return -1

    c = plain_consumer(broker.bootstrap)
    try:
        queries = [base - 1_000_000, base, base + 1, base + 10 * 37, base + 10 * 37 + 9,
                   base + 10 * 120 + 3, base + 10 * 199, base + 10 * 199 + 1,
                   int(time.time() * 1000) + 3_600_000]
        # One query per call: several entries for the same partition in one
        # ListOffsets request are not distinguishable in the answer.
        res = [c.offsets_for_times([TopicPartition(topic, 0, q)], timeout=20)[0] for q in queries]
        for q, tp in zip(queries, res):
            assert tp.error is None, f"offsets_for_times({q}) error {tp.error}"
            assert tp.offset == expect_p0(q), (
                f"partition 0, timestamp {q} (base+{q - base}): got offset {tp.offset}, "
                f"expected {expect_p0(q)} (first offset with timestamp >= query, -1 if none)")
        # Partition 1 interleaves timestamps with partition 0.
        res = [c.offsets_for_times([tp], timeout=20)[0]
               for tp in (TopicPartition(topic, 1, base + 10 * 20),
                          TopicPartition(topic, 1, base + 10 * 60),
                          TopicPartition(topic, 2, base))]
        assert res[0].offset == p1[20].offset, f"partition 1: got {res[0].offset} want {p1[20].offset}"
        assert res[1].offset == -1, f"partition 1 past the end: got {res[1].offset} want -1"
        assert res[2].offset == -1, f"empty partition 2: got {res[2].offset} want -1"

        low, high = c.get_watermark_offsets(TopicPartition(topic, 2), timeout=10, cached=False)
        assert low == high, f"empty partition has watermarks {low}..{high}"
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        assert low <= p0[0].offset and high == p0[-1].offset + 1, (low, high, p0[0].offset, p0[-1].offset)
    finally:
        c.close()

    # The same through the admin client's ListOffsets, incl. max timestamp.
    a = admin(broker.bootstrap)
    tp0 = TopicPartition(topic, 0)
    specs = {"earliest": OffsetSpec.earliest(), "latest": OffsetSpec.latest(),
             "max_timestamp": OffsetSpec.max_timestamp(),
             "for_timestamp": OffsetSpec.for_timestamp(base + 10 * 77)}
    got = {}
    for name, spec in specs.items():
        futs = a.list_offsets({tp0: spec}, request_timeout=20)
        got[name] = list(futs.values())[0].result(timeout=30)
    assert 0 <= got["earliest"].offset <= p0[0].offset, got["earliest"]
    assert got["latest"].offset == p0[-1].offset + 1, got["latest"]
    assert got["for_timestamp"].offset == p0[77].offset, got["for_timestamp"]
    assert got["max_timestamp"].offset == p0[-1].offset, got["max_timestamp"]
    assert got["max_timestamp"].timestamp == ts0[-1], got["max_timestamp"]


def test_describe_configs_topic(broker):
    topic = unique_name("cfg")
    create_topics(broker.bootstrap, {topic: 1})
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = admin(broker.bootstrap)
    futs = a.describe_configs([res], request_timeout=20)
    entries = list(futs.values())[0].result(timeout=30)
    assert entries, "DescribeConfigs returned no entries for a topic"
    assert "cleanup.policy" in entries, f"no cleanup.policy among {sorted(entries)}"
    assert entries["cleanup.policy"].value == "delete", entries["cleanup.policy"]


def test_describe_configs_broker(broker):
    res = ConfigResource(ResourceType.BROKER, "1")
    a = admin(broker.bootstrap)
    futs = a.describe_configs([res], request_timeout=20)
    entries = list(futs.values())[0].result(timeout=30)
    assert entries, "DescribeConfigs returned no entries for broker 1"


def test_describe_configs_unknown_topic_is_an_error(broker_factory):
    b = broker_factory(auto_create_topics=False)
    res = ConfigResource(ResourceType.TOPIC, unique_name("nosuch"))
    with pytest.raises(KafkaException) as ei:
        a = admin(b.bootstrap)
        futs = a.describe_configs([res], request_timeout=20)
        list(futs.values())[0].result(timeout=30)
    assert kafka_error_code(ei.value) == KafkaError.UNKNOWN_TOPIC_OR_PART, ei.value


def test_create_existing_topic_fails(broker):
    topic = unique_name("dup")
    create_topics(broker.bootstrap, {topic: 2})
    a = admin(broker.bootstrap)
    futs = a.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    with pytest.raises(KafkaException) as ei:
        futs[topic].result(timeout=30)
    assert kafka_error_code(ei.value) == KafkaError.TOPIC_ALREADY_EXISTS, ei.value


def test_delete_topics(broker):
    a = admin(broker.bootstrap)
    keep, gone = unique_name("keep"), unique_name("gone")
    create_topics(broker.bootstrap, {keep: 2, gone: 2})
    old = produce(broker.bootstrap, [Out(t, i % 2, None, f"{t}-{i}".encode())
                                     for t in (keep, gone) for i in range(100)])

    for t, f in a.delete_topics([gone], operation_timeout=10, request_timeout=20).items():
        f.result(timeout=30)
    # list_topics() without a topic never auto-creates.
    wait_for(lambda: gone not in a.list_topics(timeout=5).topics, 20, f"{gone} to disappear")
    assert keep in a.list_topics(timeout=5).topics

    # Keep the dict: the per-topic futures are completed through it.
    futs = a.delete_topics([unique_name("never-existed")], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        list(futs.values())[0].result(timeout=30)
    assert kafka_error_code(ei.value) == KafkaError.UNKNOWN_TOPIC_OR_PART, ei.value

    # The other topic is untouched.
    kept = [r for r in old if r.topic == keep]
    got = consume_all(broker.bootstrap, [(keep, 0), (keep, 1)], expect=len(kept))
    assert_same_records(kept, got, "kept topic after deleting another")

    # Re-creating the deleted name gives an empty topic; new offsets are fresh GSNs.
    create_topics(broker.bootstrap, {gone: 2})
    assert consume_all(broker.bootstrap, [(gone, 0), (gone, 1)], expect=0) == [], \
        "re-created topic still has the deleted topic's records"
    new = produce(broker.bootstrap, [Out(gone, 0, None, b"after-recreate")])
    assert new[0].offset > max(r.offset for r in old), "offset reused after delete"


def test_create_partitions(broker):
    a = admin(broker.bootstrap)
    topic = unique_name("grow")
    create_topics(broker.bootstrap, {topic: 2})
    before = produce(broker.bootstrap, [Out(topic, i % 2, None, f"before-{i}".encode())
                                        for i in range(200)])

    for t, f in a.create_partitions([NewPartitions(topic, 5)], operation_timeout=10,
                                    request_timeout=20).items():
        f.result(timeout=30)
    wait_for(lambda: topic_partitions(broker.bootstrap, topic) == [0, 1, 2, 3, 4], 20,
             "5 partitions in metadata")

    # Shrinking is refused.
    with pytest.raises(KafkaException) as ei:
        shrink = a.create_partitions([NewPartitions(topic, 3)], request_timeout=20)
        shrink[topic].result(timeout=30)
    assert kafka_error_code(ei.value) == KafkaError.INVALID_PARTITIONS, ei.value

    after = produce(broker.bootstrap, [Out(topic, i % 5, None, f"after-{i}".encode())
                                       for i in range(500)])
    assert min(r.offset for r in after) > max(r.offset for r in before)
    got = consume_all(broker.bootstrap, [(topic, p) for p in range(5)], expect=700)
    assert_gsn_offsets(got)
    assert_same_records(before + after, got, "after CreatePartitions")


def test_auto_create_uses_num_partitions(broker_factory):
    b = broker_factory(num_partitions=4)
    topic = unique_name("auto")
    delivered = produce(b.bootstrap, [Out(topic, None, f"k{i}".encode(), f"v{i}".encode())
                                      for i in range(400)])
    assert topic_partitions(b.bootstrap, topic) == [0, 1, 2, 3]
    got = consume_all(b.bootstrap, [(topic, p) for p in range(4)], expect=400)
    assert_same_records(delivered, got, "auto-created topic")
    assert_gsn_offsets(got)


def test_auto_create_disabled(broker_factory):
    b = broker_factory(auto_create_topics=False)
    topic = unique_name("noauto")
    # A producer's Metadata request asks for auto-creation; it must be refused.
    p = Producer({"bootstrap.servers": b.bootstrap, "allow.auto.create.topics": True})
    md = p.list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    assert t is not None and t.error is not None and \
        t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"metadata for {topic}: {t and t.error}"
    # Producing to it fails instead of creating it.
    errors = []
    p2 = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 3000})
    p2.produce(topic, value=b"nope", on_delivery=lambda err, msg: errors.append(err))
    assert p2.flush(15) == 0
    assert len(errors) == 1 and errors[0] is not None, f"produce to a missing topic: {errors}"
    a = admin(b.bootstrap)
    assert topic not in a.list_topics(timeout=10).topics
