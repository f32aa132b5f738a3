#!/usr/bin/env bash
# Benchmarks: tl against PyTorch on this machine, in one run (see scripts/bench.py for
# what is measured). Results: out/bench/results.json; the numbers quoted in BENCHMARKS.md
# come from such a run. Takes about 20 minutes on 2 cores. Pass section names to run a
# subset: extract ceiling train memory accuracy big.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
PY=.venv/bin/python
[ -f backbones/mobilenet_v2.json ] || "$PY" scripts/export_backbones.py mobilenet_v2 --weights ../shared/models/mobilenet_v2-imagenet.safetensors
for b in resnet50 vgg16; do
    [ -f "backbones/$b.json" ] || "$PY" scripts/export_backbones.py "$b" --weights none
done
"$PY" scripts/bench.py "$@"
