"""Process-level contract: configuration via flags and env, bad values
refused at start, the Prometheus endpoint."""

from __future__ import annotations

import re
import subprocess
import urllib.request

import pytest

from brokerproc import broker_bin, free_ports
from kafkatest import Out, produce, topic_partitions, unique_name

SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+]?([0-9.eE+-]+|NaN|Inf)( [0-9]+)?$")


def test_metrics_endpoint(broker):
    produce(broker.bootstrap, [Out(unique_name("metrics"), None, None, b"x") for _ in range(10)])
    url = f"http://127.0.0.1:{broker.handle.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Type", "").startswith("text/plain"), resp.headers
        body = resp.read().decode()
    samples = [ln for ln in body.splitlines() if ln and not ln.startswith("#")]
    assert samples, f"/metrics has no samples:\n{body[:2000]}"
    bad = [ln for ln in samples if not SAMPLE.match(ln)]
    assert not bad, f"lines that are not Prometheus samples: {bad[:5]}"


def test_flags_from_environment(broker_factory):
    b = broker_factory(env={"BROKER_NUM_PARTITIONS": "3"})
    topic = unique_name("envparts")
    produce(b.bootstrap, [Out(topic, None, None, b"x")])
    assert topic_partitions(b.bootstrap, topic) == [0, 1, 2]


@pytest.mark.parametrize("flag,value", [("--num-partitions", "lots"),
                                        ("--flush-policy", "sometimes"),
                                        ("--max-frame-bytes", "-5"),
                                        ("--listen", "not-an-address")])
def test_bad_config_value_stops_at_start(tmp_path, flag, value):
    binary = broker_bin()
    if not binary.exists():
        pytest.fail(f"broker binary not found at {binary}", pytrace=False)
    port, metrics = free_ports(2)
    args = {"--node-id": "1", "--listen": f"127.0.0.1:{port}", "--advertised-host": "127.0.0.1",
            "--data-dir": str(tmp_path / "data"), "--metrics-listen": f"127.0.0.1:{metrics}"}
    args[flag] = value
    argv = [str(binary)] + [x for kv in args.items() for x in kv]
    try:
        cp = subprocess.run(argv, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"broker started (or hung) with {flag} {value!r} instead of refusing it")
    assert cp.returncode != 0, f"{flag} {value!r} accepted"
    err = cp.stderr.decode(errors="replace")
    assert value in err, f"the error does not name the bad value {value!r}:\n{err[-2000:]}"
