#!/usr/bin/env bash
# Faithfulness of tl explain's maps (BENCHMARKS.md §18): linear-head MobileNetV2 runs on
# cats_dogs and pets (--val-split 0.5, seed 0), 100 validation photos each, greyed out by
# heat against random patches; CAM against Grad-CAM on 20 photos. A hidden-layer head
# (Grad-CAM) on cats_dogs for comparison. Needs ../shared (skips without it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
source scripts/env.sh
SHARED=../shared/data
[ -d "$SHARED/cats_dogs" ] || { echo "bench explain: $SHARED not present, skipped"; exit 0; }
PY=.venv/bin/python
[ -f backbones/mobilenet_v2.json ] || "$PY" scripts/export_backbones.py mobilenet_v2 --weights ../shared/models/mobilenet_v2-imagenet.safetensors
cargo build --release -q --example explain_faithfulness
OUT=out/bench-explain
mkdir -p "$OUT"
TL=target/release/tl
for data in cats_dogs pets; do
    [ -f "$OUT/$data/config.json" ] || "$TL" train --backbone mobilenet_v2 "$SHARED/$data" --val-split 0.5 --seed 0 --out "$OUT/$data" -q >/dev/null
    target/release/examples/explain_faithfulness "$OUT/$data" "$SHARED/$data" 100 | tee "$OUT/$data.json"
done
[ -f "$OUT/cats_dogs-hidden/config.json" ] || "$TL" train --backbone mobilenet_v2 "$SHARED/cats_dogs" --val-split 0.5 --seed 0 --hidden 256 --out "$OUT/cats_dogs-hidden" -q >/dev/null
target/release/examples/explain_faithfulness "$OUT/cats_dogs-hidden" "$SHARED/cats_dogs" 100 | tee "$OUT/cats_dogs-hidden.json"
