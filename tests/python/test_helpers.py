"""The test helpers' own checks (no broker): a background thread's failure reaches the test,
and kproto decodes the records a direct Fetch returns."""

from __future__ import annotations

import pytest

import kproto as kp
from kafkatest import CheckedThread


class Failing(CheckedThread):
    def work(self):
        left = 3  # what a producer's flush() returns when records are still unacknowledged
        assert left == 0, f"{left} records still unacknowledged after flush"


class Fine(CheckedThread):
    def work(self):
        self.done = True


def test_a_failure_in_a_thread_reaches_the_test():
    t = Failing(name="producer")
    t.start()
    with pytest.raises(AssertionError, match="producer failed.*3 records still"):
        t.join_checked(10)
    ok = Fine(name="fine")
    ok.start()
    ok.join_checked(10)
    assert ok.done


def with_base(batch: bytes, base: int) -> bytes:
    return kp.i64(base) + batch[8:]


def test_parse_records_reads_plain_and_gzip_batches_and_skips_control_batches():
    plain = with_base(kp.record_batch([b"a", b"bb"], 1000), 10)
    gz = with_base(kp.record_batch([b"c"], 1000, codec=1), 20)
    control = with_base(kp.with_attributes(kp.record_batch([b"\0\0\0\0"], 1000), 0x20), 30)
    got = kp.parse_records(plain + gz + control + plain[:20])  # a partial batch at the end
    assert got == [(10, None, b"a"), (11, None, b"bb"), (20, None, b"c")]
    with pytest.raises(AssertionError, match="codec 4"):
        kp.parse_records(with_base(kp.with_attributes(kp.record_batch([b"x"], 1), 4), 0))
