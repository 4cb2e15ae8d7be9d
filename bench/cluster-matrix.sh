#!/usr/bin/env bash
# Replication cost on loopback: 3 brokers with RF=3 against 1 broker (RF=1), both numbered
# by the same switch ring, 1 KiB records, 12 partitions, acks=all and acks=1. Configurations
# run interleaved, ROUNDS times; prints a markdown table of medians (MB/s, p50, p99 ms).
#
# Usage: bench/cluster-matrix.sh [ROUNDS] [RECORDS]     (defaults 3, 500000)
# Needs the release binaries (CARGO_TARGET_DIR, default /var/cache/gsn/target).
set -euo pipefail

ROUNDS=${1:-3}
RECORDS=${2:-500000}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gsn/target}"
BIN="$CARGO_TARGET_DIR/release"
DIR=$(mktemp -d /tmp/cmatrix.XXXXXX)
OUT="$DIR/results.jsonl"
P=${PORT_BASE:-27000}

cleanup() {
    for f in "$DIR"/cluster/*.pid "$DIR"/cluster/ring/*.pid "$DIR"/single.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
}
trap cleanup EXIT

CLUSTER_DIR="$DIR/cluster" "$HERE/scripts/cluster-up.sh" 3 2 >/dev/null
# The single broker takes its numbers from the same ring.
"$BIN/broker" --node-id 9 --listen 127.0.0.1:19099 --advertised-host 127.0.0.1 \
    --metrics-listen 127.0.0.1:19299 --data-dir "$DIR/single" --sequencer ring \
    --ring-controllers "127.0.0.1:$((P + 801)),127.0.0.1:$((P + 802)),127.0.0.1:$((P + 803))" \
    >"$DIR/single.log" 2>&1 &
echo $! >"$DIR/single.pid"
for _ in $(seq 1 100); do kcat -b 127.0.0.1:19099 -L -m 1 >/dev/null 2>&1 && break; sleep 0.1; done

CLUSTER=127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093
run() {
    local name=$1 bootstrap=$2 rf=$3 acks=$4 round=$5
    local line
    line=$("$BIN/kafka-bench" produce --bootstrap "$bootstrap" --topic "$name-r$round" \
        --records "$RECORDS" --partitions 12 --replication-factor "$rf" --record-size 1024 \
        --acks "$acks" --json) || true
    echo "{\"name\":\"$name\",\"result\":${line:-null}}" >>"$OUT"
    echo "$name round $round: $(echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["throughput"]["mb_per_s"], "MB/s p50", r["latency"]["p50_ms"], "p99", r["latency"]["p99_ms"], "errors", r["errors"])' 2>/dev/null)" >&2
}

for r in $(seq 1 "$ROUNDS"); do
    run cluster-rf3-acks-all "$CLUSTER" 3 all "$r"
    run single-rf1-acks-all 127.0.0.1:19099 1 all "$r"
    run cluster-rf3-acks-1 "$CLUSTER" 3 1 "$r"
    run single-rf1-acks-1 127.0.0.1:19099 1 1 "$r"
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["result"] is None or r["result"]["errors"]:
        continue
    rows.setdefault(r["name"], []).append(r["result"])
print("| configuration | runs | MB/s (median) | p50 ms | p99 ms |")
print("|---|---|---|---|---|")
for name, rs in rows.items():
    med = lambda f: statistics.median(f(x) for x in rs)
    print(f"| {name} | {len(rs)} | {med(lambda x: x['throughput']['mb_per_s']):.1f} | "
          f"{med(lambda x: x['latency']['p50_ms']):.2f} | {med(lambda x: x['latency']['p99_ms']):.2f} |")
EOF
echo "raw results: $OUT" >&2
