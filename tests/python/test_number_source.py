"""One number source per cluster: two brokers on loopback must never both hand out offsets
from different sequencers (they would give records the same offset).

1. A broker whose --seeds names another broker joins a cluster of several brokers and needs
   --sequencer ring: with the local counter it stops at start (exit 2) saying so, also when
   the list names a single other broker.
2. The metadata group records the cluster's sequencer at its first registration. A cluster
   of one running the local counter (seeds naming only itself) refuses a ring broker that
   tries to join: the joiner logs the reason and exits non-zero, and is never listed.
3. A member of a ring cluster restarted with the local counter stops at start (its own copy
   of the metadata already says the cluster uses the ring), before it could lead anything.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from brokerproc import BrokerExited, BrokerProcess, broker_bin, free_ports
from test_cluster import wait
from test_ring import Ring

REFUSED = "uses the local sequencer"


class Node:
    """Ports and flags of one broker of the two-broker setup."""

    def __init__(self, tmp, node_id, raft_port, seeds, **flags):
        self.tmp, self.node_id, self.raft_port = tmp, node_id, raft_port
        self.flags = dict(node_id=node_id, seeds=seeds, raft_listen=f"127.0.0.1:{raft_port}",
                          raft_heartbeat_ms=100, raft_election_ms=400, **flags)
        self.proc: BrokerProcess | None = None

    def start(self):
        data_dir = self.tmp / f"b{self.node_id}"
        data_dir.mkdir(exist_ok=True)
        port, metrics = free_ports(2)
        self.proc = BrokerProcess(broker_bin(), data_dir, self.tmp / f"b{self.node_id}.log",
                                  port, metrics, self.flags)
        self.proc._spawn()  # waits until the Kafka port accepts connections
        return self.proc

    def start_expecting_exit(self, timeout=60.0):
        """Starts the broker and waits for it to stop by itself: (exit code, its log)."""
        try:
            self.start()
        except BrokerExited:
            pass  # it stopped before its Kafka port opened
        proc = self.proc
        deadline = time.monotonic() + timeout
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not proc.alive(), f"broker {self.node_id} kept running:\n{proc.log_tail()}"
        proc.expected_exit = True
        return proc.returncode(), proc.log_path.read_text(errors="replace")


@pytest.fixture
def setup(tmp_path):
    ring = Ring(tmp_path, switches=1)
    nodes = []
    raft = free_ports(3)
    first = f"1@127.0.0.1:{raft[0]}"
    ring_flags = dict(sequencer="ring", ring_listen="127.0.0.1:0",
                      ring_controllers=",".join(f"127.0.0.1:{p}" for p in ring.ctrl_admin))

    def node(node_id, **flags):
        n = Node(tmp_path, node_id, raft[node_id - 1], first, **flags)
        nodes.append(n)
        return n
    try:
        yield node, ring_flags
    finally:
        for n in nodes:
            if n.proc is not None:
                n.proc.cleanup()
        ring.close()


def listed(proc):
    return sorted(AdminClient({"bootstrap.servers": proc.bootstrap}).list_topics(timeout=5).brokers)


def test_joining_another_broker_needs_the_ring(setup):
    node, _ = setup
    code, log = node(2).start_expecting_exit()
    assert code == 2, log
    assert "--seeds names broker 1" in log and "needs --sequencer ring" in log, log


def test_a_local_cluster_refuses_a_ring_broker(setup):
    node, ring_flags = setup
    alone = node(1).start()  # seeds name only itself: a cluster of one, local counter
    # Its registration fixes the cluster's sequencer (Metadata lists a broker itself even
    # before that, so look for the log line).
    wait(lambda: alone.first_log_line_with("registered in the cluster metadata"),
         "broker 1 to register")
    code, log = node(2, **ring_flags).start_expecting_exit()
    assert code not in (0, None), log
    assert "the cluster refused this broker" in log and REFUSED in log, log
    assert "broker 2 numbers offsets with the ring sequencer" in log, log
    assert listed(alone) == [1]
    assert alone.alive()


def test_a_ring_member_restarted_with_the_local_counter_stops(setup):
    node, ring_flags = setup
    one = node(1, **ring_flags)
    two = node(2, **ring_flags)
    first = one.start()
    wait(lambda: first.first_log_line_with("registered in the cluster metadata"),
         "broker 1 to register")
    second = two.start()
    wait(lambda: listed(first) == [1, 2] and listed(second) == [1, 2], "both brokers registered")
    first.kill9()
    one.flags["sequencer"] = "local"
    code, log = one.start_expecting_exit()
    restart = log[log.rindex("===== start #"):]
    assert code not in (0, None), restart
    assert "uses the ring sequencer" in restart and "broker 1 numbers offsets with the local" \
        in restart, restart
