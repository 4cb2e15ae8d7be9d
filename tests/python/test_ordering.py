"""Requests pipelined on one connection are handled in order (Kafka's
guarantee, which producers with several requests in flight rely on): a
later Produce on the same connection never gets lower offsets than an
earlier one, and responses come back in request order."""

from __future__ import annotations

import kproto as kp
from kafkatest import (Out, assert_gsn_offsets, consume_all, create_topics,
                       produce, unique_name)

PIPELINED = 200


def test_pipelined_produce_requests_keep_order(broker):
    topic = unique_name("pipeline")
    create_topics(broker.bootstrap, {topic: 1})
    ts = 1_700_000_000_000
    reqs = []
    for i in range(PIPELINED):
        # Alternate tiny and larger batches, so that later ones could overtake.
        values = [b"p%d" % i] if i % 2 == 0 else [b"p%d-%d-" % (i, j) + b"z" * 2000 for j in range(20)]
        reqs.append(kp.produce_v3(5000 + i, topic, 0, kp.record_batch(values, ts)))
    with kp.Conn(broker.handle.port, timeout=30) as c:
        assert c.send(b"".join(reqs))
        answers = []
        for _ in range(PIPELINED):
            f = c.recv_frame()
            assert f is not None, f"connection closed after {len(answers)} answers"
            corr, parts = kp.parse_produce_v3(f)
            ((_, _, err, base),) = parts
            assert err == 0, f"request {corr - 5000}: error {err}"
            answers.append((corr - 5000, base))
    order = [i for i, _ in answers]
    assert order == list(range(PIPELINED)), f"responses out of request order: {order[:20]}..."
    bases = [b for _, b in answers]
    bad = [(i, bases[i - 1], bases[i]) for i in range(1, len(bases)) if bases[i] <= bases[i - 1]]
    assert not bad, (f"{len(bad)} pipelined requests got offsets below an earlier request on the "
                     f"same connection, e.g. (request, previous base, base) {bad[:5]}")


def test_producer_order_with_many_requests_in_flight(broker):
    """librdkafka with up to 5 requests in flight and no retries needed:
    records land in the partition in the order they were produced."""
    topic = unique_name("inflight")
    values = [f"m{i:05d}-".encode() + b"w" * (i % 700) for i in range(3000)]
    delivered = produce(broker.bootstrap, [Out(topic, 0, None, v) for v in values],
                        linger_ms=0, batch_num_messages=7,
                        max_in_flight_requests_per_connection=5)
    got = consume_all(broker.bootstrap, [(topic, 0)], expect=len(values))
    assert_gsn_offsets(got)
    assert [r.value for r in got] == values, (
        "records stored out of production order; first difference at index "
        f"{next(i for i, (a, b) in enumerate(zip(got, values)) if a.value != b)}")
    assert sorted(r.offset for r in delivered) == [r.offset for r in got]
