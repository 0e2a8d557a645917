#!/usr/bin/env bash
# Runs every benchmark on this host, as root: `wrenn bench` (runtime), then the API benchmarks
# twice against a server started here on a throwaway data directory, once through the typed
# Rust client (`wrenn-bench`) and once through Python (`bench/api_bench.py`, httpx and the
# official SDK). One JSON object per line, then both clients' p50/p99 side by side.
# CODE_RUNNER=1 adds the code-runner benchmarks (builds code-runner-beta once, minutes; cached).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PROFILE=release bash scripts/build.sh >&2
cargo build --release -p wrenn-bench >&2
t="${CARGO_TARGET_DIR:-$PWD/target}"
agent="$t/x86_64-unknown-linux-gnu/release/wrenn-agent"
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
dir=$(mktemp -d /tmp/wrenn-bench.XXXXXX)
n="${N:-30}"
"$t/release/wrenn" bench --dir "$dir/rt" --cache-dir "$WRENN_CACHE" --agent "$agent" --n "$n"

port=$((20000 + RANDOM % 20000))
key=$("$t/release/wrenn" key create --dir "$dir/api" --team bench)
"$t/release/wrenn" serve --listen 127.0.0.1:$port --dir "$dir/api" --cache-dir "$WRENN_CACHE" \
  --agent "$agent" --no-prebuild 2>"$dir/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
bash scripts/e2e-venv.sh .venv >&2
export WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key"
"$t/release/wrenn-bench" --n "$n" | tee "$dir/rust.jsonl"
.venv/bin/python bench/api_bench.py --n "$n" | tee "$dir/python.jsonl"
if [ -n "${CODE_RUNNER:-}" ]; then
  cn="${CODE_RUNNER_N:-10}"
  "$t/release/wrenn-bench" --code-runner --n "$cn" | tee -a "$dir/rust.jsonl"
  .venv/bin/python bench/api_bench.py --code-runner --n "$cn" | tee -a "$dir/python.jsonl"
fi
python3 bench/compare.py "$dir/rust.jsonl" "$dir/python.jsonl"
