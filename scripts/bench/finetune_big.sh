#!/usr/bin/env bash
# VGG16 and ResNet50 (random weights: shapes and speed only) end to end with --finetune 1 on
# 40 photos (the first 20 of each class of ../shared/data/cats_dogs): export with cut 1,
# train (head, then the last block), eval, predict. Skips when the photos are not there.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
PY=${PYTHON:-.venv/bin/python}
DATA=${TL_BENCH_DATA:-../shared/data}/cats_dogs
OUT=${TL_BENCH_OUT:-out/bench-finetune-big}
[ -d "$DATA" ] || { echo "bench_finetune_big: skipped ($DATA not found)"; exit 0; }
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
for arch in vgg16 resnet50; do
    [ -f "$OUT/backbones/$arch.json" ] || "$PY" scripts/export_backbones.py "$arch" --weights none --cuts 1 --out "$OUT/backbones"
    rm -rf "$OUT/runs/$arch"
    /usr/bin/time -f "$arch train wall %e s, peak RSS %M KB" \
        "$TL" train "$OUT/photos" -b "$arch" --finetune 1 --finetune-epochs 2 --val-split 0.5 -q --out "$OUT/runs/$arch"
    "$TL" eval "$OUT/runs/$arch" "$OUT/photos" --split val -q | head -1
    "$TL" predict "$OUT/runs/$arch" "$OUT/photos/cat" -q | head -2
done
