#!/usr/bin/env python3
"""Benchmark of the stable frontier on the loopback cluster (scripts/cluster-up.sh, 3 brokers
with RF 3, 2 softswitches, 3 ring controllers):

  visibility  for each --rates value, `kafka-bench visibility` on a fresh topic of 12
              partitions: acknowledgement -> delivery of an ordered read_committed reader (the
              global order) next to a read_uncommitted consumer, p50/p99/max;
  idle        CPU of each broker over --idle-s seconds with topics but no traffic, and the
              frontier rounds it ran meanwhile (gsn_frontier_rounds_total);

Runs are interleaved with `--baseline-bin DIR` (a directory holding broker, softswitch and
ring-controller binaries of another build) when given: idle CPU of both, in turns, so the
frontier's idle cost is a ratio within one run. Every run starts a new cluster; the page
cache is synced and the machine rests a few seconds before each.

Prints one JSON object. Usage:
  bench/frontier_bench.py [--rates 10000,100000] [--records 300000] [--idle-s 30]
                          [--rounds 3] [--baseline-bin DIR]
Needs the release binaries (CARGO_TARGET_DIR, default /var/cache/gsn/target).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
BOOTSTRAP = "127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/cache/gsn/target")) / "release"


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def broker_pids(cluster_dir):
    return {f.stem: int(f.read_text()) for f in sorted(Path(cluster_dir).glob("broker-*.pid"))}


def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)", body, re.M)
    return float(m.group(1)) if m else None


class Cluster:
    def __init__(self, bin_dir):
        self.dir = tempfile.mkdtemp(prefix="frontier-bench.")
        env = dict(os.environ, CLUSTER_DIR=self.dir, PORT_BASE="27300",
                   CARGO_TARGET_DIR=str(Path(bin_dir).parent))
        subprocess.run([HERE / "scripts/cluster-up.sh", "3", "2"], env=env, check=True,
                       capture_output=True)
        self.wait(lambda: len(self.admin().list_topics(timeout=5).brokers) == 3, "3 brokers")

    def admin(self):
        # One client for the cluster's life: a temporary one is destroyed before its
        # futures answer (librdkafka's _DESTROY).
        if getattr(self, "_admin", None) is None:
            self._admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        return self._admin

    def wait(self, cond, what, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except Exception:  # noqa: BLE001 - a cluster still starting
                pass
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}")

    def create(self, topic, partitions):
        self.admin().create_topics([NewTopic(topic, partitions, 3)])[topic].result(30)

        def led():
            t = self.admin().list_topics(topic, timeout=5).topics[topic]
            return len(t.partitions) == partitions and all(
                p.leader >= 0 and len(p.isrs) == 3 for p in t.partitions.values())
        self.wait(led, f"{topic} led and in sync")

    def close(self):
        for f in list(Path(self.dir).glob("*.pid")) + list(Path(self.dir).glob("ring/*.pid")):
            try:
                os.kill(int(f.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(1)
        subprocess.run(["rm", "-rf", self.dir], check=False)


def rest():
    subprocess.run(["sync"], check=False)
    time.sleep(5)


def visibility(rate, records):
    rest()
    c = Cluster(TARGET)
    try:
        topic = f"vis-{rate}"
        c.create(topic, 12)
        out = subprocess.run(
            [TARGET / "kafka-bench", "visibility", "--bootstrap", BOOTSTRAP, "--topic", topic,
             "--records", str(records), "--rate", str(rate), "--partitions", "12", "--json"],
            capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise SystemExit(f"kafka-bench failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        c.close()


def idle(bin_dir, seconds):
    rest()
    c = Cluster(bin_dir)
    try:
        for t in ("idle-a", "idle-b"):
            c.create(t, 6)
        time.sleep(5)  # the startup settles
        pids = broker_pids(c.dir)
        rounds_before = [metric(19290 + b, "gsn_frontier_rounds_total") for b in (1, 2, 3)]
        before = {k: cpu_seconds(v) for k, v in pids.items()}
        time.sleep(seconds)
        cpu = {k: round((cpu_seconds(v) - before[k]) / seconds, 4) for k, v in pids.items()}
        rounds_after = [metric(19290 + b, "gsn_frontier_rounds_total") for b in (1, 2, 3)]
        rounds = None
        if None not in rounds_before and None not in rounds_after:
            rounds = round(sum(a - b for a, b in zip(rounds_after, rounds_before)) / seconds, 2)
        return {"cpu_cores_per_broker": cpu, "frontier_rounds_per_s_all_brokers": rounds}
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="10000,100000")
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--idle-s", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-bin", default=None)
    args = ap.parse_args()
    result = {"visibility": {}, "idle": {"frontier": [], "baseline": []}}
    for rate in [int(r) for r in args.rates.split(",")]:
        runs = [visibility(rate, args.records) for _ in range(args.rounds)]
        result["visibility"][str(rate)] = runs
    for _ in range(args.rounds):
        result["idle"]["frontier"].append(idle(TARGET, args.idle_s))
        if args.baseline_bin:
            result["idle"]["baseline"].append(idle(Path(args.baseline_bin), args.idle_s))

    def median_cpu(runs):
        per_run = [statistics.mean(r["cpu_cores_per_broker"].values()) for r in runs]
        return round(statistics.median(per_run), 4) if per_run else None
    result["idle_median_cores_per_broker"] = {
        "frontier": median_cpu(result["idle"]["frontier"]),
        "baseline": median_cpu(result["idle"]["baseline"]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
