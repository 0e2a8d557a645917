#!/usr/bin/env bash
# microVM benchmarks through the API: starts `wrenn serve --runtime microvm` on a throwaway data
# directory and runs bench/microvm.py against it. As root; one JSON object per line. On a host
# without working KVM the server runs TCG (its log says `accel=tcg`) and so do the numbers.
#
# Run with: bench/microvm.sh          (WRENN_BIN / WRENN_AGENT to use prebuilt binaries, N=5)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
if [ -z "${WRENN_BIN:-}" ]; then
  PROFILE=release bash scripts/build.sh >&2
  WRENN_BIN="$PWD/target/release/wrenn"
fi
agent="${WRENN_AGENT:-$PWD/target/x86_64-unknown-linux-gnu/release/wrenn-agent}"
dir=$(mktemp -d /tmp/wrenn-bench-microvm.XXXXXX)
port=$((20000 + RANDOM % 20000))
key=$("$WRENN_BIN" key create --dir "$dir" --team bench)
"$WRENN_BIN" serve --runtime microvm --listen 127.0.0.1:$port --dir "$dir" --cache-dir "$WRENN_CACHE" \
  --agent "$agent" --no-prebuild --warm code-runner-beta=0,code-interpreter-v1=0 2>"$dir/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
accel=$(grep -o 'accel=[a-z]*' "$dir/server.log" | head -1 | cut -d= -f2)
py="${PYTHON:-/work/main/.venv/bin/python}"
[ -x "$py" ] || { bash scripts/e2e-venv.sh .venv >&2; py=.venv/bin/python; }
ACCEL="${accel:-unknown}" WRENN_DIR="$dir" WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" \
  "$py" bench/microvm.py --n "${N:-5}"

# Cold boots beside: the same server without warm templates.
kill $server; wait $server 2>/dev/null || true
"$WRENN_BIN" serve --runtime microvm --listen 127.0.0.1:$port --dir "$dir" --cache-dir "$WRENN_CACHE" \
  --agent "$agent" --no-prebuild --no-warm-templates --warm code-runner-beta=0,code-interpreter-v1=0 2>>"$dir/server.log" &
server=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
ACCEL="${accel:-unknown}" WRENN_DIR="$dir" WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" \
  "$py" bench/microvm.py --n "${N:-5}" --cold

# Pool hits beside: the same server keeping one warm busybox capsule ready (`--warm busybox=1`).
kill $server; wait $server 2>/dev/null || true
"$WRENN_BIN" serve --runtime microvm --listen 127.0.0.1:$port --dir "$dir" --cache-dir "$WRENN_CACHE" \
  --agent "$agent" --no-prebuild --warm code-runner-beta=0,code-interpreter-v1=0,busybox=1 2>"$dir/pool.log" &
server=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
ACCEL="${accel:-unknown}" WRENN_DIR="$dir" WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" \
  "$py" bench/microvm.py --n "${N:-5}" --pooled "$dir/pool.log"
