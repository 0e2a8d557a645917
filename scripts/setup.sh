#!/usr/bin/env bash
# One command from a fresh Debian 12 host to a serving wrenn: installs what is needed, builds,
# installs `wrenn` and `wrenn-agent` into /usr/local/bin, makes a first API key when there is
# none, and serves on the embedded defaults (SQLite store, container runtime, 127.0.0.1:8080,
# data in $WRENN_DIR or /var/lib/wrenn; the `minimal` template is built on first start).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (capsules need namespaces, cgroups and mounts)"; exit 1; }
bash scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
PROFILE=release bash scripts/build.sh
install -m 0755 target/release/wrenn /usr/local/bin/wrenn
install -m 0755 target/x86_64-unknown-linux-gnu/release/wrenn-agent /usr/local/bin/wrenn-agent
export WRENN_DIR="${WRENN_DIR:-/var/lib/wrenn}"
mkdir -p "$WRENN_DIR"
if [ ! -s "$WRENN_DIR/wrenn.db" ]; then
  key=$(wrenn key create --team default --name first)
  echo
  echo "    Your API key (shown once): $key"
  echo "    export WRENN_API_KEY=$key WRENN_BASE_URL=http://127.0.0.1:8080"
  echo
fi
[ "${1:-}" = "--no-serve" ] && exit 0
exec wrenn serve "$@"
