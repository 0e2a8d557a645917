#!/usr/bin/env bash
# A capsule storm (N=1000 creates at 64 MiB, a first exec in each, destroy all) or, with
# SOAK=10000, sequential create/exec/destroy cycles, against a release server started here on a
# throwaway data directory; as root. Not part of CI. One JSON object per line; the last line
# counts the leftovers (mounts, netns, loop devices, cgroups, capsule dirs, agent processes,
# network slots), which must all be 0. No team limits; every capsule's sparse 10 GiB disk may
# be promised 1000× the free space (DISK_OVERCOMMIT; the server's default, 100, admits about 230
# capsules on a host with 230 GB free).
#
# Run with: bench/scale.sh            (N=200 bench/scale.sh, SOAK=10000 bench/scale.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PROFILE=release bash scripts/build.sh >&2
agent="$PWD/target/x86_64-unknown-linux-gnu/release/wrenn-agent"
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
dir=$(mktemp -d /tmp/wrenn-scale.XXXXXX)
port=$((20000 + RANDOM % 20000))
key=$(./target/release/wrenn key create --dir "$dir" --team scale)
./target/release/wrenn serve --listen 127.0.0.1:$port --dir "$dir" --cache-dir "$WRENN_CACHE" \
  --agent "$agent" --no-prebuild --max-capsules "${MAX_CAPSULES:-5000}" --team-max-capsules 0 --team-max-vcpus 0 \
  --team-max-memory-mb 0 --disk-overcommit "${DISK_OVERCOMMIT:-1000}" --warm code-runner-beta=0 ${MAX_STARTING:+--max-starting "$MAX_STARTING"} 2>"$dir/../wrenn-scale-server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
venv="${VENV:-.venv}"
bash scripts/e2e-venv.sh "$venv" >&2
WRENN_BASE_URL="http://127.0.0.1:$port" WRENN_API_KEY="$key" WRENN_DATA_DIR="$dir" \
  "$venv/bin/python" bench/scale.py --n "${N:-1000}" --soak "${SOAK:-0}"
