#!/usr/bin/env bash
# Per-chunk cost independent of the machine's speed (issue #9, item 5):
#   allocations per relayed chunk (counting global allocator, bench/alloc) for both framings,
#   and instructions per chunk of the answer path under `valgrind --tool=callgrind`
#   (a run with 2N chunks minus a run with N chunks, / N: fixed costs cancel).
#
#   bench/alloc.sh [N]      (N defaults to 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}   # at most 2000: bench/alloc makes 4000 events in every run
cargo build --release --manifest-path bench/alloc/Cargo.toml --target-dir target 2>&1 | tail -n 1 >&2
BIN=target/release/chatgate-alloc-bench
"$BIN" all
if ! command -v valgrind >/dev/null; then
    echo "valgrind not installed: instructions per chunk skipped"
    exit 0
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
instructions() { # framing n
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$1.$2" "$BIN" path-only "$1" "$2" \
        >/dev/null 2>&1
    grep -E '^(summary|totals):' "$OUT/cg.$1.$2" | head -n 1 | awk '{print $2}'
}
echo "answer path under callgrind (live: one event per read, one chunk read per event), N = $N vs $((2 * N)):"
for framing in mp sse; do
    a=$(instructions "$framing" "$N")
    b=$(instructions "$framing" $((2 * N)))
    echo "  $framing: $(( (b - a) / N )) instructions per chunk"
done
