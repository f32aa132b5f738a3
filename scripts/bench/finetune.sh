#!/usr/bin/env bash
# Fine-tuning benchmark (issue #11), MobileNetV2 with real weights on ../shared/data:
#   1. cats_dogs --val-split 0.5, seeds 0 1 2, and pets (5/5 per breed): the frozen head
#      against `--finetune` (default N and learning rate), validation accuracy;
#   2. parity: scripts/bench/finetune_reference.py (eager PyTorch, same split, same recipe);
#   3. speed: a fine-tuning epoch on cached trunk outputs against `--finetune all` (the whole
#      backbone forward and backward every epoch), same data, same machine, one run;
#   4. --views 4 (cost of extracting the views, once) and --tta flip (what each buys).
# Skips (exit 0, saying so) when the photos or the weights are not there.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
PY=${PYTHON:-.venv/bin/python}
DATA=${TL_BENCH_DATA:-../shared/data}
WEIGHTS=${TL_BENCH_WEIGHTS:-../shared/models/mobilenet_v2-imagenet.safetensors}
OUT=${TL_BENCH_OUT:-out/bench-finetune}
SEEDS=${TL_BENCH_SEEDS:-0 1 2}
for need in "$DATA/cats_dogs" "$DATA/pets" "$WEIGHTS"; do
    [ -e "$need" ] || { echo "bench_finetune: skipped ($need not found)"; exit 0; }
done
[ -x target/release/tl ] || cargo build --release
TL=target/release/tl
mkdir -p "$OUT"
BB="$OUT/backbones"
if ! "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$BB/mobilenet_v2.json')).get('cuts') else 1)" 2>/dev/null; then
    "$PY" scripts/export_backbones.py mobilenet_v2 --weights "$WEIGHTS" --out "$BB" --force
fi
export TL_CACHE_DIR="$OUT/cache" TL_BACKBONES="$BB"

field() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
train() { # name data extra-args...
    local name=$1 data=$2; shift 2
    rm -rf "$OUT/runs/$name"
    "$TL" train "$data" -b mobilenet_v2 --out "$OUT/runs/$name" -q --json "$@" > "$OUT/$name.json"
}
pct() { "$PY" -c "import sys; print(f'{100*float(sys.argv[1]):.2f}')" "$1"; }

echo "## accuracy: frozen head vs --finetune (default N=1, lr = head lr / 100)"
echo "| data | seed | frozen head | fine-tuned | fine-tune epoch img/s |"
echo "| --- | --- | --- | --- | --- |"
for data in cats_dogs pets; do
    for seed in $SEEDS; do
        train "$data-head-$seed" "$DATA/$data" --val-split 0.5 --seed "$seed"
        train "$data-ft-$seed" "$DATA/$data" --val-split 0.5 --seed "$seed" --finetune
        echo "| $data | $seed | $(pct "$(field "$OUT/$data-head-$seed.json" "d['val_accuracy']")") |" \
             "$(pct "$(field "$OUT/$data-ft-$seed.json" "d['val_accuracy']")") |" \
             "$(field "$OUT/$data-ft-$seed.json" "round(d['finetune']['images_per_second'],1)") |"
    done
done

echo
echo "## parity: PyTorch reference on the same split (seed 0)"
echo "| data | tl head | reference head | tl fine-tuned | reference fine-tuned |"
echo "| --- | --- | --- | --- | --- |"
for data in cats_dogs pets; do
    "$PY" scripts/bench/finetune_reference.py "$OUT/runs/$data-ft-0" > "$OUT/$data-reference.json"
    echo "| $data | $(pct "$(field "$OUT/$data-ft-0.json" "d['finetune']['head_only_val_accuracy']")") |" \
         "$(pct "$(field "$OUT/$data-reference.json" "d['head_only_val_accuracy']")") |" \
         "$(pct "$(field "$OUT/$data-ft-0.json" "d['val_accuracy']")") |" \
         "$(pct "$(field "$OUT/$data-reference.json" "d['finetuned_val_accuracy']")") |"
done

echo
echo "## speed: one fine-tuning epoch, cats_dogs seed 0 (650 training images)"
train cd-all "$DATA/cats_dogs" --val-split 0.5 --seed 0 --finetune all --finetune-epochs 2 --finetune-patience 0
cached=$(field "$OUT/cats_dogs-ft-0.json" "d['finetune']['images_per_second']")
whole=$(field "$OUT/cd-all.json" "d['finetune']['images_per_second']")
"$PY" -c "import sys; c,w=map(float,sys.argv[1:]); print(f'cached trunk (N=1): {c:.1f} img/s; whole backbone forward+backward (--finetune all): {w:.1f} img/s; ratio {c/w:.1f}x')" "$cached" "$whole"

echo
echo "## --views 4 and --tta flip (cats_dogs seed 0, --finetune)"
export TL_CACHE_DIR="$OUT/cache-views"   # a cold cache: the views' cost is measured
rm -rf "$TL_CACHE_DIR"
train views-cold "$DATA/cats_dogs" --val-split 0.5 --seed 0 --finetune --views 4
train views-warm "$DATA/cats_dogs" --val-split 0.5 --seed 0 --finetune --views 4
"$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
cold, warm = (json.load(open(f"{out}/views-{k}.json")) for k in ("cold", "warm"))
plain = cold["extraction"]["seconds"]
print(f"cold: plain view of 1300 images {plain:.1f} s; all extraction (plain + 3 views of 650) "
      f"{cold['timing_seconds']['extract']:.1f} s = {cold['timing_seconds']['extract']/plain:.2f}x the plain cold extraction")
print(f"warm: extraction {warm['timing_seconds']['extract']:.1f} s ({warm['extraction']['cached']} cached, "
      f"{warm['extraction']['computed']} computed)")
print(f"val accuracy: --views 1 {100*json.load(open(f'{out}/cats_dogs-ft-0.json'))['val_accuracy']:.2f} %, "
      f"--views 4 {100*cold['val_accuracy']:.2f} %")
PYEOF
for run in cats_dogs-ft-0 views-warm; do
    for tta in none flip; do
        acc=$("$TL" eval "$OUT/runs/$run" "$DATA/cats_dogs" --split val --tta "$tta" --json -q \
              | "$PY" -c "import json,sys; print(f\"{100*json.load(sys.stdin)['report']['accuracy']:.2f}\")")
        echo "eval $run --tta $tta: $acc %"
    done
done
