#!/usr/bin/env bash
# Installs the system packages wrenn-rs needs to build, run and test, on Debian 12
# (chromium: the dashboard's browser tests, tests/e2e/test_dashboard.py).
# Idempotent; run as root.
set -euo pipefail

need_apt=()
for pkg in debootstrap busybox-static nftables iproute2 pkg-config gcc libc6-dev \
           ca-certificates curl python3 python3-venv git file tmux chromium libnss-myhostname \
           qemu-system-x86 qemu-utils lz4; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || need_apt+=("$pkg")
done
# A package dpkg calls installed whose program is gone (a trimmed image) is installed again.
reinstall=()
for pair in qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86 lz4:lz4 nft:nftables \
            debootstrap:debootstrap tmux:tmux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || reinstall+=("${pair##*:}")
done
if [ ${#reinstall[@]} -gt 0 ]; then
  echo "==> apt-get install --reinstall ${reinstall[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall "${reinstall[@]}" >/dev/null
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# `*.localhost` names the host (RFC 6761): the SDK reaches a capsule's port through the proxy at
# http://{port}-{id}.localhost:{port}, which nss-myhostname resolves to loopback.
if ! grep -Eq '^hosts:.*\bmyhostname\b' /etc/nsswitch.conf; then
  echo "==> enabling nss-myhostname in /etc/nsswitch.conf (*.localhost → loopback)"
  sed -i -E 's/^(hosts:[[:space:]]+files)/\1 myhostname/' /etc/nsswitch.conf
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "==> installing the Rust toolchain with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  }
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# The microVM runtime's guest kernel, prepared once into $WRENN_CACHE.
kernel_dir=$("$(dirname "$0")/microvm-kernel.sh")
echo "==> microVM guest kernel in $kernel_dir"
echo "==> dependencies ready ($(cargo --version))"
