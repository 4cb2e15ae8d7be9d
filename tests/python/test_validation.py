"""Input validation with the exact Kafka error codes, through real clients where a client can
send the input: invalid topic names (CreateTopics, Produce) get INVALID_TOPIC_EXCEPTION and a
batch with a bad CRC gets CORRUPT_MESSAGE."""

from __future__ import annotations

import subprocess

import kproto as kp
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import NewTopic

from kafkatest import admin, unique_name

INVALID_TOPIC_EXCEPTION = 17
CORRUPT_MESSAGE = 2

BAD_NAMES = ["bad/name", "has space", "..", "x" * 250]


def test_create_topics_with_invalid_names_get_invalid_topic_exception(broker):
    client = admin(broker.bootstrap)
    futures = client.create_topics([NewTopic(n, 1, 1) for n in BAD_NAMES], request_timeout=20)
    for name, fut in futures.items():
        err = fut.exception(30)
        assert err is not None, f"topic {name!r} was created"
        assert err.args[0].code() == KafkaError.TOPIC_EXCEPTION, (name, repr(err))


def test_confluent_produce_to_invalid_name_fails(broker):
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 8000})
    out = []
    p.produce("bad/name", b"v", on_delivery=lambda e, m: out.append(e))
    p.flush(30)
    assert len(out) == 1 and out[0] is not None, out
    assert out[0].code() == KafkaError.TOPIC_EXCEPTION, out[0]


def test_kcat_produce_to_invalid_name_reports_the_error(broker):
    proc = subprocess.run(
        ["kcat", "-P", "-b", broker.bootstrap, "-t", "bad/name", "-X", "message.timeout.ms=8000"],
        input=b"v\n", capture_output=True, timeout=60)
    text = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0 and "Broker: Invalid topic" in text, (proc.returncode, text)


def test_raw_produce_to_invalid_name_and_bad_crc_get_kafka_codes(broker):
    port = broker.handle.port
    ts = 1_700_000_000_000
    with kp.Conn(port) as c:
        c.send(kp.produce_v3(1, "bad/name", 0, kp.record_batch([b"x"], ts)))
        _, parts = kp.parse_produce_v3(c.recv_frame())
        assert parts[0][2] == INVALID_TOPIC_EXCEPTION, parts
    topic = unique_name("crc")
    client = admin(broker.bootstrap)  # kept alive until the result is in
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    with kp.Conn(port) as c:
        c.send(kp.produce_v3(2, topic, 0, kp.with_bad_crc(kp.record_batch([b"x"], ts))))
        _, parts = kp.parse_produce_v3(c.recv_frame())
        assert parts[0][2] == CORRUPT_MESSAGE, parts
