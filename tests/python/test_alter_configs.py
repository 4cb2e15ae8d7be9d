"""AlterConfigs / IncrementalAlterConfigs / DescribeConfigs with real admin clients, and the
configs taking effect on a running broker: max.message.bytes, message.timestamp.type,
segment.bytes, dynamic broker defaults, and the errors Kafka gives."""

from __future__ import annotations

import os
import struct

import kproto
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewTopic)

from kafkatest import admin, unique_name, wait_for
from test_cluster import cluster  # noqa: F401 (the 3-broker fixture)

TOPIC = ConfigResource.Type.TOPIC
BROKER = ConfigResource.Type.BROKER


def create(bootstrap, name, partitions=1, config=None):
    client = admin(bootstrap)
    client.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(30)


def describe(bootstrap, rtype, name):
    res = ConfigResource(rtype, name)
    client = admin(bootstrap)
    return client.describe_configs([res])[res].result(30)


def incremental(bootstrap, rtype, name, entries, validate_only=False):
    res = ConfigResource(rtype, name, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=op) for k, v, op in entries])
    client = admin(bootstrap)
    return client.incremental_alter_configs([res], validate_only=validate_only)[res].result(30)


def produce_one(bootstrap, topic, value, timestamp=0):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "message.timeout.ms": 15000})
    out = []
    p.produce(topic, value, key=b"k", partition=0, timestamp=timestamp,
              on_delivery=lambda e, m: out.append((e, m)))
    p.flush(30)
    assert len(out) == 1
    return out[0]


def consume_first(bootstrap, topic, offset):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("g"),
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, offset)])
        msg = wait_for(lambda: c.poll(0.5), 20, "a record")
        assert msg.error() is None, msg.error()
        return msg
    finally:
        c.close()


def test_incremental_alter_acts_and_describe_reports_source_and_synonyms(broker):
    b = broker.bootstrap
    topic = unique_name("cfg")
    create(b, topic)
    incremental(b, TOPIC, topic, [("max.message.bytes", "2000", AlterConfigOpType.SET),
                                  ("cleanup.policy", "compact", AlterConfigOpType.APPEND)])
    cfg = describe(b, TOPIC, topic)
    assert cfg["max.message.bytes"].value == "2000"
    assert cfg["max.message.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["cleanup.policy"].value == "delete,compact"
    # Defaults are Kafka's, reported as defaults, with the broker-level synonym listed.
    assert cfg["retention.ms"].value == "604800000"
    assert cfg["retention.ms"].is_default
    synonyms = [s.name for s in cfg["max.message.bytes"].synonyms.values()]
    assert synonyms[:2] == ["max.message.bytes", "message.max.bytes"], synonyms
    # The altered limit acts at once: a 5,000-byte record is refused by the broker.
    err, _ = produce_one(b, topic, b"x" * 5000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    err, _ = produce_one(b, topic, b"x" * 100)
    assert err is None, err
    # DELETE returns to the default.
    incremental(b, TOPIC, topic, [("max.message.bytes", None, AlterConfigOpType.DELETE)])
    err, _ = produce_one(b, topic, b"x" * 5000)
    assert err is None, err
    assert describe(b, TOPIC, topic)["max.message.bytes"].value == "1048588"


def test_alter_configs_replaces_the_whole_set(broker):
    b = broker.bootstrap
    topic = unique_name("cfgset")
    create(b, topic, config={"retention.ms": "1000", "segment.ms": "100000"})
    res = ConfigResource(TOPIC, topic, set_config={"retention.bytes": "123456"})
    client = admin(b)
    client.alter_configs([res])[res].result(30)
    cfg = describe(b, TOPIC, topic)
    assert cfg["retention.bytes"].value == "123456"
    assert cfg["retention.ms"].is_default and cfg["segment.ms"].value != "100000"


def test_log_append_time_from_topic_and_from_dynamic_broker_default(broker):
    b = broker.bootstrap
    topic = unique_name("lat")
    create(b, topic)
    err, msg = produce_one(b, topic, b"create-time", timestamp=1000)
    assert err is None
    got = consume_first(b, topic, msg.offset())
    assert got.timestamp() == (1, 1000)  # TIMESTAMP_CREATE_TIME
    # This broker's dynamic config: every topic without an override follows it.
    incremental(b, BROKER, "1", [("log.message.timestamp.type", "LogAppendTime", AlterConfigOpType.SET)])
    cfg = describe(b, TOPIC, topic)["message.timestamp.type"]
    assert (cfg.value, cfg.source) == ("LogAppendTime", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    err, msg = produce_one(b, topic, b"append-time", timestamp=1000)
    assert err is None
    got = consume_first(b, topic, msg.offset())
    kind, ts = got.timestamp()
    assert kind == 2 and ts > 1_600_000_000_000, got.timestamp()  # TIMESTAMP_LOG_APPEND_TIME
    # A topic override beats the broker default.
    incremental(b, TOPIC, topic, [("message.timestamp.type", "CreateTime", AlterConfigOpType.SET)])
    err, msg = produce_one(b, topic, b"create-again", timestamp=2000)
    assert consume_first(b, topic, msg.offset()).timestamp() == (1, 2000)
    # Deleting the broker default leaves the static/Kafka default.
    incremental(b, BROKER, "1", [("log.message.timestamp.type", None, AlterConfigOpType.DELETE)])
    broker_cfg = describe(b, BROKER, "1")
    assert broker_cfg["log.message.timestamp.type"].value == "CreateTime"


def test_segment_bytes_altered_small_rolls_segments(broker):
    b = broker.bootstrap
    topic = unique_name("roll")
    create(b, topic)
    incremental(b, TOPIC, topic, [("segment.bytes", "4096", AlterConfigOpType.SET)])
    p = Producer({"bootstrap.servers": b, "linger.ms": 0})
    for i in range(40):
        p.produce(topic, b"v" * 1000, key=str(i).encode(), partition=0)
        p.flush(10)
    topics_dir = os.path.join(broker.data_dir, "topics")
    dirs = [d for d in os.listdir(topics_dir) if d.startswith(f"{topic}-0.")]
    assert len(dirs) == 1, dirs
    logs = [f for f in os.listdir(os.path.join(topics_dir, dirs[0])) if f.endswith(".log")]
    assert len(logs) >= 8, logs


def test_errors_and_validate_only(broker):
    b = broker.bootstrap
    topic = unique_name("cfgerr")
    create(b, topic)
    cases = [
        (TOPIC, topic, [("no.such.config", "1", AlterConfigOpType.SET)], KafkaError.INVALID_CONFIG),
        (TOPIC, topic, [("retention.ms", "soon", AlterConfigOpType.SET)], KafkaError.INVALID_CONFIG),
        (TOPIC, topic, [("retention.ms", "1", AlterConfigOpType.APPEND)], KafkaError.INVALID_CONFIG),
        (TOPIC, unique_name("missing"), [("retention.ms", "1", AlterConfigOpType.SET)],
         KafkaError.UNKNOWN_TOPIC_OR_PART),
        (BROKER, "1", [("log.dirs", "/tmp", AlterConfigOpType.SET)], KafkaError.INVALID_CONFIG),
    ]
    for rtype, name, entries, code in cases:
        with pytest.raises(Exception) as e:
            incremental(b, rtype, name, entries)
        err = e.value.args[0] if e.value.args else None
        assert hasattr(err, "code") and err.code() == code, (name, entries, repr(e.value))
    incremental(b, TOPIC, topic, [("retention.ms", "5", AlterConfigOpType.SET)], validate_only=True)
    assert describe(b, TOPIC, topic)["retention.ms"].is_default


def test_kafka_python_admin_describe_and_alter(broker):
    from kafka.admin import ConfigResource as KResource, ConfigResourceType, KafkaAdminClient
    b = broker.bootstrap
    topic = unique_name("kpcfg")
    create(b, topic)
    client = KafkaAdminClient(bootstrap_servers=b, request_timeout_ms=30000)
    try:
        client.alter_configs([KResource(ConfigResourceType.TOPIC, topic,
                                        configs={"retention.ms": "86400000"})])
        resp = client.describe_configs([KResource(ConfigResourceType.TOPIC, topic)])
        text = repr(resp)
        assert "86400000" in text and "retention.ms" in text, text[:2000]
    finally:
        client.close()


def incremental_raw(port, resource_type, name, config, value):
    """IncrementalAlterConfigs v0 (SET) by hand: both Python clients refuse the empty broker
    name that kafka-configs --entity-default sends for the cluster-wide default."""
    body = (kproto.array([kproto.i8(resource_type) + kproto.string(name) + kproto.array([
        kproto.string(config) + kproto.i8(0) + kproto.nullable_string(value)])])
        + kproto.i8(0))
    with kproto.Conn(port, timeout=30) as conn:
        conn.send(kproto.frame(kproto.header_v1(44, 0, 7) + body))
        payload = conn.recv_frame()
    assert payload is not None
    # correlation id, throttle time, array length, then the first resource's error code.
    corr, _throttle, count, code = struct.unpack(">iiih", payload[:14])
    assert (corr, count) == (7, 1)
    return code


def test_cluster_wide_default_from_the_empty_broker_name(broker):
    b = broker.bootstrap
    topic = unique_name("clusterdefault")
    create(b, topic)
    assert incremental_raw(broker.handle.port, 4, "", "log.retention.bytes", "1073741824") == 0
    cfg = describe(b, TOPIC, topic)["retention.bytes"]
    assert (cfg.value, cfg.source) == ("1073741824", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    assert "log.retention.bytes" in cfg.synonyms, cfg.synonyms
    # A per-broker value beats the cluster default.
    incremental(b, BROKER, "1", [("log.retention.bytes", "2147483648", AlterConfigOpType.SET)])
    cfg = describe(b, TOPIC, topic)["retention.bytes"]
    assert (cfg.value, cfg.source) == ("2147483648", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    assert incremental_raw(broker.handle.port, 4, "", "log.dirs", "/x") == KafkaError.INVALID_CONFIG
    # A broker id that is not in the cluster (librdkafka would send this to broker 99 itself).
    assert incremental_raw(broker.handle.port, 4, "99", "log.retention.ms", "1") == \
        KafkaError.INVALID_REQUEST


def test_alter_through_one_broker_acts_on_the_leader_and_reads_back_everywhere(cluster):
    topic = unique_name("clustercfg")
    cluster.create(topic, 1)
    b2, b3 = cluster.brokers[2], cluster.brokers[3]
    incremental(b2.bootstrap, TOPIC, topic, [("max.message.bytes", "2000", AlterConfigOpType.SET)])
    # The answer came after broker 2 applied it; the others follow the metadata log.
    wait_for(lambda: describe(b3.bootstrap, TOPIC, topic)["max.message.bytes"].value == "2000",
             20, "broker 3 to report the altered config")
    leader = cluster.brokers[cluster.leader(topic, 0)]
    wait_for(lambda: describe(leader.bootstrap, TOPIC, topic)["max.message.bytes"].value == "2000",
             20, "the leader to report the altered config")
    err, _ = produce_one(cluster.bootstrap(), topic, b"x" * 5000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    err, _ = produce_one(cluster.bootstrap(), topic, b"x" * 100)
    assert err is None, err
