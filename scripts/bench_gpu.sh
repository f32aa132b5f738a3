#!/usr/bin/env bash
# GPU benchmark (ResNet50, batch 256, with and without mixed precision, JPEG decoding
# included): tl against a PyTorch reference on CUDA. Needs an NVIDIA GPU; a few minutes
# on one H100. Results: out/bench/gpu.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
.venv/bin/python scripts/bench_gpu.py "$@"
