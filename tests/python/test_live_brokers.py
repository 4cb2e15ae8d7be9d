"""Metadata and DescribeCluster list live brokers only, on the 3-broker loopback cluster.

Each broker probes the others over the Raft transport; one that has not answered for
--broker-session-timeout-ms (2 s here, Kafka's broker.session.timeout.ms) is left out, as
Kafka leaves out fenced brokers, so clients stop trying to connect to it. A partition whose
only replica is on the dead broker reports LEADER_NOT_AVAILABLE with leader -1 and that
replica offline; librdkafka and kafka-python keep producing to the other partitions and
describe the cluster. The restarted broker is listed again.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, Producer
from kafka import KafkaAdminClient, KafkaProducer

from test_cluster import running_cluster, wait

SESSION_MS = 2000
# Session timeout + a probe interval + Metadata polling, with room for a loaded machine.
GONE_WITHIN_S = 15.0
BACK_WITHIN_S = 20.0


@pytest.fixture
def quick_cluster(tmp_path):
    with running_cluster(tmp_path, broker_session_timeout_ms=SESSION_MS) as c:
        yield c


def listed(cluster, via):
    return sorted(cluster.metadata(via).brokers)


def described(cluster, via):
    admin = cluster.admin(via)  # must outlive its future
    return sorted(n.id for n in admin.describe_cluster(request_timeout=3).result(5).nodes)


def test_metadata_lists_only_live_brokers(quick_cluster):
    c = quick_cluster
    c.create("live", 3)
    c.create("solo", 3, rf=1)
    victim = 3
    solo = next(p for p, m in c.partitions("solo").items() if m.replicas == [victim])
    others = [b for n, b in c.brokers.items() if n != victim]
    t0 = time.monotonic()
    c.brokers[victim].kill9()
    for b in others:
        wait(lambda: listed(c, b) == [1, 2], f"broker {b.port}'s Metadata to drop broker {victim}",
             GONE_WITHIN_S)
    gone = time.monotonic() - t0
    for b in others:
        # librdkafka sends DescribeCluster to any broker it knows, so this waits as well.
        wait(lambda: described(c, b) == [1, 2], "DescribeCluster without the dead broker", 30)
    # The dead broker's only replica: no leader, offline, with Kafka's error.
    for b in others:
        p = c.partitions("solo", b)[solo]
        assert p.leader == -1 and p.error is not None, (p.leader, p.error)
        assert p.error.code() == KafkaError.LEADER_NOT_AVAILABLE, p.error
        assert p.replicas == [victim]
    # Clients carry on with what is live.
    bootstrap = ",".join(b.bootstrap for b in others)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 30000})
    acked = []
    for part in range(3):
        p.produce("live", b"after-%d" % part, partition=part,
                  on_delivery=lambda e, m: acked.append(e))
    assert p.flush(40) == 0 and acked == [None] * 3, acked
    kp = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all",
                       enable_idempotence=False)
    try:
        other_solo = next(q for q, m in c.partitions("solo").items() if q != solo)
        kp.send("solo", b"kafka-python", partition=other_solo).get(timeout=30)
    finally:
        kp.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        # kafka-python asks DescribeCluster v2 with include_fenced_brokers: the dead broker
        # comes back marked fenced.
        brokers = admin.describe_cluster()["brokers"]
        assert sorted((b["broker_id"], b["is_fenced"]) for b in brokers) == \
            [(1, False), (2, False), (victim, True)], brokers
    finally:
        admin.close()
    t1 = time.monotonic()
    c.brokers[victim].restart()
    for b in c.brokers.values():
        wait(lambda: listed(c, b) == [1, 2, 3], f"broker {b.port} to list broker {victim} again",
             BACK_WITHIN_S)
    wait(lambda: c.partitions("solo")[solo].leader == victim, "the solo partition led again")
    print(f"\nbroker {victim} left Metadata {gone:.2f} s after kill -9 (session {SESSION_MS} ms),"
          f" listed again {time.monotonic() - t1:.2f} s after its restart")
