"""Fault tests against the compose deployment (docker-compose.yml): 3 brokers, 2 softswitches,
3 ring controllers, driven from the host over the published ports.

Each fault runs on two fresh topics (RF = min(3, brokers), 6 partitions each: 12) under
4 producers (separate confluent-kafka Producer instances, each its own thread; acks=all,
idempotent), a consumer reading every partition from the start, and the ordered reader
(the ordered-reader CLI as a process, --check) reading both topics in global order:

  warm up -> inject the fault -> hold it until every partition is acknowledged again
  (failover worked without the faulty part) -> heal -> wait until the cluster is whole again
  (containers healthy, ring complete, every replica in sync) and every partition acknowledged
  again -> stop the producers, read everything, run checker.check and
  checker.check_total_order.

Each test fails on: an acknowledged record lost, an offset used twice (in a partition or
across partitions), order broken (reads going back in a partition; a record acknowledged
before another was sent holding the larger offset), a delivery failure (records wait up to
180 s), a consumer error or offset reset, a stall (producers or consumer) above the fault's
generous limit, and on the total order: the ordered reader's output not strictly increasing,
an acknowledged record missing from it or printed twice, a record acknowledged before another
was sent printed after it, or the reader receiving a record below what it had printed (its
LATE/DUP/RESET reports). Every wait is a condition poll with a deadline. The summary tables
are printed at the end of the run (conftest.py).

GSN_FAULTS_ISOLATION=read_uncommitted runs the ordered reader without the brokers' stable
frontier: the plumbing works, and LATE reports under faults are expected there (that is what
read_committed fixes).

With fewer than 3 brokers running (a partial deployment) broker faults are held only until
the fault is in place: there is no other replica to fail over to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from checker import (check, check_total_order, emission_stall, frontier_stall, order_row,
                     partition_stall, stream_stall, table_row, visibility)
from cluster import KAFKA_PORTS, Cluster, wait_for
from load import LOGGER, ConsumerLoad, FrontierScraper, OrderedReader, ProducerLoad, fence

PARTITIONS = int(os.environ.get("GSN_FAULTS_PARTITIONS", "6"))   # per topic
TOPICS = 2
PRODUCERS = int(os.environ.get("GSN_FAULTS_PRODUCERS", "4"))
RATE = float(os.environ.get("GSN_FAULTS_RATE", "400"))              # all producers together
ISOLATION = os.environ.get("GSN_FAULTS_ISOLATION", "read_committed")
IDEMPOTENT = os.environ.get("GSN_FAULTS_IDEMPOTENT", "1") == "1"
METRICS_PORTS = [9101, 9102, 9103]
# Acknowledgements every partition must get in a phase to count as "making progress".
PROGRESS = 20


# ---- cluster-wide conditions ---------------------------------------------------------
_ADMINS: dict[str, AdminClient] = {}


def admin(c: Cluster) -> AdminClient:
    bootstrap = c.bootstrap()
    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap, "logger": LOGGER,
                                          "socket.timeout.ms": 5000,
                                          "reconnect.backoff.max.ms": 1000})
    return _ADMINS[bootstrap]


def topic_state(c: Cluster, topic: str) -> dict:
    md = admin(c).list_topics(topic, timeout=5)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p: pm for p, pm in t.partitions.items()}


def in_sync(c: Cluster, topic: str) -> bool:
    """Every partition has a leader and all its replicas in the ISR."""
    parts = topic_state(c, topic)
    return len(parts) == PARTITIONS and all(
        pm.leader >= 0 and pm.error is None and set(pm.isrs) == set(pm.replicas)
        for pm in parts.values())


def ring_complete(c: Cluster) -> bool:
    cfg = c.ring_config()
    switches = [s for s in c.running_services() if s.startswith("switch-")]
    return len(cfg.get("members", [])) == len(switches) and c.controller_leader() is not None


def whole(c: Cluster, topics: list[str] = ()) -> bool:
    """Everything healthy, the ring complete, the topics' replicas in sync."""
    if not all(c.healthy(s) for s in c.running_services()):
        return False
    if not ring_complete(c):
        return False
    return all(in_sync(c, t) for t in topics)


def create_topics(c: Cluster) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    topics = [f"faults-{tag}-{k}" for k in range(TOPICS)]
    rf = min(3, len(c.broker_ids()))
    futures = admin(c).create_topics([NewTopic(t, PARTITIONS, rf) for t in topics],
                                     request_timeout=30)
    for t in topics:
        futures[t].result(60)
    for t in topics:
        wait_for(lambda: in_sync(c, t), f"topic {t}: leaders and full ISR", 90, 0.5)
    return topics


def ordered_reader_bin() -> str:
    """$ORDERED_READER_BIN, else ${CARGO_TARGET_DIR:-/var/cache/gsn/target}/release."""
    explicit = os.environ.get("ORDERED_READER_BIN")
    target = os.environ.get("CARGO_TARGET_DIR") or "/var/cache/gsn/target"
    path = explicit or os.path.join(target, "release", "ordered-reader")
    if not os.access(path, os.X_OK):
        pytest.fail(f"ordered-reader binary not found at {path}: build it with `cargo build "
                    f"--release -p ordered-reader` or set ORDERED_READER_BIN", pytrace=False)
    return path


def leader_views(c: Cluster, topic: str, skip: str = "") -> dict:
    """Each broker's own Metadata answer for the topic's leaders ({broker: {p: leader}}),
    asking every broker but `skip` directly (informational: printed with the results)."""
    views = {}
    for b in c.broker_ids():
        if f"broker-{b}" == skip:
            continue
        key = f"localhost:{KAFKA_PORTS[b]}"
        if key not in _ADMINS:
            _ADMINS[key] = AdminClient({"bootstrap.servers": key, "logger": LOGGER,
                                        "socket.timeout.ms": 3000})
        try:
            md = _ADMINS[key].list_topics(topic, timeout=3)
            views[b] = {p: pm.leader for p, pm in md.topics[topic].partitions.items()}
        except Exception as e:  # noqa: BLE001 - informational
            views[b] = repr(e)
    return views


def leader_of(c: Cluster, topic: str, partition: int = 0) -> int:
    return topic_state(c, topic)[partition].leader


# ---- deployment checks -------------------------------------------------------------------
def test_metadata_from_host_lists_every_broker(cluster: Cluster):
    """`kcat -b localhost:9092 -L`: every broker, at the address the host reaches it."""
    ids = cluster.broker_ids()
    for b in ids:
        md = AdminClient({"bootstrap.servers": f"localhost:{KAFKA_PORTS[b]}",
                          "logger": LOGGER}).list_topics(timeout=10)
        got = {bm.id: (bm.host, bm.port) for bm in md.brokers.values()}
        assert got == {i: ("localhost", KAFKA_PORTS[i]) for i in ids}, got
    assert shutil.which("kcat"), "kcat is not installed (apt-get install kcat)"
    out = subprocess.run(["kcat", "-b", "localhost:9092", "-L"], capture_output=True,
                         text=True, timeout=30).stdout
    assert f"{len(ids)} brokers:" in out, out


def _in_network_kcat(c: Cluster, service: str, *args: str, stdin: str = "") -> str:
    """Runs the host's kcat inside `service`'s network namespace, with Docker's embedded
    DNS (127.0.0.11, which answers there) as resolver: a client inside the compose
    network, without needing a client image."""
    pid = c.inspect(service)["State"]["Pid"]
    resolv = c.log_dir.parent / "resolv.conf" if c.log_dir else None
    resolv.parent.mkdir(parents=True, exist_ok=True)
    resolv.write_text("nameserver 127.0.0.11\noptions ndots:0\n")
    script = ('mount --bind "$0" /etc/resolv.conf && exec kcat "$@"')
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "unshare", "-m", "sh", "-c", script,
                        str(resolv), *args], input=stdin, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"in-network kcat {args} failed: {r.stderr}"
    return r.stdout


def test_in_network_clients(cluster: Cluster):
    """A client inside the compose network bootstraps from broker-N:19092 and is given
    broker-N:19092 addresses, which it can use."""
    missing = [t for t in ("nsenter", "unshare", "kcat") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        pytest.fail(f"a client inside the compose network needs root (uid {os.geteuid()}) and "
                    f"nsenter, unshare, kcat (missing: {missing or 'none'}); never skipped",
                    pytrace=False)
    c = cluster
    ids = c.broker_ids()
    probe = "switch-0"  # any container on the network: its namespace hosts the client
    md = _in_network_kcat(c, probe, "-b", f"broker-{ids[0]}:19092", "-L")
    for i in ids:
        assert f"broker {i} at broker-{i}:19092" in md, md
    topic = f"internal-{uuid.uuid4().hex[:8]}"
    _in_network_kcat(c, probe, "-b", f"broker-{ids[-1]}:19092", "-t", topic, "-P",
                     stdin="a\nb\nc\n")
    out = _in_network_kcat(c, probe, "-b", f"broker-{ids[0]}:19092", "-t", topic, "-C",
                           "-e", "-o", "beginning", "-f", "%s\n")
    assert out.split() == ["a", "b", "c"], out


# ---- faults ----------------------------------------------------------------------------
@dataclass
class Fault:
    name: str
    inject: Callable[[Cluster, str, dict], None]
    heal: Callable[[Cluster, str, dict], None]
    # Condition (besides every partition acknowledging again) that must hold before healing.
    held: Callable[[Cluster, str, dict], bool] = lambda c, t, ctx: True
    broker_fault: bool = False
    # False: the fault stops everything (nothing to fail over to); heal right away.
    progress_while_held: bool = True
    stall_limit: float = 60.0
    ctx: dict = field(default_factory=dict)


def _broker_target(c, topic, ctx):
    ctx["broker"] = f"broker-{leader_of(c, topic)}"
    return ctx["broker"]


def kill_broker(c, topic, ctx):
    c.kill(_broker_target(c, topic, ctx))


def restart_broker(c, topic, ctx):
    c.start(ctx["broker"])


def pause_broker(c, topic, ctx):
    c.pause(_broker_target(c, topic, ctx))


def unpause_broker(c, topic, ctx):
    c.unpause(ctx["broker"])


def cut_broker(c, topic, ctx):
    c.disconnect(_broker_target(c, topic, ctx))


def reconnect_broker(c, topic, ctx):
    c.connect(ctx["broker"])


def broker_down(c, topic, ctx):
    status, _ = c.state(ctx["broker"])
    if ctx.get("cut"):
        return not c.networks_of(ctx["broker"])
    return status in ("exited", "paused")


def kill_switch(c, topic, ctx):
    cfg = c.ring_config()
    ctx["epoch"] = cfg["epoch"]
    ctx["members"] = sorted(m["switch_id"] for m in cfg["members"])
    # The last member: with 2 switches it is the home switch of brokers 1 and 3.
    ctx["switch"] = ctx["members"][-1]
    c.kill(f"switch-{ctx['switch']}")


def switch_gone(c, topic, ctx):
    cfg = c.ring_config()
    return cfg.get("epoch", 0) > ctx["epoch"] and ctx["switch"] not in [
        m["switch_id"] for m in cfg.get("members", [])]


def restore_switch(c, topic, ctx):
    c.start(f"switch-{ctx['switch']}")
    wait_for(lambda: c.healthy(f"switch-{ctx['switch']}"), "restarted switch healthy", 60, 0.5)
    c.resize_ring(ctx["members"])
    wait_for(lambda: sorted(m["switch_id"] for m in c.ring_config().get("members", []))
             == ctx["members"], f"ring back to switches {ctx['members']}", 60, 0.5)


def kill_controller_leader(c, topic, ctx):
    leader = wait_for(c.controller_leader, "a ring controller leader", 30)
    ctx["controller"] = leader
    ctx["epoch"] = c.ring_config()["epoch"]
    c.kill(f"ring-ctrl-{leader}")


def new_controller_leader(c, topic, ctx):
    leader = c.controller_leader()
    return leader is not None and leader != ctx["controller"]


def restart_controller(c, topic, ctx):
    c.start(f"ring-ctrl-{ctx['controller']}")


def restart_all(c, topic, ctx):
    # `docker-compose restart`: every container stopped (SIGTERM/SIGINT) and started again,
    # the named volumes kept.
    c.compose("restart", timeout=300)


def nothing(c, topic, ctx):
    pass


FAULTS = [
    Fault("kill -9 broker (p0 leader)", kill_broker, restart_broker,
          held=broker_down, broker_fault=True),
    Fault("pause broker (p0 leader)", pause_broker, unpause_broker,
          held=broker_down, broker_fault=True),
    Fault("cut broker off (p0 leader)", cut_broker, reconnect_broker,
          held=broker_down, broker_fault=True, ctx={"cut": True}),
    Fault("kill -9 softswitch", kill_switch, restore_switch, held=switch_gone, stall_limit=30),
    Fault("kill -9 ring controller leader", kill_controller_leader, restart_controller,
          held=new_controller_leader, stall_limit=30),
    # Last: restarts everything; checks the data survives `restart`.
    Fault("compose restart (all)", restart_all, nothing,
          progress_while_held=False, stall_limit=180),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name.split(" (")[0].replace(" ", "-"))
def test_fault(cluster: Cluster, summary_rows, order_rows, fault: Fault):
    c = cluster
    ctx = dict(fault.ctx)
    reader_bin = ordered_reader_bin()
    wait_for(lambda: whole(c), "the cluster whole before the fault", 180, 1.0)
    topics = create_topics(c)
    topic = topics[0]  # the faults pick their target by this topic's partition 0
    targets = [(t, p) for t in topics for p in range(PARTITIONS)]
    scraper = FrontierScraper(METRICS_PORTS)
    scraper.start()
    reader = OrderedReader(reader_bin, c.bootstrap(), topics,
                           ["-X", f"isolation.level={ISOLATION}"])
    consumer = ConsumerLoad(c.bootstrap(), {t: PARTITIONS for t in topics})
    # Each producer starts at another partition, so they interleave on every partition.
    producers = [ProducerLoad(c.bootstrap(), targets, name=f"p{k}", rate=RATE / PRODUCERS,
                              first=k * len(targets) // PRODUCERS, idempotent=IDEMPOTENT)
                 for k in range(PRODUCERS)]
    consumer.start()
    for pr in producers:
        pr.start()

    def acks_since(t: float) -> int:
        """The fewest acknowledgements any partition got after t."""
        counts = {tp: 0 for tp in targets}
        for pr in producers:
            for tp, n in pr.acks_since(t).items():
                counts[tp] += n
        return min(counts.values())

    failover = fault.progress_while_held and (not fault.broker_fault
                                              or len(c.broker_ids()) >= 3)
    notes = []
    injected = healed = False
    try:
        wait_for(lambda: acks_since(0) >= PROGRESS,
                 "acknowledgements on every partition before the fault", 90, 0.2)

        leaders = {p: pm.leader for p, pm in topic_state(c, topic).items()}
        t_fault = time.monotonic()
        injected = True
        fault.inject(c, topic, ctx)
        wait_for(lambda: fault.held(c, topic, ctx), f"{fault.name}: fault in place", 60, 0.2)
        # The docker command itself takes a few hundred ms, during which the target still
        # answers: progress counts only from here, where the fault is known to be in place.
        t_placed = time.monotonic()
        if failover:
            wait_for(lambda: acks_since(t_placed) >= PROGRESS,
                     f"{fault.name}: every partition acknowledged again while the fault "
                     f"holds", 120, 0.2)
        t_recovered = time.monotonic()
        notes.append(f"leaders before {leaders}; after, as each broker reports them: "
                     f"{leader_views(c, topic, skip=ctx.get('broker', ''))}")

        t_heal = time.monotonic()
        healed = True
        fault.heal(c, topic, ctx)
        wait_for(lambda: whole(c, topics), f"{fault.name}: cluster whole again after healing",
                 240, 1.0)
        wait_for(lambda: acks_since(t_heal) >= PROGRESS,
                 f"{fault.name}: every partition acknowledged after healing", 120, 0.2)
        t_end = time.monotonic()
    except BaseException:
        c.save_logs(f"fail-{topic}")
        if injected and not healed:
            # Leave the cluster whole for the next test whatever happened here.
            try:
                fault.heal(c, topic, ctx)
            except Exception as e:  # noqa: BLE001 - the original failure matters more
                print(f"healing after a failure failed too: {e!r}")
        raise
    finally:
        finish = _wind_down(c, producers, consumer, reader, scraper, targets, notes)

    acks = [a for pr in producers for a in pr.acks]
    errors = [e for pr in producers for e in pr.errors]
    rep = check(acks + finish.fences, consumer.reads, failed=len(errors))
    stall = partition_stall(acks, t_fault, t_end)
    read_stall = stream_stall([r.at for r in consumer.reads], t_fault, t_end)
    # Under read_uncommitted the reader cannot pass the last fences (nothing moves the
    # positions of the partitions fenced before them): they may be missing.
    exempt = {f.value for f in finish.fences} if ISOLATION != "read_committed" else set()
    order = check_total_order(acks + finish.fences, reader.emitted, reader.reports, exempt)
    emit_stall = emission_stall(acks, [e.at for e in reader.emitted], t_fault, t_end)
    f_stall = frontier_stall(acks, scraper.samples, t_fault, t_end)
    vis = visibility(acks, reader.emitted)
    target = ctx.get("broker", "")
    if "switch" in ctx:
        target = f"switch-{ctx['switch']}"
    elif "controller" in ctx:
        target = f"ring-ctrl-{ctx['controller']}"
    resets = consumer.all_resets()
    summary_rows.append(table_row(fault.name, rep, stall, read_stall, target,
                                  t_recovered - t_fault if failover else None)
                        + (len(resets), len(consumer.errors)))
    order_rows.append(order_row(fault.name, order, emit_stall, f_stall, vis))
    print(f"\n{fault.name}: {ctx} recovered after {t_recovered - t_fault:.2f}s, "
          f"healed after {t_end - t_heal:.2f}s; acked {rep.acked}, read {rep.read}, "
          f"stall {stall:.2f}s, read stall {read_stall:.2f}s, dup records "
          f"{rep.duplicated_records}, reordered by retries {len(rep.reordered)}, redelivered "
          f"{rep.redelivered}; consumer resets {resets[:3]}, errors {consumer.errors[:3]}, "
          f"transient {len(consumer.transient)}; ordered reader exit {finish.reader_rc}, "
          f"printed {order.emitted}, holes {order.holes} in {order.hole_runs} runs, "
          f"F stall {emit_stall:.2f}s (reader) / {f_stall} (metric), ack->print {vis}; "
          f"{notes}")
    if not (rep.ok and order.ok) or errors or stall > fault.stall_limit:
        print(f"ordered reader stderr tail: {reader.stderr_tail[-10:]}")
        print(f"container logs: {c.save_logs(f'fail-{topic}')}")
    assert rep.ok, f"{fault.name}: {rep.problems()}"
    assert order.ok, f"{fault.name}: total order: {order.problems()}"
    assert finish.reader_rc == 0, (f"{fault.name}: ordered-reader exited {finish.reader_rc}: "
                                   f"{reader.stderr_tail[-5:]}")
    assert not reader.bad_lines, f"ordered-reader printed unparsable lines {reader.bad_lines[:3]}"
    assert not errors, f"{len(errors)} deliveries or producers failed: {errors[:3]}"
    assert not resets, f"{fault.name}: the consumer reset offsets: {resets[:3]}"
    assert not consumer.errors, f"{fault.name}: consumer errors: {consumer.errors[:3]}"
    assert stall <= fault.stall_limit, f"{fault.name}: producers stalled {stall:.1f}s"
    assert read_stall <= fault.stall_limit, f"{fault.name}: consumer stalled {read_stall:.1f}s"
    assert emit_stall <= fault.stall_limit, \
        f"{fault.name}: the ordered reader stalled {emit_stall:.1f}s"


@dataclass
class Finish:
    fences: list = field(default_factory=list)
    reader_rc: int | None = None


def _wind_down(c, producers, consumer, reader, scraper, targets, notes) -> Finish:
    """Stops the producers (each raises what failed in its thread), fences every
    partition, lets the consumer and the ordered reader read everything acknowledged, stops
    them. Whatever cannot be read in time is left for the checkers to report."""
    out = Finish()
    try:
        failures = []
        for pr in producers:
            try:
                pr.stop()
            except AssertionError as e:
                failures.append(e)
        if failures:
            raise failures[0]
        out.fences = fence(c.bootstrap(), targets)
    finally:
        acked = [a for pr in producers for a in pr.acks] + out.fences
        last: dict = {}
        for a in acked:
            last[(a.topic, a.partition)] = max(last.get((a.topic, a.partition), -1), a.offset)
        fences = {f.value for f in out.fences}
        wanted = {a.value for a in acked if a.value not in fences
                  or ISOLATION == "read_committed"}
        try:
            wait_for(lambda: consumer.caught_up(last), "the consumer to read every "
                     "acknowledged offset", 90, 0.2)
        except AssertionError as e:
            notes.append(str(e))
        try:
            wait_for(lambda: wanted <= reader.printed(), "the ordered reader to print every "
                     "acknowledged record", 90, 0.2)
        except AssertionError as e:
            notes.append(str(e))
        try:
            consumer.stop()
        finally:
            out.reader_rc = reader.stop()
            scraper.stop()
    return out
