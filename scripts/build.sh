#!/usr/bin/env bash
# Builds the `wrenn` binary (PROFILE=release|debug, default release) and the static agent.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
profile="${PROFILE:-release}"
flag=(); [ "$profile" = release ] && flag=(--release)
echo "==> building wrenn ($profile)"
cargo build "${flag[@]}" -p wrenn-cli
bash scripts/build-agent.sh >/dev/null
echo "==> built target/$profile/wrenn and target/x86_64-unknown-linux-gnu/release/wrenn-agent"
