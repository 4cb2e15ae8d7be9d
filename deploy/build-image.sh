#!/usr/bin/env bash
# Builds the gsn-broker:latest container image without pulling anything. One image
# holds every service of docker-compose.yml (compose picks the entrypoint):
#   1. cargo build --release of `broker`, `healthcheck` (the health probe of every
#      service), `softswitch` (sequencer-p4) and `ring-controller`,
#   2. a root filesystem in deploy/.rootfs with those binaries, exactly the shared
#      libraries `ldd` reports for them (plus the dynamic loader), /tmp and /data,
#   3. docker build FROM scratch with that directory as the build context.
# Safe to run again: the rootfs is rebuilt from nothing each time and cargo and
# docker only redo what changed.
#
# Environment:
#   CARGO_TARGET_DIR  cargo's target dir (default /var/cache/gsn/target, as in CI)
#   GSN_IMAGE         image tag (default gsn-broker:latest)
#   GSN_STRIP         1 (default): drop DWARF debug info from the copies in the image
#                     (symbol names stay, so backtraces still name functions); 0: keep it
#   GSN_SKIP_CARGO    1: use the binaries already in $CARGO_TARGET_DIR/release as they are
#   GSN_BIN_DIR       where the binaries are taken from (default $CARGO_TARGET_DIR/release)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
ROOTFS=$DEPLOY/.rootfs
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/gsn/target}
IMAGE=${GSN_IMAGE:-gsn-broker:latest}
STRIP=${GSN_STRIP:-1}
BIN_DIR=${GSN_BIN_DIR:-$CARGO_TARGET_DIR/release}
# binary:package
BINARIES=(broker:broker healthcheck:broker softswitch:sequencer-p4 ring-controller:ring-controller)

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'build-image.sh: error: %s\n' "$*" >&2
    exit 1
}

for tool in cargo docker ldd; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed or not on PATH"
done
docker info >/dev/null 2>&1 ||
    die "cannot talk to the Docker daemon (is it running, and may $(id -un) use it?)"

# 1. Binaries -----------------------------------------------------------------
if [ "${GSN_SKIP_CARGO:-0}" = 1 ]; then
    say "GSN_SKIP_CARGO=1: using the binaries already in $BIN_DIR"
else
    declare -A pkgs=()
    flags=()
    for entry in "${BINARIES[@]}"; do
        flags+=(--bin "${entry%%:*}")
        pkgs[${entry#*:}]=1
    done
    for pkg in "${!pkgs[@]}"; do flags+=(-p "$pkg"); done
    say "cargo build --release ${flags[*]}, CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
    say "a cold build compiles RocksDB from source: ~30 min on 2 cores; later builds are quick."
    say "'Blocking waiting for file lock' means another cargo build uses this target dir; it waits."
    mkdir -p "$CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release "${flags[@]}")
fi
for entry in "${BINARIES[@]}"; do
    bin=${entry%%:*}
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin is missing (package ${entry#*:}); build it first"
done

# 2. Root filesystem ------------------------------------------------------------
say "assembling $ROOTFS"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/tmp" "$ROOTFS/data"
chmod 1777 "$ROOTFS/tmp"
chmod 0755 "$ROOTFS/data"

# Prints the absolute paths of the shared libraries and the loader `ldd` reports
# for $1, one per line; fails if a library is "not found". Lines without a path
# (linux-vdso.so.1, provided by the kernel) are skipped. A static binary has none.
shared_libs() {
    local out
    if ! out=$(LC_ALL=C ldd "$1" 2>&1); then
        case $out in
        *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
        *) die "ldd $1 failed: $out" ;;
        esac
    fi
    printf '%s\n' "$out" | awk -v bin="$1" '
        /=> not found/ { print "missing library for " bin ": " $1 > "/dev/stderr"; bad = 1; next }
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }
        END { exit bad }'
}

declare -A seen=()
for entry in "${BINARIES[@]}"; do
    bin=${entry%%:*}
    src=$BIN_DIR/$bin
    dst=$ROOTFS/usr/local/bin/$bin
    cp "$src" "$dst"
    if [ "$STRIP" = 1 ]; then
        command -v strip >/dev/null 2>&1 || die "GSN_STRIP=1 needs 'strip' (binutils); or set GSN_STRIP=0"
        strip --strip-debug "$dst"
    fi
    libs=$(shared_libs "$src") || die "unresolved shared libraries for $src (see above)"
    for lib in $libs; do
        [ -n "${seen[$lib]:-}" ] && continue
        seen[$lib]=1
        # Same path as on the build host (the loader's path is baked into the binary);
        # -L copies the file a symlink points to, under the name ldd gave.
        mkdir -p "$ROOTFS$(dirname "$lib")"
        cp -L "$lib" "$ROOTFS$lib"
    done
done
say "rootfs contents:"
(cd "$ROOTFS" && find . -type f -printf '    %p  %s bytes\n' | sort)

# 3. Image ------------------------------------------------------------------------
say "docker build -t $IMAGE -f deploy/Dockerfile deploy/.rootfs"
docker build -t "$IMAGE" -f "$DEPLOY/Dockerfile" "$ROOTFS"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "built $IMAGE ($((size / 1024 / 1024)) MiB): ${BINARIES[*]%%:*}"
