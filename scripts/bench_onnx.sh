#!/usr/bin/env bash
# --engine onnx against ONNX Runtime in Python, libtorch and PyTorch eager (issue #13); see
# scripts/bench_onnx.py. About 15 minutes on 2 cores. Sections: backbone extract accuracy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
.venv/bin/python scripts/bench_onnx.py "$@"
