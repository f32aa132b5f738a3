#!/usr/bin/env bash
# The main job, end to end: export MobileNetV2 with real ImageNet weights, train a
# Cats-vs-Dogs head on frozen features, audit the photos, evaluate it, fine-tune the top blocks,
# choose settings by cross-validation (tl tune), predict, dream an "ideal cat", and
# fool the network with an imperceptible perturbation of a dog photo; then export the model
# (TorchScript, ONNX), write the HTML report and a backbone comparison.
# Settings: configs/demo.env (each can be overridden from the environment).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
# shellcheck source=configs/demo.env
source configs/demo.env
TL="$ROOT/target/release/tl"
PY="$ROOT/.venv/bin/python"
export TL_PYTHON="$PY"   # tl export --format onnx runs PyTorch's exporter with it
OUT="$TL_DEMO_OUT"
mkdir -p "$OUT"
step() { printf '\n=== %s\n' "$*"; }

DATA="$TL_DEMO_DATA"
if [ ! -d "$DATA" ]; then
    step "no photo set at $DATA: generating a small synthetic two-class set instead (results say little)"
    DATA="$OUT/sample_data"
    "$PY" - "$DATA" <<'PYEOF'
import sys, numpy as np
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1]); rng = np.random.default_rng(0)
for name, colour in (("cat", (200, 120, 60)), ("dog", (70, 90, 160))):
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(40):
        arr = np.clip(np.array(colour) + rng.normal(0, 40, (180, 240, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / name / f"{name}.{i}.jpg")
PYEOF
fi

step "1. export MobileNetV2 (TorchScript, frozen, channels-last; and ONNX) -> backbones/"
current() { "$PY" -c "import json,sys; d=json.load(open('backbones/mobilenet_v2.json')); sys.exit(0 if d.get('cuts') and d.get('onnx', {}).get('features_bf16') and d.get('layers') else 1)"; }
if [ -f backbones/mobilenet_v2.json ] && current; then
    echo "backbones/mobilenet_v2.json exists; reusing it"
elif [ -f "$TL_DEMO_WEIGHTS" ]; then
    # An export made before fine-tuning (cut points), the ONNX engine, layer files or the bf16 export existed: export it again.
    "$PY" scripts/export_backbones.py mobilenet_v2 --weights "$TL_DEMO_WEIGHTS" --force
else
    echo "no local weights at $TL_DEMO_WEIGHTS: trying the torchvision download"
    "$PY" scripts/export_backbones.py mobilenet_v2 --weights imagenet --force \
        || "$PY" scripts/export_backbones.py mobilenet_v2 --weights none --force
fi
"$TL" doctor

step "2. train a linear head on frozen features ($DATA, ${TL_DEMO_VAL_SPLIT} held out)"
"$TL" train --backbone mobilenet_v2 "$DATA" --val-split "$TL_DEMO_VAL_SPLIT" --seed "$TL_DEMO_SEED" --out "$OUT/run" --force
step "   ... again with other head settings: every feature now comes from the cache"
"$TL" train --backbone mobilenet_v2 "$DATA" --val-split "$TL_DEMO_VAL_SPLIT" --seed "$TL_DEMO_SEED" --out "$OUT/run-hidden" --force --hidden 256 -q

step "2b. audit the photos: duplicates, leaks across the run's split, likely label errors, outliers"
"$TL" audit "$DATA" --run "$OUT/run" --html "$OUT/audit.html" --review "$OUT/review.csv" --force --show 3

step "3. evaluate on the held-out half"
"$TL" eval "$OUT/run" "$DATA" --split val --top-losses 5

step "3b. fine-tune the top block with the head (the frozen trunk's output is cached)"
"$TL" train --backbone mobilenet_v2 "$DATA" --val-split "$TL_DEMO_VAL_SPLIT" --seed "$TL_DEMO_SEED" --out "$OUT/run-finetuned" --force --finetune -q
"$TL" eval "$OUT/run-finetuned" "$DATA" --split val --tta flip --top-losses 3

step "3c. tune: choose the settings by 5-fold cross-validation of the training half (head settings, views, fine-tuning) within a budget, then train with them"
"$TL" tune --backbone mobilenet_v2 "$DATA" --val-split "$TL_DEMO_VAL_SPLIT" --seed "$TL_DEMO_SEED" --budget "$TL_DEMO_TUNE_BUDGET" --out "$OUT/run-tuned" --force

CLASSES=$(ls "$DATA")
FIRST_CLASS=$(echo "$CLASSES" | sed -n 1p)
LAST_CLASS=$(echo "$CLASSES" | tail -1)
CAT_IMG=$(find "$DATA/$FIRST_CLASS" -type f | sort | sed -n 1p)
DOG_IMG=$(find "$DATA/$LAST_CLASS" -type f | sort | sed -n 1p)
step "4. predict"
"$TL" predict "$OUT/run" "$CAT_IMG" "$DOG_IMG"
"$TL" predict --backbone mobilenet_v2 "$CAT_IMG" --top-k 5

step "4b. unknown images: photos that are neither are answered 'unknown' (calibrated probabilities otherwise)"
if [ -d "$TL_DEMO_OOD" ]; then
    "$TL" eval "$OUT/run" "$DATA" --split val --unknown-dir "$TL_DEMO_OOD" --top-losses 0
    "$TL" predict "$OUT/run" $(find "$TL_DEMO_OOD" -type f | sort | sed -n '1p;60p;120p') "$CAT_IMG"
else
    echo "no photos at $TL_DEMO_OOD (TL_DEMO_OOD): skipped"
fi

step "4c. explain: where the run looked (CAM heat maps over the photos; report.html shows them beside its worst images), and what one layer sees (--maps)"
"$TL" explain --run "$OUT/run" "$CAT_IMG" "$DOG_IMG" -o "$OUT/explain" --force
"$TL" explain --run "$OUT/run-finetuned" "$CAT_IMG" --class "$FIRST_CLASS,$LAST_CLASS" -o "$OUT/explain-finetuned" --force
"$TL" explain --backbone mobilenet_v2 "$CAT_IMG" --maps --layer features.4 --channels 32 -o "$OUT/explain" --force

step "5. dream: what does the network think a '$FIRST_CLASS' looks like?"
"$TL" dream --run "$OUT/run" --class "$FIRST_CLASS" --steps "$TL_DEMO_DREAM_STEPS" --save-every 64 -o "$OUT/dream_${FIRST_CLASS}.png" --force
"$TL" dream --backbone mobilenet_v2 --class "Siamese cat" --steps "$TL_DEMO_DREAM_STEPS" -o "$OUT/dream_siamese.png" --force
"$TL" dream --backbone mobilenet_v2 --class "Siamese cat" --steps "$TL_DEMO_DREAM_STEPS" --tv 0 -o "$OUT/dream_siamese_tv0.png" --force

# Attack a photo the head gets right (the first few in name order).
for f in $(find "$DATA/$LAST_CLASS" -type f | sort | sed -n 1,20p); do
    if "$TL" predict "$OUT/run" "$f" -k 1 | grep "	$LAST_CLASS " >/dev/null; then DOG_IMG="$f"; break; fi
done
step "6. attack: make the network see a '$FIRST_CLASS' in $(basename "$DOG_IMG") (eps $TL_DEMO_ATTACK_EPS)"
"$TL" attack "$DOG_IMG" --run "$OUT/run" --target "$FIRST_CLASS" --eps "$TL_DEMO_ATTACK_EPS" -o "$OUT/attack_adversarial.png" --diff "$OUT/attack_diff.png" --force
"$TL" predict "$OUT/run" "$OUT/attack_adversarial.png"
"$PY" scripts/docs/side_by_side.py "$OUT/attack_side_by_side.png" "$DOG_IMG:original" "$OUT/attack_adversarial.png:adversarial ($FIRST_CLASS)" "$OUT/attack_diff.png:difference (amplified)"

step "7. ship it: one TorchScript file (and ONNX), then predict with the file alone"
"$TL" export "$OUT/run-finetuned" -o "$OUT/model.pt" --force
"$TL" export "$OUT/run-finetuned" -o "$OUT/model.onnx" --format onnx --force
"$TL" predict "$OUT/model.pt" "$CAT_IMG" "$DOG_IMG"

step "8. reports: the run as one HTML page (dream and attack images included), and a comparison"
mkdir -p "$OUT/include"
cp "$OUT/dream_${FIRST_CLASS}.png" "$OUT/attack_side_by_side.png" "$OUT/include/"
"$TL" report "$OUT/run" --include "$OUT/include"
"$TL" compare --backbones mobilenet_v2 "$DATA" --val-split "$TL_DEMO_VAL_SPLIT" --seed "$TL_DEMO_SEED" --out "$OUT/compare" --force -q

step "9. scale out: 3 extraction shards at once into a fresh cache, then train finds every feature there"
SHARD_CACHE="$OUT/shard-cache"
rm -rf "$SHARD_CACHE"
pids=()
for k in 0 1 2; do
    TL_CACHE_DIR="$SHARD_CACHE" "$TL" extract --backbone mobilenet_v2 "$DATA" --shard "$k/3" -q &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
TL_CACHE_DIR="$SHARD_CACHE" "$TL" cache verify
TL_CACHE_DIR="$SHARD_CACHE" "$TL" train --backbone mobilenet_v2 "$DATA" --val-split "$TL_DEMO_VAL_SPLIT" --seed "$TL_DEMO_SEED" --stream --out "$OUT/run-streamed" --force -q

step "done: run folder $OUT/run (report.html), model $OUT/model.pt, images in $OUT/"
ls "$OUT"
