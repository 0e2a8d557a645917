#!/usr/bin/env bash
# Prepares the microVM guest kernel once into the cache: Debian's cloud kernel unpacked from its
# package, an uncompressed PVH `vmlinux` (QEMU boots it directly, skipping decompression) and
# the virtio modules the guest's initramfs loads. Idempotent; run as root.
#
# Run with: scripts/microvm-kernel.sh        (prints the prepared directory)
#
#   $WRENN_CACHE/microvm/kernel/vmlinux           uncompressed kernel with the Xen PVH note
#   $WRENN_CACHE/microvm/kernel/modules/*.ko      the virtio modules, flat
#   $WRENN_CACHE/microvm/kernel/version           the kernel release they came from
set -euo pipefail

cache="${WRENN_CACHE:-/var/cache/wrenn}/microvm"
out="$cache/kernel"
if [ -s "$out/vmlinux" ] && [ -s "$out/version" ]; then
    echo "$out"
    exit 0
fi
for tool in apt-get dpkg-deb lz4 grep; do
    command -v "$tool" >/dev/null || { echo "microvm-kernel: $tool is missing (scripts/deps.sh)" >&2; exit 1; }
done
pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
[ -n "$pkg" ] || { echo "microvm-kernel: no linux-image-cloud-amd64 in the apt sources" >&2; exit 1; }
release=${pkg#linux-image-}

mkdir -p "$cache"
work=$(mktemp -d "$cache/.kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "microvm-kernel: cannot download $pkg" >&2; exit 1; }
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/x"

# The cloud kernel is LZ4-compressed (legacy frame magic 02 21 4c 18) and has CONFIG_PVH=y.
vmlinuz="$work/x/boot/vmlinuz-$release"
off=$(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -1 | cut -d: -f1)
[ -n "$off" ] || { echo "microvm-kernel: $vmlinuz is not LZ4-compressed" >&2; exit 1; }
mkdir -p "$work/out/modules"
tail -c +$((off + 1)) "$vmlinuz" | lz4 -dc > "$work/out/vmlinux" 2>/dev/null || true
file -b "$work/out/vmlinux" | grep -q ELF || { echo "microvm-kernel: no ELF vmlinux unpacked" >&2; exit 1; }

# Load order matters: virtio_ring before virtio (see the microvm module's init script).
for m in virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
         virtio_blk virtio_console failover net_failover virtio_net; do
    ko=$(find "$work/x/lib/modules/$release" -name "$m.ko" | head -1)
    [ -n "$ko" ] || { echo "microvm-kernel: module $m missing from $pkg" >&2; exit 1; }
    cp "$ko" "$work/out/modules/"
done
echo "$release" > "$work/out/version"
rm -rf "$out"
mv "$work/out" "$out"
echo "$out"
