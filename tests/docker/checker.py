"""What producers were told against what consumers read: the fault tests' verdict.

Pure Python, no Kafka and no Docker: the fault driver (test_faults.py) records every
acknowledgement and every consumed record, then hands both lists to `check`. The checker's
own tests are test_checker.py.

Offsets are global sequence numbers (GSNs): unique across all partitions of all topics,
strictly increasing within a partition, with gaps. The properties checked:

* **lost**: an acknowledged record that is not in the log at the (partition, offset) its
  producer was told. A record that reappears at another offset still counts as lost: the
  acknowledgement promised that offset.
* **offset reuse** (the table's "dup offs"): one (partition, offset) holding two different
  records — read twice with different values, acknowledged for two different records, or
  acknowledged for one record and read with another.
* **cross-partition reuse**: one offset in two different partitions (GSNs are global).
* **read order**: within a partition, a consumer delivers strictly increasing offsets. Reading
  an identical record again (a re-fetch after a reconnect) is counted as a redelivery, not a
  violation; a *new* offset below one already delivered is a violation (a record appeared in
  the part of the log the reader had passed).
* **real-time order**: a record whose acknowledgement the producer had received before
  another record was even handed to it has the smaller offset — within a partition and
  across partitions (GSNs follow the order in which the broker asked the sequencer, and a
  batch acknowledged before another is produced asked first). Both times are taken on the
  client: the acknowledgement time when the delivery callback ran (after the broker's
  answer), the send time when produce() was called (before the request left), so a
  violation is a real one.

Counted but allowed: **duplicated records** ("dup recs": the same record stored at two
offsets: with retries and idempotence off, a produce whose answer was lost is written again;
at-least-once), **reordered records** ("reord": one producer's records to a partition stored
in another order than it sent them, while neither was acknowledged before the other was
sent: without idempotence a client may retry a batch from the old leader's connection after
later batches went to the new leader, even with one request in flight per connection —
librdkafka's max.in.flight is per connection, not per partition), redeliveries, and records
whose delivery failed (the producer was told they failed, so either outcome is correct).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Ack:
    """A record the producer was told is stored: acks=all answered with this offset."""
    producer: str
    seq: int          # the producer's send order (assigned when produce() was called)
    topic: str
    partition: int
    offset: int
    value: bytes
    at: float = 0.0    # monotonic time the acknowledgement reached the producer
    sent: float = 0.0  # monotonic time produce() was called for the record


@dataclass(frozen=True)
class Read:
    """A record a consumer was given."""
    topic: str
    partition: int
    offset: int
    value: bytes
    at: float = 0.0


@dataclass
class Report:
    acked: int = 0
    read: int = 0
    failed: int = 0                 # deliveries reported as failed (informational)
    lost: list = field(default_factory=list)            # Ack
    offset_reuse: list = field(default_factory=list)    # (topic, partition, offset, values)
    cross_partition: list = field(default_factory=list)  # (offset, [(topic, partition)])
    read_order: list = field(default_factory=list)      # (topic, partition, prev, offset)
    realtime_order: list = field(default_factory=list)  # (earlier Ack, later Ack)
    reordered: list = field(default_factory=list)       # (producer, topic, partition, a, b)
    duplicated_records: int = 0     # values stored at more than one offset (allowed)
    redelivered: int = 0            # identical re-reads (allowed)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.offset_reuse or self.cross_partition
                    or self.read_order or self.realtime_order)

    def problems(self, limit: int = 5) -> str:
        """Human-readable list of what failed, with a few examples of each."""
        out = []
        for name, items in (("acknowledged records lost", self.lost),
                            ("offsets used twice in a partition", self.offset_reuse),
                            ("offsets used in two partitions", self.cross_partition),
                            ("reads out of order", self.read_order),
                            ("acknowledged-before-sent records with larger offsets",
                             self.realtime_order)):
            if items:
                out.append(f"{len(items)} {name}, e.g. {items[:limit]}")
        return "; ".join(out) or "none"


def check(acks: Iterable[Ack], reads: Iterable[Read], failed: int = 0) -> Report:
    acks = list(acks)
    reads = list(reads)
    rep = Report(acked=len(acks), read=len(reads), failed=failed)

    # The log as the consumers saw it: (topic, partition) -> offset -> set of values.
    log: dict[tuple, dict[int, set]] = defaultdict(lambda: defaultdict(set))
    last: dict[tuple, int] = {}
    for r in reads:
        tp = (r.topic, r.partition)
        seen = log[tp].get(r.offset)
        if seen is not None and r.value in seen:
            rep.redelivered += 1
            continue
        log[tp][r.offset].add(r.value)
        prev = last.get(tp)
        if prev is not None and r.offset <= prev:
            if seen is None:
                # A new record below what was already delivered.
                rep.read_order.append((r.topic, r.partition, prev, r.offset))
            # seen is not None with another value: offset reuse, reported below.
        else:
            last[tp] = r.offset

    # What producers were told, per position.
    acked_at: dict[tuple, set] = defaultdict(set)
    for a in acks:
        acked_at[(a.topic, a.partition, a.offset)].add(a.value)

    # Offset reuse within a partition (reads and acks together).
    positions = set(acked_at)
    for tp, offsets in log.items():
        for off in offsets:
            positions.add((*tp, off))
    for pos in sorted(positions):
        topic, partition, off = pos
        values = set(acked_at.get(pos, ())) | set(log.get((topic, partition), {}).get(off, ()))
        if len(values) > 1:
            rep.offset_reuse.append((topic, partition, off, sorted(values)))

    # Lost: acked but not read at its position.
    for a in acks:
        if a.value not in log.get((a.topic, a.partition), {}).get(a.offset, ()):
            rep.lost.append(a)

    # Cross-partition: one offset in two partitions.
    where: dict[int, set] = defaultdict(set)
    for topic, partition, off in positions:
        where[off].add((topic, partition))
    for off in sorted(where):
        if len(where[off]) > 1:
            rep.cross_partition.append((off, sorted(where[off])))

    # Real-time order: A acknowledged before B was sent => offset(A) < offset(B).
    # Sweep B in send order; `best` is the acknowledged record with the largest offset among
    # those acknowledged before B was sent.
    by_ack = sorted(acks, key=lambda a: a.at)
    i, best = 0, None
    for b in sorted(acks, key=lambda a: a.sent):
        while i < len(by_ack) and by_ack[i].at < b.sent:
            if best is None or by_ack[i].offset > best.offset:
                best = by_ack[i]
            i += 1
        if best is not None and best.offset >= b.offset and best.value != b.value:
            rep.realtime_order.append((best, b))

    # Reordering by client retries (allowed, counted): per producer and partition, send
    # order against offset order.
    by_stream: dict[tuple, list] = defaultdict(list)
    for a in acks:
        by_stream[(a.producer, a.topic, a.partition)].append(a)
    for (producer, topic, partition), items in by_stream.items():
        items.sort(key=lambda a: a.seq)
        for x, y in zip(items, items[1:]):
            if y.offset <= x.offset:
                rep.reordered.append(
                    (producer, topic, partition, (x.seq, x.offset), (y.seq, y.offset)))

    # Duplicated records: one value at several positions (at-least-once; allowed).
    count: dict[bytes, int] = defaultdict(int)
    for offsets in log.values():
        for values in offsets.values():
            for v in values:
                count[v] += 1
    rep.duplicated_records = sum(1 for n in count.values() if n > 1)
    return rep


def partition_stall(acks: Iterable[Ack], since: float, until: float) -> float:
    """Longest time, over partitions, without an acknowledgement in [since, until].

    For each partition the gaps are measured between `since`, its acknowledgements in
    (since, until] and — if its last one is before `until` — `until` itself. A partition
    that failed over shows its election plus retry time; one untouched by the fault shows its
    normal gap. Partitions without any acknowledgement in the window count the whole window.
    """
    if until <= since:
        return 0.0
    times: dict[tuple, list] = defaultdict(list)
    partitions = set()
    for a in acks:
        tp = (a.topic, a.partition)
        partitions.add(tp)
        if since < a.at <= until:
            times[tp].append(a.at)
    worst = 0.0
    for tp in partitions:
        points = [since, *sorted(times[tp]), until]
        worst = max(worst, max(b - a for a, b in zip(points, points[1:])))
    return worst


def stream_stall(times: Sequence[float], since: float, until: float) -> float:
    """Longest gap in one stream of event times (e.g. all consumed records) within
    [since, until], the window's ends included as points."""
    if until <= since:
        return 0.0
    points = [since, *sorted(t for t in times if since < t <= until), until]
    return max(b - a for a, b in zip(points, points[1:]))


HEADER = ("fault", "target", "acked", "failed", "read", "lost", "dup offs", "order",
          "dup recs", "reord", "recover s", "stall s", "read stall s", "ok")


def table_row(fault: str, rep: Report, stall: float, read_stall: float,
              target: str = "", recover: float | None = None) -> tuple:
    """One summary line. recover: seconds from the fault until every partition was
    acknowledged again while the fault held (None: not measured)."""
    return (fault, target or "-", rep.acked, rep.failed, rep.read, len(rep.lost),
            len(rep.offset_reuse) + len(rep.cross_partition),
            len(rep.read_order) + len(rep.realtime_order), rep.duplicated_records,
            len(rep.reordered),
            "-" if recover is None else f"{recover:.2f}", f"{stall:.2f}",
            f"{read_stall:.2f}", "yes" if rep.ok else "NO")


def format_table(rows: Sequence[tuple], header: Sequence[str] = HEADER) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


# ---- the global (total) order, as an ordered reader printed it --------------------------
@dataclass(frozen=True)
class Emitted:
    """A record the ordered reader printed, in the order it printed them."""
    topic: str
    partition: int
    offset: int
    value: bytes
    at: float = 0.0   # monotonic time the line reached the test


@dataclass
class OrderReport:
    """The verdict on an ordered reader's output (ordered-reader --check) against what the
    producers were told. Every list holds examples of one violation; `ok` needs all empty."""
    acked: int = 0
    emitted: int = 0
    not_increasing: list = field(default_factory=list)   # (previous offset, offset)
    missing: list = field(default_factory=list)          # Ack never printed at its offset
    twice: list = field(default_factory=list)            # (value, [offsets]) printed twice
    realtime: list = field(default_factory=list)         # (earlier Ack, later Ack) printed reversed
    late: list = field(default_factory=list)             # the reader's LATE/DUP/RESET lines
    holes: int = 0           # GSNs in [first, last printed] that no printed record holds
    hole_runs: int = 0       # maximal runs of consecutive such GSNs

    @property
    def ok(self) -> bool:
        return not (self.not_increasing or self.missing or self.twice or self.realtime
                    or self.late)

    def problems(self, limit: int = 5) -> str:
        out = []
        for name, items in (("printed offsets not strictly increasing", self.not_increasing),
                            ("acknowledged records never printed", self.missing),
                            ("records printed twice", self.twice),
                            ("records printed before one acknowledged before they were sent",
                             self.realtime),
                            ("records the reader received below what it had printed "
                             "(LATE/DUP/RESET)", self.late)):
            if items:
                out.append(f"{len(items)} {name}, e.g. {items[:limit]}")
        return "; ".join(out) or "none"


def check_total_order(acks: Iterable[Ack], emitted: Sequence[Emitted],
                      reader_reports: Iterable[str] = (),
                      exempt: Iterable[bytes] = ()) -> OrderReport:
    """The rules of the total-order fault test:

    * the printed offsets strictly increase;
    * every acknowledged record is printed, at the (topic, partition, offset) it was
      acknowledged with — except values in `exempt` (records the reader is not expected to
      reach, e.g. the last fence records under read_uncommitted);
    * no record (value) is printed twice;
    * a record acknowledged before another was sent is printed before it;
    * the reader never received a record below what it had printed (its LATE, DUP and RESET
      reports; any of them fails).

    Holes (numbers in the printed range that no printed record holds: GSNs that went to
    batches that never committed, or to other topics) are counted, not judged."""
    acks = list(acks)
    exempt = set(exempt)
    rep = OrderReport(acked=len(acks), emitted=len(emitted))
    rep.late = [line for line in reader_reports
                if line.startswith(("LATE", "DUP", "RESET"))]
    for prev, cur in zip(emitted, emitted[1:]):
        if cur.offset <= prev.offset:
            rep.not_increasing.append((prev.offset, cur.offset))

    index: dict[bytes, list[int]] = defaultdict(list)   # value -> positions in the output
    for i, e in enumerate(emitted):
        index[e.value].append(i)
    for value, where in index.items():
        if len(where) > 1:
            rep.twice.append((value, [emitted[i].offset for i in where]))

    for a in acks:
        if a.value in exempt:
            continue
        where = index.get(a.value, ())
        if not any((emitted[i].topic, emitted[i].partition, emitted[i].offset)
                   == (a.topic, a.partition, a.offset) for i in where):
            rep.missing.append(a)

    # A acknowledged before B was sent => A printed before B. Sweep B in send order,
    # keeping the printed position of the latest-printed record acknowledged before it.
    printed = {v: where[0] for v, where in index.items()}
    by_ack = sorted((a for a in acks if a.value in printed), key=lambda a: a.at)
    i, best = 0, None
    for b in sorted((a for a in acks if a.value in printed), key=lambda a: a.sent):
        while i < len(by_ack) and by_ack[i].at < b.sent:
            if best is None or printed[by_ack[i].value] > printed[best.value]:
                best = by_ack[i]
            i += 1
        if best is not None and best.value != b.value and printed[best.value] > printed[b.value]:
            rep.realtime.append((best, b))

    offsets = sorted({e.offset for e in emitted})
    for x, y in zip(offsets, offsets[1:]):
        if y - x > 1:
            rep.holes += y - x - 1
            rep.hole_runs += 1
    return rep


def emission_stall(acks: Iterable[Ack], emit_times: Sequence[float], since: float,
                   until: float) -> float:
    """Longest time the ordered reader's output did not move while producers were being
    acknowledged, within [since, until]: for each gap between consecutive printed lines
    (the window's ends count as points) that holds an acknowledgement, the time from the
    first such acknowledgement to the end of the gap. Idle periods without acknowledgements
    are not stalls."""
    if until <= since:
        return 0.0
    ack_times = sorted(a.at for a in acks if since < a.at <= until)
    return _stall(ack_times, [since, *sorted(t for t in emit_times if since < t <= until),
                              until])


def frontier_stall(acks: Iterable[Ack], samples: Sequence[tuple[float, float]], since: float,
                   until: float) -> float | None:
    """The same measure for F itself, from (time, gsn_frontier) samples scraped from the
    brokers: the longest time F did not grow while producers were acknowledged. None
    without samples (a broker without the metric)."""
    pts = sorted((t, f) for t, f in samples if since <= t <= until)
    if not pts:
        return None
    moves, last = [since], None
    for t, f in pts:
        if last is not None and f > last:
            moves.append(t)
        last = f if last is None else max(last, f)
    moves.append(until)
    ack_times = sorted(a.at for a in acks if since < a.at <= until)
    return _stall(ack_times, moves)


def _stall(ack_times: list[float], points: list[float]) -> float:
    """Max over consecutive points (a, b) holding an ack time t in (a, b] of b - first t."""
    import bisect
    worst = 0.0
    for a, b in zip(points, points[1:]):
        k = bisect.bisect_right(ack_times, a)
        if k < len(ack_times) and ack_times[k] <= b:
            worst = max(worst, b - ack_times[k])
    return worst


def visibility(acks: Iterable[Ack], emitted: Sequence[Emitted]) -> dict[str, float]:
    """Acknowledgement -> printed by the ordered reader, in ms: p50, p99, max."""
    printed = {e.value: e.at for e in emitted}
    lat = sorted((printed[a.value] - a.at) * 1000 for a in acks if a.value in printed)
    if not lat:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": lat[-1]}


ORDER_HEADER = ("fault", "acked", "printed", "holes", "hole runs", "F stall s (reader)",
                "F stall s (metric)", "ack->print p50/p99/max ms", "late", "ok")


def order_row(fault: str, rep: OrderReport, reader_stall: float, metric_stall: float | None,
              vis: dict[str, float]) -> tuple:
    return (fault, rep.acked, rep.emitted, rep.holes, rep.hole_runs, f"{reader_stall:.2f}",
            "-" if metric_stall is None else f"{metric_stall:.2f}",
            f"{vis['p50']:.0f}/{vis['p99']:.0f}/{vis['max']:.0f}", len(rep.late),
            "yes" if rep.ok else "NO")
