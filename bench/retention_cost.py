#!/usr/bin/env python3
"""Produce throughput with and without retention deleting segments at the same time
(single broker, 1 MiB segments, retention.bytes 16 MiB, retention checked every 100 ms).
Usage: bench/retention_cost.py [TARGET/release]"""
import json, subprocess, sys, tempfile, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from brokerproc import BrokerProcess
from confluent_kafka.admin import AdminClient, NewTopic
BIN = sys.argv[1] if len(sys.argv) > 1 else "/var/cache/gsn/target/release"
tmp = Path(tempfile.mkdtemp(prefix="retbench-"))
b = BrokerProcess.start(Path(BIN) / "broker", tmp / "data", tmp / "broker.log", log_retention_check_interval_ms=100)
try:
    a = AdminClient({"bootstrap.servers": b.bootstrap})
    topics = {"noret": {"segment.bytes": str(1 << 20)},
              "ret": {"segment.bytes": str(1 << 20), "retention.bytes": str(16 << 20)}}
    for f in a.create_topics([NewTopic(t, 1, 1, config=c) for t, c in topics.items()]).values():
        f.result(30)
    for run in range(2):
        for t in ["noret", "ret"]:
            out = subprocess.run([f"{BIN}/kafka-bench", "produce", "--bootstrap", b.bootstrap, "--topic", t,
                                  "--records", "200000", "--record-size", "1024", "--acks", "all", "--json"],
                                 capture_output=True, text=True, timeout=300)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(run, t, r)
    m = urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics").read().decode()
    print([l for l in m.splitlines() if l.startswith("gsn_log_")])
    for t in topics:
        d = list((tmp / "data" / "topics").glob(f"{t}-0.*"))[0]
        print(t, "segments", len(list(d.glob("*.log"))), "bytes", sum(f.stat().st_size for f in d.glob("*.log")))
finally:
    b.kill9()
    subprocess.run(["rm", "-rf", str(tmp)])
