#!/usr/bin/env bash
# Before/after pair, as root: the runtime benchmark (`wrenn bench`) and the API benchmarks
# (Rust client, then Python) of two builds back to back, A then B, on one host and one agent,
# then the p50s and p99s side by side and each build's per-step create timings (p50 of the
# `capsule created` debug lines). Each of A and B is a directory holding release `wrenn` and
# `wrenn-bench` binaries, e.g. a copy of main's target/release and this tree's:
#   A=/tmp/before B=target/release N=30 bench/pair.sh
# KEEP=1 keeps the logs and JSON lines; ROUNDS=2 runs A B A B; PYTHON is the Python with httpx
# and the SDK (default .venv, made by scripts/e2e-venv.sh); AGENT the static agent (default: built
# by scripts/build-agent.sh). Takes the host's benchmark lock /tmp/wrenn-heavy.lock when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?A=<dir with the before wrenn and wrenn-bench>}" "${B:?B=<dir with the after ones>}"
n="${N:-30}"
rounds="${ROUNDS:-1}"
agent="${AGENT:-$(bash scripts/build-agent.sh | tail -n 1)}"
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
out=$(mktemp -d /tmp/wrenn-pair.XXXXXX)
[ -n "${KEEP:-}" ] && echo "keeping $out" >&2 || trap 'rm -rf "$out"' EXIT
py="${PYTHON:-.venv/bin/python}"
[ -n "${PYTHON:-}" ] || [ -x .venv/bin/python ] || bash scripts/e2e-venv.sh .venv >&2

one() { # label bindir round
  local label=$1 bin=$2 r=$3 dir port key server
  dir=$(mktemp -d /tmp/wrenn-pair-run.XXXXXX)
  echo "==> $label (round $r): runtime" >&2
  WRENN_LOG=wrenn_runtime=debug "$bin/wrenn" bench --dir "$dir/rt" --cache-dir "$WRENN_CACHE" \
    --agent "$agent" --n "$n" >"$out/$label.$r.rt.jsonl" 2>"$out/$label.$r.rt.log"
  port=$((20000 + RANDOM % 20000))
  key=$("$bin/wrenn" key create --dir "$dir/api" --team bench)
  WRENN_LOG=info,wrenn_runtime=debug,wrenn_server=debug "$bin/wrenn" serve --listen 127.0.0.1:$port --dir "$dir/api" \
    --cache-dir "$WRENN_CACHE" --agent "$agent" --no-prebuild 2>"$out/$label.$r.api.log" &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  echo "==> $label (round $r): API, Rust client then Python" >&2
  WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" \
    "$bin/wrenn-bench" --n "$n" >"$out/$label.$r.rust.jsonl"
  WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" \
    "$py" bench/api_bench.py --n "$n" >"$out/$label.$r.py.jsonl"
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}

run() {
  for r in $(seq "$rounds"); do
    one A "$A" "$r"
    one B "$B" "$r"
  done
}
if [ -z "${WRENN_HEAVY_LOCKED:-}" ] && command -v flock >/dev/null && [ -e /tmp/wrenn-heavy.lock ]; then
  export WRENN_HEAVY_LOCKED=1
  exec 9>/tmp/wrenn-heavy.lock
  flock 9
fi
run
python3 bench/pair_report.py "$out" "$rounds"
