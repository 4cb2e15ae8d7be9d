"""Retention on the 3-broker cluster: a replica that was down while the leader's retention
deleted the segments it still needed catches up through the partition's Raft snapshot (it
deletes what the snapshot covers and replicates the rest), then leads with the same records
from the log start, and nothing acknowledged above the retention point is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

import kproto as kp
from kafkatest import Out, produce, unique_name
from test_cluster import running_cluster, wait

SEGMENT = 1024


@pytest.fixture
def cluster(tmp_path):
    with running_cluster(tmp_path, log_retention_check_interval_ms=200) as c:
        yield c


def earliest(broker, topic):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_name("wm")})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)[0]
    finally:
        c.close()


def segment_count(broker, topic):
    dirs = list(Path(broker.data_dir).glob(f"topics/{topic}-0.*"))
    return len(list(dirs[0].glob("*.log"))) if dirs else 0


def test_replica_behind_retention_catches_up_by_snapshot_and_leads(cluster):
    topic = unique_name("ret-cluster")
    cluster.create(topic, 1, rf=3, config={"segment.bytes": str(SEGMENT),
                                           "retention.bytes": str(4 * SEGMENT)})
    preferred = cluster.partitions(topic)[0].replicas[0]
    wait(lambda: cluster.leader(topic, 0) == preferred, "the preferred replica to lead")
    stale = cluster.brokers[preferred]
    stale.kill9()
    leader_id = wait(lambda: (lambda l: l if l not in (None, -1, preferred) else None)(
        cluster.leader(topic, 0)), "a new leader")
    leader = cluster.brokers[leader_id]

    acked = []
    for chunk in range(30):
        acked += produce(cluster.bootstrap(), [
            Out(topic, 0, None, b"c%d-%d-" % (chunk, i) + b"x" * 100) for i in range(8)],
            linger_ms=50)
    wait(lambda: earliest(leader, topic) > acked[0].offset,
         "retention on the leader to delete the first segments")

    stale.restart()
    # The stale replica cannot get the deleted entries: it installs the snapshot, then takes
    # its leadership back (preferred-leader rebalance) once it has applied everything.
    wait(lambda: cluster.leader(topic, 0, stale) == preferred and
         cluster.leader(topic, 0) == preferred, "the restarted replica to lead again", 90)
    assert stale.first_log_line_with("installed partition snapshot") is not None, \
        "the restarted replica caught up without the snapshot"
    assert segment_count(stale, topic) >= 1

    # Read from the restarted replica itself (a direct Fetch; it must lead to answer).
    low = earliest(stale, topic)
    got = kp.read_partition(stale.port, topic, 0, start=low)
    assert got and got[0][0] == low, f"first record {got[:1]} is not at the log start {low}"
    assert low > acked[0].offset, "records below the retention point came back"
    kept = [r for r in acked if r.offset >= low]
    assert [v for _, _, v in got] == [r.value for r in kept], \
        "the new leader does not serve exactly the acknowledged records above its log start"


def test_delete_records_survives_a_leader_change(cluster):
    topic = unique_name("delrec-cluster")
    cluster.create(topic, 1, rf=3, config={"segment.bytes": str(SEGMENT)})
    acked = []
    for chunk in range(6):
        acked += produce(cluster.bootstrap(), [
            Out(topic, 0, None, b"d%d-%d-" % (chunk, i) + b"x" * 100) for i in range(8)],
            linger_ms=50)
    cut = acked[20].offset
    admin = cluster.admin()
    res = admin.delete_records([TopicPartition(topic, 0, cut)], operation_timeout=30)
    assert list(res.values())[0].result(timeout=60).low_watermark == cut
    old = cluster.leader(topic, 0)
    cluster.brokers[old].kill9()
    new = wait(lambda: (lambda l: l if l not in (None, -1, old) else None)(
        cluster.leader(topic, 0)), "a new leader")
    assert earliest(cluster.brokers[new], topic) == cut, "the new leader forgot DeleteRecords"
    # Read from the new leader itself (a direct Fetch, no client routing).
    got = kp.read_partition(cluster.brokers[new].port, topic, 0, start=cut)
    assert [v for _, _, v in got] == [r.value for r in acked[20:]]
