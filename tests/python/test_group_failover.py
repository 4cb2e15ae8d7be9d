"""Consumer groups on the 3-broker cluster: kill -9 of the broker that coordinates the
group (the leader of its `__consumer_offsets` partition) while two members consume.

A surviving replica of that partition becomes its leader and loads the group from the
replicated log: the members carry on in the same generation (no revocation), nothing is
consumed twice (every commit was acknowledged by a Raft majority), and the committed
offsets are exactly one past the last record consumed. Waits are condition polls.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from confluent_kafka import Consumer, TopicPartition

from kafkatest import unique_name
from test_cluster import cluster, wait  # noqa: F401  (fixture)
from test_groups import Worker, consumed_values, produce_to_all, values

OFFSETS_TOPIC = "__consumer_offsets"


def java_hash(s: str) -> int:
    h = 0
    for unit in s.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h


def offsets_partition(group: str, partitions: int) -> int:
    return (java_hash(group) & 0x7FFFFFFF) % partitions


@pytest.fixture
def workers(tmp_path):
    started: list[Worker] = []

    def start(*args, **kwargs) -> Worker:
        w = Worker(tmp_path, f"w{len(started)}", *args, **kwargs)
        started.append(w)
        return w
    yield start
    for w in started:
        w.cleanup()


def test_group_survives_coordinator_failover(cluster, workers):  # noqa: F811
    topic, group = unique_name("cg-failover"), unique_name("cg")
    cluster.create(topic, 6)
    a = workers(cluster.bootstrap(), group, topic, "range")
    b = workers(cluster.bootstrap(), group, topic, "range")
    wait(lambda: sorted(a.owned() | b.owned()) == list(range(6)) and a.owned() and b.owned(),
         "two members assigned")
    first = values("first", 600)
    produce_to_all(cluster.bootstrap(), topic, 6, first)
    wait(lambda: set(first) <= set(consumed_values([a, b])), "first batch consumed", 90)

    p = offsets_partition(group, len(cluster.partitions(OFFSETS_TOPIC)))
    coordinator = cluster.leader(OFFSETS_TOPIC, p)
    assert coordinator in cluster.brokers, f"offsets partition {p} has no leader"
    marks = (len(a.lines()), len(b.lines()))
    cluster.brokers[coordinator].kill9()
    survivor = next(x for n, x in cluster.brokers.items() if n != coordinator)
    new = wait(lambda: (lambda l: l if l not in (None, -1, coordinator) else None)(
        cluster.leader(OFFSETS_TOPIC, p, survivor)), "a new leader of the offsets partition")

    second = values("second", 600)
    produce_to_all(cluster.bootstrap(), topic, 6, second)
    wait(lambda: set(second) <= set(consumed_values([a, b])), "second batch consumed", 120)
    since = [w.lines()[n:] for w, n in zip((a, b), marks)]
    a.stop()
    b.stop()
    print(f"\ncoordinator failover: node {coordinator} -> {new} (offsets partition {p})")

    seen = consumed_values([a, b])
    assert set(seen) == set(first + second)
    twice = {v for v, n in seen.items() if n > 1}
    uncommitted = [line for w in (a, b) for line in w.uncommitted()]
    assert not twice, f"consumed twice: {sorted(twice)[:5]}; uncommitted: {uncommitted[:5]}"
    for w, lines in zip((a, b), since):
        rebalances = [line for line in lines if line.startswith(("ASSIGN", "REVOKE"))]
        assert not rebalances, f"{w.name} rebalanced after the coordinator failover: {rebalances}"

    last: dict[int, int] = defaultdict(lambda: -1)
    for w in (a, b):
        for part, off, _ in w.messages():
            last[part] = max(last[part], off)
    probe = Consumer({"bootstrap.servers": cluster.bootstrap(), "group.id": group})
    try:
        committed = probe.committed([TopicPartition(topic, q) for q in range(6)], timeout=30)
    finally:
        probe.close()
    assert {tp.partition: tp.offset for tp in committed} == {q: last[q] + 1 for q in range(6)}
