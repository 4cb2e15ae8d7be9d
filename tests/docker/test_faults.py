"""Fault tests against the compose deployment (docker-compose.yml): 3 brokers, 2 softswitches,
3 ring controllers, driven from the host over the published ports.

Each fault runs on its own fresh topic (RF = min(3, brokers), 6 partitions) under a
producer (acks=all, retries, idempotence off, one request in flight) and a consumer reading
every partition from the start:

  warm up -> inject the fault -> hold it until every partition is acknowledged again
  (failover worked without the faulty part) -> heal -> wait until the cluster is whole again
  (containers healthy, ring complete, every replica in sync) and every partition acknowledged
  again -> stop the producer, read everything, run checker.check.

Each test fails on: an acknowledged record lost, an offset used twice (in a partition or
across partitions), order broken (reads going back in a partition; a record acknowledged
before another was sent holding the larger offset), a delivery failure (records wait up to
180 s), or a stall above the fault's generous limit. Every wait is a condition poll with a
deadline. The summary table is printed at the end of the run (conftest.py).

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

from checker import check, partition_stall, stream_stall, table_row
from cluster import KAFKA_PORTS, Cluster, wait_for
from load import LOGGER, ConsumerLoad, ProducerLoad

PARTITIONS = int(os.environ.get("GSN_FAULTS_PARTITIONS", "6"))
RATE = float(os.environ.get("GSN_FAULTS_RATE", "400"))
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


def whole(c: Cluster, topic: str | None = None) -> bool:
    """Everything healthy, the ring complete, the topic's replicas in sync."""
    if not all(c.healthy(s) for s in c.running_services()):
        return False
    if not ring_complete(c):
        return False
    return topic is None or in_sync(c, topic)


def create_topic(c: Cluster) -> str:
    topic = f"faults-{uuid.uuid4().hex[:8]}"
    rf = min(3, len(c.broker_ids()))
    futures = admin(c).create_topics([NewTopic(topic, PARTITIONS, rf)], request_timeout=30)
    futures[topic].result(60)
    wait_for(lambda: in_sync(c, topic), f"topic {topic}: leaders and full ISR", 90, 0.5)
    return topic


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
    if shutil.which("kcat"):
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
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("nsenter", "unshare", "kcat")):
        pytest.skip("needs root, nsenter, unshare and kcat to run a client in the network")
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
def test_fault(cluster: Cluster, summary_rows, fault: Fault):
    c = cluster
    ctx = dict(fault.ctx)
    wait_for(lambda: whole(c), "the cluster whole before the fault", 180, 1.0)
    topic = create_topic(c)
    consumer = ConsumerLoad(c.bootstrap(), topic, PARTITIONS)
    producer = ProducerLoad(c.bootstrap(), topic, PARTITIONS, rate=RATE)
    consumer.start()
    producer.start()
    failover = fault.progress_while_held and (not fault.broker_fault
                                              or len(c.broker_ids()) >= 3)
    notes = []
    injected = healed = False
    try:
        wait_for(lambda: min(producer.acks_since(0).values()) >= PROGRESS,
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
            wait_for(lambda: min(producer.acks_since(t_placed).values()) >= PROGRESS,
                     f"{fault.name}: every partition acknowledged again while the fault "
                     f"holds", 120, 0.2)
        t_recovered = time.monotonic()
        notes.append(f"leaders before {leaders}; after, as each broker reports them: "
                     f"{leader_views(c, topic, skip=ctx.get('broker', ''))}")

        t_heal = time.monotonic()
        healed = True
        fault.heal(c, topic, ctx)
        wait_for(lambda: whole(c, topic), f"{fault.name}: cluster whole again after healing",
                 240, 1.0)
        wait_for(lambda: min(producer.acks_since(t_heal).values()) >= PROGRESS,
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
        try:
            producer.stop()
        finally:
            # Read until every partition is read up to its last acknowledged offset; if an
            # acknowledged record was lost at the end of a partition this never happens,
            # and the checker says so below.
            targets = {}
            for a in producer.acks:
                targets[a.partition] = max(targets.get(a.partition, -1), a.offset)
            try:
                wait_for(lambda: consumer.caught_up(targets), "the consumer to read every "
                         "acknowledged offset", 90, 0.2)
            except AssertionError as e:
                notes.append(str(e))
            consumer.stop()

    rep = check(producer.acks, consumer.reads, failed=len(producer.errors))
    stall = partition_stall(producer.acks, t_fault, t_end)
    read_stall = stream_stall([r.at for r in consumer.reads], t_fault, t_end)
    target = ctx.get("broker", "")
    if "switch" in ctx:
        target = f"switch-{ctx['switch']}"
    elif "controller" in ctx:
        target = f"ring-ctrl-{ctx['controller']}"
    summary_rows.append(table_row(fault.name, rep, stall, read_stall, target,
                                  t_recovered - t_fault if failover else None))
    print(f"\n{fault.name}: {ctx} recovered after {t_recovered - t_fault:.2f}s, "
          f"healed after {t_end - t_heal:.2f}s; acked {rep.acked}, read {rep.read}, "
          f"stall {stall:.2f}s, read stall {read_stall:.2f}s, dup records "
          f"{rep.duplicated_records}, reordered by retries {len(rep.reordered)}, redelivered "
          f"{rep.redelivered}; {notes}")
    if not rep.ok or producer.errors or stall > fault.stall_limit:
        print(f"container logs: {c.save_logs(f'fail-{topic}')}")
    assert rep.ok, f"{fault.name}: {rep.problems()}"
    assert not producer.errors, f"{len(producer.errors)} deliveries failed: {producer.errors[:3]}"
    assert producer.unflushed == 0, f"{producer.unflushed} records never flushed"
    assert stall <= fault.stall_limit, f"{fault.name}: stalled {stall:.1f}s"
