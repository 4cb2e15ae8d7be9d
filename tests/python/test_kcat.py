"""Debian's kcat (librdkafka 2.0.2: the legacy-client check, see
shared/CLIENT-NOTES.md) against the broker."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

import kproto as kp
from kafkatest import (Out, Rec, assert_gsn_offsets, assert_same_records,
                       produce, unique_name)

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
TIMEOUT_S = 60


def kcat(*args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if KCAT is None:
        pytest.fail("kcat is not installed (apt-get install kcat)", pytrace=False)
    cmd = [KCAT, *args]
    try:
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        cp = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, **stdin)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(cmd)} hung for {TIMEOUT_S}s; stderr: "
                             f"{(e.stderr or b'').decode(errors='replace')[-2000:]}")
    if check:
        assert cp.returncode == 0, (
            f"{' '.join(cmd)} exited {cp.returncode}\nstdout: {cp.stdout.decode(errors='replace')[-2000:]}"
            f"\nstderr: {cp.stderr.decode(errors='replace')[-2000:]}")
    return cp


def kcat_consume(bootstrap: str, topic: str) -> list[Rec]:
    cp = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q",
              "-m", "20")
    recs = []
    for line in cp.stdout.decode().splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        key = None if m.get("key") is None else m["key"].encode()
        value = None if m.get("payload") is None else m["payload"].encode()
        recs.append(Rec(m["topic"], m["partition"], m["offset"], key, value, m.get("ts", -1)))
    return recs


def test_kcat_metadata_list(broker):
    cp = kcat("-L", "-b", broker.bootstrap, "-m", "20")
    out, err = cp.stdout.decode(), cp.stderr.decode()
    assert "Read underflow" not in out + err, err
    assert f"broker 1 at 127.0.0.1:{broker.handle.port}" in out, out

    md = json.loads(kcat("-L", "-J", "-b", broker.bootstrap, "-m", "20").stdout)
    assert md["brokers"] == [{"id": 1, "name": f"127.0.0.1:{broker.handle.port}"}], md
    assert md.get("controllerid") == 1, md


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_consume(broker, codec):
    topic = unique_name(f"kcat-{codec}")  # auto-created on first use (1 partition)
    lines = [f"key{i}:value-{codec}-{i}-" + "y" * (i % 50) for i in range(2000)]
    # One request in flight: the exact order is checked below (ordering of
    # pipelined requests has its own test in test_ordering.py).
    kcat("-P", "-b", broker.bootstrap, "-t", topic, "-K", ":", "-X", f"compression.codec={codec}",
         "-X", "max.in.flight.requests.per.connection=1", "-m", "20",
         input=("\n".join(lines) + "\n").encode())

    # Topic now listed with the default partition count.
    md = json.loads(kcat("-L", "-J", "-b", broker.bootstrap, "-t", topic, "-m", "20").stdout)
    (t,) = [t for t in md["topics"] if t["topic"] == topic]
    assert len(t["partitions"]) == 1, t

    recs = kcat_consume(broker.bootstrap, topic)
    assert [(r.key, r.value) for r in recs] == \
        [tuple(part.encode() for part in ln.split(":", 1)) for ln in lines], \
        "kcat read back different records (or in a different order) than it wrote"
    assert_gsn_offsets(recs, f"kcat {codec}")
    stored = kp.stored_codecs(broker.handle.port, topic, 0)
    want = kp.CODEC_IDS[codec]
    assert want in stored and stored <= {0, want}, \
        f"asked for {codec} (codec id {want}); the stored batches use codec ids {stored}"


def test_kcat_reads_what_confluent_wrote(broker):
    topic = unique_name("kcat-mixed")
    delivered = produce(broker.bootstrap, [Out(topic, None, f"k{i}".encode(), f"v{i}".encode())
                                           for i in range(500)])
    recs = kcat_consume(broker.bootstrap, topic)
    assert_same_records(delivered, recs, "confluent -> kcat")
    assert_gsn_offsets(recs)


def test_kcat_query_offset_by_timestamp(broker):
    topic = unique_name("kcat-q")
    base = int(time.time() * 1000) - 100_000
    delivered = []
    for chunk in range(3):  # three produce calls: several batches
        delivered += produce(broker.bootstrap, [Out(topic, 0, None, f"r{i}".encode(), base + 100 * i)
                                                for i in range(chunk * 20, chunk * 20 + 20)],
                             max_in_flight_requests_per_connection=1)
    delivered.sort(key=lambda r: r.offset)
    assert [r.timestamp for r in delivered] == [base + 100 * i for i in range(60)]

    def query(ts: int) -> int:
        cp = kcat("-Q", "-b", broker.bootstrap, "-t", f"{topic}:0:{ts}", "-m", "20")
        m = re.search(re.escape(topic) + r" \[0\] offset (-?\d+)", cp.stdout.decode())
        assert m, f"unexpected kcat -Q output: {cp.stdout!r} {cp.stderr!r}"
        return int(m.group(1))

    assert query(base - 5000) == delivered[0].offset
    assert query(base + 100 * 25) == delivered[25].offset
    assert query(base + 100 * 25 + 1) == delivered[26].offset
    assert query(base + 100 * 59) == delivered[59].offset
    assert query(base + 100 * 59 + 1) == -1, "no record at or after the query: expected -1"
