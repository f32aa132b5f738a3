#!/usr/bin/env bash
# The feature cache at scale (issue #15), without images: for each size N, N synthetic
# entries × 1280 floats are written the way `tl extract` publishes them (segments of
# 4096), read back warm (look up every key, load and check it), and one head-training epoch
# is streamed from the cache (standardisation pass + epoch). Each phase is its own process
# (examples/cache_scale.rs) and reports its peak RSS (VmHWM). Prints a table and writes
# $OUT/results.jsonl; the synthetic cache of each size is deleted after it is measured.
#
#   scripts/bench/cache_scale.sh                 # 10k, 100k, 1M (1M needs ~5.2 GB of disk)
#   SIZES="10000 100000" scripts/bench/cache_scale.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
source scripts/env.sh
cargo build --release --quiet --example cache_scale
BIN=target/release/examples/cache_scale
OUT=${OUT:-out/bench-cache-scale}
WORK=${WORK:-$OUT/work}
SIZES=${SIZES:-"10000 100000 1000000"}
DIM=${DIM:-1280}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
for n in $SIZES; do
    rm -rf "$WORK/$n"
    for phase in write read train; do
        "$BIN" "$phase" "$WORK/$n" "$n" "$DIM" | tee -a "$OUT/results.jsonl"
    done
    du -sb "$WORK/$n" | awk -v n="$n" '{printf "{\"phase\":\"disk\",\"entries\":%s,\"bytes\":%s}\n", n, $1}' | tee -a "$OUT/results.jsonl"
    rm -rf "$WORK/$n"
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["entries"], {})[r["phase"]] = r
print()
print("| entries | on disk | write entries/s | open s | warm look-up + load entries/s | read peak RSS | epoch s (incl. std pass) | epoch peak RSS | train acc |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n, p in sorted(rows.items()):
    w, r, t, d = p["write"], p["read"], p["train"], p["disk"]
    print(f"| {n:,} | {d['bytes']/1e9:.2f} GB | {w['entries_per_second']:,.0f} | {r['open_seconds']:.2f} | "
          f"{r['entries_per_second']:,.0f} | {r['peak_rss_mib']:,.0f} MiB | {t['epoch_seconds']:.1f} | "
          f"{t['peak_rss_mib']:,.0f} MiB | {t['train_accuracy']:.4f} |")
PY
