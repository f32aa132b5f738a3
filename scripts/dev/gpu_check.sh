#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU and a Python with PyTorch + torchvision:
#   1. `tl doctor` sees the GPU;
#   2. scripts/bench/gpu.py: ResNet50 extraction (JPEG decoding included) and backbone-only,
#      fp32 and --amp, against a PyTorch DataLoader reference, alternated, medians;
#   3. with MobileNetV2 weights (GPU_CHECK_WEIGHTS) and photos (GPU_CHECK_PHOTOS): train a
#      head, dream and attack on --device cuda, and the same on --device cpu for comparison.
# Usage: TL=path/to/tl PYTHON=python3 scripts/dev/gpu_check.sh OUT_DIR
# (scripts/bench/run.sh gpu is the one-command version for a machine where scripts/setup.sh works.)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/out/gpu}"; mkdir -p "$OUT"
TL="${TL:-$ROOT/target/release/tl}"; PY="${PYTHON:-python3}"
W="$(mktemp -d)"; export TL_CACHE_DIR="$W/cache"
step() { printf '\n=== %s\n' "$*"; }
step "doctor"; "$TL" doctor
step "bench (ResNet50, random weights: speed only)"
"$PY" "$ROOT/scripts/bench/gpu.py" --tl "$TL" --images "${GPU_CHECK_IMAGES:-4096}" --rounds "${GPU_CHECK_ROUNDS:-3}" --json-out "$OUT/gpu_bench.json"
if [ -f "${GPU_CHECK_WEIGHTS:-}" ] && [ -d "${GPU_CHECK_PHOTOS:-}" ]; then
    step "MobileNetV2 (real weights) on CUDA: train, predict, dream, attack"
    "$PY" "$ROOT/scripts/export_backbones.py" mobilenet_v2 --weights "$GPU_CHECK_WEIGHTS" --out "$W/bb" | tail -1
    export TL_BACKBONES="$W/bb"
    for dev in cuda cpu; do
        "$TL" --device $dev train --backbone mobilenet_v2 "$GPU_CHECK_PHOTOS" --val-split 0.5 --seed 0 --out "$W/run-$dev" -q --json > "$OUT/train_$dev.json" 2> "$W/train_$dev.err" \
            && echo "train on $dev: $(python3 -c "import json,sys;r=json.load(open('$OUT/train_$dev.json'));print('val accuracy', r['val_accuracy'], 'extraction', round(r['extraction']['images_per_second']), 'img/s, head', round(r['timing_seconds']['train'],2), 's')")" \
            || { echo "train on $dev FAILED"; tail -3 "$W/train_$dev.err"; }
    done
    FIRST=$(ls "$GPU_CHECK_PHOTOS" | sed -n 1p); LAST=$(ls "$GPU_CHECK_PHOTOS" | tail -1)
    DOG=$(find "$GPU_CHECK_PHOTOS/$LAST" -type f | sort | sed -n 1p)
    for dev in cuda cpu; do
        "$TL" --device $dev dream --backbone mobilenet_v2 --class "Siamese cat" --steps 256 -o "$OUT/dream_siamese_$dev.png" --force --json > "$OUT/dream_$dev.json" \
            && echo "dream on $dev: p $(python3 -c "import json;r=json.load(open('$OUT/dream_$dev.json'));print(round(r['probability'],4), 'in', round(r['seconds'],1), 's')")" || echo "dream on $dev FAILED"
        "$TL" --device $dev attack "$DOG" --run "$W/run-$dev" --target "$FIRST" --eps 2/255 -o "$W/adv_$dev.png" --force --json > "$OUT/attack_$dev.json" \
            && echo "attack on $dev: $(python3 -c "import json;o=json.load(open('$OUT/attack_$dev.json'))['outcomes'][0];print('success', o['success'], 'steps', o['steps'], 'PSNR', round(o['psnr_db'],1), 'in', round(o['seconds'],2), 's')")" || echo "attack on $dev FAILED"
    done
else
    step "skipped: MobileNetV2 checks (set GPU_CHECK_WEIGHTS and GPU_CHECK_PHOTOS)"
fi
rm -rf "$W"
