# Source this to build by hand: `source scripts/env.sh && cargo build --release`.
# Uses the project's .venv (made by scripts/setup.sh) unless LIBTORCH points elsewhere.
_tl_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${LIBTORCH:-}" ]; then
    export VIRTUAL_ENV="$_tl_root/.venv"
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    export LIBTORCH_USE_PYTORCH=1
fi
export TL_PYTHON="${TL_PYTHON:-$_tl_root/.venv/bin/python}"
unset _tl_root
