"""Fixtures of the container fault tests: the compose project (started once per session,
deleted at the end) and the summary table printed after the run.

Environment:
  GSN_FAULTS_PROJECT   compose project name (default gsnfaults; never the one deploy/up.sh
                       uses, since the tests end with `down -v`)
  GSN_COMPOSE_FILES    compose files, ':'-separated (default: the repository's)
  GSN_FAULTS_OUT       directory for the summary and the containers' logs
                       (default /tmp/gsn-faults)
  GSN_FAULTS_KEEP      1: leave the project running at the end (debugging)
  GSN_IMAGE            image the compose file uses (checked to exist; default
                       gsn-broker:latest)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from checker import HEADER, ORDER_HEADER, format_table
from cluster import KAFKA_PORTS, Cluster, docker_reachable, run, wait_for

OUT = Path(os.environ.get("GSN_FAULTS_OUT", "/tmp/gsn-faults"))
ROWS: list[tuple] = []
ORDER_ROWS: list[tuple] = []
# The per-partition table plus the consumer's offset resets and errors (both must be 0).
SUMMARY_HEADER = HEADER + ("resets", "cons errs")
NOTES: list[str] = []


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def cluster():
    # Never skipped: these are the only end-to-end check of order across brokers, so
    # running them where docker does not answer is a failure that says so.
    if not docker_reachable():
        pytest.fail("`docker info` does not answer: the container fault tests need a running "
                    "docker engine (they are never skipped)", pytrace=False)
    image = os.environ.get("GSN_IMAGE", "gsn-broker:latest")
    if run(["docker", "image", "inspect", image], timeout=60, check=False).returncode != 0:
        pytest.fail(f"image {image} does not exist: build it with deploy/build-image.sh "
                    f"(GSN_SKIP_CARGO=1 packs the binaries already built)")
    files = os.environ.get("GSN_COMPOSE_FILES")
    c = Cluster(os.environ.get("GSN_FAULTS_PROJECT", "gsnfaults"),
                [Path(f) for f in files.split(":")] if files else None,
                log_dir=OUT / "logs")
    c.down()  # leftovers of an aborted run of this project
    busy = [p for p in KAFKA_PORTS.values() if _port_in_use(p)]
    if busy:
        pytest.fail(f"host ports {busy} are in use (another deployment running? "
                    f"`docker-compose down` it first)")
    try:
        secs = c.up(timeout=240)
        wait_for(lambda: c.ring_config().get("epoch", 0) >= 1, "ring epoch 1", 60)
        NOTES.append(f"compose up (containers healthy): {secs:.1f}s; "
                     f"services: {', '.join(c.running_services())}")
        yield c
    except BaseException:
        c.save_logs("setup")
        raise
    finally:
        if ROWS:
            c.save_logs("final")
        if os.environ.get("GSN_FAULTS_KEEP") != "1":
            c.down()


@pytest.fixture(scope="session")
def summary_rows():
    return ROWS


@pytest.fixture(scope="session")
def order_rows():
    return ORDER_ROWS


def pytest_terminal_summary(terminalreporter):
    if not ROWS and not NOTES:
        return
    tr = terminalreporter
    tr.section("container fault tests: summary")
    for n in NOTES:
        tr.write_line(n)
    if ROWS:
        table = format_table(ROWS, SUMMARY_HEADER)
        tr.write_line(table)
        tr.write_line("stall s: longest time any partition went without an acknowledgement, "
                      "from the fault until the end of the healed phase; read stall s: the "
                      "same for the consumer's stream. dup recs: records stored twice by "
                      "producer retries (allowed with idempotence off).")
        order = format_table(ORDER_ROWS, ORDER_HEADER) if ORDER_ROWS else ""
        if order:
            tr.write_line("")
            tr.write_line("total order (ordered-reader over both topics):")
            tr.write_line(order)
            tr.write_line("holes: GSNs between the first and last record printed that no "
                          "printed record holds (numbers of batches that never committed); "
                          "F stall: longest time the reader's output (resp. the brokers' "
                          "gsn_frontier) did not move while producers were acknowledged.")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "summary.txt").write_text("\n".join(NOTES) + "\n" + table + "\n\n" + order
                                         + "\n")
        tr.write_line(f"(also in {OUT / 'summary.txt'}; container logs in {OUT / 'logs'})")
