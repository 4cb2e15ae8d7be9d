"""Unit tests of checker.py: pure Python, no Docker, no broker. Each failure mode has a case
that must make the checker fail, and the allowed anomalies (retry duplicates, redeliveries,
failed deliveries) must not."""

import pytest

from checker import (Ack, Read, check, format_table, partition_stall, stream_stall,
                     table_row)


def history(n=12, partitions=3, topic="t", producer="p0"):
    """A clean run: record i goes to partition i % partitions at GSN 10 + 2*i (gaps); it is
    sent at time i and acknowledged at i + 0.5, before record i + 1 is sent."""
    acks, reads = [], []
    for i in range(n):
        p = i % partitions
        off = 10 + 2 * i
        v = f"{producer}:{i}".encode()
        acks.append(Ack(producer, i, topic, p, off, v, at=i + 0.5, sent=float(i)))
    # A consumer reads each partition in offset order, partitions interleaved.
    for a in sorted(acks, key=lambda a: (a.offset)):
        reads.append(Read(a.topic, a.partition, a.offset, a.value, at=a.at + 0.5))
    return acks, reads


def test_clean_history_passes():
    acks, reads = history()
    rep = check(acks, reads)
    assert rep.ok, rep.problems()
    assert (rep.acked, rep.read, len(rep.lost), rep.duplicated_records) == (12, 12, 0, 0)
    assert rep.problems() == "none"


def test_empty_history_passes():
    assert check([], []).ok


def test_lost_record_fails():
    acks, reads = history()
    rep = check(acks, [r for r in reads if r.offset != 16])
    assert not rep.ok
    assert [a.offset for a in rep.lost] == [16]
    assert "1 acknowledged records lost" in rep.problems()


def test_record_at_other_offset_than_acked_is_lost():
    acks, reads = history()
    moved = [r if r.offset != 16 else Read(r.topic, r.partition, 99, r.value) for r in reads]
    rep = check(acks, moved)
    assert [a.offset for a in rep.lost] == [16]


def test_acked_offset_holding_another_record_fails():
    acks, reads = history()
    swapped = [r if r.offset != 16 else Read(r.topic, r.partition, 16, b"intruder")
               for r in reads]
    rep = check(acks, swapped)
    assert not rep.ok
    assert [a.offset for a in rep.lost] == [16]
    assert rep.offset_reuse == [("t", 0, 16, [b"intruder", b"p0:3"])]


def test_offset_used_twice_in_reads_fails():
    acks, reads = history()
    # Two different records read at the same offset of one partition (e.g. a new leader
    # reused a number after a truncation).
    extra = Read("t", 0, 10, b"other")
    rep = check(acks, reads + [extra])
    assert not rep.ok
    assert rep.offset_reuse == [("t", 0, 10, [b"other", b"p0:0"])]


def test_offset_used_twice_in_acks_fails():
    acks, reads = history()
    # Two records acknowledged at one position; only one can be there.
    bad = Ack("p1", 0, "t", 0, 10, b"p1:0")
    rep = check(acks + [bad], reads)
    assert not rep.ok
    assert rep.offset_reuse and rep.offset_reuse[0][:3] == ("t", 0, 10)
    assert bad in rep.lost


def test_offset_in_two_partitions_fails():
    acks, reads = history()
    # Offset 12 (partition 1) also appears in partition 0: GSNs must be global.
    rep = check(acks, reads + [Read("t", 0, 12, b"stray")])
    assert not rep.ok
    assert rep.cross_partition == [(12, [("t", 0), ("t", 1)])]


def test_offset_in_two_topics_fails():
    acks, reads = history()
    rep = check(acks, reads + [Read("u", 1, 12, b"stray")])
    assert rep.cross_partition == [(12, [("t", 1), ("u", 1)])]


def test_read_going_back_to_a_new_offset_fails():
    acks, reads = history()
    # Partition 0 holds 10, 16, 22, 28; a record appearing at 13 after 16 was delivered.
    late = Read("t", 0, 13, b"late")
    i = next(k for k, r in enumerate(reads) if r.offset == 16)
    rep = check(acks, reads[:i + 1] + [late] + reads[i + 1:])
    assert not rep.ok
    assert rep.read_order == [("t", 0, 16, 13)]


def swap_offsets(acks, reads, x, y, times=None):
    """Records x and y (same partition) stored at each other's offsets; `times` maps x
    and/or y to new (sent, at) times."""
    times = times or {}
    moved = {x: acks[y].offset, y: acks[x].offset}
    out = []
    for k, a in enumerate(acks):
        if k in moved:
            sent, at = times.get(k, (a.sent, a.at))
            a = Ack(a.producer, a.seq, a.topic, a.partition, moved[k], a.value, at=at, sent=sent)
        out.append(a)
    by_offset = {a.offset: a for a in out}
    new_reads = [Read(r.topic, r.partition, r.offset, by_offset[r.offset].value, r.at)
                 for r in reads]
    return out, new_reads


def test_reordering_by_client_retries_is_allowed_and_counted():
    acks, reads = history()
    # Records 0 and 3 (partition 0) in flight together (3 sent at 0.2, before 0's
    # acknowledgement at 3.5): 0 was retried after 3 reached a new leader.
    acks2, reads2 = swap_offsets(acks, reads, 0, 3, {0: (0.0, 3.5), 3: (0.2, 3.4)})
    rep = check(acks2, reads2)
    assert rep.ok, rep.problems()
    assert rep.reordered == [("p0", "t", 0, (0, acks[3].offset), (3, acks[0].offset))]


def test_acknowledged_before_sent_with_smaller_offset_fails():
    acks, reads = history()
    # Record 0 was acknowledged (0.5) before record 3 was sent (3.0), yet 3 got the smaller
    # offset: the broker put a later batch before an acknowledged one. Records 1 and 2
    # (other partitions, sent after 0.5) are below record 0's new offset too.
    acks2, reads2 = swap_offsets(acks, reads, 0, 3)
    rep = check(acks2, reads2)
    assert not rep.ok
    assert [(a.seq, b.seq) for a, b in rep.realtime_order] == [(0, 1), (0, 2), (0, 3)]
    assert not rep.lost and not rep.offset_reuse and not rep.read_order


def test_real_time_order_holds_across_partitions():
    acks, reads = history()
    # Record 7 (partition 1, sent at 7.0, after record 6 was acknowledged at 6.5) given a
    # GSN below record 6's (partition 0): the total order across partitions is broken.
    a7 = acks[7]
    late = Ack(a7.producer, a7.seq, a7.topic, a7.partition, 21, a7.value, at=a7.at,
               sent=a7.sent)
    acks2 = acks[:7] + [late] + acks[8:]
    reads2 = sorted([r for r in reads if r.value != a7.value]
                    + [Read(a7.topic, a7.partition, 21, a7.value)], key=lambda r: r.offset)
    rep = check(acks2, reads2)
    assert not rep.ok
    assert [(a.seq, b.seq) for a, b in rep.realtime_order] == [(6, 7)]
    # Concurrent records (7 sent before 6 was acknowledged) may take either order.
    early = Ack(a7.producer, a7.seq, a7.topic, a7.partition, 21, a7.value, at=a7.at,
                sent=6.2)
    assert check(acks[:7] + [early] + acks[8:], reads2).ok


def test_retry_duplicates_are_allowed_and_counted():
    acks, reads = history()
    # The last record, p0:11 (partition 2), was written at 32, its answer lost, and written
    # again at 41 (acknowledged there).
    first = next(a for a in acks if a.seq == 11)
    again = Ack(first.producer, first.seq, first.topic, first.partition, 41, first.value,
                at=first.at + 5, sent=first.sent)
    acks2 = [a for a in acks if a is not first] + [again]
    reads2 = reads + [Read(first.topic, first.partition, 41, first.value)]
    rep = check(acks2, reads2)
    assert rep.ok, rep.problems()
    assert rep.duplicated_records == 1


def test_redelivery_is_allowed_and_counted():
    acks, reads = history()
    # The consumer re-fetched partition 1 from its start after a reconnect.
    again = [r for r in reads if r.partition == 1]
    rep = check(acks, reads + again)
    assert rep.ok, rep.problems()
    assert rep.redelivered == len(again)
    assert rep.duplicated_records == 0


def test_unacked_records_in_log_are_fine():
    acks, reads = history()
    # A record whose delivery failed but which did get stored, in its own position.
    rep = check(acks, reads + [Read("t", 0, 1000, b"p0:99")], failed=1)
    assert rep.ok and rep.failed == 1


def test_partition_stall():
    acks = [Ack("p", i, "t", 0, i, b"", at=t) for i, t in enumerate([1, 2, 3, 9, 10])]
    acks += [Ack("p", 10 + i, "t", 1, 100 + i, b"", at=t)
             for i, t in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])]
    # Partition 0 stalled from 3 to 9.
    assert partition_stall(acks, since=2.5, until=10) == pytest.approx(6.0)
    # Before the window: ignored; window end counts when acks stop.
    assert partition_stall(acks, since=9.5, until=20) == pytest.approx(10.0)
    # A partition with no acknowledgement in the window stalls the whole window.
    assert partition_stall(acks, since=10, until=15) == pytest.approx(5.0)
    assert partition_stall(acks, since=5, until=5) == 0.0


def test_stream_stall():
    assert stream_stall([1, 2, 6, 7], since=0, until=8) == pytest.approx(4.0)
    assert stream_stall([], since=0, until=3) == pytest.approx(3.0)


def test_table():
    acks, reads = history()
    rep = check(acks, reads)
    bad = check(acks, reads[1:])
    out = format_table([table_row("kill broker", rep, 1.234, 0.5, "broker-2", 0.9),
                        table_row("pause broker", bad, 9.0, 2.0)])
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["fault", "target"]
    assert "1.23" in lines[2] and "0.90" in lines[2] and "broker-2" in lines[2]
    assert lines[2].rstrip().endswith("yes")
    assert lines[3].rstrip().endswith("NO")
    # Every line is as wide as the header (columns aligned).
    assert len({len(line) for line in lines}) == 1


# ---- the total-order checker --------------------------------------------------------------
from checker import (Emitted, check_total_order, emission_stall, frontier_stall,  # noqa: E402
                     order_row, visibility)


def printed(acks, delay=0.25):
    """A correct ordered reader's output: every acknowledged record once, in offset order."""
    return [Emitted(a.topic, a.partition, a.offset, a.value, at=a.at + delay)
            for a in sorted(acks, key=lambda a: a.offset)]


def two_producers():
    """Two producers on two topics, interleaved: acks at i + 0.5, offsets 10 + 2i."""
    a, _ = history(n=8, partitions=2, topic="x", producer="p0")
    b = [Ack("p1", x.seq, "y", x.partition, x.offset + 1, f"p1:{x.seq}".encode(),
             at=x.at + 0.1, sent=x.sent + 0.1) for x in a]
    return a + b


def test_total_order_clean_run_passes_and_counts_holes():
    acks = two_producers()
    out = printed(acks)
    rep = check_total_order(acks, out)
    assert rep.ok, rep.problems()
    assert (rep.acked, rep.emitted) == (16, 16)
    # Offsets 10..25 all used: no hole.
    assert (rep.holes, rep.hole_runs) == (0, 0)
    gappy = [e for e in out if e.offset not in (13, 14, 20)]
    rep = check_total_order([a for a in acks if a.offset not in (13, 14, 20)], gappy)
    assert rep.ok and (rep.holes, rep.hole_runs) == (3, 2)


def test_total_order_output_not_increasing_fails():
    acks = two_producers()
    out = printed(acks)
    out[3], out[4] = out[4], out[3]
    rep = check_total_order(acks, out)
    assert not rep.ok
    assert rep.not_increasing == [(out[3].offset, out[4].offset)]


def test_total_order_missing_record_fails():
    acks = two_producers()
    out = [e for e in printed(acks) if e.offset != 14]
    rep = check_total_order(acks, out)
    assert not rep.ok and [a.offset for a in rep.missing] == [14]
    # Printed at another offset than acknowledged: missing too.
    moved = [e if e.offset != 14 else Emitted(e.topic, e.partition, 99, e.value)
             for e in printed(acks)]
    assert [a.offset for a in check_total_order(acks, moved).missing] == [14]
    # Exempt values (the last fences under read_uncommitted) may be missing.
    exempt = {a.value for a in acks if a.offset == 14}
    assert check_total_order(acks, out, exempt=exempt).ok


def test_total_order_record_printed_twice_fails():
    acks = two_producers()
    out = printed(acks)
    dup = out[5]
    out.append(Emitted(dup.topic, dup.partition, 100, dup.value))
    rep = check_total_order(acks, out)
    assert not rep.ok and rep.twice == [(dup.value, [dup.offset, 100])]


def test_total_order_realtime_violation_fails():
    # A is acknowledged before B is sent, yet B holds the smaller offset and is printed first.
    a = Ack("p0", 0, "x", 0, 50, b"A", at=1.0, sent=0.0)
    b = Ack("p1", 0, "y", 0, 40, b"B", at=3.0, sent=2.0)
    rep = check_total_order([a, b], printed([a, b]))
    assert not rep.ok and rep.realtime == [(a, b)]
    # Concurrent (B sent before A was acknowledged): either order is fine.
    b2 = Ack("p1", 0, "y", 0, 40, b"B", at=3.0, sent=0.5)
    assert check_total_order([a, b2], printed([a, b2])).ok


def test_total_order_reader_reports_fail():
    acks = two_producers()
    for line in ("LATE topic=x partition=0 offset=12 watermark=20 last_emitted=19",
                 "DUP topic=y partition=1 offset=13 also_in=x/0",
                 "RESET the client would have reset an offset: ..."):
        rep = check_total_order(acks, printed(acks), [line, "librdkafka Warning: noise"])
        assert not rep.ok and rep.late == [line], line
    assert check_total_order(acks, printed(acks), ["ordered-reader: emitted 16"]).ok


def test_emission_stall_counts_only_gaps_with_acknowledgements():
    acks = [Ack("p", i, "t", 0, i, b"%d" % i, at=t) for i, t in enumerate([1.0, 1.1, 5.0])]
    # Printed at 1.2 and 9.0: the ack at 5.0 waited 4 s; the idle 1.2..5.0 is no stall.
    assert emission_stall(acks, [1.2, 9.0], 0.0, 10.0) == pytest.approx(4.0)
    # Nothing printed after the last ack: it waits until the window ends.
    assert emission_stall(acks, [1.2], 0.0, 10.0) == pytest.approx(5.0)
    assert emission_stall([], [1.0], 0.0, 10.0) == 0.0


def test_frontier_stall_from_metric_samples():
    acks = [Ack("p", i, "t", 0, i, b"%d" % i, at=t) for i, t in enumerate([1.0, 2.0, 2.5])]
    samples = [(0.5, 100), (1.5, 110), (1.6, 110), (3.9, 110), (4.0, 120)]
    # F moved at 1.5 and 4.0; acks at 2.0 and 2.5 waited from 2.0 to 4.0.
    assert frontier_stall(acks, samples, 0.0, 5.0) == pytest.approx(2.0)
    assert frontier_stall(acks, [], 0.0, 5.0) is None


def test_visibility_and_order_row():
    acks = two_producers()
    vis = visibility(acks, printed(acks, delay=0.25))
    assert vis["p50"] == pytest.approx(250) and vis["max"] == pytest.approx(250)
    row = order_row("kill", check_total_order(acks, printed(acks)), 1.5, None, vis)
    assert row[0] == "kill" and row[-1] == "yes" and row[6] == "-"
