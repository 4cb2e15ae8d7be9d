"""Reading the global order: the `ordered-reader` CLI and the README's confluent-kafka
recipe (ordered-reader/recipe.py, the very code the README shows) against a real broker.

Records go to several partitions of two topics from two producers; both readers must
print every acknowledged record exactly once, in strictly increasing offset (GSN) order,
which is the order of the acknowledgements' offsets. The CLI is also checked following
live production (started first), from a timestamp, from the end, picking up a partition
added while it runs, and refusing bad arguments.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import NewPartitions

from brokerproc import ordered_reader_bin
from kafkatest import Out, admin, create_topics, produce, unique_name, wait_for

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "ordered-reader" / "recipe.py"
FORMAT = "%o %t %p %s\\n"


def reader_bin() -> Path:
    b = ordered_reader_bin()
    if not b.exists():
        pytest.fail(f"ordered-reader binary not found at {b}: build it with `cargo build "
                    f"--release -p ordered-reader` or set ORDERED_READER_BIN", pytrace=False)
    return b


def two_topics(bootstrap: str) -> dict[str, int]:
    topics = {unique_name("order-a"): 3, unique_name("order-b"): 2}
    create_topics(bootstrap, topics)
    return topics


def produce_interleaved(bootstrap: str, topics: dict[str, int], n: int, tag: str):
    """n records spread over every partition of the topics by two producers running at
    once; returns the acknowledged records."""
    names = [(t, p) for t, k in topics.items() for p in range(k)]
    halves = [[Out(*names[(i * 2 + h) % len(names)], None, f"{tag}-{h}-{i}".encode())
               for i in range(n // 2)] for h in (0, 1)]
    acked: list = [None, None]

    def run(h):
        acked[h] = produce(bootstrap, halves[h], linger_ms=2)

    threads = [threading.Thread(target=run, args=(h,)) for h in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(a is not None for a in acked), "a producer did not finish"
    return acked[0] + acked[1]


def parse_lines(text: str) -> list[tuple[int, str, int, bytes]]:
    out = []
    for line in text.splitlines():
        o, t, p, v = line.split(" ", 3)
        out.append((int(o), t, int(p), v.encode()))
    return out


def assert_global_order(lines, acked, what):
    offsets = [o for o, _, _, _ in lines]
    assert all(a < b for a, b in zip(offsets, offsets[1:])), \
        f"{what}: output not strictly increasing"
    got = [(o, t, p, v) for o, t, p, v in lines]
    want = sorted((r.offset, r.topic, r.partition, r.value) for r in acked)
    assert got == want, (f"{what}: {len(got)} records printed, {len(want)} acknowledged; "
                         f"first difference at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}")


def run_cli(bootstrap: str, topics, *args: str, timeout: float = 60):
    cmd = [str(reader_bin()), "-b", bootstrap, "--check", "-f", FORMAT, *args]
    for t in topics:
        cmd += ["-t", t]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ---- the README's recipe ---------------------------------------------------------------
def test_readme_shows_the_recipe_file_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    recipe = RECIPE.read_text()
    assert recipe in blocks, "README's confluent-kafka recipe differs from ordered-reader/recipe.py"
    code_lines = [ln for ln in recipe.splitlines() if ln.strip()]
    assert len(code_lines) <= 25, f"the recipe grew to {len(code_lines)} lines"


def load_recipe():
    spec = importlib.util.spec_from_file_location("ordered_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_reads_the_global_order(broker):
    topics = two_topics(broker.bootstrap)
    acked = produce_interleaved(broker.bootstrap, topics, 2000, "recipe")
    got = []
    deadline = time.monotonic() + 90
    load_recipe().read_in_global_order(
        broker.bootstrap, list(topics),
        emit=lambda m: got.append((m.offset(), m.topic(), m.partition(), m.value())),
        stop=lambda: len(got) >= len(acked) or time.monotonic() > deadline)
    assert_global_order(got, acked, "recipe")


# ---- the CLI -----------------------------------------------------------------------------
def test_cli_prints_the_global_order_and_exits_at_the_end(broker):
    topics = two_topics(broker.bootstrap)
    acked = produce_interleaved(broker.bootstrap, topics, 2000, "cli")
    r = run_cli(broker.bootstrap, topics, "-e")
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert_global_order(parse_lines(r.stdout), acked, "ordered-reader -e")
    assert "late 0, duplicate 0, resets 0" in r.stderr, r.stderr[-2000:]


def test_cli_follows_live_production_and_new_partitions(broker):
    topics = two_topics(broker.bootstrap)
    names = list(topics)
    cmd = [str(reader_bin()), "-b", broker.bootstrap, "--check", "-f", FORMAT,
           "--metadata-refresh-ms", "300", "-t", names[0], "-t", names[1]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        acked = []
        for round_ in range(3):
            acked += produce_interleaved(broker.bootstrap, topics, 400, f"live{round_}")
            wait_for(lambda: len(lines) >= len(acked), 60,
                     f"the reader to print the {len(acked)} records of round {round_}")
        # A partition added while it runs is read too.
        a = admin(broker.bootstrap)  # kept: a dropped client cancels its futures
        a.create_partitions([NewPartitions(names[1], 3)])[names[1]].result(30)
        topics[names[1]] = 3
        wait_for(lambda: len(a.list_topics(names[1], timeout=5).topics[names[1]].partitions)
                 == 3, 30, "the third partition")
        time.sleep(1.0)  # a few metadata refreshes: the reader assigns the new partition
        acked += produce_interleaved(broker.bootstrap, topics, 400, "grown")
        assert any(r.topic == names[1] and r.partition == 2 for r in acked)
        wait_for(lambda: len(lines) >= len(acked), 60, "the records of the new partition")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        finally:
            proc.kill()
        reader.join(10)
    err = proc.stderr.read()
    assert rc == 0, f"exit {rc}: {err[-2000:]}"
    assert_global_order(parse_lines("".join(lines)), acked, "live ordered-reader")


def test_cli_starts_at_a_timestamp_or_at_the_end(broker):
    topics = two_topics(broker.bootstrap)
    produce_interleaved(broker.bootstrap, topics, 200, "old")
    time.sleep(0.05)
    since = int(time.time() * 1000)
    time.sleep(0.05)
    new = produce_interleaved(broker.bootstrap, topics, 200, "new")
    r = run_cli(broker.bootstrap, topics, "-e", "-o", f"s@{since}")
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert_global_order(parse_lines(r.stdout), new, "ordered-reader -o s@")
    r = run_cli(broker.bootstrap, topics, "-e", "-o", "end")
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout == "", "reading from the end printed old records"


@pytest.mark.parametrize("args, complaint", [
    (["-f", "%x"], "unknown format token"),
    (["-o", "yesterday"], "bad start"),
    (["--max-buffered", "0"], "max-buffered"),
    (["-X", "novalue"], "KEY=VALUE"),
])
def test_cli_refuses_bad_arguments(args, complaint):
    r = subprocess.run([str(reader_bin()), "-b", "127.0.0.1:1", "-t", "x", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and complaint in r.stderr, (r.returncode, r.stderr)
