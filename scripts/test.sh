#!/usr/bin/env bash
# The whole test-suite: set-up if needed, fixtures, Rust tests (release profile, the same
# build as the binary), the API docs, then the export script's tests. No internet or GPU
# needed; tests that use ../shared data say so when it is absent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
# Headless Chromium renders the HTML report in scripts/tests/test_report_html.py; installed
# here when missing and possible (Debian, root), otherwise that test says it is skipped.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test: installing chromium (Debian) for the HTML report test"
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
        || echo "test: could not install chromium; the HTML rendering test will be skipped"
fi
.venv/bin/python scripts/dev/make_fixtures.py
# Skipped tests (and parts) list themselves here; printed at the end.
rm -f target/tl-skipped-tests.txt
cargo test --release
# The library's API docs build without warnings (broken links in them fail here).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q
.venv/bin/python -m pytest -q -rs -p no:cacheprovider -W ignore::DeprecationWarning scripts/tests
if [ -s target/tl-skipped-tests.txt ]; then
    echo "test: skipped Rust tests (or parts of them):"
    sort -u target/tl-skipped-tests.txt | sed 's/^/  /'
else
    echo "test: no Rust test skipped"
fi
