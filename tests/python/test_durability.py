"""What `--flush-policy` promises on a power cut, which kill -9 cannot test: a killed
process leaves its writes in the kernel's page cache, so data that was never fsynced
survives it. Here the broker's data directory is on syncfs (syncfs.py), a FUSE filesystem
that keeps unsynced writes in its own memory; SIGKILL of the filesystem process (then of
the broker) is the power cut, and the next mount shows only what was fsynced.

* `always` (the default): every record acknowledged with acks=all is there after the cut,
  at its offset (a single broker acknowledges acks=all after its fsync).
* `interval` (fsync every --flush-interval-ms, here 60 s): acknowledgements come before the
  fsync, so the cut loses acknowledged records (or the broker cannot come back). This is
  also the proof that the test sees a missing fsync.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from brokerproc import BrokerExited, BrokerProcess, broker_bin
from kafkatest import CheckedThread, Rec, consume_all, create_topics, unique_name, wait_for

SYNCFS = Path(__file__).with_name("syncfs.py")
PARTITIONS = 3


class SyncFs:
    """One syncfs mount over `backing`; power_cut() kills it, mount() brings it back."""

    def __init__(self, backing: Path, mountpoint: Path, log: Path):
        self.backing, self.mountpoint, self.log = backing, mountpoint, log
        self.proc: subprocess.Popen | None = None
        self.fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
        if self.fusermount is None or not os.path.exists("/dev/fuse"):
            pytest.fail("syncfs needs /dev/fuse and fusermount3 (apt-get install fuse3)",
                        pytrace=False)
        try:
            import mfusepy  # noqa: F401
        except ImportError:
            pytest.fail("syncfs needs the Python package mfusepy (pip install mfusepy; "
                        ".ci/run installs it)", pytrace=False)
        backing.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(SYNCFS), str(self.backing),
                                          str(self.mountpoint)], stdout=log, stderr=log,
                                         start_new_session=True)
        wait_for(lambda: os.path.ismount(self.mountpoint) or self.proc.poll() is not None, 20,
                 "syncfs to mount")
        assert self.proc.poll() is None, f"syncfs exited: {self.log.read_text()[-2000:]}"

    def power_cut(self) -> None:
        """Everything not fsynced is gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        subprocess.run([self.fusermount, "-u", "-z", str(self.mountpoint)],
                       capture_output=True, timeout=30)

    def close(self) -> None:
        self.power_cut()


@pytest.fixture
def syncfs(tmp_path):
    fs = SyncFs(tmp_path / "backing", tmp_path / "mnt", tmp_path / "syncfs.log")
    fs.mount()
    yield fs
    fs.close()


class AckedLoad(CheckedThread):
    """acks=all records to every partition until stopped; keeps the acknowledged ones.
    Deliveries that fail once the broker is gone are expected and only counted."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(name="acked load")
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "linger.ms": 2, "message.timeout.ms": 5000,
                                  "enable.idempotence": False})
        self.lock = threading.Lock()
        self.acked: list[Rec] = []
        self.failed = 0
        self.stop = threading.Event()

    def _delivered(self, err, msg):
        with self.lock:
            if err is None:
                self.acked.append(Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                      msg.value()))
            else:
                self.failed += 1

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def work(self):
        i = 0
        while not self.stop.is_set():
            try:
                self.producer.produce(self.topic, f"dur-{i}".encode(), partition=i % PARTITIONS,
                                      on_delivery=self._delivered)
                i += 1
            except BufferError:
                pass
            self.producer.poll(0.001)
        left = self.producer.flush(30)
        assert left == 0, f"{left} records neither acknowledged nor failed"


def produce_then_cut(fs: SyncFs, broker: BrokerProcess, topic: str, records: int) -> list[Rec]:
    """Produces until `records` are acknowledged, cuts the power while still producing,
    returns what was acknowledged."""
    load = AckedLoad(broker.bootstrap, topic)
    load.start()
    try:
        wait_for(lambda: load.count() >= records or load.exc, 120, f"{records} acks")
        fs.power_cut()   # the page cache goes first: no acknowledgement after this point
        broker.kill9()   # ...then the process (it cannot write anything any more)
    finally:
        load.stop.set()
        load.join_checked(60)
    return list(load.acked)


def start_broker(fs: SyncFs, tmp_path: Path, **flags) -> BrokerProcess:
    return BrokerProcess.start(broker_bin(), fs.mountpoint / "data", tmp_path / "broker.log",
                               segment_bytes=1 << 20, **flags)


def lost_after_restart(fs, broker, topic, acked) -> list[Rec]:
    fs.mount()
    broker.restart()
    got = consume_all(broker.bootstrap, [(topic, p) for p in range(PARTITIONS)], timeout=60)
    stored = {(r.topic, r.partition, r.offset): r.value for r in got}
    return [r for r in acked if stored.get((r.topic, r.partition, r.offset)) != r.value]


def test_always_keeps_every_acknowledged_record_through_a_power_cut(syncfs, tmp_path):
    broker = start_broker(syncfs, tmp_path)
    try:
        topic = unique_name("durable")
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        acked = produce_then_cut(syncfs, broker, topic, 3000)
        lost = lost_after_restart(syncfs, broker, topic, acked)
        assert not lost, (f"{len(lost)} of {len(acked)} acknowledged records lost by a power "
                          f"cut under --flush-policy always, e.g. {lost[:3]}")
        print(f"\npower cut, flush-policy always: {len(acked)} acknowledged, 0 lost")
    finally:
        broker.cleanup()


def test_interval_loses_acknowledged_records_on_a_power_cut(syncfs, tmp_path):
    broker = start_broker(syncfs, tmp_path, flush_policy="interval", flush_interval_ms=60000)
    try:
        topic = unique_name("volatile")
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        acked = produce_then_cut(syncfs, broker, topic, 3000)
        try:
            lost = lost_after_restart(syncfs, broker, topic, acked)
        except (BrokerExited, TimeoutError, AssertionError) as e:
            print(f"\npower cut, flush-policy interval: the broker did not come back: {e}")
            return
        assert lost, ("no acknowledged record was lost although nothing was fsynced: the "
                      "power cut did not drop unsynced writes, so the `always` test proves "
                      "nothing")
        print(f"\npower cut, flush-policy interval: {len(acked)} acknowledged, "
              f"{len(lost)} lost")
    finally:
        broker.cleanup()
