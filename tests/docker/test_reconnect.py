"""A broker cut off the network for 10 s and reconnected must not force elections.

openraft 0.9 has no pre-vote: a voter that hears no leader raises its term at every
election timeout, also while it cannot reach anybody; back on the network, that higher term
makes the healthy leaders step down, and every group it is a voter of (its partitions and
the metadata group) goes through an election it did not need. The broker's election driver
(`raft-support`, pre-vote) keeps a cut-off node's term where it was.

The test cuts a broker that is not the metadata leader (`docker network disconnect`; the
process runs on) for 10 s under load (the fault tests' producer settings, acks=all, 400
records/s over 6 partitions, one producer per partition so that one partition's stall does
not hold up another's requests on a shared connection), reconnects it, and samples, every 100 ms, each other broker's Metadata
(leaders, leader epochs = Raft terms, controller id). It asserts that the reconnection
elects nobody, on the partitions the cut broker only followed (neither their leader nor
their preferred replica, which the preferred-leader rebalance may legitimately move back):

* they keep the leader and epoch they had before the cut, through the reconnection;
* none goes without acknowledgements for more than 1 s after the reconnection;
* the metadata leader (controller) stays the same throughout, and the metadata group's term
  (`gsn_metadata_raft_term` in each connected broker's /metrics) does not move either.

The partitions the cut broker led fail over during the cut; their numbers are reported.

The measured numbers (per-partition longest gap between acknowledgements during the cut and
after the reconnection, epoch changes, time without a controller) are printed and added to
the run's summary; BENCHMARKS.md has them before and after pre-vote.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import NewTopic

from cluster import KAFKA_PORTS, Cluster, http_get, metric, wait_for
from load import ProducerLoad
from conftest import NOTES as OUT_NOTES
from test_faults import PARTITIONS, PROGRESS, RATE, admin, in_sync, topic_state, whole

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import kproto as kp  # noqa: E402  (shared raw-protocol helpers of the Python suite)

CUT_S = 10.0
AFTER_S = 15.0
SAMPLE_S = 0.1
MAX_GAP_AFTER_S = 1.0
# docker-compose.yml publishes broker N's /metrics on host port 9100 + N.
METRICS_PORT_BASE = 9100


def metadata_term_at(broker: int) -> float | None:
    """The metadata Raft group's term as `broker` exports it (None: not exported)."""
    status, body = http_get("127.0.0.1", METRICS_PORT_BASE + broker, "/metrics")
    assert status == 200, f"broker {broker} /metrics: {status}"
    return metric(body, "gsn_metadata_raft_term")


def metadata_at(broker: int, topic: str):
    """(controller id, {partition: PartitionMeta}) as `broker` answers Metadata v7."""
    with kp.Conn(KAFKA_PORTS[broker], timeout=2, host="127.0.0.1") as c:
        assert c.send(kp.metadata_v7(1, [topic]))
        payload = c.recv_frame()
    assert payload is not None, f"broker {broker} closed the connection"
    controller, topics = kp.parse_metadata_v7(payload)
    return controller, topics[topic]


class Sampler(threading.Thread):
    """Every SAMPLE_S: each watched broker's Metadata answer, with its time."""

    def __init__(self, brokers: list[int], topic: str):
        super().__init__(daemon=True)
        self.brokers, self.topic = brokers, topic
        self.samples: list[tuple[float, int, int, dict]] = []
        self.terms: list[tuple[float, int, float | None]] = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for b in self.brokers:
                try:
                    controller, parts = metadata_at(b, self.topic)
                except Exception:  # noqa: BLE001 - a missed sample is a gap, not an error
                    continue
                self.samples.append((time.monotonic(), b, controller, parts))
                try:
                    self.terms.append((time.monotonic(), b, metadata_term_at(b)))
                except Exception:  # noqa: BLE001 - as above
                    pass
            time.sleep(SAMPLE_S)

    def metadata_terms(self) -> set:
        return {term for _, _, term in self.terms}

    def replicas(self) -> dict[int, list[int]]:
        for _, _, _, parts in self.samples:
            return {i: p.replicas for i, p in parts.items()}
        raise AssertionError("no Metadata sample")

    def last_before(self, t: float) -> dict:
        """{partition: (leader, epoch)} of the newest sample before t (any watched broker
        whose answer has every partition led)."""
        for at, _, _, parts in reversed(self.samples):
            if at < t and all(p.leader >= 0 for p in parts.values()):
                return {i: (p.leader, p.epoch) for i, p in parts.items()}
        raise AssertionError(f"no complete Metadata sample before {t}")

    def epochs_between(self, t0: float, t1: float) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
        for at, _, _, parts in self.samples:
            if t0 <= at <= t1:
                for i, p in parts.items():
                    if p.leader >= 0:
                        out[i].add(p.epoch)
        return out

    def controllers_between(self, t0: float, t1: float) -> tuple[set[int], float]:
        """Controllers named in [t0, t1], and the longest time without one."""
        named, gap, since = set(), 0.0, None
        for at, _, controller, _ in sorted(self.samples, key=lambda s: s[0]):
            if not t0 <= at <= t1:
                continue
            if controller < 0:
                since = at if since is None else since
                gap = max(gap, at - since)
            else:
                named.add(controller)
                since = None
        return named, gap


def ack_gaps(producers: list[ProducerLoad], t0: float, t1: float) -> dict[int, float]:
    """Per partition: the longest time without an acknowledgement inside [t0, t1]."""
    gaps = {}
    acks = [a for producer in producers for a in list(producer.acks)]
    for p in range(PARTITIONS):
        times = sorted(a.at for a in acks if a.partition == p and t0 <= a.at <= t1)
        edges = [t0, *times, t1]
        gaps[p] = max(b - a for a, b in zip(edges, edges[1:]))
    return gaps


def create_topic(c: Cluster) -> str:
    """One topic of PARTITIONS partitions, RF 3, led and in sync."""
    topic = f"reconnect-{uuid.uuid4().hex[:8]}"
    admin(c).create_topics([NewTopic(topic, PARTITIONS, 3)], request_timeout=30)[topic].result(60)
    wait_for(lambda: in_sync(c, topic), f"topic {topic}: leaders and full ISR", 90, 0.5)
    return topic


def test_reconnected_broker_forces_no_election(cluster: Cluster):
    c = cluster
    wait_for(lambda: whole(c), "the cluster whole before the cut", 180, 1.0)
    topic = create_topic(c)
    brokers = c.broker_ids()
    assert len(brokers) >= 3, "needs 3 brokers"
    controller, _ = metadata_at(brokers[0], topic)
    cut = next(b for b in brokers if b != controller)
    others = [b for b in brokers if b != cut]
    producers = [ProducerLoad(c.bootstrap(), [(topic, p)], name=f"p{p}",
                              rate=RATE / PARTITIONS) for p in range(PARTITIONS)]
    sampler = Sampler(others, topic)
    for producer in producers:
        producer.start()
    sampler.start()
    try:
        wait_for(lambda: all(producer.acks_since(0)[(topic, p)] >= PROGRESS
                             for p, producer in enumerate(producers)),
                 "acknowledgements on every partition", 90, 0.2)
        before = sampler.last_before(time.monotonic())
        replicas = sampler.replicas()
        followed = [p for p, (leader, _) in before.items()
                    if leader != cut and replicas[p][0] != cut]
        t_cut = time.monotonic()
        c.disconnect(f"broker-{cut}")
        wait_for(lambda: time.monotonic() - t_cut >= CUT_S, "the cut to last", CUT_S + 5, 0.1)
        end_of_cut = sampler.last_before(time.monotonic())
        t_back = time.monotonic()
        c.connect(f"broker-{cut}")
        wait_for(lambda: time.monotonic() - t_back >= AFTER_S, "the observation window",
                 AFTER_S + 5, 0.1)
        t_end = time.monotonic()
        wait_for(lambda: whole(c, [topic]), "the cluster whole again", 120, 1.0)
        after = {p: (pm.leader, None) for p, pm in topic_state(c, topic).items()}
    finally:
        sampler.halt.set()
        sampler.join(10)
        for producer in producers:
            producer.stop()
    errors = [e for producer in producers for e in producer.errors]
    assert not errors, errors[:5]

    during = ack_gaps(producers, t_cut, t_back)
    reconnect = ack_gaps(producers, t_back, t_end)
    epochs_after = sampler.epochs_between(t_back, t_end)
    named, no_controller = sampler.controllers_between(t_back, t_end)
    named_cut, no_controller_cut = sampler.controllers_between(t_cut, t_back)
    result = {
        "cut_broker": cut, "controller": controller, "followed": followed,
        "before": before, "end_of_cut": end_of_cut,
        "epochs_after_reconnect": {p: sorted(e) for p, e in epochs_after.items()},
        "leaders_after": {p: l for p, (l, _) in after.items()},
        "ack_gap_during_cut_s": {p: round(g, 2) for p, g in during.items()},
        "ack_gap_after_reconnect_s": {p: round(g, 2) for p, g in reconnect.items()},
        "controllers_during_cut": sorted(named_cut),
        "no_controller_during_cut_s": round(no_controller_cut, 2),
        "controllers_after_reconnect": sorted(named),
        "no_controller_after_reconnect_s": round(no_controller, 2),
        "metadata_terms": sorted(sampler.metadata_terms(), key=lambda t: (t is None, t)),
    }
    text = json.dumps(result, indent=1, sort_keys=True)
    print(f"\nreconnect of broker {cut}:\n{text}")
    OUT_NOTES.append(f"reconnect of broker {cut}: longest ack gap after reconnect "
                     f"{max(reconnect.values()):.2f} s, during the cut "
                     f"{max(during.values()):.2f} s; epochs after {result['epochs_after_reconnect']}"
                     f"; controllers after {sorted(named)}")

    assert followed, f"broker {cut} leads or is preferred for every partition: {replicas}"
    moved = {p: (before[p], end_of_cut[p]) for p in followed if before[p] != end_of_cut[p]}
    assert not moved, f"partitions the cut broker only followed changed leader/epoch: {moved}"
    changed = {p: (end_of_cut[p], sorted(epochs_after[p])) for p in followed
               if epochs_after[p] != {end_of_cut[p][1]}}
    assert not changed, f"the reconnection changed leader epochs (elections): {changed}"
    assert named_cut | named == {controller}, (
        f"the metadata leader changed: {controller} -> {sorted(named_cut | named)}")
    terms = sampler.metadata_terms()
    assert None not in terms, "a broker does not export gsn_metadata_raft_term"
    assert len(terms) == 1, f"the metadata group's term moved: {sorted(terms)}"
    gaps = {p: reconnect[p] for p in followed}
    assert max(gaps.values()) < MAX_GAP_AFTER_S, f"ack gaps after reconnect: {gaps}"
