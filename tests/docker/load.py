"""Produce/consume load for the fault tests: producer threads and a consumer thread
(confluent-kafka), recording every acknowledgement and every record read with its monotonic
time, for checker.py; the ordered reader (the ordered-reader CLI as a process) and a scraper
of the brokers' gsn_frontier metric."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
import urllib.request

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)

from checker import Ack, Emitted, Read

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
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # An offset reset is a failure (a consumer that jumps skips or replays records): with
    # "error" librdkafka reports every reset it would make (out of range, log truncation
    # detected by KIP-320 validation) as an _AUTO_OFFSET_RESET error instead of making it.
    # The consumer counts it and seeks back to where it was to read on.
    "auto.offset.reset": "error",
    "fetch.wait.max.ms": 200,
    "socket.timeout.ms": 10000,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
    "socket.connection.setup.timeout.ms": 5000,
    "topic.metadata.refresh.interval.ms": 5000,
}


# Client-level errors a fault is expected to cause (a broker down or cut off: its
# connection fails or times out, and during a full restart all of them): counted, allowed.
# Any other error a client reports fails the test.
TRANSIENT_ERRORS = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
                    KafkaError._TIMED_OUT}


class ProducerLoad(threading.Thread):
    """Sends `rate` records/s round-robin over `targets` ((topic, partition) pairs, starting
    at `first`) until stop() is called, then flushes. Values are b"<name>:<seq>". Its own
    Producer instance; `idempotent` turns on enable.idempotence (acks=all, up to 5 requests
    in flight, retries keep order and never duplicate)."""

    def __init__(self, bootstrap: str, targets: list[tuple[str, int]], name: str = "p0",
                 rate: float = 400.0, first: int = 0, idempotent: bool = False):
        super().__init__(daemon=True, name=f"producer-{name}")
        self.targets, self.name, self.rate, self.first = targets, name, rate, first
        conf = dict(PRODUCER_CONF)
        if idempotent:
            conf.update({"enable.idempotence": True,
                         "max.in.flight.requests.per.connection": 5})
        self.producer = Producer({"bootstrap.servers": bootstrap, "error_cb": self._error,
                                  **conf})
        self.acks: list[Ack] = []
        self.errors: list[str] = []
        self.transient: list[str] = []
        self.sent = 0
        self._halt = threading.Event()
        self.unflushed = None
        self.exception: BaseException | None = None

    def _error(self, err: KafkaError) -> None:
        if err.code() in TRANSIENT_ERRORS and not err.fatal():
            self.transient.append(str(err))
        else:
            self.errors.append(f"client error: {err}")

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
                    topic, partition = self.targets[(self.first + seq) % len(self.targets)]
                    try:
                        self.producer.produce(topic, f"{self.name}:{seq}".encode(),
                                              partition=partition,
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
            assert self.unflushed == 0, f"{self.name}: {self.unflushed} records never flushed"
        except BaseException as e:  # noqa: BLE001 - re-raised by stop() in the test
            self.exception = e

    def stop(self, timeout: float = 240) -> None:
        """Stops sending, waits for the flush; raises whatever failed in the thread."""
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"producer {self.name} did not finish within {timeout}s")
        if self.exception:
            raise AssertionError(f"producer {self.name} failed: {self.exception!r}") \
                from self.exception

    def acks_since(self, t: float) -> dict[tuple[str, int], int]:
        """Acknowledgements after monotonic time t, per (topic, partition)."""
        counts = {tp: 0 for tp in self.targets}
        for a in list(self.acks):
            if a.at > t:
                counts[(a.topic, a.partition)] += 1
        return counts


def fence(bootstrap: str, targets: list[tuple[str, int]]) -> list[Ack]:
    """One record per partition, each acknowledged before the next is sent: afterwards
    every partition's position lies above every record acknowledged before the call, so a
    reader merging by position can print all of them even without the brokers' frontier
    (read_uncommitted). Values are b"fence:<i>"."""
    p = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONF})
    out: list[Ack] = []
    errors: list[str] = []
    for i, (topic, partition) in enumerate(targets):
        sent = time.monotonic()

        def cb(err, msg, i=i, sent=sent):
            if err is not None:
                errors.append(str(err))
            else:
                out.append(Ack("fence", i, msg.topic(), msg.partition(), msg.offset(),
                               msg.value(), at=time.monotonic(), sent=sent))

        p.produce(topic, f"fence:{i}".encode(), partition=partition, on_delivery=cb)
        left = p.flush(60)
        assert left == 0 and not errors, f"fence record {i} not acknowledged: {errors}"
    return out


class OffsetResetLog(logging.Handler):
    """Catches librdkafka's own "offset reset" log lines (it logs a reset caused by an
    error at WARNING, facility OFFSET): a second net under auto.offset.reset=error, so a
    reset is seen even if the policy is changed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "offset reset" in msg.lower():
            self.lines.append(msg)


class ConsumerLoad(threading.Thread):
    """Reads every partition of the topics from the beginning (assign, no group) until
    stopped. Errors, offset resets and stalls are the test's to assert: `errors` (any
    error but EOF and the transient connection errors), `resets` (offset resets, each a
    failure), `transient` (connection errors, allowed)."""

    def __init__(self, bootstrap: str, topics: dict[str, int] | str, partitions: int = 0):
        super().__init__(daemon=True, name="consumer")
        if isinstance(topics, str):
            topics = {topics: partitions}
        self.topics = topics
        self.reset_log = OffsetResetLog()
        logger = logging.getLogger(f"rdkafka.consumer.{id(self)}")
        logger.addHandler(self.reset_log)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "logger": logger,
                                  "error_cb": self._client_error,
                                  "group.id": f"faults-{next(iter(topics))}", **CONSUMER_CONF})
        self.reads: list[Read] = []
        self.errors: list[str] = []
        self.resets: list[str] = []
        self.transient: list[str] = []
        self.last: dict[tuple[str, int], int] = {}
        self._halt = threading.Event()
        self.exception: BaseException | None = None

    def _client_error(self, err: KafkaError) -> None:
        if err.code() in TRANSIENT_ERRORS:
            self.transient.append(str(err))
        else:
            self.errors.append(f"client error: {err}")

    def _partition_error(self, m) -> None:
        err = m.error()
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.code() == KafkaError._AUTO_OFFSET_RESET:
            tp = (m.topic(), m.partition())
            self.resets.append(f"{tp}: {err.str()} (last read {self.last.get(tp)})")
            # Read on from where this consumer was, so the rest of the run is checked too:
            # librdkafka stopped fetching the partition, and a seek is refused in that state
            # (_STATE), so the partition is assigned again at that offset.
            resume = self.last.get(tp)
            at = TopicPartition(m.topic(), m.partition(),
                                OFFSET_BEGINNING if resume is None else resume + 1)
            try:
                self.consumer.incremental_unassign([TopicPartition(m.topic(), m.partition())])
                self.consumer.incremental_assign([at])
            except KafkaException as e:
                self.errors.append(f"{tp}: cannot resume after the reset: {e}")
            return
        if err.code() in TRANSIENT_ERRORS:
            self.transient.append(str(err))
            return
        self.errors.append(f"{m.topic()}/{m.partition()}: {err}")

    def run(self):
        try:
            self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                                  for t, n in self.topics.items() for p in range(n)])
            while not self._halt.is_set():
                for m in self.consumer.consume(500, timeout=0.2):
                    if m.error() is not None:
                        self._partition_error(m)
                        continue
                    self.reads.append(Read(m.topic(), m.partition(), m.offset(), m.value(),
                                           time.monotonic()))
                    tp = (m.topic(), m.partition())
                    self.last[tp] = max(self.last.get(tp, -1), m.offset())
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            self.exception = e
        finally:
            self.consumer.close()

    def all_resets(self) -> list[str]:
        return self.resets + [f"logged: {line}" for line in self.reset_log.lines]

    def caught_up(self, targets: dict[tuple[str, int], int]) -> bool:
        """True once every partition has been read at least up to targets[(topic, p)]."""
        return all(self.last.get(tp, -1) >= off for tp, off in targets.items())

    def stop(self, timeout: float = 30) -> None:
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"consumer did not finish within {timeout}s")
        if self.exception:
            raise self.exception


class OrderedReader:
    """The ordered-reader CLI as a process reading `topics` with --check: its stdout lines
    (offset topic partition value) are timestamped as they arrive; its LATE/DUP/RESET
    reports and the last of its other stderr lines are kept."""

    FORMAT = "%o %t %p %s\\n"

    def __init__(self, binary: str, bootstrap: str, topics: list[str],
                 extra: list[str] = ()):
        cmd = [binary, "-b", bootstrap, "--check", "-f", self.FORMAT, *extra]
        for t in topics:
            cmd += ["-t", t]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.emitted: list[Emitted] = []
        self.reports: list[str] = []
        self.stderr_tail: list[str] = []
        self.bad_lines: list[str] = []
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            now = time.monotonic()
            try:
                o, t, p, v = raw.rstrip(b"\n").split(b" ", 3)
                self.emitted.append(Emitted(t.decode(), int(p), int(o), v, at=now))
            except ValueError:
                self.bad_lines.append(raw.decode(errors="replace"))

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(("LATE", "DUP", "RESET")):
                self.reports.append(line)
            self.stderr_tail = (self.stderr_tail + [line])[-40:]

    def printed(self) -> set[bytes]:
        return {e.value for e in list(self.emitted)}

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the reader prints its summary and exits 3 if --check saw a violation);
        returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        for t in self._threads:
            t.join(10)
        return rc


class FrontierScraper(threading.Thread):
    """Reads every broker's /metrics every `interval` s and keeps (time, max gsn_frontier
    over the brokers that answered); brokers without the metric give no samples."""

    def __init__(self, ports: list[int], interval: float = 0.1):
        super().__init__(daemon=True, name="frontier-scraper")
        self.ports, self.interval = ports, interval
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            values = []
            for port in self.ports:
                try:
                    with urllib.request.urlopen(f"http://localhost:{port}/metrics",
                                                timeout=0.5) as r:
                        for line in r.read().decode().splitlines():
                            parts = line.split()
                            if len(parts) == 2 and parts[0] == "gsn_frontier":
                                values.append(float(parts[1]))
                except OSError:
                    pass  # a broker down or paused: the others still count
            if values:
                self.samples.append((time.monotonic(), max(values)))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(5)
