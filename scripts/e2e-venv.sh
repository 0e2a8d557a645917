#!/usr/bin/env bash
# Create (or refresh) the Python venv used by the end-to-end tests in tests/e2e.
#
#   scripts/e2e-venv.sh [VENV_DIR]        (default: .venv at the repo root)
#
# Installs pytest, pytest-timeout, httpx, httpx-ws, pydantic, certifi, playwright (driving
# Debian's chromium; no browser is downloaded) and the OFFICIAL
# `wrenn` SDK 0.3.0, and E2B's stock SDKs `e2b` 2.63.0 and `e2b-code-interpreter` 2.11.5.
# The wrenn SDK declares Python >= 3.13 but runs on 3.11, so it is fetched as a
# wheel for 3.13 and installed with --ignore-requires-python (see the wire contract).
# Idempotent: a venv that already has everything is left alone (takes well under a second).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv}"
python="${PYTHON:-python3}"
sdk_version="0.3.0"
deps=(pytest pytest-timeout httpx httpx-ws pydantic certifi playwright "e2b==2.63.0" "e2b-code-interpreter==2.11.5")

# Fast path: everything importable and the SDK at the pinned version.
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" - "$sdk_version" <<'EOF' 2>/dev/null; then
import sys, importlib.metadata as md
import pytest, pytest_timeout, httpx, httpx_ws, pydantic, certifi, playwright, wrenn, e2b, e2b_code_interpreter  # noqa: F401
ok = md.version("wrenn") == sys.argv[1] and md.version("e2b") == "2.63.0" and md.version("e2b-code-interpreter") == "2.11.5"
sys.exit(0 if ok else 1)
EOF
    echo "e2e venv ready: $venv"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install "${deps[@]}"

wheel_dir="$(mktemp -d)"
trap 'rm -rf "$wheel_dir"' EXIT
"${pip[@]}" download --no-deps --python-version 3.13 --only-binary=:all: \
    "wrenn==$sdk_version" -d "$wheel_dir"
# Its dependencies (httpx, httpx-ws, pydantic) are already satisfied by the line above.
"${pip[@]}" install --ignore-requires-python "$wheel_dir/wrenn-$sdk_version-py3-none-any.whl"

"$venv/bin/python" -c 'import wrenn, importlib.metadata as md; print("wrenn", md.version("wrenn"))'
echo "e2e venv ready: $venv"
