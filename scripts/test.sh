#!/usr/bin/env bash
# The whole test-suite: set-up if needed, fixtures, Rust tests (release profile, the same
# build as the binary), then the export script's tests. No internet or GPU needed; tests
# that use ../shared data say so when it is absent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
.venv/bin/python scripts/make_fixtures.py
cargo test --release
.venv/bin/python -m pytest -q -rs -p no:cacheprovider -W ignore::DeprecationWarning scripts/tests
