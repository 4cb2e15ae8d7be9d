#!/usr/bin/env bash
# Runs the decode_request fuzz target for N seconds (default 60) on one core.
#
#   broker/fuzz/run.sh [SECONDS] [extra libFuzzer flags...]
#
# - stable Rust with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags); cargo-fuzz is installed
#   from crates.io if missing.
# - AddressSanitizer build (cargo-fuzz's default), libFuzzer with -rss_limit_mb=2048
#   -malloc_limit_mb=512: a single allocation over 512 MiB is reported as a crash.
# - target dir: $FUZZ_TARGET_DIR, default /var/cache/gsn/fuzz-target.
# - the committed seeds (corpus/decode_request) are only read; inputs the fuzzer finds go to
#   $FUZZ_TARGET_DIR/corpus/decode_request, crashes to broker/fuzz/artifacts/decode_request/.
# - RocksDB: the broker crate links it although this target never calls it, and building it
#   from source takes 15+ minutes on two cores. If a librocksdb.a of the same librocksdb-sys
#   version already exists in a workspace target dir, it is linked instead (ROCKSDB_LIB_DIR).
#   FUZZ_BUILD_ROCKSDB=1 forces the build from source; a preset ROCKSDB_LIB_DIR is kept.
#
# Exit code: 0 if no crash, non-zero (libFuzzer's) if one was found.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
secs=${1:-60}
shift || true
target_dir=${FUZZ_TARGET_DIR:-/var/cache/gsn/fuzz-target}
work_corpus=$target_dir/corpus/decode_request
mkdir -p "$target_dir" "$work_corpus" "$here/artifacts/decode_request"

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [[ -z "${ROCKSDB_LIB_DIR:-}" && -z "${FUZZ_BUILD_ROCKSDB:-}" ]]; then
    want=$(grep -A1 '^name = "librocksdb-sys"$' "$here/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')
    best=""
    for t in "${CARGO_TARGET_DIR:-}" /var/cache/gsn/target "$repo/target" "$repo/../target"; do
        [[ -n "$t" && -d "$t" ]] || continue
        for out in "$t"/*/build/librocksdb-sys-*/out; do
            [[ -f "$out/librocksdb.a" ]] || continue
            # The build script's output names the crate source it ran from, version included.
            grep -qF "/librocksdb-sys-$want" "$(dirname "$out")/output" 2>/dev/null || continue
            if [[ -z "$best" || "$out/librocksdb.a" -nt "$best/librocksdb.a" ]]; then
                best=$out
            fi
        done
    done
    if [[ -n "$best" ]]; then
        echo "run.sh: linking prebuilt RocksDB from $best" >&2
        export ROCKSDB_LIB_DIR=$best ROCKSDB_STATIC=1
    else
        echo "run.sh: no prebuilt librocksdb.a ($want) found; building RocksDB from source (slow, once)" >&2
    fi
fi

cd "$here"
exec cargo fuzz run --fuzz-dir "$here" --target-dir "$target_dir" -O decode_request \
    "$work_corpus" "$here/corpus/decode_request" -- \
    -max_total_time="$secs" \
    -rss_limit_mb=2048 \
    -malloc_limit_mb=512 \
    -timeout=10 \
    -print_final_stats=1 \
    "$@"
