#!/usr/bin/env bash
# Starts a whole cluster on loopback without containers (for benchmarks and debugging):
# a ring of N softswitches and 3 ring controllers and B brokers that replicate with Raft.
#
#   scripts/cluster-up.sh [B] [N]      (brokers, default 3; switches, default 2)
#
# Broker b (1..B): Kafka 127.0.0.1:$((19090+b)), Raft 127.0.0.1:$((19190+b)),
#                  metrics http://127.0.0.1:$((19290+b))/metrics
# State, logs and pid files go to $CLUSTER_DIR (default: a new directory under /tmp).
# Extra broker flags: BROKER_ARGS="--raft-election-ms 1000 ...".
# Uses the release binaries in CARGO_TARGET_DIR (default /var/cache/gsn/target); build
# them first (cargo build --release --workspace).
set -euo pipefail

B="${1:-3}"
N="${2:-2}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gsn/target}"
CLUSTER_DIR="${CLUSTER_DIR:-$(mktemp -d /tmp/cluster.XXXXXX)}"
mkdir -p "$CLUSTER_DIR"
BIN="$CARGO_TARGET_DIR/release"
[ -x "$BIN/broker" ] || { echo "no $BIN/broker: cargo build --release --workspace" >&2; exit 1; }

# The ring: switch i on UDP $((P + 650 + i)), controller c on UDP $((P + 700 + c)), Raft TCP
# $((P + 710 + c)), admin HTTP $((P + 800 + c)); P=${PORT_BASE:-27000} keeps clear of
# scripts/ring-up.sh's ports.
P=${PORT_BASE:-27000}
mkdir -p "$CLUSTER_DIR/ring"
roster=()
for ((i = 0; i < N; i++)); do roster+=("$i=127.0.0.1:$((P + 650 + i))"); done
ROSTER="$(IFS=,; echo "${roster[*]}")"
PEERS="1=127.0.0.1:$((P + 711)),2=127.0.0.1:$((P + 712)),3=127.0.0.1:$((P + 713))"
for ((i = 0; i < N; i++)); do
  "$BIN/softswitch" --id "$i" --listen "127.0.0.1:$((P + 650 + i))" \
      --controller "127.0.0.1:$((P + 701))" --metrics-listen "127.0.0.1:$((P + 750 + i))" \
      >"$CLUSTER_DIR/ring/switch-$i.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/ring/switch-$i.pid"
done
for c in 1 2 3; do
  "$BIN/ring-controller" --id "$c" --peers "$PEERS" \
      --raft-listen "127.0.0.1:$((P + 710 + c))" --udp-listen "127.0.0.1:$((P + 700 + c))" \
      --admin-listen "127.0.0.1:$((P + 800 + c))" --switches "$ROSTER" \
      --data-dir "$CLUSTER_DIR/ring/ctrl-$c" >"$CLUSTER_DIR/ring/ctrl-$c.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/ring/ctrl-$c.pid"
done
CONTROLLERS="127.0.0.1:$((P + 801)),127.0.0.1:$((P + 802)),127.0.0.1:$((P + 803))"

seeds=()
for ((b = 1; b <= B; b++)); do seeds+=("$b@127.0.0.1:$((19190 + b))"); done
SEEDS="$(IFS=,; echo "${seeds[*]}")"

for ((b = 1; b <= B; b++)); do
  # shellcheck disable=SC2086 # BROKER_ARGS is a list of flags
  "$BIN/broker" --node-id "$b" --seeds "$SEEDS" \
      --listen "127.0.0.1:$((19090 + b))" --advertised-host 127.0.0.1 \
      --raft-listen "127.0.0.1:$((19190 + b))" \
      --metrics-listen "127.0.0.1:$((19290 + b))" \
      --data-dir "$CLUSTER_DIR/broker-$b" \
      --sequencer ring --ring-controllers "$CONTROLLERS" \
      ${BROKER_ARGS:-} >"$CLUSTER_DIR/broker-$b.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/broker-$b.pid"
done

bootstrap="127.0.0.1:19091"
for _ in $(seq 1 300); do
  if kcat -b "$bootstrap" -L -m 2 2>/dev/null | grep -q "^ $B brokers:"; then
    kcat -b "$bootstrap" -L -m 2 | head -$((B + 2))
    echo "bootstrap: $(seq -s, -f '127.0.0.1:1909%g' 1 "$B")"
    echo "logs and pid files: $CLUSTER_DIR"
    echo "stop: for f in $CLUSTER_DIR/*.pid $CLUSTER_DIR/ring/*.pid; do kill \"\$(cat \"\$f\")\"; done"
    exit 0
  fi
  sleep 0.1
done
echo "the cluster did not list $B brokers within 30 s; logs in $CLUSTER_DIR" >&2
exit 1
