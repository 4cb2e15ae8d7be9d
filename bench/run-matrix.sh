#!/usr/bin/env bash
# Runs the BENCHMARKS.md matrix against a running broker: 100 B and 1 KiB
# records x acks=1 and acks=all produce, then a consume of 1 KiB records,
# ROUNDS times (interleaved, so slow drift in the machine's state hits every
# configuration alike), and prints a markdown table of medians.
#
# Usage: bench/run-matrix.sh [BOOTSTRAP] [ROUNDS]     (defaults 127.0.0.1:19092, 3)
# Env:   KAFKA_BENCH (binary, default /work/target/release/kafka-bench or PATH),
#        PARTITIONS (4), RECORDS_100B (10000000), RECORDS_1K (2000000),
#        OUT (raw JSON lines, default /tmp/kafka-bench-matrix.<run>.jsonl)
# Each round writes RECORDS_100B*100*2 + RECORDS_1K*1024*2 bytes (6.1 GB by
# default) to fresh topics; the broker's data dir must have room for all rounds.
set -euo pipefail

BOOTSTRAP=${1:-127.0.0.1:19092}
ROUNDS=${2:-3}
KB=${KAFKA_BENCH:-/work/target/release/kafka-bench}
[ -x "$KB" ] || KB=$(command -v kafka-bench)
PARTITIONS=${PARTITIONS:-4}
RECORDS_100B=${RECORDS_100B:-10000000}
RECORDS_1K=${RECORDS_1K:-2000000}
RUN=$(date +%s)
OUT=${OUT:-/tmp/kafka-bench-matrix.$RUN.jsonl}
: >"$OUT"

# One line of JSON per run, tagged with its configuration name. A failed run
# (non-zero exit) still prints its JSON, which records the errors.
run() {
    local name=$1
    shift
    echo "== $name: kafka-bench $*" >&2
    local line
    line=$("$KB" "$@" --json) || echo "   (exit $?; see errors in the result)" >&2
    [ -n "$line" ] || line='{"failed":true}'
    echo "{\"name\":\"$name\",\"result\":$line}" >>"$OUT"
}

for r in $(seq 1 "$ROUNDS"); do
    for size in 100 1024; do
        n=$RECORDS_1K
        [ "$size" = 100 ] && n=$RECORDS_100B
        for acks in 1 all; do
            run "produce ${size} B acks=${acks}" produce --bootstrap "$BOOTSTRAP" \
                --topic "bench-$RUN-$size-acks$acks-r$r" --partitions "$PARTITIONS" \
                --records "$n" --record-size "$size" --acks "$acks"
        done
    done
    run "consume 1024 B" consume --bootstrap "$BOOTSTRAP" \
        --topic "bench-$RUN-1024-acks1-r$r" --records "$RECORDS_1K" --timeout-s 30
done

echo "raw results: $OUT" >&2
python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    row = json.loads(line)
    runs.setdefault(row["name"], []).append(row["result"])
def med(rs, f):
    vals = [f(r) for r in rs if not r.get("failed")]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"
print("| run | n | records/s | MB/s | MiB/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name, rs in runs.items():
    lat = lambda k: (lambda r: (r.get("latency") or {}).get(k))
    thr = lambda k: (lambda r: r["throughput"][k])
    errs = sum(r.get("errors", 0) + r.get("not_sent", 0) for r in rs if not r.get("failed"))
    errs += sum(1 for r in rs if r.get("failed"))
    print(f"| {name} | {len(rs)} | {fmt(med(rs, thr('records_per_s')), 0)} | "
          f"{fmt(med(rs, thr('mb_per_s')))} | {fmt(med(rs, thr('mib_per_s')))} | "
          f"{fmt(med(rs, lat('p50_ms')), 2)} | {fmt(med(rs, lat('p99_ms')), 2)} | "
          f"{fmt(med(rs, lat('p999_ms')), 2)} | {fmt(med(rs, lat('max_ms')), 2)} | {errs} |")
EOF
