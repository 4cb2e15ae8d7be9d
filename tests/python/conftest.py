"""pytest fixtures that run the real `broker` binary.

Fixtures
--------
broker          a fresh broker (default flags) on free ports in a tmp data dir;
                a `Broker(bootstrap, data_dir, handle)` named tuple, where
                handle is a brokerproc.BrokerProcess with kill9(), restart(),
                terminate(), alive(), log_tail().
broker_factory  call it (with extra flags as keyword args, e.g.
                broker_factory(num_partitions=4, max_frame_bytes=1048576))
                to start more brokers / brokers with other flags.

Every broker started through these fixtures is SIGKILLed at teardown. If a
test fails, the tail of each broker's stderr is attached to the report. At
teardown the test errors if a broker exited without the test asking it to
(crash) or if its stderr shows a Rust panic.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from brokerproc import BrokerProcess, broker_bin  # noqa: E402


class Broker(NamedTuple):
    bootstrap: str
    data_dir: "os.PathLike[str]"
    handle: BrokerProcess


def pytest_report_header(config):
    b = broker_bin()
    state = "exists" if b.exists() else "MISSING"
    return [f"broker binary: {b} ({state})"]


@pytest.fixture
def broker_factory(request, tmp_path):
    binary = broker_bin()
    if not binary.exists():
        pytest.fail(
            f"broker binary not found at {binary}: build it with "
            f"`cargo build --release -p broker` (CARGO_TARGET_DIR="
            f"{os.environ.get('CARGO_TARGET_DIR', '<unset>')}) or set BROKER_BIN",
            pytrace=False)

    started: list[BrokerProcess] = []
    request.node._gsn_brokers = started

    def start(env: dict[str, str] | None = None, **extra_args) -> Broker:
        n = len(started)
        data_dir = tmp_path / f"broker{n}-data"
        log_path = tmp_path / f"broker{n}.stderr.log"
        try:
            handle = BrokerProcess.start(binary, data_dir, log_path, env=env, **extra_args)
        except Exception as e:  # startup failure: show why, not a traceback into Popen
            pytest.fail(f"could not start broker: {e}", pytrace=False)
        started.append(handle)
        return Broker(handle.bootstrap, data_dir, handle)

    yield start

    problems = []
    for i, h in enumerate(started):
        rc = h.returncode()
        if h.proc is not None and rc is not None and not h.expected_exit:
            problems.append(f"broker {i} exited unexpectedly with code {rc}")
        h.cleanup()
        panic = h.first_log_line_with("panicked at")
        if panic is not None:
            problems.append(f"broker {i} logged a Rust panic: {panic.strip()[:300]} (see {h.log_path})")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for i, h in enumerate(getattr(item, "_gsn_brokers", [])):
        state = "running" if h.alive() else f"exited with {h.returncode()}"
        rep.sections.append(
            (f"broker {i} ({state}, pid {h.pid}) stderr tail from {h.log_path}",
             h.log_tail(60)))
