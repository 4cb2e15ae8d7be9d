#!/usr/bin/env python3
"""Partition-scale benchmark of the loopback cluster (scripts/cluster-up.sh):

  1. 3 brokers, idle, no topics: CPU and RSS per broker;
  2. one topic with P partitions, replication factor 3: time until every partition has a
     leader, then idle CPU (over --idle-s seconds) and RSS per broker;
  3. full restart (SIGTERM all brokers, start them again): time until every partition has
     a leader again.

Prints one JSON object. Usage:
  bench/partition_scale.py [--partitions 1000] [--idle-s 20] [--broker-args "..."]
Needs the release binaries (CARGO_TARGET_DIR, default /var/cache/gsn/target).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
BOOTSTRAP = "127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093"


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids(cluster_dir):
    return {f.stem: int(f.read_text()) for f in sorted(Path(cluster_dir).glob("broker-*.pid"))}


def idle_cpu(cluster_dir, seconds):
    """CPU use of each broker (fraction of one core) over `seconds`."""
    p = pids(cluster_dir)
    before = {k: cpu_seconds(v) for k, v in p.items()}
    time.sleep(seconds)
    return {k: round((cpu_seconds(v) - before[k]) / seconds, 3) for k, v in p.items()}


def all_led(partitions, topic):
    try:
        md = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=5)
    except Exception:
        return False
    t = md.topics.get(topic)
    if t is None or t.error is not None or len(t.partitions) != partitions:
        return False
    return all(p.leader >= 0 for p in t.partitions.values())


def wait_led(partitions, topic, limit=600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if all_led(partitions, topic):
            return round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    raise SystemExit(f"not all {partitions} partitions led within {limit} s")


def start(cluster_dir, broker_args):
    env = dict(os.environ, CLUSTER_DIR=str(cluster_dir), BROKER_ARGS=broker_args)
    subprocess.run([str(HERE / "scripts/cluster-up.sh"), "3", "2"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def restart_brokers(cluster_dir, broker_args):
    """SIGTERM every broker, wait for exit, start them again with the same command."""
    cmds = {}
    for name, pid in pids(cluster_dir).items():
        cmds[name] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        os.kill(pid, signal.SIGTERM)
    for name, pid in pids(cluster_dir).items():
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
    t0 = time.monotonic()
    for name, argv in cmds.items():
        log = open(Path(cluster_dir) / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        (Path(cluster_dir) / f"{name}.pid").write_text(str(proc.pid))
    return t0


def stop(cluster_dir):
    for f in list(Path(cluster_dir).glob("*.pid")) + list(Path(cluster_dir).glob("ring/*.pid")):
        try:
            os.kill(int(f.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--idle-s", type=float, default=20)
    ap.add_argument("--broker-args", default="")
    a = ap.parse_args()
    cluster_dir = Path(tempfile.mkdtemp(prefix="pscale."))
    out = {"partitions": a.partitions, "broker_args": a.broker_args}
    try:
        start(cluster_dir, a.broker_args)
        time.sleep(2)
        out["empty_cpu_cores"] = idle_cpu(cluster_dir, a.idle_s)
        out["empty_rss_mib"] = {k: round(rss_mib(v), 1) for k, v in pids(cluster_dir).items()}
        t0 = time.monotonic()
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        fut = admin.create_topics([NewTopic("scale", a.partitions, 3)], request_timeout=300)
        fut["scale"].result(300)
        out["create_s"] = round(time.monotonic() - t0, 2)
        out["create_to_all_led_s"] = round(out["create_s"] + wait_led(a.partitions, "scale"), 2)
        time.sleep(5)
        out["loaded_cpu_cores"] = idle_cpu(cluster_dir, a.idle_s)
        rss = {k: round(rss_mib(v), 1) for k, v in pids(cluster_dir).items()}
        out["loaded_rss_mib"] = rss
        out["kib_per_partition_replica"] = {
            k: round((rss[k] - out["empty_rss_mib"][k]) * 1024 / a.partitions, 1) for k in rss}
        t0 = restart_brokers(cluster_dir, a.broker_args)
        out["restart_to_all_led_s"] = round(time.monotonic() - t0 + wait_led(a.partitions, "scale"), 2)
    finally:
        stop(cluster_dir)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
