#!/usr/bin/env python3
"""Produce throughput to a compacted topic while the log cleaner works on it, against the
same keyed load to a delete-policy topic (no cleaner work), interleaved in one broker run;
and the cleaner's own rate (segment bytes cleaned per second of cleaning).

    python3 bench/compaction_bench.py --broker /var/cache/gsn/target/release/broker

Starts its own broker (loopback, temp data dir, cleaner backoff 100 ms, min cleanable ratio
0) and prints one JSON line per round plus a summary."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import tempfile
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def produce(bootstrap: str, topic: str, records: int, keys: int, size: int) -> float:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000})
    value = b"x" * size
    errors = []
    t0 = time.monotonic()
    for i in range(records):
        while True:
            try:
                p.produce(topic, key=b"k%d" % (i % keys), value=value, partition=0,
                          on_delivery=lambda e, m: e and errors.append(e))
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0 and not errors, errors[:3]
    return records / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port, mport, rport = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [args.broker, "--listen", f"127.0.0.1:{port}", "--advertised-host", "127.0.0.1",
             "--data-dir", data, "--metrics-listen", f"127.0.0.1:{mport}",
             "--raft-listen", f"127.0.0.1:{rport}", "--log-cleaner-backoff-ms", "100",
             "--log-cleaner-min-cleanable-ratio", "0"],
            stderr=subprocess.DEVNULL)
        try:
            bootstrap = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "broker did not start"
                    time.sleep(0.2)
            admin = AdminClient({"bootstrap.servers": bootstrap})
            results = {"compact": [], "delete": []}
            for r in range(args.rounds):
                for policy in ("delete", "compact") if r % 2 else ("compact", "delete"):
                    topic = f"bench-{policy}-r{r}"
                    cfg = {"cleanup.policy": policy, "segment.bytes": str(1 << 20)}
                    for f in admin.create_topics([NewTopic(topic, 1, 1, config=cfg)]).values():
                        f.result(30)
                    time.sleep(1)
                    rate = produce(bootstrap, topic, args.records, args.keys, args.size)
                    results[policy].append(rate)
                    print(json.dumps({"round": r, "policy": policy, "records_per_s": round(rate)}))
            time.sleep(1)
            cleaned = metric(mport, "kafka_log_cleaner_bytes_total")
            busy = metric(mport, "kafka_log_cleaner_busy_microseconds_total") / 1e6
            removed = metric(mport, "kafka_log_cleaner_records_removed_total")
            med = lambda xs: sorted(xs)[len(xs) // 2]
            print(json.dumps({
                "compact_median_records_per_s": round(med(results["compact"])),
                "delete_median_records_per_s": round(med(results["delete"])),
                "ratio": round(med(results["compact"]) / med(results["delete"]), 3),
                "cleaner_bytes": int(cleaned), "cleaner_busy_s": round(busy, 2),
                "cleaner_mb_per_s": round(cleaned / busy / 1e6, 1) if busy else None,
                "records_removed": int(removed)}))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
