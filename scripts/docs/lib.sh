# Sourced by the scripts/docs/make_*.sh scripts: the repository root as the working folder,
# the set-up done, `$TL` and `$PY`, and a scratch folder `$T` removed on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup.sh >/dev/null
TL=target/release/tl
PY=.venv/bin/python
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
