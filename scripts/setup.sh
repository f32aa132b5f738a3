#!/usr/bin/env bash
# Idempotent set-up: a git-ignored .venv with the pinned PyTorch (whose libtorch `tl` links
# against, and which the export script uses), then the release build of `tl`, linked into
# ~/.local/bin.
# A second run checks a stamp and finishes in seconds.
#
# To build against an existing libtorch 2.13.0 instead, set LIBTORCH=/path/to/libtorch
# (the .venv is still made: the export and fixture scripts need Python torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REQ=scripts/requirements.txt
VENV=.venv
STAMP="$VENV/.tl-requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    PY="${PYTHON:-python3}"
    command -v "$PY" >/dev/null || { echo "setup: python3 not found (set PYTHON=...)" >&2; exit 1; }
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || { echo "setup: Python >= 3.10 needed for torch 2.13" >&2; exit 1; }
    echo "setup: creating $VENV with $(grep -v '^#' "$REQ" | tr '\n' ' ')(several GB, first time only)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
# shellcheck source=scripts/env.sh
source scripts/env.sh
echo "setup: building tl (release; the first build of torch-sys takes several minutes)"
cargo build --release --quiet
echo "setup: ready: $ROOT/target/release/tl"

# `tl` on the PATH: a link in ~/.local/bin (the binary finds libtorch, ONNX Runtime and the
# Python it exports backbones with by absolute paths baked in at build, so the link works from
# any folder). TL_NO_LINK=1 skips it; an existing `tl` there that is not our link is left alone.
if [ "${TL_NO_LINK:-0}" != 1 ] && [ -n "${HOME:-}" ]; then
    BIN="$HOME/.local/bin"
    mkdir -p "$BIN"
    if [ -e "$BIN/tl" ] && [ ! -L "$BIN/tl" ]; then
        echo "setup: $BIN/tl exists and is not a link; left alone (run $ROOT/target/release/tl)"
    else
        ln -sfn "$ROOT/target/release/tl" "$BIN/tl"
        case ":$PATH:" in
            *":$BIN:"*) echo "setup: tl is on your PATH ($BIN/tl)" ;;
            *) echo "setup: linked $BIN/tl; add $BIN to your PATH to run tl from any folder" ;;
        esac
    fi
fi
