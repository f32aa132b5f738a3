#!/usr/bin/env bash
# `tl audit`'s analysis at scale (issue #25): a synthetic feature cache of N entries × 1280
# floats (written as `tl extract` publishes them; examples/audit_scale.rs), then the audit
# of every entry read back from the cache: neighbours (HNSW above 20,000), near-duplicates,
# out-of-sample heads, outliers. Prints the JSON line of each size (time, peak RSS, planted
# near-copies and flips found) and writes $OUT/results.jsonl; each synthetic cache is
# deleted after it is measured.
#
#   scripts/bench/audit_scale.sh                 # 100,000 entries
#   SIZES="20000 100000" scripts/bench/audit_scale.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
source scripts/env.sh
cargo build --release --quiet --example audit_scale
BIN=target/release/examples/audit_scale
OUT=${OUT:-out/bench-audit-scale}
WORK=${WORK:-$OUT/work}
SIZES=${SIZES:-"100000"}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
lscpu | sed -n 's/^Model name: *//p' | head -1
for n in $SIZES; do
    rm -rf "$WORK/$n"
    "$BIN" write "$WORK/$n" "$n" | tee -a "$OUT/results.jsonl"
    "$BIN" audit "$WORK/$n" "$n" | tee -a "$OUT/results.jsonl"
    rm -rf "$WORK/$n"
done
