"""Consumer groups (classic protocol) with real clients against real broker
processes: confluent-kafka (members in their own processes, one SIGKILLed),
kafka-python (members, admin APIs) and kcat -G.

Synchronization is always on something observed (records consumed, an
assignment reported, a process exited), polled with a deadline; nothing
sleeps for a fixed time and nothing asserts on durations.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kafkatest import Out, admin, create_topics, produce, unique_name, wait_for

OFFSETS_TOPIC = "__consumer_offsets"
WORKER = Path(__file__).with_name("group_worker.py")
# Low delays so groups form quickly; sessions may be as short as 1 s.
GROUP_FLAGS = {"group_initial_rebalance_delay_ms": 100, "group_min_session_timeout_ms": 1000}


@pytest.fixture
def gbroker(broker_factory):
    return broker_factory(**GROUP_FLAGS)


def values(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def produce_to_all(bootstrap: str, topic: str, partitions: int, vals: list[str]):
    return produce(bootstrap, (Out(topic, i % partitions, None, v.encode())
                               for i, v in enumerate(vals)))


# --------------------------------------------------------------------------
# Members in subprocesses
# --------------------------------------------------------------------------
class Worker:
    def __init__(self, tmp: Path, name: str, bootstrap: str, group: str, topic: str,
                 assignor: str, instance: str | None = None):
        self.name = name
        self.path = tmp / f"{name}.events"
        self.path.touch()
        argv = [sys.executable, str(WORKER), bootstrap, group, topic, str(self.path), assignor]
        if instance:
            argv.append(instance)
        self.stderr = open(tmp / f"{name}.stderr", "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def messages(self) -> list[tuple[int, int, str]]:
        out = []
        for line in self.lines():
            if line.startswith("MSG "):
                _, p, o, v = line.split(" ", 3)
                out.append((int(p), int(o), v))
        return out

    def uncommitted(self) -> list[str]:
        return [line for line in self.lines() if line.startswith("UNCOMMITTED")]

    def owned(self) -> set[int]:
        """Partitions currently owned, from the ASSIGN/REVOKE events."""
        owned: set[int] = set()
        for line in self.lines():
            kind, _, rest = line.partition(" ")
            if kind not in ("ASSIGN", "REVOKE"):
                continue
            ps = {int(p) for p in rest.split(",") if p}
            owned = owned | ps if kind == "ASSIGN" else owned - ps
        return owned

    def stop(self) -> None:
        """SIGTERM: a clean close (LeaveGroup for dynamic members)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        assert "CLOSED" in self.lines(), f"{self.name} did not close cleanly: {self.lines()[-5:]}"

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.stderr.close()


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


def consumed_values(ws: list[Worker]) -> Counter:
    return Counter(v for w in ws for (_, _, v) in w.messages())


def wait_consumed(ws: list[Worker], expected: list[str], what: str, timeout: float = 90) -> None:
    want = set(expected)
    wait_for(lambda: want <= set(consumed_values(ws)), timeout,
             f"{what}: {len(want)} records consumed by the group")


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_members_join_leave_and_crash(gbroker, workers, assignor):
    """3 members on 6 partitions; a 4th joins, one leaves, one is SIGKILLed.
    Every record is consumed; only the killed member's last record may come
    twice; committed offsets are exactly where consumption stopped, and a new
    member resumes there."""
    bootstrap = gbroker.bootstrap
    topic, group = unique_name("grp-topic"), unique_name("grp")
    create_topics(bootstrap, {topic: 6})
    start = lambda: workers(bootstrap, group, topic, assignor)  # noqa: E731

    a, b, c = start(), start(), start()
    wait_for(lambda: a.owned() and b.owned() and c.owned(), 60, "3 members assigned")
    assert sorted(a.owned() | b.owned() | c.owned()) == list(range(6))
    batch1 = values("one", 300)
    produce_to_all(bootstrap, topic, 6, batch1)
    wait_consumed([a, b, c], batch1, "3 members")

    d = start()  # joins
    wait_for(lambda: d.owned(), 60, "the 4th member assigned")
    batch2 = values("two", 300)
    produce_to_all(bootstrap, topic, 6, batch2)
    wait_consumed([a, b, c, d], batch2, "after a join")

    b.stop()  # leaves cleanly
    wait_for(lambda: sorted(a.owned() | c.owned() | d.owned()) == list(range(6)), 60,
             "b's partitions taken over")
    batch3 = values("three", 300)
    produce_to_all(bootstrap, topic, 6, batch3)
    wait_consumed([a, b, c, d], batch3, "after a leave")

    # c crashes while it consumes (its session expires, its partitions move on).
    batch4 = values("four", 600)
    produce_to_all(bootstrap, topic, 6, batch4)
    wait_for(lambda: any(v.startswith("four-") for _, _, v in c.messages()), 60,
             "c consuming the 4th batch")
    c.kill()
    wait_consumed([a, b, c, d], batch4, "after a crash")

    a.stop()
    d.stop()
    everyone = [a, b, c, d]
    seen = consumed_values(everyone)
    produced = batch1 + batch2 + batch3 + batch4
    assert set(seen) == set(produced)
    # Duplicates: only records the killed member consumed but may not have committed.
    twice = {v for v, n in seen.items() if n > 1}
    by_c = {v for (_, _, v) in c.messages()}
    assert twice <= by_c, f"records consumed twice without a crash: {sorted(twice - by_c)[:5]}"
    assert len(twice) <= 6, f"{len(twice)} redeliveries after one crash"
    print(f"[{assignor}] {sum(seen.values())} records consumed for {len(produced)} produced; "
          f"redelivered after the crash: {len(twice)}")
    for w in (a, b, d):
        assert not w.uncommitted(), f"{w.name}: {w.uncommitted()[:3]}"

    # Committed offsets are exactly one past the last record consumed per partition.
    last: dict[int, int] = defaultdict(lambda: -1)
    for w in everyone:
        for p, o, _ in w.messages():
            last[p] = max(last[p], o)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = probe.committed([TopicPartition(topic, p) for p in range(6)], timeout=20)
    finally:
        probe.close()
    assert {tp.partition: tp.offset for tp in committed} == {p: last[p] + 1 for p in range(6)}

    # A new member resumes exactly there: it sees the new records and nothing older.
    e = start()
    batch5 = values("five", 120)
    produce_to_all(bootstrap, topic, 6, batch5)
    wait_consumed([e], batch5, "restarted group")
    e.stop()
    assert Counter(v for (_, _, v) in e.messages()) == Counter(batch5)


def test_group_survives_broker_restart(gbroker, workers):
    """kill -9 of the broker (the coordinator) under an active group: after the
    restart the group is loaded back Stable, the members carry on in the same
    generation (no revocation), and nothing is consumed twice."""
    bootstrap = gbroker.bootstrap
    topic, group = unique_name("failover"), unique_name("failover-grp")
    create_topics(bootstrap, {topic: 4})
    a, b = workers(bootstrap, group, topic, "range"), workers(bootstrap, group, topic, "range")
    wait_for(lambda: sorted(a.owned() | b.owned()) == [0, 1, 2, 3] and a.owned() and b.owned(),
             60, "two members assigned")
    before = values("before", 200)
    produce_to_all(bootstrap, topic, 4, before)
    wait_consumed([a, b], before, "before the restart")
    events = (len(a.lines()), len(b.lines()))

    gbroker.handle.kill9()
    gbroker.handle.restart()
    after = values("after", 200)
    produce_to_all(bootstrap, topic, 4, after)
    wait_consumed([a, b], after, "after the restart")
    since_restart = [w.lines()[n:] for w, n in zip((a, b), events)]
    a.stop()
    b.stop()

    seen = consumed_values([a, b])
    assert set(seen) == set(before + after)
    uncommitted = {line.split()[2] for w in (a, b) for line in w.uncommitted()}
    twice = {v for v, n in seen.items() if n > 1}
    assert not twice, f"consumed twice: {sorted(twice)[:5]} (uncommitted offsets: {uncommitted})"
    for w, lines in zip((a, b), since_restart):
        rebalances = [line for line in lines if line.startswith(("ASSIGN", "REVOKE"))]
        assert not rebalances, f"{w.name} rebalanced after the coordinator restart: {rebalances}"


# --------------------------------------------------------------------------
# In-process confluent-kafka members
# --------------------------------------------------------------------------
class Member:
    """A confluent-kafka consumer polled by the test thread, recording its
    rebalance events and records."""

    def __init__(self, bootstrap: str, group: str, topic: str, **conf):
        self.events: list[tuple[str, list[int]]] = []
        self.records: list[tuple[int, int, bytes]] = []
        cfg = {"bootstrap.servers": bootstrap, "group.id": group,
               "auto.offset.reset": "earliest", "enable.auto.commit": False,
               "heartbeat.interval.ms": 300, "fetch.wait.max.ms": 100}
        cfg.update(conf)
        self.c = Consumer(cfg)
        self.c.subscribe([topic],
                         on_assign=lambda _c, ps: self.events.append(
                             ("assign", sorted(p.partition for p in ps))),
                         on_revoke=lambda _c, ps: self.events.append(
                             ("revoke", sorted(p.partition for p in ps))))

    def poll(self) -> None:
        m = self.c.poll(0.05)
        if m is not None and m.error() is None:
            self.records.append((m.partition(), m.offset(), m.value()))

    def owned(self) -> set[int]:
        owned: set[int] = set()
        for kind, ps in self.events:
            owned = owned | set(ps) if kind == "assign" else owned - set(ps)
        return owned


def poll_until(members: list[Member], cond, timeout: float, what: str):
    def step():
        for m in members:
            m.poll()
        return cond()
    return wait_for(step, timeout, what, interval=0)


def test_static_member_rejoins_without_rebalance(gbroker):
    """A static member (group.instance.id) that restarts within its session
    gets its old partitions back, and the other member never rebalances."""
    bootstrap = gbroker.bootstrap
    topic, group = unique_name("static"), unique_name("static-grp")
    create_topics(bootstrap, {topic: 4})
    conf = {"session.timeout.ms": 30000, "partition.assignment.strategy": "range"}
    x = Member(bootstrap, group, topic, **{"group.instance.id": "x", **conf})
    y = Member(bootstrap, group, topic, **{"group.instance.id": "y", **conf})
    poll_until([x, y], lambda: len(x.owned()) == 2 and len(y.owned()) == 2, 60,
               "two static members with two partitions each")
    events_x = list(x.events)
    y_partitions, y_member = y.owned(), y.c.memberid()
    y.c.close()  # a static member does not leave the group on close

    y2 = Member(bootstrap, group, topic, **{"group.instance.id": "y", **conf})
    poll_until([x, y2], lambda: y2.owned(), 60, "the restarted static member assigned")
    assert y2.owned() == y_partitions
    vals = values("static", 40)
    produce_to_all(bootstrap, topic, 4, vals)
    poll_until([x, y2], lambda: len(x.records) + len(y2.records) >= len(vals), 60,
               "records consumed after the rejoin")
    assert sorted(v.decode() for _, _, v in x.records + y2.records) == sorted(vals)
    assert x.events == events_x, f"the other member rebalanced: {x.events[len(events_x):]}"

    from kafka.admin import KafkaAdminClient
    ka = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        desc = ka.describe_groups([group])[group]
        assert desc["group_state"] == "Stable"
        members = {m["group_instance_id"]: m["member_id"] for m in desc["members"]}
        assert set(members) == {"x", "y"}
        assert members["y"] != y_member, "the restarted member got a new member id"
    finally:
        ka.close()
        x.c.close()
        y2.c.close()


def test_commit_metadata_round_trips(gbroker):
    bootstrap = gbroker.bootstrap
    topic = unique_name("meta")
    create_topics(bootstrap, {topic: 3})
    g1, g2 = unique_name("meta-cf"), unique_name("meta-kp")

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": g1})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 5, metadata="confluent-α"),
                          TopicPartition(topic, 2, 9, metadata="")], asynchronous=False)
        got = {tp.partition: (tp.offset, tp.metadata)
               for tp in c.committed([TopicPartition(topic, p) for p in range(3)], timeout=20)}
        assert got[0] == (5, "confluent-α") and got[2][0] == 9 and got[1][0] < 0
        with pytest.raises(KafkaException) as err:
            c.commit(offsets=[TopicPartition(topic, 1, 3, metadata="x" * 5000)],
                     asynchronous=False)
        assert err.value.args[0].code() == KafkaError.OFFSET_METADATA_TOO_LARGE
    finally:
        c.close()

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata
    kc = KafkaConsumer(bootstrap_servers=bootstrap, group_id=g2, enable_auto_commit=False)
    try:
        kc.commit({KTP(topic, 1): OffsetAndMetadata(7, "kafka-python-meta", -1)})
        assert kc.committed(KTP(topic, 1), metadata=True).metadata == "kafka-python-meta"
    finally:
        kc.close()
    ka = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        # One OffsetFetch v8 for both groups.
        both = ka.list_group_offsets({g1: None, g2: None})
        # confluent-kafka sends its metadata C string with the terminating NUL; the broker
        # stores and returns the bytes it was given, as Kafka does.
        assert both[g1][KTP(topic, 0)].metadata.rstrip("\x00") == "confluent-α"
        assert both[g2][KTP(topic, 1)].offset == 7
        assert both[g2][KTP(topic, 1)].metadata == "kafka-python-meta"
    finally:
        ka.close()


def test_broker_restart_keeps_committed_offsets(gbroker):
    bootstrap = gbroker.bootstrap
    topic, group = unique_name("restart"), unique_name("restart-grp")
    create_topics(bootstrap, {topic: 2})
    first = values("before", 20)
    delivered = produce_to_all(bootstrap, topic, 2, first)
    # Commit the middle of each partition (a GSN, not a count).
    mid = {}
    for p in (0, 1):
        offs = sorted(r.offset for r in delivered if r.partition == p)
        mid[p] = offs[len(offs) // 2]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(topic, p, o, metadata=f"m{p}") for p, o in mid.items()],
             asynchronous=False)
    c.close()

    gbroker.handle.restart()

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        got = wait_for(lambda: c.committed([TopicPartition(topic, p) for p in (0, 1)],
                                           timeout=5), 60, "committed offsets after restart")
        assert {tp.partition: (tp.offset, tp.metadata) for tp in got} == \
            {p: (o, f"m{p}") for p, o in mid.items()}
        # The group resumes exactly at the committed offsets.
        expect = sorted(r.value for r in delivered if r.offset >= mid[r.partition])
        c.subscribe([topic])
        seen: list[bytes] = []

        def step():
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                seen.append(m.value())
            return len(seen) >= len(expect)
        wait_for(step, 60, "records from the committed offsets", interval=0)
        assert sorted(seen) == expect
    finally:
        c.close()


def test_kcat_group_consumer(gbroker):
    bootstrap = gbroker.bootstrap
    topic, group = unique_name("kcat-g"), unique_name("kcat-grp")
    create_topics(bootstrap, {topic: 3})

    def kcat_group() -> list[str]:
        out = subprocess.run(
            ["kcat", "-b", bootstrap, "-G", group, topic, "-e", "-q", "-f", "%s\n",
             "-X", "auto.offset.reset=earliest"],
            capture_output=True, timeout=120, check=True)
        return out.stdout.decode().split()
    first = values("k1", 30)
    produce_to_all(bootstrap, topic, 3, first)
    assert sorted(kcat_group()) == sorted(first)
    second = values("k2", 12)
    produce_to_all(bootstrap, topic, 3, second)
    assert sorted(kcat_group()) == sorted(second), "kcat -G resumes from its commits"


# --------------------------------------------------------------------------
# kafka-python
# --------------------------------------------------------------------------
@pytest.mark.parametrize("assignor", ["range", "roundrobin"])
def test_kafka_python_group(gbroker, assignor):
    from kafka import KafkaConsumer
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    strategy = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}
    bootstrap = gbroker.bootstrap
    topic, group = unique_name("kp"), unique_name("kp-grp")
    create_topics(bootstrap, {topic: 4})
    vals = values("kp", 200)
    produce_to_all(bootstrap, topic, 4, vals)

    done = threading.Event()
    consumed: list[list[str]] = [[], []]
    owned: list[set[int]] = [set(), set()]
    errors: list[BaseException] = []

    def member(i: int):
        kc = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           partition_assignment_strategy=[strategy[assignor]],
                           session_timeout_ms=10000, heartbeat_interval_ms=300)
        try:
            while not done.is_set():
                batch = kc.poll(timeout_ms=100)
                for tp, msgs in batch.items():
                    consumed[i].extend(m.value.decode() for m in msgs)
                if batch:
                    kc.commit()
                owned[i] = {tp.partition for tp in kc.assignment()}
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)
        finally:
            kc.close()

    threads = [threading.Thread(target=member, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: errors or (owned[0] and owned[1]
                                    and sorted(owned[0] | owned[1]) == [0, 1, 2, 3]
                                    and not owned[0] & owned[1]), 60, "both members assigned")
        wait_for(lambda: errors or set(consumed[0] + consumed[1]) >= set(vals), 60,
                 "all records consumed")
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    # A member may see records from before the rebalance twice only if it never
    # committed them; with a commit after every poll nothing is consumed twice
    # except what a revoked member read but had not committed yet.
    assert set(consumed[0] + consumed[1]) == set(vals)


def err_name(e) -> str:
    """kafka-python admin results name errors as a class, an instance or a string."""
    if isinstance(e, str):
        return e
    return e.__name__ if isinstance(e, type) else type(e).__name__


OK = {"NoError", "OK"}


def test_admin_list_describe_delete_groups(gbroker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient, MemberToRemove
    from kafka.structs import OffsetAndMetadata
    bootstrap = gbroker.bootstrap
    topic, other = unique_name("adm"), unique_name("adm-other")
    group = unique_name("adm-grp")
    create_topics(bootstrap, {topic: 2, other: 1})
    ka = KafkaAdminClient(bootstrap_servers=bootstrap)
    kc = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                       group_instance_id="adm-1", enable_auto_commit=False,
                       session_timeout_ms=30000)
    try:
        wait_for(lambda: kc.poll(timeout_ms=100) is not None and kc.assignment(), 60,
                 "member assigned")
        kc.commit({KTP(topic, 0): OffsetAndMetadata(3, "", -1),
                   KTP(other, 0): OffsetAndMetadata(4, "", -1)})
        listed = {g["group_id"]: g for g in ka.list_groups()}
        assert listed[group]["group_state"] == "Stable"
        assert listed[group]["protocol_type"] == "consumer"
        assert listed[group]["group_type"] == "classic"
        desc = ka.describe_groups([group])[group]
        assert desc["group_state"] == "Stable" and desc["protocol_type"] == "consumer"
        assert desc["protocol_data"] == "range"
        assert [m["group_instance_id"] for m in desc["members"]] == ["adm-1"]
        assert desc["members"][0]["client_host"] == "/127.0.0.1"
        assert desc["members"][0]["member_assignment"]  # decoded assignment, not empty

        # An active group cannot be deleted, nor the offsets of a topic it consumes.
        assert err_name(ka.delete_groups([group])[group]) == "NonEmptyGroupError"
        per_tp = ka.delete_group_offsets(group, [KTP(topic, 0), KTP(other, 0)])
        assert err_name(per_tp[KTP(topic, 0)]) == "GroupSubscribedToTopicError"
        assert err_name(per_tp[KTP(other, 0)]) in OK
        assert set(ka.list_group_offsets({group: None})[group]) == {KTP(topic, 0)}

        # Remove the static member by its instance id (LeaveGroup v3+), then delete.
        removed = ka.remove_group_members(group, [MemberToRemove(group_instance_id="adm-1")])
        assert all(err_name(e) in OK for e in removed.values()), removed
        assert ka.describe_groups([group])[group]["group_state"] == "Empty"
        assert err_name(ka.delete_groups([group])[group]) in OK
        assert group not in {g["group_id"] for g in ka.list_groups()}
        assert err_name(ka.delete_groups([group])[group]) == "GroupIdNotFoundError"
    finally:
        kc.close(autocommit=False)
        ka.close()


def test_offsets_topic_is_internal_and_not_writable(gbroker):
    bootstrap = gbroker.bootstrap
    topic = unique_name("internal")
    create_topics(bootstrap, {topic: 1})
    # The first group operation (FindCoordinator) creates the offsets topic.
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("creator")})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        c.close()
    from kafka.admin import KafkaAdminClient
    ka = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        meta = ka.describe_topics([OFFSETS_TOPIC])
        assert meta[0]["is_internal"] is True, meta
        assert len(meta[0]["partitions"]) == 16
    finally:
        ka.close()
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10000})
    errors = []
    p.produce(OFFSETS_TOPIC, b"junk", partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(30)
    assert errors and errors[0] is not None, "a client wrote to the offsets topic"
    assert errors[0].code() == KafkaError.TOPIC_EXCEPTION, errors[0]
