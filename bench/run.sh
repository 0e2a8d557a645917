#!/usr/bin/env bash
# Runs every benchmark on this host, as root: `wrenn bench` (runtime) and the API benchmarks
# against a server started here on a throwaway data directory. One JSON object per line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PROFILE=release bash scripts/build.sh >&2
agent="$PWD/target/x86_64-unknown-linux-gnu/release/wrenn-agent"
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
dir=$(mktemp -d /tmp/wrenn-bench.XXXXXX)
n="${N:-30}"
./target/release/wrenn bench --dir "$dir/rt" --cache-dir "$WRENN_CACHE" --agent "$agent" --n "$n"

port=$((20000 + RANDOM % 20000))
key=$(./target/release/wrenn key create --dir "$dir/api" --team bench)
./target/release/wrenn serve --listen 127.0.0.1:$port --dir "$dir/api" --cache-dir "$WRENN_CACHE" \
  --agent "$agent" --no-prebuild 2>"$dir/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
bash scripts/e2e-venv.sh .venv >&2
WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" .venv/bin/python bench/api_bench.py --n "$n"
# CODE_RUNNER=1: the code-runner benchmarks too (builds code-runner-beta once, ~2 min; cached).
if [ -n "${CODE_RUNNER:-}" ]; then
  WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" .venv/bin/python bench/api_bench.py \
    --code-runner --n "${CODE_RUNNER_N:-10}"
fi
