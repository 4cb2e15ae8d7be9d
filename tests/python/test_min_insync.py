"""acks=all waits for min.insync.replicas copies, on the 3-broker loopback cluster.

With replication factor 3 and min.insync.replicas=3 a Raft commit (2 of 3) is not enough:
with one follower paused (SIGSTOP) an acks=all produce must not be acknowledged. It is
answered once the follower is resumed (SIGCONT) and holds the batch; a produce that arrives
after the ISR shrank is refused with NOT_ENOUGH_REPLICAS.
"""

from __future__ import annotations

import select
import time

import kproto as kp
from test_cluster import cluster, wait  # noqa: F401  (fixture)
from test_epochs import current_epoch, leader_broker, paused, produce

ERR_NOT_LEADER = 6
ERR_NOT_ENOUGH_REPLICAS = 19
HELD_S = 4.0


def answered_within(conn, seconds):
    readable, _, _ = select.select([conn.sock], [], [], seconds)
    return bool(readable)


def test_acks_all_waits_for_min_insync_replicas_copies(cluster):  # noqa: F811
    topic = "copies"
    cluster.create(topic, 1, config={"min.insync.replicas": "3"})
    node, leader = leader_broker(cluster, topic)
    produce(leader.port, topic, [b"all three"], acks=-1)
    epoch = current_epoch(leader.port, topic)
    follower = next(b for n, b in cluster.brokers.items() if n != node)
    batch = kp.record_batch([b"held"], int(time.time() * 1000))
    with kp.Conn(leader.port, timeout=30) as held:
        with paused([follower]):
            assert held.send(kp.produce_v3_timeout(1, topic, 0, batch, acks=-1, timeout_ms=25000))
            t0 = time.monotonic()
            # A majority (leader + the other follower) holds it within milliseconds; the
            # third copy cannot come while the follower is stopped.
            early = answered_within(held, HELD_S)
            assert not early, (
                f"acks=all answered after {time.monotonic() - t0:.2f} s with a replica "
                f"stopped: {kp.parse_produce_v3(held.recv_frame())[1]}")
            # Once the leader has dropped the stopped follower from the ISR, new acks=all
            # produce requests are refused outright.
            wait(lambda: len(cluster.partitions(topic, leader)[0].isrs) == 2, "the ISR to shrink")
            _, ((_, _, err, _),) = kp.parse_produce_v3(kp_ask(leader.port, topic))
            assert err == ERR_NOT_ENOUGH_REPLICAS, err
        # Resumed: the follower catches up and the held request is answered. (A resumed
        # follower may force an election first; then the answer is NOT_LEADER and the
        # client retries.)
        assert answered_within(held, 25), "no answer after the follower was resumed"
        _, ((_, _, err, base),) = kp.parse_produce_v3(held.recv_frame())
        assert err in (0, ERR_NOT_LEADER), err
        waited = time.monotonic() - t0
    new_node, new_leader = leader_broker(cluster, topic)
    new_epoch = wait(lambda: current_epoch(new_leader.port, topic), "the leader's epoch")
    # NOT_LEADER only when the leadership really moved on.
    assert err == 0 or new_epoch > epoch, (err, epoch, new_epoch)
    print(f"\nheld acks=all produce answered (error {err}) after {waited:.2f} s; "
          f"leader epoch {epoch} -> {new_epoch}")
    wait(lambda: len(cluster.partitions(topic)[0].isrs) == 3, "the ISR to grow back to 3")
    wait(lambda: produce(leader_broker(cluster, topic)[1].port, topic, [b"three copies"], acks=-1)
         is not None, "an acks=all produce with all three replicas back")


def kp_ask(port, topic):
    batch = kp.record_batch([b"refused"], int(time.time() * 1000))
    with kp.Conn(port, timeout=10) as c:
        assert c.send(kp.produce_v3(2, topic, 0, batch, acks=-1))
        return c.recv_frame()
