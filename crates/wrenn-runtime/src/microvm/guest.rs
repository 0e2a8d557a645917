//! The guest's boot files: the prepared kernel (`scripts/microvm-kernel.sh` puts an
//! uncompressed PVH `vmlinux` and the virtio modules under `cache_dir/microvm/kernel`), and an
//! initramfs this runtime writes once at start: static busybox, the modules, [`INIT_SCRIPT`]
//! and the `wrenn-agent` binary.
//!
//! With `wrenn.probe=1` on the command line the init script only says `wrenn-init: probe ok`
//! and powers off (the accelerator probe, see `MicroVmRuntime::probe_boot`). Otherwise it
//! loads the modules (order matters: `virtio_ring` before `virtio`), mounts the
//! root disk `/dev/vda` (`noinit_itable`: see `image`), sets the hostname and network from the kernel command line
//! (`wrenn.host=`, `wrenn.ip=`, `wrenn.gw=`, `wrenn.dns=` for `/etc/resolv.conf`), puts the agent on a read-only tmpfs at
//! `/.wrenn`, moves `/dev`, `/proc`, `/sys` into the new root with `devpts` and `/dev/shm`, and
//! `switch_root`s to the agent as PID 1, serving on the virtio-serial port.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wrenn_types::agent::SERIAL_PORT_NAME;

/// The modules the guest loads, in load order.
pub const MODULES: [&str; 11] = [
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
];

/// What the init script prints when booted as a probe.
pub const PROBE_OK: &str = "wrenn-init: probe ok";

/// The initramfs's `/init` (busybox sh). `@MODULES@` and `@PORT@` are filled in.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
if grep -q wrenn.probe=1 /proc/cmdline; then echo "wrenn-init: probe ok"; poweroff -f; fi
for m in @MODULES@; do insmod /lib/modules/$m.ko || echo "wrenn-init: insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do usleep 10000; i=$((i+1)); done
mount -t ext4 -o noatime,noinit_itable /dev/vda /newroot || { echo "wrenn-init: no root disk"; exit 1; }
for p in $(cat /proc/cmdline); do
  case "$p" in
    wrenn.host=*) host="${p#wrenn.host=}" ;;
    wrenn.ip=*) addr="${p#wrenn.ip=}" ;;
    wrenn.gw=*) gw="${p#wrenn.gw=}" ;;
    wrenn.dns=*) dns="${p#wrenn.dns=}" ;;
  esac
done
if [ -n "$host" ]; then
  hostname "$host"
  # The capsule's own machine id (the template image's is every capsule's otherwise).
  [ -d /newroot/etc ] && echo -n "$host" | md5sum | cut -c1-32 > /newroot/etc/machine-id
  # Its own name, resolvable (as wrenn_types::agent::etc_hosts writes it after a restore).
  if [ -d /newroot/etc ]; then
    rm -f /newroot/etc/hostname /newroot/etc/hosts
    echo "$host" > /newroot/etc/hostname
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n' "$host" > /newroot/etc/hosts
  fi
fi
ip link set lo up
if [ -n "$addr" ]; then
  ip addr add "$addr" dev eth0 && ip link set eth0 up && ip route add default via "$gw"
fi
if [ -n "$dns" ]; then
  rm -f /newroot/etc/resolv.conf
  for d in $(echo "$dns" | tr , ' '); do echo "nameserver $d"; done > /newroot/etc/resolv.conf
fi
mkdir -p /newroot/.wrenn /newroot/dev /newroot/proc /newroot/sys
mount -t tmpfs -o mode=0755,size=64m wrenn /newroot/.wrenn
cp /wrenn-agent /newroot/.wrenn/wrenn-agent
cp /bin/busybox /newroot/.wrenn/busybox
mount -o remount,ro,nosuid,nodev /newroot/.wrenn
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /newroot/dev/shm
echo "wrenn-init: starting agent"
# The open-file limit of a container capsule (the kernel's default 1024 caps the agent's
# process table: every process holds pipes).
ulimit -n @NOFILE@
exec switch_root /newroot /.wrenn/wrenn-agent --listen-serial @PORT@
"#;

/// The prepared kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Uncompressed PVH kernel.
    pub vmlinux: PathBuf,
    /// Directory holding the [`MODULES`] as `<name>.ko`.
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel under `cache_dir/microvm/kernel`, or an error saying how to prepare it.
    pub fn find(cache_dir: &Path) -> anyhow::Result<Self> {
        let dir = cache_dir.join("microvm/kernel");
        let k = Self {
            vmlinux: dir.join("vmlinux"),
            modules: dir.join("modules"),
        };
        if !k.vmlinux.is_file() {
            bail!(
                "no guest kernel at {} (run scripts/microvm-kernel.sh)",
                k.vmlinux.display()
            );
        }
        Ok(k)
    }
}

/// The init script for `port`.
pub fn init_script(port: &str) -> String {
    INIT_SCRIPT
        .replace("@MODULES@", &MODULES.join(" "))
        .replace("@PORT@", port)
        .replace("@NOFILE@", &crate::container::CAPSULE_NOFILE.to_string())
}

/// Writes the initramfs (newc cpio, uncompressed: faster to unpack under TCG) to `out`.
pub fn write_initrd(
    kernel: &Kernel,
    busybox: &Path,
    agent: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file(
        "bin/busybox",
        0o755,
        &std::fs::read(busybox).with_context(|| format!("read {}", busybox.display()))?,
    );
    c.file("init", 0o755, init_script(SERIAL_PORT_NAME).as_bytes());
    for m in MODULES {
        let p = kernel.modules.join(format!("{m}.ko"));
        c.file(
            &format!("lib/modules/{m}.ko"),
            0o644,
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        );
    }
    c.file(
        "wrenn-agent",
        0o755,
        &std::fs::read(agent).with_context(|| format!("read {}", agent.display()))?,
    );
    let tmp = out.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).context("create initrd")?;
    f.write_all(&c.finish()).context("write initrd")?;
    f.sync_all().context("sync initrd")?;
    std::fs::rename(&tmp, out).context("rename initrd")?;
    Ok(())
}

/// A newc (`070701`) cpio archive being written in memory.
#[derive(Debug, Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 0, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 0, data);
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | perm, (major << 8) | minor, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let (rmaj, rmin) = (rdev >> 8, rdev & 0xff);
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rmaj,
            rmin,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.buf
    }
}

/// The host's TSC frequency in kHz, measured against the monotonic clock over `window`.
///
/// Under TCG the guest's TSC is the host's; the guest kernel is told its rate
/// (`tsc_early_khz=`), because its own calibration on a busy host fails about one boot in ten
/// and the boot then hangs (microvm has no HPET or PM timer to fall back on).
pub fn tsc_khz(window: Duration) -> io::Result<u64> {
    let t0 = Instant::now();
    let c0 = rdtsc();
    std::thread::sleep(window);
    let c1 = rdtsc();
    let ns = t0.elapsed().as_nanos() as u64;
    if ns == 0 || c1 <= c0 {
        return Err(io::Error::other("TSC did not advance"));
    }
    Ok((c1 - c0) * 1_000_000 / ns)
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64 (every x86_64 CPU has it) and touches no
    // memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_loads_modules_in_order_and_serves_on_the_port() {
        let s = init_script("agent");
        assert!(s.contains("for m in virtio_ring virtio virtio_mmio "));
        assert!(s.ends_with("--listen-serial agent\n"));
        assert!(s.contains("ulimit -n 65536\n"));
        assert!(!s.contains('@'));
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!x\n");
        c.char_dev("dev/console", 0o600, 5, 1);
        let b = c.finish();
        assert_eq!(&b[..6], b"070701");
        assert_eq!(b.len() % 4, 0);
        // Second header: after the 110-byte header + "bin\0" padded to 116.
        assert_eq!(&b[116..122], b"070701");
        // Its mode field (second) is a regular file 0755, its size (seventh) 4.
        assert_eq!(&b[116 + 14..116 + 22], b"000081ed");
        assert_eq!(&b[116 + 54..116 + 62], b"00000004");
        let tail = String::from_utf8_lossy(&b[b.len() - 20..]).into_owned();
        assert!(tail.contains("TRAILER!!!"));
        let text = String::from_utf8_lossy(&b).into_owned();
        // dev/console: char device 5:1 (rdevmajor, rdevminor fields).
        let at = text.find("dev/console").expect("console entry");
        let hdr = &text[at - 110..at];
        assert_eq!(&hdr[6 + 8..6 + 16], "00002180");
        assert_eq!(&hdr[6 + 9 * 8..6 + 11 * 8], "0000000500000001");
    }

    #[test]
    fn tsc_rate_is_plausible() {
        let khz = tsc_khz(Duration::from_millis(20)).expect("tsc");
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
