#!/usr/bin/env bash
# Builds the statically linked release wrenn-agent and prints its path.
#
# Run with: scripts/build-agent.sh
#
# Static glibc (`+crt-static` on the gnu target; no musl target is installed here). The agent
# never calls NSS (it parses /etc/passwd itself), so it runs in a busybox-only root filesystem.
set -euo pipefail

cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release -p wrenn-agent --target "$target" >&2
bin="$PWD/target/$target/release/wrenn-agent"

# Refuse to hand out a dynamically linked agent: it would not start inside a capsule.
if command -v file >/dev/null 2>&1; then
    desc=$(file -L "$bin")
    case "$desc" in
        *"dynamically linked"*) echo "build-agent: $bin is dynamically linked: $desc" >&2; exit 1 ;;
    esac
fi
if ldd "$bin" >/dev/null 2>&1; then
    if ! ldd "$bin" 2>&1 | grep -q "not a dynamic executable\|statically linked"; then
        echo "build-agent: $bin has dynamic dependencies:" >&2
        ldd "$bin" >&2
        exit 1
    fi
fi
echo "$bin"
