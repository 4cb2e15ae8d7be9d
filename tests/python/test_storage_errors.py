"""Storage errors under a replica, on the 3-broker loopback cluster (`test_cluster.py`).

Each test breaks the storage of one broker's partition replicas for real while an acks=all
producer runs, then checks what Kafka does for an offline log directory:

* the broken replica answers Produce, Fetch and ListOffsets with KAFKA_STORAGE_ERROR at
  once (within a second, not after a timeout);
* it stops leading: another replica is elected and producers carry on there (librdkafka
  retries, so no delivery fails);
* Metadata from every broker lists it in `offline_replicas` and not in the ISR, and the
  preferred-leader rebalance does not give it the leadership back;
* DescribeLogDirs at that broker lists the replica's directory with KAFKA_STORAGE_ERROR,
  `gsn_storage_errors_total` counts the error, `gsn_offline_replicas` the replica, and
  its log says what failed;
* every acknowledged record is read back, at its offset, from the remaining replicas.

How the errors are made, all real system-call failures:

* the partition directory removed (`rm -rf`) while the broker writes into it;
* ENOSPC: the broker runs in its own mount namespace (`unshare -m`) with a 32 MiB tmpfs as
  its `topics/` directory, and the test fills that file system to the last byte;
* EIO on pwrite, fdatasync or pread: an LD_PRELOAD shim (compiled here from the C source
  below) makes those calls fail with EIO for files under `/topics/` while a control file
  says so. The device mapper (`dm-error`) is not available in this kernel.

The tmpfs test needs root (mount); run as another user it fails saying so.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import kproto as kp
from test_cluster import Cluster, Load, check, consume, wait
from test_ring import Ring

ERR_NONE = 0
ERR_STORAGE = 56  # KAFKA_STORAGE_ERROR
FAST_S = 1.0  # "at once": an answer within this, not after a timeout


# ---- the fault shim ---------------------------------------------------------------------

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* Control file (GSN_FAULT_CTL): lines "<call> <errno> <path substring>", e.g.
   "pwrite 5 /topics/". A listed call on a file whose path contains the substring fails
   with that errno. The file is re-read at most every 20 ms. */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char rules[4096];
static long long checked_ns = -1;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void reload(void) {
    const char *path = getenv("GSN_FAULT_CTL");
    rules[0] = 0;
    if (!path) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, rules, sizeof(rules) - 1);
    close(fd);
    rules[n > 0 ? n : 0] = 0;
}

/* The errno to fail `call` on `fd` with, or 0. */
static int fault(const char *call, int fd) {
    char local[sizeof(rules)];
    pthread_mutex_lock(&lock);
    long long t = now_ns();
    if (checked_ns < 0 || t - checked_ns > 20000000LL) {
        reload();
        checked_ns = t;
    }
    memcpy(local, rules, sizeof(rules));
    pthread_mutex_unlock(&lock);
    if (!local[0]) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, target, sizeof(target) - 1);
    if (len <= 0) return 0;
    target[len] = 0;
    char *save = NULL;
    for (char *line = strtok_r(local, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[32], sub[1024];
        int code;
        if (sscanf(line, "%31s %d %1023s", name, &code, sub) == 3
            && strcmp(name, call) == 0 && strstr(target, sub))
            return code;
    }
    return 0;
}

#define NEXT(name) static __typeof__(name) *next; if (!next) next = dlsym(RTLD_NEXT, #name)

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    NEXT(pwrite64);
    int e = fault("pwrite", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buf, n, off);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    NEXT(pwrite);
    int e = fault("pwrite", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buf, n, off);
}
ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
    NEXT(pread64);
    int e = fault("pread", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buf, n, off);
}
ssize_t pread(int fd, void *buf, size_t n, off_t off) {
    NEXT(pread);
    int e = fault("pread", fd);
    if (e) { errno = e; return -1; }
    return next(fd, buf, n, off);
}
int fdatasync(int fd) {
    NEXT(fdatasync);
    int e = fault("fdatasync", fd);
    if (e) { errno = e; return -1; }
    return next(fd);
}
int fsync(int fd) {
    NEXT(fsync);
    int e = fault("fdatasync", fd);
    if (e) { errno = e; return -1; }
    return next(fd);
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """The compiled fault shim (a shared object for LD_PRELOAD)."""
    d = tmp_path_factory.mktemp("shim")
    src, lib = d / "fault.c", d / "libgsnfault.so"
    src.write_text(SHIM_C)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl",
                    "-lpthread"], check=True)
    return lib


class Faults:
    """The control file one broker's shim reads."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def set(self, call: str, code: int, where: str = "/topics/"):
        self.path.write_text(f"{call} {code} {where}\n")
        time.sleep(0.1)  # the shim re-reads the file every 20 ms

    def clear(self):
        self.path.write_text("")
        time.sleep(0.1)


# ---- helpers ------------------------------------------------------------------------------

def broker_root(broker) -> Path:
    """The broker's view of the file system (its own mount namespace, if it has one)."""
    return Path(f"/proc/{broker.pid}/root")


def partition_dir(broker, topic, partition) -> Path:
    """The replica's directory as the broker names it."""
    topics = broker.data_dir / "topics"
    found = list((broker_root(broker) / str(topics).lstrip("/")).glob(f"{topic}-{partition}.*"))
    assert len(found) == 1, found
    return topics / found[0].name


def timed(conn_port, request, parse):
    """Sends one request and returns (parsed answer, seconds it took)."""
    t0 = time.monotonic()
    with kp.Conn(conn_port, timeout=10) as c:
        assert c.send(request)
        payload = c.recv_frame()
    assert payload is not None, "the broker closed the connection"
    return parse(payload), time.monotonic() - t0


def parse_list_offsets_v1(payload):
    r = kp.Reader(payload)
    r.i32()  # correlation id
    out = []
    for _ in range(r.i32()):
        r.take(r.i16())
        for _ in range(r.i32()):
            part, err = r.i32(), r.i16()
            r.take(16)  # timestamp, offset
            out.append((part, err))
    return out


def produce_error(broker, topic, partition):
    batch = kp.record_batch([b"probe"], int(time.time() * 1000))
    (_, ((_, _, err, _),)), took = timed(broker.port, kp.produce_v3(1, topic, partition, batch),
                                         kp.parse_produce_v3)
    return err, took


def assert_answers_storage_error(broker, topic, partition):
    """Produce, Fetch and ListOffsets at the broken replica: KAFKA_STORAGE_ERROR at once."""
    err, took = produce_error(broker, topic, partition)
    assert (err, took < FAST_S) == (ERR_STORAGE, True), f"produce: error {err} after {took:.2f} s"
    (_, ((_, _, err, _, _),)), took = timed(broker.port, kp.fetch_v4(2, topic, partition, 0),
                                            kp.parse_fetch_v4)
    assert (err, took < FAST_S) == (ERR_STORAGE, True), f"fetch: error {err} after {took:.2f} s"
    ((_, err),), took = timed(broker.port, kp.list_offsets_v1(3, topic, partition, -1),
                              parse_list_offsets_v1)
    assert (err, took < FAST_S) == (ERR_STORAGE, True), f"list offsets: {err} after {took:.2f} s"


def metadata_partitions(broker, topic):
    """kafka-python's view of Metadata at one broker: partition -> dict with leader_id,
    isr_nodes, offline_replicas (Metadata v5+)."""
    from kafka.admin import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    try:
        (t,) = a.describe_topics([topic])
        return {p["partition_index"]: p for p in t["partitions"]}
    finally:
        a.close()


def offline_everywhere(cluster, topic, partition, node):
    """Every live broker's Metadata lists `node` offline for the partition, outside the ISR,
    and a leader other than `node`."""
    for b in cluster.alive():
        p = metadata_partitions(b, topic)[partition]
        if node not in p["offline_replicas"] or node in p["isr_nodes"]:
            return False
        if p["leader_id"] in (-1, node):
            return False
    return True


def log_dirs(broker, node):
    from kafka.admin import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    try:
        (answer,) = a.describe_log_dirs(brokers=[node])
        return answer["log_dirs"]
    finally:
        a.close()


def metric(broker, name):
    """Sum of a metric's samples at one broker."""
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics",
                                timeout=2) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def leader_of(cluster, topic, partition, ask):
    """The partition leader as broker `ask` reports it, or None."""
    l = cluster.leader(topic, partition, ask)
    return None if l in (None, -1) else l


class Producing(Load):
    """The cluster tests' load, made to survive a full local queue (partitions stall while a
    replica fails over) and to hand any exception of its thread to the test."""

    def __init__(self, bootstrap, topic, partitions):
        super().__init__(bootstrap, topic, partitions)
        self.failure = None

    def run(self):
        try:
            while not self.stop.is_set():
                try:
                    self.producer.produce(self.topic, b"v%d" % self.sent,
                                          partition=self.sent % self.partitions,
                                          on_delivery=self.on_delivery)
                except BufferError:
                    self.producer.poll(0.1)
                    continue
                self.sent += 1
                if self.sent % 50 == 0:
                    self.producer.poll(0)
                    time.sleep(0.005)
            left = self.producer.flush(90)
            if left:
                self.failure = f"{left} records still undelivered after flush(90)"
        except Exception as e:  # reaches the test through `failure`
            self.failure = repr(e)


def acks_on(load, partition, since):
    return sum(1 for (p, _, _), t in zip(load.acked, load.ack_times) if p == partition and t >= since)


def check_offline(cluster, topic, partition, node, broken_dir, t0, *, expect_log):
    """Everything a broken replica must show, once it is offline (see the module doc).
    Returns the new leader and the seconds from the fault (t0) until a survivor named it."""
    b = cluster.brokers[node]
    survivor = next(x for n, x in cluster.brokers.items() if n != node and x.alive())
    new_leader = wait(lambda: (lambda l: l if l not in (None, node) else None)(
        leader_of(cluster, topic, partition, survivor)), "another replica to lead", timeout=20)
    took = time.monotonic() - t0
    assert_answers_storage_error(b, topic, partition)
    wait(lambda: offline_everywhere(cluster, topic, partition, node),
         "every broker to list the replica offline and out of the ISR", timeout=20)
    dirs = log_dirs(b, node)
    bad = [d for d in dirs if d["error_code"] == ERR_STORAGE]
    assert any(Path(d["log_dir"]) == broken_dir for d in bad), dirs
    healthy = [d for d in dirs if d["error_code"] == ERR_NONE]
    assert len(healthy) == 1 and Path(healthy[0]["log_dir"]) == b.data_dir, dirs
    listed = [p["partition_index"] for d in healthy for t in d["topics"] if t["name"] == topic
              for p in t["partitions"]]
    assert partition not in listed, "the offline replica is still listed as healthy"
    assert metric(b, "gsn_storage_errors_total") >= 1
    assert metric(b, "gsn_offline_replicas") >= 1
    line = b.first_log_line_with("partition replica offline")
    assert line is not None and expect_log in line, line
    return new_leader, took


def not_taken_back(cluster, topic, partition, node):
    """The preferred-leader rebalance (every 2 s here) leaves the leadership elsewhere."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for b in cluster.alive():
            assert cluster.leader(topic, partition, b) != node, "the offline replica leads again"
        time.sleep(0.5)


def finish(cluster, load, topic, parts):
    load.stop.set()
    load.join(120)
    assert not load.is_alive(), "the producer did not finish"
    assert load.failure is None, load.failure
    assert not load.errors, load.errors[:5]
    consumed = consume(cluster.bootstrap(), topic, parts, len(load.acked))
    check(load.acked, consumed)


@pytest.fixture
def ring(tmp_path):
    r = Ring(tmp_path, switches=2)
    yield r
    r.close()


def start_cluster(tmp_path, ring, per_broker=None):
    return Cluster(tmp_path, ring, per_broker=per_broker)


@pytest.fixture
def clusters():
    """Closes every cluster a test started and fails on a broker panic."""
    started = []
    yield started
    for c in started:
        c.close()
        for i, b in c.brokers.items():
            panic = b.first_log_line_with("panicked at")
            assert panic is None, f"broker {i} panicked: {panic}"


def led_by(cluster, topic, parts, node):
    return next(p for p in range(parts) if cluster.leader(topic, p) == node)


# ---- the tests ------------------------------------------------------------------------------

def test_removed_partition_directory_takes_the_replica_offline(tmp_path, ring, clusters):
    """The leader's partition directory is deleted while it writes (the files stay open:
    without a check, writes go on into unlinked files and nothing notices)."""
    cluster = start_cluster(tmp_path, ring)
    clusters.append(cluster)
    topic, parts = "rmdir", 3
    cluster.create(topic, parts)
    load = Producing(cluster.bootstrap(), topic, parts)
    load.start()
    wait(lambda: len(load.acked) >= 300, "300 acks before the fault")
    victim = cluster.leader(topic, 0)
    d = partition_dir(cluster.brokers[victim], topic, 0)
    t0 = time.monotonic()
    shutil.rmtree(d)
    new_leader, took = check_offline(cluster, topic, 0, victim, d, t0,
                                     expect_log="No such file or directory")
    wait(lambda: acks_on(load, 0, t0) >= 200, "200 acks on partition 0 after the fault")
    print(f"\nrmdir: node {victim} -> {new_leader} after {took:.2f} s")
    # The broker's other replicas are untouched and stay in sync.
    for p in range(1, parts):
        wait(lambda p=p: victim in metadata_partitions(cluster.brokers[victim], topic)[p]["isr_nodes"],
             f"node {victim} in the ISR of partition {p}")
        wait(lambda p=p: acks_on(load, p, t0) >= 100, f"acks on partition {p}")
    not_taken_back(cluster, topic, 0, victim)
    finish(cluster, load, topic, parts)


def test_disk_full_takes_the_replicas_offline(tmp_path, ring, clusters):
    """ENOSPC for real: broker 3's topics/ is a 32 MiB tmpfs in its own mount namespace,
    filled to the last byte while it leads and follows."""
    assert os.geteuid() == 0, "this test mounts a tmpfs (unshare -m): run it as root"
    node = 3
    data = tmp_path / f"broker-{node}"
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               'mkdir -p "$0/topics" && mount -t tmpfs -o size=32m gsn-full "$0/topics" '
               '&& exec "$@"', str(data)]
    cluster = start_cluster(tmp_path, ring, per_broker={node: {"wrapper": wrapper}})
    clusters.append(cluster)
    topic, parts = "full", 3
    cluster.create(topic, parts)
    load = Producing(cluster.bootstrap(), topic, parts)
    load.start()
    wait(lambda: len(load.acked) >= 300, "300 acks before the fault")
    b = cluster.brokers[node]
    led = led_by(cluster, topic, parts, node)
    d = partition_dir(b, topic, led)
    # The tmpfs is visible through the broker's own root.
    inside = broker_root(b) / str(b.data_dir / "topics").lstrip("/")
    assert os.statvfs(inside).f_blocks * os.statvfs(inside).f_frsize == 32 << 20
    with open(inside / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    t0 = time.monotonic()  # full from here on
    new_leader, took = check_offline(cluster, topic, led, node, d, t0,
                                     expect_log="No space left on device")
    wait(lambda: acks_on(load, led, t0) >= 200, f"200 acks on partition {led} after the fault")
    # Its follower replicas fail at their next write too: every replica on that disk is out.
    for p in range(parts):
        wait(lambda p=p: offline_everywhere(cluster, topic, p, node),
             f"node {node} offline for partition {p}")
        wait(lambda p=p: acks_on(load, p, t0) >= 100, f"acks on partition {p}")
    print(f"\ndisk full: node {node} -> {new_leader} after {took:.2f} s")
    not_taken_back(cluster, topic, led, node)
    finish(cluster, load, topic, parts)


@pytest.mark.parametrize("call", ["pwrite", "fdatasync"])
def test_write_eio_takes_the_replica_offline_until_a_restart(tmp_path, ring, clusters, shim,
                                                             call):
    """EIO from pwrite (append) or fdatasync (the flush before an acks=all answer) on broker
    2's partition files; after the fault is gone, a restart brings its replicas back."""
    node = 2
    faults = Faults(tmp_path / "faults")
    env = {"LD_PRELOAD": str(shim), "GSN_FAULT_CTL": str(faults.path)}
    cluster = start_cluster(tmp_path, ring, per_broker={node: {"env": env}})
    clusters.append(cluster)
    topic, parts = f"eio-{call}", 3
    cluster.create(topic, parts)
    load = Producing(cluster.bootstrap(), topic, parts)
    load.start()
    wait(lambda: len(load.acked) >= 300, "300 acks before the fault")
    b = cluster.brokers[node]
    led = led_by(cluster, topic, parts, node)
    d = partition_dir(b, topic, led)
    t0 = time.monotonic()
    faults.set(call, errno.EIO)
    new_leader, took = check_offline(cluster, topic, led, node, d, t0,
                                     expect_log="Input/output error")
    wait(lambda: acks_on(load, led, t0) >= 200, f"200 acks on partition {led} after the fault")
    print(f"\n{call} EIO: node {node} -> {new_leader} after {took:.2f} s")
    not_taken_back(cluster, topic, led, node)
    # The disk is fine again: a restart opens the replicas (a torn tail is cut off), the
    # metadata lists them online, they catch up and rejoin every ISR.
    faults.clear()
    b.restart()
    wait(lambda: all(not p["offline_replicas"] and len(p["isr_nodes"]) == 3
                     for x in cluster.alive()
                     for p in metadata_partitions(x, topic).values()),
         "every replica online and in sync after the restart", timeout=60)
    finish(cluster, load, topic, parts)
    # The restarted replica holds every acknowledged record: read it from there once it leads.
    wait(lambda: cluster.leader(topic, led) == node, "the restarted broker to lead again",
         timeout=60)
    mine = [a for a in load.acked if a[0] == led]
    check(mine, consume(b.bootstrap, topic, parts, len(load.acked)))


def test_read_eio_takes_the_replica_offline(tmp_path, ring, clusters, shim):
    """EIO from pread while a consumer fetches from the leader."""
    node = 2
    faults = Faults(tmp_path / "faults")
    env = {"LD_PRELOAD": str(shim), "GSN_FAULT_CTL": str(faults.path)}
    cluster = start_cluster(tmp_path, ring, per_broker={node: {"env": env}})
    clusters.append(cluster)
    topic, parts = "eio-read", 3
    cluster.create(topic, parts)
    load = Producing(cluster.bootstrap(), topic, parts)
    load.start()
    wait(lambda: len(load.acked) >= 600, "600 acks")
    load.stop.set()
    load.join(60)
    assert load.failure is None and not load.errors, (load.failure, load.errors[:5])
    b = cluster.brokers[node]
    led = led_by(cluster, topic, parts, node)
    d = partition_dir(b, topic, led)
    faults.set("pread", errno.EIO)
    t0 = time.monotonic()
    (_, ((_, _, err, _, _),)), took = timed(b.port, kp.fetch_v4(1, topic, led, 0),
                                            kp.parse_fetch_v4)
    assert (err, took < FAST_S) == (ERR_STORAGE, True), f"fetch: error {err} after {took:.2f} s"
    new_leader, took = check_offline(cluster, topic, led, node, d, t0,
                                     expect_log="Input/output error")
    print(f"\npread EIO: node {node} -> {new_leader} after {took:.2f} s")
    not_taken_back(cluster, topic, led, node)
    check(load.acked, consume(cluster.bootstrap(), topic, parts, len(load.acked)))
