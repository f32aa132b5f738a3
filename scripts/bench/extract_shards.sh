#!/usr/bin/env bash
# Scale-out on real photos (issue #15): the 1300 cats_dogs photos through MobileNetV2
# (real weights), three ways, each on a fresh cache:
#   single   `tl train` alone (extracts everything itself)
#   sharded  4 `tl extract --shard K/4` started at once on one cache folder, then `tl train`
#   killed   the same, but shard 2 is killed with SIGKILL half way (after it has published
#            some segments) and re-run; then `tl cache verify` and `tl train`
# Prints each shard's line, what train found cached/computed, validation accuracy, and
# verify's counts; writes $OUT/results.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
source scripts/env.sh
DATA=${DATA:-$ROOT/../shared/data/cats_dogs}
[ -d "$DATA" ] || { echo "bench_extract_shards: $DATA not found; skipped"; exit 0; }
WEIGHTS=${WEIGHTS:-$ROOT/../shared/models/mobilenet_v2-imagenet.safetensors}
[ -f backbones/mobilenet_v2.json ] || .venv/bin/python scripts/export_backbones.py mobilenet_v2 --weights "$WEIGHTS"
OUT=${OUT:-out/bench-shards}
rm -rf "$OUT"; mkdir -p "$OUT"
TL=target/release/tl
TRAIN=(train --backbone mobilenet_v2 "$DATA" --val-split 0.2 --seed 0 --epochs 100 -q --json)
# Segments of 32 entries, so that a shard killed half way has published some of its work.
export TL_CACHE_SEGMENT_ENTRIES=32 TL_THREADS=1

shards() {  # cache, then the shard indices to start at once
    local cache=$1; shift
    for k in "$@"; do
        TL_CACHE_DIR=$cache $TL extract --backbone mobilenet_v2 "$DATA" --shard "$k/4" -q > "$OUT/shard-$(basename "$cache")-$k.txt" &
    done
    wait
}

echo "== single process"
TL_THREADS=2 TL_CACHE_DIR=$OUT/cache-single $TL "${TRAIN[@]}" --out "$OUT/run-single" > "$OUT/single.json"

echo "== 4 shards at once"
t0=$(date +%s.%N)
shards "$OUT/cache-sharded" 0 1 2 3
t1=$(date +%s.%N)
cat "$OUT"/shard-cache-sharded-*.txt
TL_THREADS=2 TL_CACHE_DIR=$OUT/cache-sharded $TL "${TRAIN[@]}" --out "$OUT/run-sharded" > "$OUT/sharded.json"

echo "== 4 shards, shard 2 killed half way, then re-run"
for k in 0 1 3; do
    TL_CACHE_DIR=$OUT/cache-killed $TL extract --backbone mobilenet_v2 "$DATA" --shard "$k/4" -q > "$OUT/shard-cache-killed-$k.txt" &
done
TL_CACHE_DIR=$OUT/cache-killed $TL extract --backbone mobilenet_v2 "$DATA" --shard 2/4 -q > /dev/null &
victim=$!
half=$(TL_CACHE_DIR=$OUT/cache-killed $TL extract --backbone mobilenet_v2 "$DATA" --shard 2/4 --dry-run --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shard_images"] // 2)')
# Wait until about half of shard 2 is published (segments of 32 entries; four writers).
until [ "$(find "$OUT/cache-killed" -name "seg-*-$victim-*.tlseg" | wc -l)" -ge $(( half / 32 )) ]; do sleep 0.2; done
kill -9 "$victim"; wait "$victim" 2>/dev/null || true
before=$(find "$OUT/cache-killed" -name "seg-*-$victim-*.tlseg" | wc -l)
echo "killed shard 2 (pid $victim) after it published $before segment(s) of 32 entries"
wait
TL_CACHE_DIR=$OUT/cache-killed $TL extract --backbone mobilenet_v2 "$DATA" --shard 2/4 -q | tee "$OUT/shard-cache-killed-2-rerun.txt"
TL_CACHE_DIR=$OUT/cache-killed $TL cache verify --json > "$OUT/verify.json"
TL_CACHE_DIR=$OUT/cache-killed $TL cache verify | tail -1
TL_THREADS=2 TL_CACHE_DIR=$OUT/cache-killed $TL "${TRAIN[@]}" --out "$OUT/run-killed" > "$OUT/killed.json"

python3 - "$OUT" "$before" "$(python3 -c "print($t1 - $t0)")" <<'PY'
import json, sys
out, killed_segments, shard_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
runs = {k: json.load(open(f"{out}/{k}.json")) for k in ("single", "sharded", "killed")}
verify = json.load(open(f"{out}/verify.json"))
res = {"shard_wall_seconds": shard_seconds, "killed_after_segments": killed_segments,
       "verify": {k: verify[k] for k in ("entries", "problems", "duplicates", "stale_temp_files")}}
print()
print("| run | train: cached | computed | validation accuracy |")
print("|---|---:|---:|---:|")
for k, r in runs.items():
    e = r["extraction"]
    res[k] = {"cached": e["cached"], "computed": e["computed"], "val_accuracy": r["validation"]["accuracy"]}
    print(f"| {k} | {e['cached']} | {e['computed']} | {100 * r['validation']['accuracy']:.2f} % |")
print(f"4 shards at once: {shard_seconds:.1f} s wall; verify after the kill and re-run: {res['verify']}")
json.dump(res, open(f"{out}/results.json", "w"), indent=1)
PY
