"""Crash recovery: what was acknowledged with acks=all survives kill -9."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer

from kafkatest import (Out, Rec, assert_gsn_offsets, assert_same_records,
                       by_partition, consume_all, create_topics, produce,
                       topic_partitions, unique_name, wait_for)

MESSAGE_TIMEOUT_MS = 4000


class BackgroundProducer(threading.Thread):
    """Produces (acks=all) to every partition of `topics` until stopped and
    records every acknowledged record."""

    def __init__(self, bootstrap: str, topics: dict[str, int]):
        super().__init__(daemon=True)
        self.topics = topics
        self.lock = threading.Lock()
        self.acked: list[Rec] = []
        self.failed = 0
        self.produced = 0
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.exc: BaseException | None = None
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
            "message.timeout.ms": MESSAGE_TIMEOUT_MS, "compression.type": "lz4",
            "queue.buffering.max.messages": 20000,
            "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 200,
        })

    def _on_delivery(self, err, msg):
        with self.lock:
            if err is None:
                self.acked.append(Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                      msg.value(), msg.timestamp()[1]))
            else:
                self.failed += 1

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self):
        try:
            names = [(t, p) for t, n in self.topics.items() for p in range(n)]
            i = 0
            while not self.stop_requested.is_set():
                t, p = names[i % len(names)]
                try:
                    self.producer.produce(t, key=f"k{i}".encode(),
                                          value=f"crash-{i}-".encode() + b"q" * (i % 100),
                                          partition=p, on_delivery=self._on_delivery)
                    self.produced += 1
                    i += 1
                except BufferError:
                    self.producer.poll(0.05)
                self.producer.poll(0)
            # Let everything in flight either be acked or time out; a record with neither
            # outcome would make the acked list incomplete.
            left = self.producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 10)
            assert left == 0, f"{left} records neither acknowledged nor failed after flush"
        except BaseException as e:  # surfaced by the test
            self.exc = e
        finally:
            self.stopped.set()


def test_kill9_keeps_acked_records(broker):
    topics = {unique_name("crash-a"): 3, unique_name("crash-b"): 2}
    create_topics(broker.bootstrap, topics)

    bg = BackgroundProducer(broker.bootstrap, topics)
    bg.start()
    try:
        wait_for(lambda: bg.acked_count() >= 5000 or bg.exc, 60, "5,000 acked records")
        assert bg.exc is None, bg.exc
        # Kill while the producer is still producing.
        assert bg.is_alive() and not bg.stop_requested.is_set()
        produced_before_kill = bg.produced
        broker.handle.kill9()
        # The producer keeps going for a moment against a dead broker.
        wait_for(lambda: bg.produced > produced_before_kill + 100, 30, "producer still producing")
    finally:
        bg.stop_requested.set()
    assert bg.stopped.wait(MESSAGE_TIMEOUT_MS / 1000 + 30), "background producer did not stop"
    bg.join(5)
    assert bg.exc is None, bg.exc
    acked = list(bg.acked)
    assert len(acked) >= 5000

    broker.handle.restart()

    tps = [(t, p) for t, n in topics.items() for p in range(n)]
    for t, n in topics.items():
        assert topic_partitions(broker.bootstrap, t) == list(range(n)), f"{t} after restart"
    after_restart = consume_all(broker.bootstrap, tps, expect=len(acked), timeout=120)
    assert_gsn_offsets(after_restart, "records after restart")
    # Every acknowledged record is there, at the same offset, unchanged.
    # (Records that were written but never acked may also be there.)
    stored = {(r.topic, r.partition, r.offset): (r.key, r.value) for r in after_restart}
    lost = [r for r in acked if (r.topic, r.partition, r.offset) not in stored]
    assert not lost, f"{len(lost)} of {len(acked)} acked records lost after kill -9, e.g. {lost[:3]}"
    changed = [r for r in acked if stored[(r.topic, r.partition, r.offset)] != (r.key, r.value)]
    assert not changed, f"{len(changed)} acked records changed after kill -9, e.g. {changed[:3]}"

    # New writes after the restart get offsets above everything from before.
    print(f"kill -9: {len(acked)} acked, {bg.failed} failed, {bg.produced} produced; "
          f"{len(after_restart)} stored after restart")
    old_max = max(r.offset for r in after_restart)
    new = produce(broker.bootstrap, [Out(t, p, None, f"post-{t}-{p}-{i}".encode())
                                     for i in range(50) for t, p in tps])
    assert min(r.offset for r in new) > old_max, (
        f"offset {min(r.offset for r in new)} issued after restart is not above "
        f"{old_max}, the highest offset stored before the crash")
    everything = consume_all(broker.bootstrap, tps, expect=len(after_restart) + len(new))
    assert_gsn_offsets(everything, "records after post-restart produce")
    assert_same_records(after_restart + new, everything, "old + new after restart")


def test_clean_shutdown_and_restart(broker):
    topic = unique_name("sigterm")
    create_topics(broker.bootstrap, {topic: 2})
    before = produce(broker.bootstrap, [Out(topic, i % 2, None, f"v{i}".encode()) for i in range(1000)])
    t0 = time.monotonic()
    rc = broker.handle.terminate()
    assert rc == 0, f"broker exited with {rc} on SIGTERM"
    assert time.monotonic() - t0 < 15
    broker.handle.restart()
    got = consume_all(broker.bootstrap, [(topic, 0), (topic, 1)], expect=1000)
    assert_same_records(before, got, "after SIGTERM + restart")
    after = produce(broker.bootstrap, [Out(topic, 0, None, b"after")])
    assert after[0].offset > max(r.offset for r in before)


def test_repeated_crashes(broker):
    """Several kill -9 / restart cycles with writes in between: offsets keep
    growing, nothing acked disappears."""
    topic = unique_name("crashloop")
    all_acked: list[Rec] = []
    for cycle in range(4):
        batch = produce(broker.bootstrap, [Out(topic, None, f"c{cycle}".encode(),
                                               f"cycle{cycle}-{i}".encode()) for i in range(300)])
        if all_acked:
            assert min(r.offset for r in batch) > max(r.offset for r in all_acked), f"cycle {cycle}"
        all_acked += batch
        broker.handle.kill9()
        broker.handle.restart()
    tps = {(r.topic, r.partition) for r in all_acked}
    got = consume_all(broker.bootstrap, tps, expect=len(all_acked))
    assert_same_records(all_acked, got, "after 4 crash cycles")
    assert_gsn_offsets(got)
    assert len(by_partition(got)) == len(tps)
