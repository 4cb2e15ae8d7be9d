#!/usr/bin/env bash
# Starts a sequencer ring on loopback: N softswitches and 3 ring-controller replicas.
#
#   scripts/ring-up.sh [N]          (N switches, default 3; the roster holds all N)
#
# Ports (127.0.0.1 only):
#   switch i      UDP 7650+i (data plane)   metrics http://127.0.0.1:$((9650+i))/metrics
#   controller c  UDP 7700+c (to switches)  Raft TCP 7710+c   admin http://127.0.0.1:$((9700+c))
#                 (c = 1, 2, 3; admin: GET /ring, GET /metrics, POST /resize?switches=0,1,2,
#                 GET /members, POST /members?add=ID=HOST:PORT / ?remove=ID)
# State, logs and pid files go to $RING_DIR (default: a new directory under /tmp).
# Builds with CARGO_TARGET_DIR (default /work/target) unless RING_NO_BUILD=1.
# Extra flags: RING_SWITCH_FLAGS for every softswitch (e.g. "--idle-hold-us 0" to let an
# idle token spin, "--link-delay-us 10" to emulate links), RING_CTRL_FLAGS for every
# controller (e.g. "--max-visit 1000000").
set -euo pipefail

N="${1:-3}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-/work/target}"
RING_DIR="${RING_DIR:-$(mktemp -d /tmp/ring.XXXXXX)}"
mkdir -p "$RING_DIR"

if [[ "${RING_NO_BUILD:-0}" != 1 ]]; then
  (cd "$HERE" && CARGO_TARGET_DIR="$TARGET" cargo build --release -j1 \
      -p sequencer-p4 -p ring-controller)
fi
BIN="$TARGET/release"

switches=()
for ((i = 0; i < N; i++)); do switches+=("$i=127.0.0.1:$((7650 + i))"); done
SWITCHES="$(IFS=,; echo "${switches[*]}")"
PEERS="1=127.0.0.1:7711,2=127.0.0.1:7712,3=127.0.0.1:7713"

for ((i = 0; i < N; i++)); do
  # The boot Status goes to controller 1; the leader (whichever it is) learns boot ids
  # from the Status answering its Seal anyway.
  "$BIN/softswitch" --id "$i" --listen "127.0.0.1:$((7650 + i))" \
      --controller 127.0.0.1:7701 --metrics-listen "127.0.0.1:$((9650 + i))" \
      ${RING_SWITCH_FLAGS:-} >"$RING_DIR/switch-$i.log" 2>&1 &
  echo $! >"$RING_DIR/switch-$i.pid"
done

for c in 1 2 3; do
  "$BIN/ring-controller" --id "$c" --peers "$PEERS" \
      --raft-listen "127.0.0.1:$((7710 + c))" --udp-listen "127.0.0.1:$((7700 + c))" \
      --admin-listen "127.0.0.1:$((9700 + c))" --switches "$SWITCHES" \
      --data-dir "$RING_DIR/ctrl-$c" ${RING_CTRL_FLAGS:-} >"$RING_DIR/ctrl-$c.log" 2>&1 &
  echo $! >"$RING_DIR/ctrl-$c.pid"
done

# Bounded wait for the first epoch.
for _ in $(seq 1 100); do
  if ring="$(curl -sf http://127.0.0.1:9701/ring)"; then
    echo "ring is up (controller 1's view):"
    echo "$ring"
    echo
    echo "logs and pid files: $RING_DIR"
    echo "stop:   for f in $RING_DIR/*.pid; do kill \"\$(cat \"\$f\")\"; done"
    echo "resize: curl -X POST 'http://127.0.0.1:970<leader>/resize?switches=0,1'"
    echo "        (the leader has ring_controller_is_leader 1 in /metrics; others answer 421)"
    exit 0
  fi
  sleep 0.1
done
echo "no ring after 10 s; see logs in $RING_DIR" >&2
echo "stop: for f in $RING_DIR/*.pid; do kill \"\$(cat \"\$f\")\"; done" >&2
exit 1
