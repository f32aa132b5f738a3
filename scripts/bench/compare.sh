#!/usr/bin/env bash
# `tl compare` on 40 photos (the first 20 of each class of ../shared/data/cats_dogs) with
# MobileNetV2 (real weights from ../shared/models when present, else random) and ResNet50
# (random weights: shapes and speed only): the table, the JSON and the page. Run twice: the
# second run finds every feature in the cache. Skips when the photos are not there.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
PY=${PYTHON:-.venv/bin/python}
DATA=${TL_BENCH_DATA:-../shared/data}/cats_dogs
WEIGHTS=${TL_BENCH_WEIGHTS:-../shared/models/mobilenet_v2-imagenet.safetensors}
OUT=${TL_BENCH_OUT:-out/bench-compare}
[ -d "$DATA" ] || { echo "bench_compare: skipped ($DATA not found)"; exit 0; }
[ -x target/release/tl ] || cargo build --release
TL=target/release/tl
mkdir -p "$OUT/photos"
for class in cat dog; do   # links, not copies
    mkdir -p "$OUT/photos/$class"
    ls "$DATA/$class" | sort | head -20 | while read -r f; do
        ln -sf "$(cd "$DATA/$class" && pwd)/$f" "$OUT/photos/$class/$f"
    done
done
export TL_BACKBONES="$OUT/backbones" TL_CACHE_DIR="$OUT/cache"
mnv2_weights=none
[ -f "$WEIGHTS" ] && mnv2_weights="$WEIGHTS"
[ -f "$OUT/backbones/mobilenet_v2.json" ] || "$PY" scripts/export_backbones.py mobilenet_v2 --weights "$mnv2_weights" --cuts none --out "$OUT/backbones"
[ -f "$OUT/backbones/resnet50.json" ] || "$PY" scripts/export_backbones.py resnet50 --weights none --cuts none --out "$OUT/backbones"
rm -rf "$OUT/cache"
compare() {
    "$TL" compare --backbones mobilenet_v2,resnet50 "$OUT/photos" --val-split 0.5 --seed 0 \
        --out "$OUT/runs" --force -q "$@"
}
echo "## cold cache"
compare 2>/dev/null
echo "## warm cache (--json, saved to $OUT/compare.json)"
compare --json 2>/dev/null > "$OUT/compare.json"
"$PY" - "$OUT/compare.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"same split: {r['same_split']}")
for row in r["rows"]:
    print(f"{row['backbone']}: val {100*row['val_accuracy']:.2f}%, extraction "
          f"{row['extract_seconds']:.2f}s (img/s {row['extraction_images_per_second']}), head {row['head_seconds']:.2f}s")
PYEOF
echo "page: $OUT/runs/compare.html"
