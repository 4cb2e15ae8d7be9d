#!/usr/bin/env bash
# One command from a fresh checkout to a running, healthy cluster (3 brokers,
# 2 softswitches, 3 ring controllers):
#   deploy/build-image.sh, then `docker compose up -d` (or `docker-compose up -d`,
#   whichever exists), then wait for every container of the compose project to
#   report healthy.
#
# Environment:
#   GSN_UP_TIMEOUT    seconds to wait for health (default 180)
#   GSN_SKIP_BUILD    1: do not run build-image.sh (use the existing image)
#   plus everything deploy/build-image.sh reads (CARGO_TARGET_DIR, ...).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TIMEOUT=${GSN_UP_TIMEOUT:-180}

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'up.sh: error: %s\n' "$*" >&2
    exit 1
}

# Compose v2 plugin (`docker compose`) if present, else the v1 `docker-compose`.
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is installed"
fi
compose() { (cd "$ROOT" && "${COMPOSE[@]}" "$@"); }

if [ "${GSN_SKIP_BUILD:-0}" = 1 ]; then
    say "GSN_SKIP_BUILD=1: not rebuilding the image"
else
    "$ROOT/deploy/build-image.sh"
fi

say "${COMPOSE[*]} up -d (brokers start once the ring controllers are healthy)"
compose up -d

# Containers of this project, one per service.
mapfile -t containers < <(compose ps -q)
[ "${#containers[@]}" -gt 0 ] || die "'${COMPOSE[*]} up -d' started no containers"

name_of() { docker inspect -f '{{.Name}}' "$1" | sed 's,^/,,'; }

show_failure() {
    local c
    for c in "${containers[@]}"; do
        printf '\n---- %s: state ----\n' "$(name_of "$c")" >&2
        docker inspect -f '{{.State.Status}} (exit code {{.State.ExitCode}}, restarts {{.RestartCount}})' "$c" >&2 || true
        printf -- '---- last health checks ----\n' >&2
        docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.ExitCode}}: {{.Output}}{{end}}{{end}}' "$c" >&2 || true
        printf -- '---- last 40 log lines ----\n' >&2
        docker logs --tail 40 "$c" >&2 || true
    done
}

# Restarts before this point (an older crash loop of a container `up` kept) don't count.
declare -A restarts0=()
for c in "${containers[@]}"; do
    restarts0[$c]=$(docker inspect -f '{{.RestartCount}}' "$c")
done

say "waiting up to ${TIMEOUT}s for ${#containers[@]} container(s) to be healthy"
start=$SECONDS
while :; do
    unhealthy=()
    for c in "${containers[@]}"; do
        state=$(docker inspect -f '{{.State.Status}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c")
        read -r status restarts health <<<"$state"
        if [ "$status" = exited ] || [ "$status" = dead ] || [ "$restarts" -gt "${restarts0[$c]}" ]; then
            show_failure
            die "$(name_of "$c") stopped or restarted (status $status); see above"
        fi
        case $health in
        healthy) ;;
        none) die "$(name_of "$c") has no health check; cannot tell when it is ready" ;;
        *) unhealthy+=("$(name_of "$c"):$health") ;;
        esac
    done
    [ "${#unhealthy[@]}" -eq 0 ] && break
    if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
        show_failure
        die "not healthy after ${TIMEOUT}s: ${unhealthy[*]}"
    fi
    sleep 2
done
say "healthy after $((SECONDS - start))s: $(for c in "${containers[@]}"; do printf '%s ' "$(name_of "$c")"; done)"

cat <<EOF

The cluster is up.
  Kafka from this machine:     localhost:9092, localhost:9093, localhost:9094 (broker-1..3)
  Kafka inside the network:    broker-1:19092, broker-2:19092, broker-3:19092
  /metrics:                    brokers localhost:9101..9103; switches 10.213.7.21..22:9650;
                               ring controllers 10.213.7.11..13:9700 (also GET /ring)

  kcat -b localhost:9092 -L                                   # 3 brokers, topics, leaders
  echo hello | kcat -b localhost:9092 -t demo -P              # produce (topic auto-created, RF 3)
  kcat -b localhost:9092 -t demo -C -e -o beginning           # consume everything, then exit
  curl -s 10.213.7.11:9700/ring                               # the switch ring's installed epoch

  ${COMPOSE[*]} ps                                            # state and health
  ${COMPOSE[*]} logs -f broker-1                              # one service's log
  ${COMPOSE[*]} restart                                       # data survives (named volumes)
  ${COMPOSE[*]} down                                          # stop, keep the data volumes
  ${COMPOSE[*]} down -v                                       # stop and delete the data

(run ${COMPOSE[*]} from $ROOT)
EOF
