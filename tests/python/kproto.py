"""A tiny hand-rolled Kafka wire client for sending exactly the bytes a test
wants (well-formed or not) and reading the answer with a deadline."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple, Optional

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_OFFSET_FOR_LEADER_EPOCH = 23
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_DELETE_TOPICS = 20
API_DESCRIBE_CONFIGS = 32
API_CREATE_PARTITIONS = 37
API_DESCRIBE_CLUSTER = 60

UNSUPPORTED_VERSION = 35


class Hang(AssertionError):
    """The broker neither answered nor closed the connection in time."""


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def nullable_string(s: Optional[str]) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


def header_v1(api_key: int, api_version: int, correlation_id: int,
              client_id: Optional[str] = "gsn-tests") -> bytes:
    return i16(api_key) + i16(api_version) + i32(correlation_id) + nullable_string(client_id)


def header_v2(api_key: int, api_version: int, correlation_id: int,
              client_id: Optional[str] = "gsn-tests") -> bytes:
    return header_v1(api_key, api_version, correlation_id, client_id) + uvarint(0)


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


def api_versions_v0(correlation_id: int) -> bytes:
    return frame(header_v1(API_API_VERSIONS, 0, correlation_id))


def api_versions_flexible(version: int, correlation_id: int) -> bytes:
    body = compact_string("gsn-tests") + compact_string("0.1") + uvarint(0)
    return frame(header_v2(API_API_VERSIONS, version, correlation_id) + body)


class Conn:
    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> bool:
        """False if the broker already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False
        except socket.timeout:
            raise Hang(f"send of {len(data)} bytes blocked for {self.timeout}s")

    def _recv_exact(self, n: int) -> Optional[bytes]:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise Hang(f"no answer and no close within {self.timeout}s "
                           f"(had {len(buf)} of {n} bytes)")
            except (ConnectionResetError, ConnectionAbortedError):
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def recv_frame(self, max_size: int = 64 << 20) -> Optional[bytes]:
        """The next response frame's payload, or None if the broker closed
        the connection. Raises Hang after the timeout."""
        head = self._recv_exact(4)
        if head is None:
            return None
        (size,) = struct.unpack(">i", head)
        assert 4 <= size <= max_size, f"response frame with absurd size {size}"
        return self._recv_exact(size)

    def wait_closed(self) -> None:
        """Read (and discard) until the broker closes the connection."""
        while self.recv_frame() is not None:
            pass


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        assert self.pos + n <= len(self.data), (
            f"response too short: wanted {n} bytes at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            assert shift < 35, "uvarint too long"

    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_api_versions_v0(payload: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """(correlation_id, error_code, {api_key: (min, max)}) from a v0 response."""
    r = Reader(payload)
    corr = r.i32()
    err = r.i16()
    n = r.i32()
    assert 0 <= n <= 1000, f"api_keys count {n}"
    ranges = {}
    for _ in range(n):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        ranges[key] = (lo, hi)
    return corr, err, ranges


def parse_api_versions_v3(payload: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """Response header is v0 even for flexible ApiVersions versions."""
    r = Reader(payload)
    corr = r.i32()
    err = r.i16()
    n = r.uvarint() - 1
    assert 0 <= n <= 1000, f"api_keys count {n}"
    ranges = {}
    for _ in range(n):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        tags = r.uvarint()
        for _ in range(tags):
            r.uvarint()
            r.take(r.uvarint())
        ranges[key] = (lo, hi)
    r.i32()  # throttle_time_ms
    return corr, err, ranges


# --------------------------------------------------------------------------
# Well-formed requests (used as seeds for mutation and as a baseline)
# --------------------------------------------------------------------------
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def varint(v: int) -> bytes:
    """Zigzag varint (record fields)."""
    return uvarint((v << 1) ^ (v >> 63))


def string(s: str) -> bytes:
    b = s.encode()
    return i16(len(b)) + b


def array(items: list[bytes]) -> bytes:
    return i32(len(items)) + b"".join(items)


def compact_array(items: list[bytes]) -> bytes:
    return uvarint(len(items) + 1) + b"".join(items)


def encode_records(values: list[bytes], offset_deltas: Optional[list[int]] = None) -> bytes:
    recs = b""
    for i, v in enumerate(values):
        delta = i if offset_deltas is None else offset_deltas[i]
        body = i8(0) + varint(0) + varint(delta) + varint(-1) + varint(len(v)) + v + varint(0)
        recs += varint(len(body)) + body
    return recs


def record_batch(values: list[bytes], timestamp_ms: int, codec: int = 0, *,
                 count: Optional[int] = None, last_offset_delta: Optional[int] = None,
                 offset_deltas: Optional[list[int]] = None, magic: int = 2,
                 batch_length: Optional[int] = None, records: Optional[bytes] = None,
                 producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """A RecordBatch v2 holding `values` (no keys, no headers), with a valid
    CRC-32C. codec: 0 none, 1 gzip. The keyword arguments override header
    fields (or the encoded records) to build hostile but CRC-valid batches;
    producer_id/producer_epoch/base_sequence make an idempotent producer's batch."""
    recs = encode_records(values, offset_deltas) if records is None else records
    if codec == 1:
        import gzip
        recs = gzip.compress(recs)
    elif codec != 0:
        raise ValueError(codec)
    n = len(values) if count is None else count
    lod = len(values) - 1 if last_offset_delta is None else last_offset_delta
    after_crc = (i16(codec) + i32(lod) + i64(timestamp_ms) + i64(timestamp_ms)
                 + i64(producer_id) + i16(producer_epoch) + i32(base_sequence) + i32(n) + recs)
    after_len = i32(-1) + i8(magic) + u32(crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(after_len) if batch_length is None else batch_length) + after_len


def with_attributes(batch: bytes, attributes: int) -> bytes:
    """The same batch with other attributes (e.g. a codec id) and a CRC that
    matches again."""
    rest = i16(attributes) + batch[23:]
    return batch[:17] + u32(crc32c(rest)) + rest


def with_bad_crc(batch: bytes) -> bytes:
    return batch[:17] + u32(crc32c(batch[21:]) ^ 0xDEADBEEF) + batch[21:]


class Batch(NamedTuple):
    base_offset: int
    last_offset_delta: int
    count: int
    magic: int
    attributes: int
    crc_ok: bool
    record_offset_deltas: Optional[list[int]]  # None if compressed / unparsable
    gzip_ok: Optional[bool] = None  # gzip batches: first 64 MiB decompress cleanly


def parse_batches(data: bytes) -> list[Batch]:
    """Record batches in a Fetch response's records field (a trailing partial
    batch is ignored, as clients do)."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base, length = struct.unpack(">qi", data[pos:pos + 12])
        if length < 49 or pos + 12 + length > len(data):
            break
        b = data[pos + 12:pos + 12 + length]
        magic = b[4]
        (crc,) = struct.unpack(">I", b[5:9])
        attributes, lod = struct.unpack(">hi", b[9:15])
        (count,) = struct.unpack(">i", b[45:49])
        deltas = None
        if attributes & 0x7 == 0:
            try:
                r = Reader(b[49:])
                deltas = []
                for _ in range(count):
                    rec_len = _zigzag(r.uvarint())
                    rec = Reader(r.take(rec_len))
                    rec.take(1)
                    _zigzag(rec.uvarint())            # timestamp delta
                    deltas.append(_zigzag(rec.uvarint()))
            except AssertionError:
                deltas = None
        gzip_ok = None
        if attributes & 0x7 == 1:
            import zlib
            try:
                zlib.decompressobj(47).decompress(b[49:], 64 << 20)
                gzip_ok = True
            except zlib.error:
                gzip_ok = False
        out.append(Batch(base, lod, count, magic, attributes, crc32c(b[9:]) == crc, deltas, gzip_ok))
        pos += 12 + length
    return out


def _zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def produce_v3(corr: int, topic: str, partition: int, batch: bytes, acks: int = -1) -> bytes:
    body = (i16(-1) + i16(acks) + i32(10000)
            + array([string(topic) + array([i32(partition) + i32(len(batch)) + batch])]))
    return frame(header_v1(API_PRODUCE, 3, corr) + body)


def produce_v9(corr: int, topic: str, partition: int, batch: bytes, acks: int = -1) -> bytes:
    part = i32(partition) + uvarint(len(batch) + 1) + batch + uvarint(0)
    body = (uvarint(0) + i16(acks) + i32(10000)
            + compact_array([compact_string(topic) + compact_array([part]) + uvarint(0)]) + uvarint(0))
    return frame(header_v2(API_PRODUCE, 9, corr) + body)


def metadata_v4(corr: int, topics: Optional[list[str]], auto_create: bool = False) -> bytes:
    t = i32(-1) if topics is None else array([string(x) for x in topics])
    return frame(header_v1(API_METADATA, 4, corr) + t + i8(1 if auto_create else 0))


def metadata_v7(corr: int, topics: Optional[list[str]], auto_create: bool = False) -> bytes:
    t = i32(-1) if topics is None else array([string(x) for x in topics])
    return frame(header_v1(API_METADATA, 7, corr) + t + i8(1 if auto_create else 0))


class PartitionMeta(NamedTuple):
    error: int
    leader: int
    epoch: int
    replicas: list[int]
    isr: list[int]
    offline: list[int]


def parse_metadata_v7(payload: bytes) -> tuple[int, dict[str, dict[int, PartitionMeta]]]:
    """(controller_id, {topic: {partition: PartitionMeta}}) from a v7 response."""
    r = Reader(payload)
    r.i32()  # correlation id
    r.i32()  # throttle_time_ms

    def string() -> Optional[str]:
        n = r.i16()
        return None if n < 0 else r.take(n).decode()

    def ints() -> list[int]:
        return [r.i32() for _ in range(r.i32())]

    for _ in range(r.i32()):  # brokers: node_id, host, port, rack
        r.i32()
        string()
        r.i32()
        string()
    string()  # cluster_id
    controller = r.i32()
    topics = {}
    for _ in range(r.i32()):
        r.i16()  # error_code
        name = string()
        r.take(1)  # is_internal
        parts = {}
        for _ in range(r.i32()):
            err, index, leader, epoch = r.i16(), r.i32(), r.i32(), r.i32()
            parts[index] = PartitionMeta(err, leader, epoch, ints(), ints(), ints())
        topics[name] = parts
    return controller, topics


def metadata_v9(corr: int, topics: Optional[list[str]], auto_create: bool = False) -> bytes:
    t = uvarint(0) if topics is None else compact_array([compact_string(x) + uvarint(0) for x in topics])
    return frame(header_v2(API_METADATA, 9, corr) + t + i8(1 if auto_create else 0)
                 + i8(0) + i8(0) + uvarint(0))


def fetch_v4(corr: int, topic: str, partition: int, offset: int, isolation: int = 0) -> bytes:
    body = (i32(-1) + i32(100) + i32(1) + i32(1 << 20) + i8(isolation)
            + array([string(topic) + array([i32(partition) + i64(offset) + i32(1 << 20)])]))
    return frame(header_v1(API_FETCH, 4, corr) + body)


def list_offsets_v1(corr: int, topic: str, partition: int, timestamp: int) -> bytes:
    body = i32(-1) + array([string(topic) + array([i32(partition) + i64(timestamp)])])
    return frame(header_v1(API_LIST_OFFSETS, 1, corr) + body)


def list_offsets_v2(corr: int, topic: str, partition: int, timestamp: int,
                    isolation: int = 0) -> bytes:
    body = i32(-1) + i8(isolation) + array([string(topic) + array([i32(partition) + i64(timestamp)])])
    return frame(header_v1(API_LIST_OFFSETS, 2, corr) + body)


def parse_list_offsets_v2(payload: bytes) -> list[tuple[str, int, int, int]]:
    """[(topic, partition, error_code, offset)]."""
    r = Reader(payload)
    r.i32()  # correlation id
    r.i32()  # throttle_time_ms
    out = []
    for _ in range(r.i32()):
        name = r.take(r.i16()).decode()
        for _ in range(r.i32()):
            part, err = r.i32(), r.i16()
            r.take(8)  # timestamp
            offset = struct.unpack(">q", r.take(8))[0]
            out.append((name, part, err, offset))
    return out


def describe_configs_v1(corr: int, topic: str) -> bytes:
    body = array([i8(2) + string(topic) + i32(-1)]) + i8(0)
    return frame(header_v1(API_DESCRIBE_CONFIGS, 1, corr) + body)


def create_topics_v2(corr: int, topic: str, partitions: int) -> bytes:
    body = array([string(topic) + i32(partitions) + i16(1) + array([]) + array([])]) + i32(10000) + i8(0)
    return frame(header_v1(API_CREATE_TOPICS, 2, corr) + body)


def parse_produce_v3(payload: bytes) -> tuple[int, list[tuple[str, int, int, int]]]:
    """(correlation_id, [(topic, partition, error_code, base_offset)])."""
    r = Reader(payload)
    corr = r.i32()
    out = []
    for _ in range(r.i32()):
        name = r.take(r.i16()).decode()
        for _ in range(r.i32()):
            part, err = r.i32(), r.i16()
            base = struct.unpack(">q", r.take(8))[0]
            r.take(8)  # log_append_time_ms
            out.append((name, part, err, base))
    return corr, out


def parse_fetch_v4(payload: bytes) -> tuple[int, list[tuple[str, int, int, int, bytes]]]:
    """(correlation_id, [(topic, partition, error_code, high_watermark, records)])."""
    corr, parts = parse_fetch_v4_stable(payload)
    return corr, [(t, p, e, hw, rec) for t, p, e, hw, _, rec in parts]


def parse_fetch_v4_stable(payload: bytes) -> tuple[int, list[tuple[str, int, int, int, int, bytes]]]:
    """(correlation_id, [(topic, partition, error_code, high_watermark, last_stable_offset,
    records)])."""
    r = Reader(payload)
    corr = r.i32()
    r.i32()  # throttle_time_ms
    out = []
    for _ in range(r.i32()):
        name = r.take(r.i16()).decode()
        for _ in range(r.i32()):
            part, err = r.i32(), r.i16()
            hw, lso = struct.unpack(">qq", r.take(16))
            n_aborted = r.i32()
            for _ in range(max(n_aborted, 0)):
                r.take(16)
            size = r.i32()
            records = b"" if size < 0 else r.take(size)
            out.append((name, part, err, hw, lso, records))
    return corr, out


API_INIT_PRODUCER_ID = 22


def init_producer_id(corr: int, version: int, transactional_id: Optional[str] = None,
                     producer_id: int = -1, producer_epoch: int = -1) -> bytes:
    """InitProducerId v0-v5 (flexible from v2)."""
    if version >= 2:
        txn = uvarint(0) if transactional_id is None else compact_string(transactional_id)
        head = header_v2(API_INIT_PRODUCER_ID, version, corr)
    else:
        txn = nullable_string(transactional_id)
        head = header_v1(API_INIT_PRODUCER_ID, version, corr)
    body = txn + i32(60000)
    if version >= 3:
        body += i64(producer_id) + i16(producer_epoch)
    if version >= 2:
        body += uvarint(0)
    return frame(head + body)


def parse_init_producer_id(payload: bytes, version: int) -> tuple[int, int, int, int]:
    """(correlation_id, error_code, producer_id, producer_epoch)."""
    r = Reader(payload)
    corr = r.i32()
    if version >= 2:
        r.uvarint()  # response header tagged fields
    r.i32()  # throttle_time_ms
    err = r.i16()
    pid = struct.unpack(">q", r.take(8))[0]
    epoch = r.i16()
    return corr, err, pid, epoch


# --------------------------------------------------------------------------
# Requests that carry a current leader epoch (KIP-320), non-flexible versions
# --------------------------------------------------------------------------
def fetch_v10(corr: int, topic: str, partition: int, offset: int,
              current_leader_epoch: int = -1, max_wait_ms: int = 100) -> bytes:
    part = (i32(partition) + i32(current_leader_epoch) + i64(offset) + i64(-1)
            + i32(1 << 20))
    body = (i32(-1) + i32(max_wait_ms) + i32(1) + i32(1 << 20) + i8(0)
            + i32(0) + i32(-1)                                  # no fetch session
            + array([string(topic) + array([part])]) + array([]))
    return frame(header_v1(API_FETCH, 10, corr) + body)


def parse_fetch_v10(payload: bytes) -> tuple[int, int, list[tuple[str, int, int, int, bytes]]]:
    """(correlation_id, error_code, [(topic, partition, error_code, high_watermark, records)])."""
    r = Reader(payload)
    corr = r.i32()
    r.i32()  # throttle_time_ms
    top_err = r.i16()
    r.i32()  # session_id
    out = []
    for _ in range(r.i32()):
        name = r.take(r.i16()).decode()
        for _ in range(r.i32()):
            part, err = r.i32(), r.i16()
            hw = struct.unpack(">q", r.take(8))[0]
            r.take(16)  # last_stable_offset, log_start_offset
            n_aborted = r.i32()
            for _ in range(max(n_aborted, 0)):
                r.take(16)
            size = r.i32()
            records = b"" if size < 0 else r.take(size)
            out.append((name, part, err, hw, records))
    return corr, top_err, out


def list_offsets_v4(corr: int, topic: str, partition: int, timestamp: int,
                    current_leader_epoch: int = -1) -> bytes:
    part = i32(partition) + i32(current_leader_epoch) + i64(timestamp)
    body = i32(-1) + i8(0) + array([string(topic) + array([part])])
    return frame(header_v1(API_LIST_OFFSETS, 4, corr) + body)


def parse_list_offsets_v4(payload: bytes) -> tuple[int, list[tuple[str, int, int, int, int, int]]]:
    """(correlation_id, [(topic, partition, error_code, timestamp, offset, leader_epoch)])."""
    r = Reader(payload)
    corr = r.i32()
    r.i32()  # throttle_time_ms
    out = []
    for _ in range(r.i32()):
        name = r.take(r.i16()).decode()
        for _ in range(r.i32()):
            part, err = r.i32(), r.i16()
            ts, off = struct.unpack(">qq", r.take(16))
            out.append((name, part, err, ts, off, r.i32()))
    return corr, out


def offset_for_leader_epoch_v3(corr: int, topic: str, partition: int, leader_epoch: int,
                               current_leader_epoch: int = -1) -> bytes:
    part = i32(partition) + i32(current_leader_epoch) + i32(leader_epoch)
    body = i32(-1) + array([string(topic) + array([part])])
    return frame(header_v1(API_OFFSET_FOR_LEADER_EPOCH, 3, corr) + body)


def parse_offset_for_leader_epoch_v3(payload: bytes) -> tuple[int, list[tuple[str, int, int, int, int]]]:
    """(correlation_id, [(topic, partition, error_code, leader_epoch, end_offset)])."""
    r = Reader(payload)
    corr = r.i32()
    r.i32()  # throttle_time_ms
    out = []
    for _ in range(r.i32()):
        name = r.take(r.i16()).decode()
        for _ in range(r.i32()):
            err, part, epoch = r.i16(), r.i32(), r.i32()
            end = struct.unpack(">q", r.take(8))[0]
            out.append((name, part, err, epoch, end))
    return corr, out


def produce_v3_timeout(corr: int, topic: str, partition: int, batch: bytes, acks: int,
                       timeout_ms: int) -> bytes:
    """produce_v3 with the request's own timeout (the broker answers REQUEST_TIMED_OUT)."""
    body = (i16(-1) + i16(acks) + i32(timeout_ms)
            + array([string(topic) + array([i32(partition) + i32(len(batch)) + batch])]))
    return frame(header_v1(API_PRODUCE, 3, corr) + body)


NOT_LEADER_OR_FOLLOWER = 6


def _varlong(r: Reader) -> int:
    """A zigzag varint of up to 64 bits (record fields)."""
    shift = value = 0
    while True:
        b = r.take(1)[0]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return _zigzag(value)
        shift += 7
        assert shift < 70, "varlong too long"


def parse_records(data: bytes) -> list[tuple[int, Optional[bytes], Optional[bytes]]]:
    """(offset, key, value) of every record in a Fetch response's records field, in
    order. Control batches are left out (clients skip them); a trailing partial batch is
    ignored. Uncompressed and gzip batches only: other codecs fail the caller, which
    then cannot claim to have read the data."""
    import zlib
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base, length = struct.unpack(">qi", data[pos:pos + 12])
        if length < 49 or pos + 12 + length > len(data):
            break
        b = data[pos + 12:pos + 12 + length]
        pos += 12 + length
        (attributes,) = struct.unpack(">h", b[9:11])
        (count,) = struct.unpack(">i", b[45:49])
        if attributes & 0x20:
            continue
        codec = attributes & 0x7
        body = b[49:]
        if codec == 1:
            body = zlib.decompressobj(47).decompress(body)
        else:
            assert codec == 0, f"batch at offset {base}: codec {codec} cannot be decoded here"
        r = Reader(body)
        for _ in range(count):
            rec = Reader(r.take(_varlong(r)))
            rec.take(1)                      # attributes
            _varlong(rec)                    # timestamp delta
            offset = base + _varlong(rec)
            klen = _varlong(rec)
            key = None if klen < 0 else rec.take(klen)
            vlen = _varlong(rec)
            value = None if vlen < 0 else rec.take(vlen)
            out.append((offset, key, value))
    return out


def read_partition(port: int, topic: str, partition: int, start: int = 0,
                   host: str = "127.0.0.1", timeout: float = 20.0
                   ) -> list[tuple[int, Optional[bytes], Optional[bytes]]]:
    """Every record (offset, key, value) of one partition from `start` up to the high
    watermark, fetched from the broker at host:port itself: no client routing, so the
    data is that broker's copy. Fails when that broker answers an error
    (NOT_LEADER_OR_FOLLOWER when it does not lead the partition)."""
    out: list = []
    offset = start
    with Conn(port, timeout=timeout, host=host) as c:
        for corr in range(1, 100_000):
            assert c.send(fetch_v4(corr, topic, partition, offset)), "connection closed"
            payload = c.recv_frame()
            assert payload is not None, f"broker at port {port} closed the connection"
            _, parts = parse_fetch_v4(payload)
            (_, _, err, hw, records), = parts
            assert err == 0, (f"broker at port {port} answered error {err} for {topic}/"
                              f"{partition} (6 = NOT_LEADER_OR_FOLLOWER: it does not lead it)")
            got = parse_records(records)
            batches = parse_batches(records)
            out += [r for r in got if r[0] >= offset]
            if not batches:
                assert offset >= hw, f"empty fetch at {offset} below the high watermark {hw}"
                return out
            offset = batches[-1].base_offset + batches[-1].last_offset_delta + 1
            if offset >= hw:
                return out
    raise AssertionError("fetch did not reach the high watermark")


CODEC_IDS = {"none": 0, None: 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def stored_codecs(port: int, topic: str, partition: int, host: str = "127.0.0.1") -> set[int]:
    """The codec ids (attributes & 7) of every batch the broker at host:port stores in
    the partition, read with direct Fetches up to the high watermark: what a test that
    claims a codec must check, since a client may send another codec than asked (e.g.
    librdkafka sends a batch uncompressed when compression does not make it smaller)."""
    codecs: set[int] = set()
    offset = 0
    with Conn(port, timeout=20, host=host) as c:
        for corr in range(1, 100_000):
            assert c.send(fetch_v4(corr, topic, partition, offset)), "connection closed"
            (_, _, err, hw, records), = parse_fetch_v4(c.recv_frame())[1]
            assert err == 0, f"fetch {topic}/{partition} at port {port}: error {err}"
            batches = parse_batches(records)
            codecs |= {b.attributes & 7 for b in batches}
            if not batches:
                return codecs
            offset = batches[-1].base_offset + batches[-1].last_offset_delta + 1
            if offset >= hw:
                return codecs
    raise AssertionError("fetch did not reach the high watermark")
