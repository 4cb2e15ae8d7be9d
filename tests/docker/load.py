"""Produce/consume load for the fault tests: one producer thread and one consumer thread
(confluent-kafka) on one topic, recording every acknowledgement and every record read with
its monotonic time, for checker.py."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from checker import Ack, Read

# acks=all, retries (librdkafka's default is effectively unlimited within
# message.timeout.ms), idempotence off. One request in flight per connection keeps the
# per-partition order through plain retries (not across a leader change: the old leader's
# connection may still retry a batch after later ones went to the new leader; the checker
# counts that as "reord", allowed). Short request timeouts so a paused or cut-off
# leader is given up on quickly; a long message timeout so records wait out a failover
# instead of failing.
# librdkafka's log lines (connection refused while a broker is down, ...) go to Python
# logging, which pytest shows only for failed tests.
LOGGER = logging.getLogger("rdkafka")

PRODUCER_CONF = {
    "logger": LOGGER,
    "acks": "all",
    "enable.idempotence": False,
    "max.in.flight.requests.per.connection": 1,
    "linger.ms": 5,
    "message.timeout.ms": 180000,
    "request.timeout.ms": 5000,
    "retry.backoff.ms": 100,
    "retry.backoff.max.ms": 1000,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
    "socket.connection.setup.timeout.ms": 5000,
    "topic.metadata.refresh.interval.ms": 5000,
    "queue.buffering.max.messages": 100000,
}

CONSUMER_CONF = {
    "logger": LOGGER,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # Out of range (e.g. after a truncation) -> back to the start: redeliveries, never a skip.
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 200,
    "socket.timeout.ms": 10000,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
    "socket.connection.setup.timeout.ms": 5000,
    "topic.metadata.refresh.interval.ms": 5000,
}


class ProducerLoad(threading.Thread):
    """Sends `rate` records/s round-robin over the partitions until stop() is called,
    then flushes. Values are b"<name>:<seq>"."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, name: str = "p0",
                 rate: float = 400.0):
        super().__init__(daemon=True, name=f"producer-{name}")
        self.topic, self.partitions, self.name, self.rate = topic, partitions, name, rate
        self.producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONF})
        self.acks: list[Ack] = []
        self.errors: list[str] = []
        self.sent = 0
        self._halt = threading.Event()
        self.unflushed = None
        self.exception: BaseException | None = None

    def _delivered(self, seq: int, sent: float):
        def cb(err, msg):
            if err is not None:
                self.errors.append(f"{seq}: {err}")
                return
            self.acks.append(Ack(self.name, seq, msg.topic(), msg.partition(), msg.offset(),
                                 msg.value(), at=time.monotonic(), sent=sent))
        return cb

    def run(self):
        try:
            start = time.monotonic()
            while not self._halt.is_set():
                # Paced: the number of records due by now, not a fixed sleep.
                due = int((time.monotonic() - start) * self.rate) + 1
                while self.sent < due and not self._halt.is_set():
                    seq = self.sent
                    try:
                        self.producer.produce(self.topic, f"{self.name}:{seq}".encode(),
                                              partition=seq % self.partitions,
                                              on_delivery=self._delivered(seq,
                                                                          time.monotonic()))
                    except BufferError:
                        self.producer.poll(0.1)
                        continue
                    self.sent += 1
                self.producer.poll(0.01)
            deadline = time.monotonic() + 200
            while len(self.producer) > 0 and time.monotonic() < deadline:
                self.producer.flush(1.0)
            self.unflushed = len(self.producer)
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.exception = e

    def stop(self, timeout: float = 240) -> None:
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"producer did not finish within {timeout}s")
        if self.exception:
            raise self.exception

    def acks_since(self, t: float) -> dict[int, int]:
        """Acknowledgements after monotonic time t, per partition."""
        counts = {p: 0 for p in range(self.partitions)}
        for a in list(self.acks):
            if a.at > t:
                counts[a.partition] += 1
        return counts


class ConsumerLoad(threading.Thread):
    """Reads every partition of the topic from the beginning (assign, no group) until
    stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        super().__init__(daemon=True, name="consumer")
        self.topic, self.partitions = topic, partitions
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"faults-{topic}", **CONSUMER_CONF})
        self.reads: list[Read] = []
        self.errors: list[str] = []
        self.last: dict[int, int] = {}
        self._halt = threading.Event()
        self.exception: BaseException | None = None

    def run(self):
        try:
            self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                                  for p in range(self.partitions)])
            while not self._halt.is_set():
                for m in self.consumer.consume(500, timeout=0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.errors.append(str(err))
                        continue
                    self.reads.append(Read(m.topic(), m.partition(), m.offset(), m.value(),
                                           time.monotonic()))
                    self.last[m.partition()] = max(self.last.get(m.partition(), -1),
                                                   m.offset())
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.exception = e
        finally:
            self.consumer.close()

    def caught_up(self, targets: dict[int, int]) -> bool:
        """True once every partition has been read at least up to targets[p]."""
        return all(self.last.get(p, -1) >= off for p, off in targets.items())

    def stop(self, timeout: float = 30) -> None:
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"consumer did not finish within {timeout}s")
        if self.exception:
            raise self.exception
