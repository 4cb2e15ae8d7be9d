#!/usr/bin/env bash
# Measures this machine's raw limits, to put beside the broker's numbers in
# BENCHMARKS.md: a broker on this box can't write faster than the disk, fsync
# more often than the disk allows, or move bytes faster than loopback TCP.
#
# Usage: scripts/machine-limits.sh [DATA_DIR] [REPEAT]   (defaults: /tmp, 3)
# Needs: bash, dd, python3. Writes at most 1 GiB at a time under DATA_DIR,
# removed on exit. Every test is bounded in bytes/iterations and in time; each
# runs REPEAT times and the median is reported (a shared VM is noisy).
set -euo pipefail

DATA_DIR=${1:-/tmp}
REPEAT=${2:-3}
WORK=$(mktemp -d "$DATA_DIR/machine-limits.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Runs "$@" REPEAT times; each run prints one line whose first field is the
# value. Prints the line with the median value.
median_of() {
    local i
    for i in $(seq 1 "$REPEAT"); do "$@"; done | sort -n -k1,1 |
        awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'
}

# dd prints e.g. "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.5 s, 429 MB/s";
# recompute MB/s (10^6) from bytes and seconds so units are ours, not dd's.
dd_mb_s() {
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "copied,") s = $(i + 1);
                    printf "%.0f\n", $1 / s / 1e6 }'
}

# 1. Sequential write, 1 GiB in 1 MiB blocks, bypassing the page cache
#    (O_DIRECT) and fdatasync'd before dd reports: what the device sustains.
#    Zeros are fine: random data gave the same (or higher) numbers here.
seq_direct() {
    timeout 300 dd if=/dev/zero of="$WORK/seq" bs=1M count=1024 \
        oflag=direct conv=fdatasync 2>&1 | dd_mb_s
    rm -f "$WORK/seq"
}

# 2. The same through the page cache with one fdatasync at the end: closer
#    to a log writer that appends buffered and syncs in the background.
seq_buffered() {
    timeout 300 dd if=/dev/zero of="$WORK/seq" bs=1M count=1024 \
        conv=fdatasync 2>&1 | dd_mb_s
    rm -f "$WORK/seq"
}

# 3. Durable small appends: 4 KiB write + fsync, 2000 times (or 30 s), which
#    bounds acks=all throughput of a broker that fsyncs every request.
fsync_rate() {
    rm -f "$WORK/fsync"
    timeout 120 python3 - "$WORK/fsync" <<'EOF'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
buf = os.urandom(4096)
n, t0 = 0, time.perf_counter()
while n < 2000 and time.perf_counter() - t0 < 30:
    os.write(fd, buf)
    os.fsync(fd)
    n += 1
dt = time.perf_counter() - t0
os.close(fd)
print(f"{n / dt:.0f} {dt / n * 1e3:.3f}")
EOF
}

# 4. Loopback TCP: one sender thread, one receiver, 4 GiB (or 60 s) in 1 MiB
#    writes on 127.0.0.1. Python's per-call cost is small at 1 MiB per call
#    (iperf3 measured the same ballpark here); it also uses both cores, as a
#    broker plus its client would.
loopback_tcp() {
    timeout 120 python3 - <<'EOF'
import socket, threading, time
TOTAL, CHUNK, LIMIT = 4 << 30, 1 << 20, 60.0
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
got = 0
def receive():
    global got
    conn, _ = srv.accept()
    buf = memoryview(bytearray(CHUNK))
    while got < TOTAL:
        n = conn.recv_into(buf)
        if n == 0:
            break
        got += n
    conn.close()
rx = threading.Thread(target=receive); rx.start()
tx = socket.create_connection(srv.getsockname())
data = bytes(CHUNK)
t0 = time.perf_counter(); sent = 0
while sent < TOTAL and time.perf_counter() - t0 < LIMIT:
    tx.sendall(data); sent += CHUNK
tx.close(); rx.join(LIMIT)
dt = time.perf_counter() - t0
print(f"{got / dt / 1e6:.0f} {got / (1 << 30):.1f}")
EOF
}

direct=$(median_of seq_direct)
buffered=$(median_of seq_buffered)
fsync=$(median_of fsync_rate)
tcp=$(median_of loopback_tcp)

echo "| measurement | result | how |"
echo "| --- | --- | --- |"
echo "| sequential write, O_DIRECT | ${direct} MB/s | dd 1 GiB of 1 MiB blocks, oflag=direct conv=fdatasync, to $DATA_DIR |"
echo "| sequential write, buffered | ${buffered} MB/s | dd 1 GiB of 1 MiB blocks, conv=fdatasync (one sync at end), to $DATA_DIR |"
echo "| fsync rate | ${fsync% *} fsyncs/s (${fsync#* } ms each) | python: append 4 KiB + os.fsync, 2000 times |"
echo "| loopback TCP | ${tcp% *} MB/s | python: 1 sender, 1 receiver, ${tcp#* } GiB in 1 MiB sends on 127.0.0.1 |"
echo
echo "MB = 10^6 bytes; each value is the median of $REPEAT runs."
