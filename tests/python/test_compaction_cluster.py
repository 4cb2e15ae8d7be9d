"""Log compaction on the 3-broker loopback cluster: every replica cleans its own copy; a
replica that was down catches up from the leader's compacted log (followers accept compacted
and empty batches); after the partition leader is killed the new leader serves the same
compacted view."""

from __future__ import annotations

from pathlib import Path

import pytest

from kafkatest import Out, consume_all, produce, wait_for
from test_cluster import running_cluster, wait
from test_compaction import CLEANER_FLAGS, compacted_view_ok, metric, segment_bases


@pytest.fixture
def cleaning_cluster(tmp_path):
    with running_cluster(tmp_path, **CLEANER_FLAGS) as c:
        yield c


def test_every_replica_compacts_and_a_new_leader_serves_the_compacted_view(cleaning_cluster, tmp_path):
    cluster = cleaning_cluster
    topic = "compacted"
    cluster.create(topic, 1, config={"cleanup.policy": "compact", "segment.bytes": "1024",
                                     "delete.retention.ms": "2000"})
    leader = cluster.leader(topic, 0)
    # One follower misses everything and must later copy the leader's compacted batches.
    late = next(n for n in cluster.brokers if n != leader)
    cluster.brokers[late].kill9()
    keys = [f"key-{i}".encode() for i in range(4)]
    delivered = produce(cluster.bootstrap(), (Out(topic, 0, keys[i % 4], f"v{i}".encode())
                                              for i in range(300)), batch_num_messages=1)
    delivered += produce(cluster.bootstrap(), [Out(topic, 0, b"dead", b"x"), Out(topic, 0, b"dead", None)])
    delivered += produce(cluster.bootstrap(), (Out(topic, 0, keys[i % 4], f"w{i}".encode())
                                               for i in range(60)), batch_num_messages=1)
    data = {n: tmp_path / f"broker-{n}" for n in cluster.brokers}
    wait(lambda: all(metric(b.metrics_port, "kafka_log_cleaner_records_removed_total") > 200
                     for b in cluster.alive()),
         "every live replica to remove the overwritten records", timeout=60)
    cluster.brokers[late].restart()
    wait(lambda: cluster.fully_replicated(topic, 1, 3),
         "the late replica to copy the compacted log and rejoin the ISR", timeout=60)
    wait(lambda: metric(cluster.brokers[late].metrics_port, "kafka_log_cleaner_runs_total") > 0,
         "the late replica's cleaner to run", timeout=60)

    def compacted_on(bootstrap, node):
        active = segment_bases(data[node], topic)[-1]
        got = consume_all(bootstrap, [(topic, 0)], timeout=30)
        return got if compacted_view_ok(got, delivered, active, {b"dead"}) is None else None

    leader = cluster.leader(topic, 0)
    before = wait_for(lambda: compacted_on(cluster.brokers[leader].bootstrap, leader), 60,
                      "the leader to serve the compacted view")
    cluster.brokers[leader].kill9()
    survivor = next(b for n, b in cluster.brokers.items() if n != leader)
    new_leader = wait(lambda: (lambda l: l if l not in (None, -1, leader) else None)(
        cluster.leader(topic, 0, survivor)), "a new leader")
    after = wait_for(lambda: compacted_on(cluster.brokers[new_leader].bootstrap, new_leader), 60,
                     "the new leader to serve the compacted view")
    latest = lambda recs: {r.key: (r.offset, r.value) for r in recs}
    assert latest(after) == latest(before), "the new leader's latest values differ"
