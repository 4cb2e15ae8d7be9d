"""Malformed and hostile input over raw sockets.

For every case: the broker answers (an error) or closes the connection within
a few seconds (a hang fails the test), stays alive, does not blow up its
memory, a fresh client can still produce and consume, and the records stored
before the abuse are unchanged.
"""

from __future__ import annotations

import random
import socket

import pytest

import kproto as kp
from kafkatest import (Out, assert_broker_usable, assert_same_records,
                       consume_all, create_topics, produce, unique_name)

MAX_RSS_BYTES = 2 << 30
GARBAGE_FRAMES = 10_000
GARBAGE_LANES = 4
GARBAGE_SEED = 0x65C0DE
MUTATIONS = 5_000


@pytest.fixture
def seeded(broker):
    """A broker holding 300 known records in a 2-partition topic."""
    topic = unique_name("precious")
    create_topics(broker.bootstrap, {topic: 2})
    records = produce(broker.bootstrap, [Out(topic, i % 2, f"k{i}".encode(), f"precious-{i}".encode())
                                         for i in range(300)])
    return broker, topic, records


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def check_intact(broker, topic, records, label: str) -> None:
    h = broker.handle
    assert h.alive(), f"broker died after {label} (exit code {h.returncode()})"
    rss = rss_bytes(h.pid)
    assert rss < MAX_RSS_BYTES, f"broker RSS is {rss >> 20} MiB after {label}"
    with kp.Conn(h.port) as c:  # the raw protocol still works on a new connection
        assert c.send(kp.api_versions_v0(4242)), f"connection refused/closed after {label}"
        payload = c.recv_frame()
        assert payload is not None, f"ApiVersions v0 got a closed connection after {label}"
        corr, err, _ = kp.parse_api_versions_v0(payload)
        assert (corr, err) == (4242, 0)
    got = consume_all(broker.bootstrap, [(topic, 0), (topic, 1)], expect=len(records), timeout=30)
    assert_same_records(records, got, f"stored records after {label}")
    assert_broker_usable(broker.bootstrap, label="malformed")


def expect_error_or_close(port: int, data: bytes, half_close: bool = False) -> list[bytes]:
    """Send raw bytes; return the response frames received before the broker
    closed the connection (or the first one if it keeps it open)."""
    with kp.Conn(port) as c:
        if not c.send(data):
            return []
        if half_close:
            c.sock.shutdown(socket.SHUT_WR)
            frames = []
            while (f := c.recv_frame()) is not None:
                frames.append(f)
            return frames
        f = c.recv_frame()
        return [] if f is None else [f]


# --------------------------------------------------------------------------
REQUIRED_APIS = {
    kp.API_PRODUCE: "Produce", kp.API_FETCH: "Fetch", kp.API_LIST_OFFSETS: "ListOffsets",
    kp.API_METADATA: "Metadata", kp.API_API_VERSIONS: "ApiVersions",
    kp.API_CREATE_TOPICS: "CreateTopics", kp.API_DELETE_TOPICS: "DeleteTopics",
    kp.API_OFFSET_FOR_LEADER_EPOCH: "OffsetForLeaderEpoch",
    kp.API_DESCRIBE_CONFIGS: "DescribeConfigs", kp.API_CREATE_PARTITIONS: "CreatePartitions",
    kp.API_DESCRIBE_CLUSTER: "DescribeCluster",
}


def test_api_versions_baseline(broker):
    """The raw client itself works: v0 and v3 ApiVersions, several requests
    pipelined on one connection answered in order."""
    with kp.Conn(broker.handle.port) as c:
        assert c.send(kp.api_versions_v0(1) + kp.api_versions_flexible(3, 2) + kp.api_versions_v0(3))
        corr, err, ranges = kp.parse_api_versions_v0(c.recv_frame())
        assert (corr, err) == (1, 0)
        missing = [name for key, name in REQUIRED_APIS.items() if key not in ranges]
        assert not missing, f"ApiVersions does not list {missing}: {ranges}"
        for key, (lo, hi) in ranges.items():
            assert 0 <= lo <= hi, f"api {key}: bad range {lo}..{hi}"
        assert ranges[kp.API_API_VERSIONS][0] == 0 and ranges[kp.API_API_VERSIONS][1] >= 3
        corr, err, ranges3 = kp.parse_api_versions_v3(c.recv_frame())
        assert (corr, err) == (2, 0) and ranges3 == ranges
        corr, err, _ = kp.parse_api_versions_v0(c.recv_frame())
        assert (corr, err) == (3, 0)


def test_api_versions_unsupported_version(seeded):
    """ApiVersions v99 -> a v0-format answer with UNSUPPORTED_VERSION and the
    supported ranges; the client can then retry on the same connection."""
    broker, topic, records = seeded
    with kp.Conn(broker.handle.port) as c:
        assert c.send(kp.api_versions_flexible(99, 77))
        payload = c.recv_frame()
        assert payload is not None, "connection closed instead of an UNSUPPORTED_VERSION answer"
        corr, err, ranges = kp.parse_api_versions_v0(payload)
        assert corr == 77, f"correlation id {corr}"
        assert err == kp.UNSUPPORTED_VERSION, f"error code {err}, want 35 UNSUPPORTED_VERSION"
        assert kp.API_API_VERSIONS in ranges and ranges[kp.API_API_VERSIONS][0] == 0, ranges
        assert kp.API_PRODUCE in ranges and kp.API_FETCH in ranges, ranges
        # Retry with a version it said it supports, on the same connection.
        v = min(ranges[kp.API_API_VERSIONS][1], 3)
        assert c.send(kp.api_versions_flexible(v, 78) if v >= 3 else kp.api_versions_v0(78))
        payload = c.recv_frame()
        assert payload is not None, "connection closed after the UNSUPPORTED_VERSION answer"
        corr, err, _ = (kp.parse_api_versions_v3 if v >= 3 else kp.parse_api_versions_v0)(payload)
        assert (corr, err) == (78, 0)
    check_intact(broker, topic, records, "ApiVersions v99")


def _metadata_v99() -> bytes:
    return kp.frame(kp.header_v2(kp.API_METADATA, 99, 5) + b"\x01\x00\x00")


def _huge_count(api_key: int, version: int, body_prefix: bytes, flexible: bool) -> bytes:
    hdr = (kp.header_v2 if flexible else kp.header_v1)(api_key, version, 9)
    count = kp.uvarint(0x7FFFFFFF) if flexible else kp.i32(0x7FFFFFFF)
    return kp.frame(hdr + body_prefix + count)


MALFORMED = {
    # A complete frame of 3 bytes: shorter than the 4 bytes any header starts with.
    "frame_of_3_bytes": kp.i32(3) + b"\x00\x12\x00",
    "empty_frame": kp.i32(0),
    "frame_of_1_byte": kp.i32(1) + b"\x00",
    # Shorter than a request header (api key, version, correlation id, client id).
    "frame_of_6_bytes": kp.frame(kp.i16(18) + kp.i16(0) + b"\x00\x00"),
    "header_without_client_id": kp.frame(kp.i16(18) + kp.i16(0) + kp.i32(1)),
    "client_id_longer_than_frame": kp.frame(kp.i16(18) + kp.i16(0) + kp.i32(1) + kp.i16(1000) + b"ab"),
    "client_id_negative_length": kp.frame(kp.i16(3) + kp.i16(1) + kp.i32(1) + kp.i16(-7) + b"abc"),
    "flexible_header_truncated_tags": kp.frame(kp.header_v1(kp.API_METADATA, 12, 1) + b"\xff\xff\xff"),
    "negative_length_prefix": kp.i32(-1) + b"\x00" * 16,
    "length_prefix_2^31-1": kp.u32(0x7FFFFFFF) + b"\x00\x12\x00\x00",
    "length_prefix_200MiB": kp.i32(200 << 20) + b"\x00\x12\x00\x00",
    "unknown_api_key_9999": kp.frame(kp.header_v1(9999, 0, 11) + b"\x00" * 8),
    "unknown_api_key_negative": kp.frame(kp.header_v1(-2, 0, 11)),
    "metadata_v99": _metadata_v99(),
    "produce_v99": kp.frame(kp.header_v2(kp.API_PRODUCE, 99, 6) + b"\x00" * 10),
    # Array lengths that ask for gigabytes in a request of a few bytes.
    "metadata_v1_huge_topic_count": _huge_count(kp.API_METADATA, 1, b"", False),
    "metadata_v9_huge_compact_count": _huge_count(kp.API_METADATA, 9, b"", True),
    "produce_v3_huge_topic_count": _huge_count(kp.API_PRODUCE, 3, kp.i16(-1) + kp.i16(-1) + kp.i32(1000), False),
    "produce_v9_huge_topic_count": _huge_count(kp.API_PRODUCE, 9, b"\x00" + kp.i16(-1) + kp.i32(1000), True),
    "fetch_v4_huge_topic_count": _huge_count(
        kp.API_FETCH, 4, kp.i32(-1) + kp.i32(100) + kp.i32(1) + kp.i32(1 << 20) + b"\x00", False),
    "create_topics_v2_huge_count": _huge_count(kp.API_CREATE_TOPICS, 2, b"", False),
    "list_offsets_v1_huge_count": _huge_count(kp.API_LIST_OFFSETS, 1, kp.i32(-1), False),
    "describe_configs_v1_huge_count": _huge_count(kp.API_DESCRIBE_CONFIGS, 1, b"", False),
    "api_versions_v3_huge_string": kp.frame(kp.header_v2(kp.API_API_VERSIONS, 3, 3) + kp.uvarint(0x7FFFFFFF)),
    # Well-formed, hostile values.
    "create_topics_2^31-1_partitions": kp.create_topics_v2(12, "huge-topic", 0x7FFFFFFF),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frame(seeded, case):
    broker, topic, records = seeded
    frames = expect_error_or_close(broker.handle.port, MALFORMED[case])
    for f in frames:  # an answer is fine; it must at least be a sane frame
        assert len(f) >= 4
    check_intact(broker, topic, records, case)


def test_partial_length_prefix_then_eof(seeded):
    """Three bytes of a length prefix and then EOF from the client."""
    broker, topic, records = seeded
    assert expect_error_or_close(broker.handle.port, b"\x00\x00\x00", half_close=True) == []
    check_intact(broker, topic, records, "3 bytes then EOF")


def test_frame_over_configured_limit(broker_factory):
    """--max-frame-bytes is enforced: a 2 MiB request against a 1 MiB limit
    gets a closed connection (or an error), even with the body sent."""
    broker = broker_factory(max_frame_bytes=1 << 20)
    topic = unique_name("precious")
    records = produce(broker.bootstrap, [Out(topic, 0, None, f"v{i}".encode()) for i in range(50)])
    body = kp.header_v1(kp.API_METADATA, 1, 1) + b"\x00" * ((2 << 20) - 20)
    with kp.Conn(broker.handle.port) as c:
        c.send(kp.frame(body))  # may fail half-way if the broker closes early: fine
        f = c.recv_frame()  # raises kp.Hang if neither an answer nor a close comes
        assert f is None or len(f) >= 4
    # A request just under the limit still works: 900 KiB produce via a client.
    big = produce(broker.bootstrap, [Out(topic, 0, None, b"B" * (900 << 10))],
                  compression_type="none", message_max_bytes=1 << 20)
    got = consume_all(broker.bootstrap, [(topic, 0)], expect=51)
    assert_same_records(records + big, got, "after oversized frame")


def _garbage_frame(rng: random.Random) -> bytes:
    n = rng.randrange(0, 300)
    if rng.random() < 0.5:
        # Plausible header (real API key and version), random body: exercises
        # the request decoders rather than just the framing.
        api_key = rng.randrange(0, 75)
        version = rng.randrange(0, 20)
        corr = rng.randrange(-2**31, 2**31)
        client = rng.choice([None, "", "g", "garbage-client"])
        hdr = kp.header_v1(api_key, version, corr, client)
        if rng.random() < 0.5:
            hdr += b"\x00"  # empty tagged fields, as in a flexible header
        return kp.frame(hdr + rng.randbytes(n))
    return kp.frame(rng.randbytes(n))


def _blast(broker, frames, label: str) -> tuple[int, int]:
    """Send each frame on one of a few connections, each followed by an
    ApiVersions "ping". The ping must be answered, or the connection closed
    (then that lane reconnects). Returns (answered, closed)."""
    port = broker.handle.port
    lanes: list[kp.Conn | None] = [None] * GARBAGE_LANES
    closed = answered = 0
    try:
        for i, data in enumerate(frames):
            lane = i % GARBAGE_LANES
            if lanes[lane] is None:
                try:
                    lanes[lane] = kp.Conn(port, timeout=5)
                except OSError as e:
                    raise AssertionError(f"cannot connect before {label} #{i}: {e}; "
                                         f"broker alive: {broker.handle.alive()}")
            conn = lanes[lane]
            ping_id = 0x7E000000 + i
            try:
                ok = conn.send(data) and conn.send(kp.api_versions_v0(ping_id))
                got_ping = False
                while ok:
                    f = conn.recv_frame()
                    if f is None:
                        break
                    if len(f) >= 4 and int.from_bytes(f[:4], "big", signed=True) == ping_id:
                        got_ping = True
                        break
            except kp.Hang as e:
                raise AssertionError(f"{label} #{i} = {data[:96].hex()}...: {e}")
            if got_ping:
                answered += 1
            else:
                closed += 1
                conn.close()
                lanes[lane] = None
                assert broker.handle.alive(), f"broker died on {label} #{i}: {data[:96].hex()}"
    finally:
        for c in lanes:
            if c is not None:
                c.close()
    print(f"{label}: {answered} answered/ignored, {closed} connections closed")
    return answered, closed


def test_random_garbage_frames(seeded):
    """10,000 seeded random frames over a few connections."""
    broker, topic, records = seeded
    rng = random.Random(GARBAGE_SEED)
    _blast(broker, (_garbage_frame(rng) for _ in range(GARBAGE_FRAMES)),
           f"garbage frame (seed {GARBAGE_SEED:#x})")
    check_intact(broker, topic, records, f"{GARBAGE_FRAMES} garbage frames")


def _seed_requests(broker, victim: str) -> dict[str, bytes]:
    """Well-formed requests for the API versions the broker says it supports."""
    with kp.Conn(broker.handle.port) as c:
        assert c.send(kp.api_versions_v0(1))
        _, err, ranges = kp.parse_api_versions_v0(c.recv_frame())
        assert err == 0
    ts = 1_700_000_000_000
    batch = kp.record_batch([b"mutant-seed-1", b"mutant-seed-2" * 20], ts)
    gz = kp.record_batch([b"gzip-seed-%d" % i for i in range(20)], ts, codec=1)
    candidates = {
        "produce_v3": (kp.API_PRODUCE, 3, kp.produce_v3(101, victim, 0, batch)),
        "produce_v3_gzip": (kp.API_PRODUCE, 3, kp.produce_v3(102, victim, 0, gz)),
        "produce_v9": (kp.API_PRODUCE, 9, kp.produce_v9(103, victim, 0, batch)),
        "metadata_v4": (kp.API_METADATA, 4, kp.metadata_v4(104, [victim])),
        "metadata_v9": (kp.API_METADATA, 9, kp.metadata_v9(105, [victim])),
        "fetch_v4": (kp.API_FETCH, 4, kp.fetch_v4(106, victim, 0, 0)),
        "list_offsets_v1": (kp.API_LIST_OFFSETS, 1, kp.list_offsets_v1(107, victim, 0, -2)),
        "describe_configs_v1": (kp.API_DESCRIBE_CONFIGS, 1, kp.describe_configs_v1(108, victim)),
        "api_versions_v3": (kp.API_API_VERSIONS, 3, kp.api_versions_flexible(3, 109)),
    }
    return {name: req for name, (key, ver, req) in candidates.items()
            if key in ranges and ranges[key][0] <= ver <= ranges[key][1]}


def _mutate(rng: random.Random, req: bytes) -> bytes:
    payload = bytearray(req[4:])
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        lo = 8 if rng.random() < 0.8 else 0  # mostly keep api key/version/correlation id
        if len(payload) <= lo + 4:
            op = 2
        if op == 0:  # flip bits
            for _ in range(rng.randint(1, 4)):
                payload[rng.randrange(lo, len(payload))] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncate
            del payload[rng.randrange(lo, len(payload)):]
        elif op == 2:  # append junk
            payload += rng.randbytes(rng.randint(1, 64))
        elif op == 3:  # plant a hostile 32-bit length/count
            at = rng.randrange(lo, len(payload) - 3)
            payload[at:at + 4] = rng.choice([0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0x00FFFFFF,
                                             0x00100000, 0xFFFFFFFE]).to_bytes(4, "big")
        elif op == 4:  # extreme byte (varints, bools, int8 fields)
            payload[rng.randrange(lo, len(payload))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        else:  # duplicate a slice
            a = rng.randrange(lo, len(payload))
            b = min(len(payload), a + rng.randint(1, 32))
            payload[b:b] = payload[a:b]
    _defuse_fetch_wait(payload)
    return kp.frame(bytes(payload))


def _defuse_fetch_wait(payload: bytearray) -> None:
    """A Fetch whose max_wait_ms was mutated to days is a legitimate long
    poll, not a hang: reset max_wait_ms to 0 where the broker will read it."""
    if len(payload) < 10 or int.from_bytes(payload[0:2], "big") != kp.API_FETCH:
        return
    if int.from_bytes(payload[2:4], "big", signed=True) not in range(0, 12):
        return  # flexible (v12+) headers are not used as seeds
    cid = int.from_bytes(payload[8:10], "big", signed=True)
    at = 10 + max(cid, 0) + 4  # header, then replica_id
    if at + 4 <= len(payload):
        payload[at:at + 4] = b"\x00\x00\x00\x00"


def test_mutated_valid_requests(seeded):
    """Valid Produce (plain, gzip, flexible), Metadata, Fetch, ListOffsets,
    DescribeConfigs and ApiVersions requests are first answered normally;
    then 5,000 seeded mutations of them (bit flips, truncation, hostile
    length fields, ...) get an answer or a closed connection."""
    broker, topic, records = seeded
    victim = unique_name("victim")
    create_topics(broker.bootstrap, {victim: 1})
    seeds = _seed_requests(broker, victim)
    assert {"produce_v3", "metadata_v4", "fetch_v4"} <= set(seeds), sorted(seeds)

    # Baseline: the hand-built requests are valid.
    for name, req in seeds.items():
        with kp.Conn(broker.handle.port) as c:
            assert c.send(req)
            f = c.recv_frame()
            assert f is not None, f"well-formed {name} got a closed connection"
            corr = int.from_bytes(f[:4], "big", signed=True)
            assert corr == int.from_bytes(req[8:12], "big", signed=True), f"{name}: correlation id {corr}"
            if name.startswith("produce_v3"):
                _, parts = kp.parse_produce_v3(f)
                assert [(t, p, e) for t, p, e, _ in parts] == [(victim, 0, 0)], f"{name}: {parts}"
    raw = consume_all(broker.bootstrap, [(victim, 0)], timeout=30)
    vals = [r.value for r in raw]
    assert b"mutant-seed-1" in vals and b"gzip-seed-19" in vals, vals[:5]

    rng = random.Random(GARBAGE_SEED + 1)
    names = sorted(seeds)
    _blast(broker, (_mutate(rng, seeds[rng.choice(names)]) for _ in range(MUTATIONS)),
           f"mutated request (seed {GARBAGE_SEED + 1:#x})")
    check_intact(broker, topic, records, f"{MUTATIONS} mutated requests")


def _gzip_bomb_records(value_bytes: int) -> bytes:
    """One record whose value is `value_bytes` zero bytes, gzip-compressed
    incrementally (the plain form never exists in memory)."""
    import zlib
    value_len = kp.varint(value_bytes)
    body_head = kp.i8(0) + kp.varint(0) + kp.varint(0) + kp.varint(-1) + value_len
    body_len = len(body_head) + value_bytes + 1
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    out = [z.compress(kp.varint(body_len) + body_head)]
    chunk = bytes(1 << 20)
    for _ in range(value_bytes >> 20):
        out.append(z.compress(chunk))
    out.append(z.compress(kp.varint(0)))  # no headers
    out.append(z.flush())
    return b"".join(out)


def fetch_batches(port: int, topic: str, partition: int) -> list[kp.Batch]:
    """All record batches of a partition, read with raw Fetch v4 requests."""
    batches: list[kp.Batch] = []
    offset = 0
    with kp.Conn(port, timeout=10) as c:
        for corr in range(1, 10_000):
            assert c.send(kp.fetch_v4(corr, topic, partition, offset))
            f = c.recv_frame()
            assert f is not None, "Fetch got a closed connection"
            _, parts = kp.parse_fetch_v4(f)
            ((_, _, err, hw, records),) = parts
            assert err == 0, f"Fetch error {err}"
            got = kp.parse_batches(records)
            if not got:
                assert offset >= hw, f"no batch returned at offset {offset} below high watermark {hw}"
                return batches
            batches += got
            offset = got[-1].base_offset + got[-1].last_offset_delta + 1
    raise AssertionError("Fetch loop did not terminate")


def batch_problems(batches: list[kp.Batch]) -> list[str]:
    """What is wrong with the stored batches of one partition, from a
    consumer's point of view (empty if nothing)."""
    problems = []
    prev_end = -1
    for b in batches:
        codec = b.attributes & 0x7
        if b.magic != 2:
            problems.append(f"batch with magic {b.magic}: {b}")
        if not b.crc_ok:
            problems.append(f"batch fails its CRC: {b}")
        if b.count < 1:
            problems.append(f"empty batch: {b}")
        if b.base_offset <= prev_end:
            problems.append(f"offsets overlap the previous batch (ends at {prev_end}): {b}")
        if b.last_offset_delta < b.count - 1:
            problems.append(f"{b.count} records in {b.last_offset_delta + 1} offsets: {b}")
        if codec > 4:
            problems.append(f"unknown compression codec {codec} (consumers cannot read it): {b}")
        elif codec == 0:
            d = b.record_offset_deltas
            if d is None:
                problems.append(f"uncompressed records do not parse (consumers cannot read them): {b}")
            elif not (all(x < y for x, y in zip(d, d[1:])) and d[0] >= 0 and d[-1] <= b.last_offset_delta):
                problems.append(f"record offsets repeat or run backwards {d}: {b}")
        elif codec == 1 and b.gzip_ok is False:
            problems.append(f"gzip payload does not decompress (consumers cannot read it): {b}")
        prev_end = b.base_offset + b.last_offset_delta
    return problems


def test_hostile_record_batches(seeded):
    """CRC-valid but hostile record batches. Each gets an error or a closed
    connection (or is accepted). Afterwards every batch the partition holds
    is a sane v2 batch with a valid CRC, and no two records share an offset."""
    broker, topic, records = seeded
    victim = unique_name("victim")
    create_topics(broker.bootstrap, {victim: 1})
    port = broker.handle.port
    ts = 1_700_000_000_000
    good = produce(broker.bootstrap, [Out(victim, 0, None, b"good-before")])
    hostile = {
        "count_2^31-1": kp.record_batch([b"x"], ts, count=0x7FFFFFFF),
        "count_larger_than_records": kp.record_batch([b"x", b"y"], ts, count=50),
        "count_negative": kp.record_batch([b"x"], ts, count=-3),
        "zero_records": kp.record_batch([], ts),
        "duplicate_offset_deltas": kp.record_batch([b"d1", b"d2", b"d3"], ts, offset_deltas=[0, 0, 0],
                                                   last_offset_delta=0),
        "backwards_offset_deltas": kp.record_batch([b"b1", b"b2", b"b3"], ts, offset_deltas=[2, 1, 0]),
        "last_offset_delta_2^31-1": kp.record_batch([b"x"], ts, last_offset_delta=0x7FFFFFFF),
        "last_offset_delta_negative": kp.record_batch([b"x", b"y"], ts, last_offset_delta=-1),
        "batch_length_2^31-1": kp.record_batch([b"x"], ts, batch_length=0x7FFFFFFF),
        "batch_length_too_short": kp.record_batch([b"x"], ts, batch_length=20),
        "magic_99": kp.record_batch([b"x"], ts, magic=99),
        "record_length_huge": kp.record_batch([b"x"], ts, records=kp.varint(0x7FFFFFFF) + b"\x00" * 8),
        "bad_crc": kp.with_bad_crc(kp.record_batch([b"x"], ts)),
        "unknown_codec_7": kp.with_attributes(kp.record_batch([b"x"], ts), 7),
        "gzip_garbage": kp.with_attributes(
            kp.record_batch([b"x"], ts, records=b"\x1f\x8b\x08" + b"\x00" * 40), 1),
        "gzip_bomb_256MiB": kp.with_attributes(
            kp.record_batch([b"x"], ts, records=_gzip_bomb_records(256 << 20)), 1),
    }

    outcomes = {}
    for i, (name, batch) in enumerate(hostile.items()):
        with kp.Conn(port, timeout=30 if "bomb" in name else 5) as c:
            try:
                if not c.send(kp.produce_v3(1000 + i, victim, 0, batch)):
                    outcomes[name] = "closed"
                    continue
                f = c.recv_frame()
            except kp.Hang as e:
                raise AssertionError(f"hostile batch {name}: {e}")
            if f is None:
                outcomes[name] = "closed"
            else:
                _, parts = kp.parse_produce_v3(f)
                outcomes[name] = f"error {parts[0][2]}" if parts[0][2] else f"accepted at {parts[0][3]}"
        assert broker.handle.alive(), f"broker died on hostile batch {name}"
        rss = rss_bytes(broker.handle.pid)
        assert rss < MAX_RSS_BYTES, f"broker RSS {rss >> 20} MiB after hostile batch {name}"
    print("hostile batches:", outcomes)

    after = produce(broker.bootstrap, [Out(victim, 0, None, b"good-after")])
    assert after[0].offset > good[0].offset
    batches = fetch_batches(port, victim, 0)
    offsets = {b.base_offset for b in batches}
    assert good[0].offset in offsets and after[0].offset in offsets
    check_intact(broker, topic, records, "hostile record batches")
    problems = batch_problems(batches)
    assert not problems, ("the partition now holds batches that break consumers "
                          f"(answers were {outcomes}):\n  " + "\n  ".join(problems))
