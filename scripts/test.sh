#!/usr/bin/env bash
# Runs the whole test suite as root: unit tests, the agent's and the runtime's real-capsule
# tests, and the end-to-end tests that drive a real server with the official `wrenn` SDK.
# Base templates are cached in $WRENN_CACHE (default /var/cache/wrenn) across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (capsules need namespaces, cgroups and mounts)"; exit 1; }
bash scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
mkdir -p "$WRENN_CACHE"

echo "==> building"
cargo build --workspace --all-targets
export WRENN_AGENT="$(bash scripts/build-agent.sh | tail -n 1)"
export WRENN_BIN="$PWD/target/debug/wrenn"

echo "==> cargo test"
cargo test --workspace -- --test-threads=2

echo "==> the Rust client against a real server"
cargo test -p wrenn-client --test live -- --ignored

echo "==> template code-runner-beta (pip, ~2 min the first time; cached in \$WRENN_CACHE after)"
tpl_dir=$(mktemp -d /tmp/wrenn-template-build.XXXXXX)
"$WRENN_BIN" template build code-runner-beta --dir "$tpl_dir" --cache-dir "$WRENN_CACHE" \
  --agent "$WRENN_AGENT"
rm -rf "$tpl_dir"

echo "==> end-to-end tests with the official SDK"
bash scripts/e2e-venv.sh .venv
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider

echo "==> schemathesis against the OpenAPI document (bounded, a few minutes)"
bash scripts/schemathesis.sh
