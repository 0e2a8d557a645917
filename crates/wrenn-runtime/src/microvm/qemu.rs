//! The QEMU process of one VM: its command line (pure, see [`VmArgs::to_args`]) and starting it.
//!
//! The machine is `microvm` (no PCI, virtio-mmio devices, ACPI on: Debian's kernels cannot
//! take virtio-mmio devices from the command line), booted PVH from the uncompressed kernel,
//! with the kernel parameters measured on this host (see the research notes): the TSC rate,
//! `tsc=reliable`, and the switches that skip probing hardware a microvm does not have.
//! QEMU daemonizes once its sockets are listening and writes its pid file, so the runtime's
//! process is not its parent beyond the fork and a server restart leaves it running.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};

/// Program run for every VM.
pub const QEMU: &str = "qemu-system-x86_64";

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation (about 14x slower for guest CPU work).
    Tcg,
}

/// The [`QEMU`] that runs: the first on `PATH` (or the bare name, so reading its metadata
/// fails clearly).
pub fn binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(QEMU))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(QEMU))
}

/// Most host memory TCG keeps translated guest code in, MiB. QEMU's default is 1 GiB per VM,
/// which a guest that runs much distinct code (a JIT, on purpose or not) fills on top of its
/// RAM; a full cache is flushed and refilled instead.
pub const TCG_CODE_CACHE_MB: u32 = 256;

impl Accel {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }

    /// The `-accel` option.
    pub fn option(self) -> String {
        match self {
            Self::Kvm => "kvm".into(),
            Self::Tcg => format!("tcg,tb-size={TCG_CODE_CACHE_MB}"),
        }
    }
}

/// The guest's network, when it has one: a tap in the capsule's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArgs {
    /// Tap device name (inside the namespace QEMU runs in).
    pub tap: String,
    /// Guest MAC address.
    pub mac: String,
    /// Guest address with prefix (`10.213.0.2/30`).
    pub addr: String,
    /// Guest default gateway.
    pub gateway: String,
    /// Resolvers the guest's `/etc/resolv.conf` names (the host's; the firewall lets port 53
    /// to them through).
    pub dns: Vec<String>,
}

/// Where guest RAM lives. Saved state names its RAM block, so a VM restored from a state
/// must have the RAM kind it was saved with (file and anonymous named RAM share one name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ram {
    /// QEMU's default anonymous RAM (`-m` alone).
    #[default]
    Default,
    /// Anonymous RAM named like [`Ram::File`]'s: a clone's or a warm VM's after a pause.
    Anon,
    /// A RAM file: `share` maps it shared (a warm VM writes its memory into the file),
    /// otherwise private (a clone reads the file and keeps its own writes).
    File {
        /// The RAM file.
        path: PathBuf,
        /// `share=on`.
        share: bool,
    },
}

/// Id of the named RAM backend ([`Ram::Anon`], [`Ram::File`]).
const RAM_ID: &str = "ram0";

/// Everything that varies between two VMs' command lines.
#[derive(Debug, Clone)]
pub struct VmArgs {
    /// Capsule id; the guest's hostname.
    pub id: String,
    /// The capsule's run directory: sockets and pid file.
    pub dir: PathBuf,
    /// Uncompressed kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Root disk (qcow2 overlay over the template image).
    pub disk: PathBuf,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mb: u32,
    /// Host TSC rate for `tsc_early_khz=`.
    pub tsc_khz: u64,
    /// Accelerator.
    pub accel: Accel,
    /// Network, if any.
    pub net: Option<NetArgs>,
    /// Restoring a saved state: QEMU waits for it (`-incoming defer`; handed over QMP).
    pub incoming: bool,
    /// Host uid and gid QEMU drops to once set up (see [`confinement`]); `None` runs it as
    /// root (VMs recorded before confinement).
    pub run_as: Option<u32>,
    /// Guest RAM.
    pub ram: Ram,
}

/// Names of the files in a VM's run directory.
pub mod files {
    /// QMP socket (QEMU listens).
    pub const QMP: &str = "qmp.sock";
    /// virtio-serial chardev socket (QEMU listens; the relay connects).
    pub const SERIAL: &str = "serial.sock";
    /// QEMU's pid file.
    pub const PID: &str = "qemu.pid";
}

/// The chardev holding the guest's serial console: a ring buffer in QEMU of [`CONSOLE_BYTES`]
/// (read over QMP, see [`super::qmp::Qmp::console`]), never a host file, so a guest that writes
/// its console without end costs the host no disk.
pub const CONSOLE: &str = "console";
/// Size of the [`CONSOLE`] ring: the newest output kept.
pub const CONSOLE_BYTES: usize = 64 << 10;

impl VmArgs {
    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        let mut c = format!(
            "console=ttyS0 panic=-1 quiet loglevel=3 tsc_early_khz={} tsc=reliable \
             mitigations=off nokaslr audit=0 random.trust_cpu=on i8042.noaux i8042.nomux \
             i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests pci=off \
             wrenn.host={}",
            self.tsc_khz, self.id
        );
        if let Some(n) = &self.net {
            c.push_str(&format!(" wrenn.ip={} wrenn.gw={}", n.addr, n.gateway));
            if !n.dns.is_empty() {
                c.push_str(&format!(" wrenn.dns={}", n.dns.join(",")));
            }
        }
        c
    }

    /// QEMU's arguments (without the program).
    pub fn to_args(&self) -> Vec<String> {
        let p = |f: &str| self.dir.join(f).display().to_string();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("wrenn-{},process=wrenn-{}", self.id, self.id),
            "-M".into(),
            match self.ram {
                Ram::Default => "microvm".into(),
                _ => format!("microvm,memory-backend={RAM_ID}"),
            },
            "-accel".into(),
            self.accel.option(),
            "-cpu".into(),
            match self.accel {
                Accel::Kvm => "host".into(),
                Accel::Tcg => "max".into(),
            },
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.vcpus.max(1).to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-chardev".into(),
            format!("ringbuf,id={CONSOLE},size={CONSOLE_BYTES}"),
            "-serial".into(),
            format!("chardev:{CONSOLE}"),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.cmdline(),
            "-drive".into(),
            format!(
                "id=root,file={},format=qcow2,if=none,cache=unsafe,discard=unmap",
                match self.run_as {
                    Some(_) => format!("/dev/fdset/{DISK_FDSET},file.locking=off"),
                    None => self.disk.display().to_string(),
                }
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                p(files::SERIAL)
            ),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                wrenn_types::agent::SERIAL_PORT_NAME
            ),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p(files::QMP)),
            "-pidfile".into(),
            p(files::PID),
            "-daemonize".into(),
        ];
        if let Some(n) = &self.net {
            a.extend([
                "-netdev".into(),
                format!("tap,id=n0,ifname={},script=no,downscript=no", n.tap),
                "-device".into(),
                format!("virtio-net-device,netdev=n0,mac={}", n.mac),
            ]);
        }
        match &self.ram {
            Ram::Default => {}
            Ram::Anon => a.extend([
                "-object".into(),
                format!("memory-backend-ram,id={RAM_ID},size={}M", self.memory_mb),
            ]),
            Ram::File { path, share } => a.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id={RAM_ID},size={}M,mem-path={},share={}",
                    self.memory_mb,
                    path.display(),
                    if *share { "on" } else { "off" }
                ),
            ]),
        }
        if self.incoming {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        if let Some(id) = self.run_as {
            a.extend(confinement(id));
        }
        a
    }
}

/// The fd set QEMU finds the capsule's disk in when confined ([`confinement`]): it opens the
/// disk again after it has dropped root (read-only when a migration ends, read-write when
/// the guest runs on), and the set holds both, opened by us at start ([`DISK_FDS`]). Image
/// locking is off for it: the set keeps both open file descriptions, and with them the
/// locks QEMU took on each, so its own locks would block it. The overlay is the capsule's
/// alone; only the runtime reads it beside QEMU (`qemu-img -U`, while the VM is stopped).
const DISK_FDSET: u32 = 1;
/// The fds QEMU inherits the disk on: read-write, then read-only.
const DISK_FDS: [i32; 2] = [3, 4];

/// How QEMU is confined: it opens its devices, disk, RAM file, tap and sockets as root and
/// then, before the guest runs, drops to host uid and gid `id` (`-runas`: no capabilities, no
/// new privileges; every VM has its own id, see `container::ids`) under QEMU's own seccomp
/// filter (`-sandbox`: obsolete and resource-control system calls denied). A guest that breaks
/// out into QEMU is an unprivileged process that cannot open the host's files, signal
/// another VM or raise its priority. Saved states move through fds it is handed over QMP
/// (see `saved`), so it never needs a host path after start. Forks stay allowed: QEMU
/// daemonizes after the filter is set.
pub fn confinement(id: u32) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-runas".into(),
        format!("{id}:{id}"),
        "-sandbox".into(),
        "on,obsolete=deny,resourcecontrol=deny".into(),
    ];
    for fd in DISK_FDS {
        a.extend(["-add-fd".into(), format!("fd={fd},set={DISK_FDSET}")]);
    }
    a
}

/// Arguments of a probe boot: kernel and initramfs only, console on stdout, `wrenn.probe=1`.
pub fn probe_args(kernel: &Path, initrd: &Path, tsc_khz: u64, accel: Accel) -> Vec<String> {
    vec![
        "-M".into(),
        "microvm".into(),
        "-accel".into(),
        accel.option(),
        "-cpu".into(),
        match accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        },
        "-m".into(),
        "128".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        "stdio".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        format!(
            "console=ttyS0 panic=-1 quiet tsc_early_khz={tsc_khz} tsc=reliable pci=off \
             8250.nr_uarts=1 wrenn.probe=1"
        ),
    ]
}

/// Starts QEMU (inside the network namespace at `netns`, if given, and in the cgroups whose
/// `cgroup.procs` `cgroup` holds) and returns its pid once it has daemonized.
pub async fn start(
    args: &VmArgs,
    netns: Option<&Path>,
    cgroup: Vec<std::os::fd::OwnedFd>,
) -> anyhow::Result<i32> {
    let pidfile = args.dir.join(files::PID);
    let _ = std::fs::remove_file(&pidfile);
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(QEMU);
            c
        }
        None => tokio::process::Command::new(QEMU),
    };
    let disk = match args.run_as {
        Some(_) => {
            let rw = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&args.disk)
                .with_context(|| format!("open {}", args.disk.display()))?;
            let ro = std::fs::File::open(&args.disk)
                .with_context(|| format!("open {}", args.disk.display()))?;
            Some([rw, ro].map(std::os::fd::OwnedFd::from))
        }
        None => None,
    };
    // SAFETY: between fork and exec only write, fcntl, dup2 and setrlimit, which are
    // async-signal-safe, run.
    unsafe {
        cmd.pre_exec(move || {
            crate::container::cgroups::join_in_child(&cgroup)?;
            if let Some(fds) = &disk {
                inherit_as(fds, &DISK_FDS)?;
                limit_tasks(MAX_TASKS)?;
            }
            Ok(())
        });
    }
    cmd.args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd
        .spawn()
        .with_context(|| format!("spawn {QEMU}"))?
        .wait_with_output()
        .await
        .with_context(|| format!("wait for {QEMU}"))?;
    if !out.status.success() {
        bail!(
            "{QEMU} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    read_pid(&pidfile)
}

/// Host memory QEMU itself may use beside guest RAM and TCG's code cache (device emulation,
/// I/O buffers, a migration stream), MiB.
pub const OVERHEAD_MB: u64 = 256;

/// The memory limit of a VM's cgroup, bytes: guest RAM, TCG's code cache and [`OVERHEAD_MB`].
/// The guest cannot reach it through QEMU's normal work; a QEMU taken over by its guest cannot
/// go past it.
pub fn memory_limit(accel: Accel, guest_mb: u32) -> u64 {
    let code_cache = match accel {
        Accel::Tcg => u64::from(TCG_CODE_CACHE_MB),
        Accel::Kvm => 0,
    };
    (u64::from(guest_mb) + code_cache + OVERHEAD_MB) << 20
}

/// Most tasks (processes and threads) a confined QEMU's uid may have: QEMU needs a thread per
/// vCPU and a few dozen more; a QEMU taken over by its guest cannot fork-bomb the host.
pub const MAX_TASKS: u64 = 512;

/// In a forked child before exec: `RLIMIT_NPROC` of `n`. Root ignores it; it binds once QEMU
/// has dropped to its own uid, which no other process shares.
fn limit_tasks(n: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit with a valid struct; the result is checked.
    if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &lim) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In a forked child before exec: makes `fds[i]` the inheritable fd `targets[i]`. Each is
/// first moved above every target so no dup2 overwrites a source still to be placed.
fn inherit_as(fds: &[std::os::fd::OwnedFd], targets: &[i32]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let above = targets.iter().max().copied().unwrap_or(2) + 1;
    let mut moved = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: fcntl on an fd this child owns; the result is checked.
        let m = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        moved.push(m);
    }
    for (m, t) in moved.into_iter().zip(targets) {
        // SAFETY: dup2 onto a target number; dup2 clears close-on-exec on the copy.
        if unsafe { libc::dup2(m, *t) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The pid in QEMU's pid file.
pub fn read_pid(pidfile: &Path) -> anyhow::Result<i32> {
    let s =
        std::fs::read_to_string(pidfile).with_context(|| format!("read {}", pidfile.display()))?;
    s.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .with_context(|| format!("bad pid file {}: {s:?}", pidfile.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> VmArgs {
        VmArgs {
            id: "cl-x".into(),
            dir: "/r/cl-x".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            disk: "/r/cl-x/disk.qcow2".into(),
            vcpus: 2,
            memory_mb: 512,
            tsc_khz: 2_596_140,
            accel: Accel::Tcg,
            net: None,
            incoming: false,
            ram: Ram::Default,
            run_as: Some(1 << 20),
        }
    }

    fn value_of<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn command_line_has_the_measured_boot_recipe() {
        let a = args().to_args();
        assert_eq!(value_of(&a, "-M"), ["microvm"]);
        // TCG's code cache is bounded, not QEMU's 1 GiB default beside the guest's RAM.
        assert_eq!(value_of(&a, "-accel"), ["tcg,tb-size=256"]);
        // The cgroup's memory limit: guest RAM, the code cache (TCG only), QEMU's own.
        assert_eq!(memory_limit(Accel::Tcg, 512), 1024 << 20);
        assert_eq!(memory_limit(Accel::Kvm, 512), 768 << 20);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        assert_eq!(value_of(&a, "-m"), ["512"]);
        assert_eq!(value_of(&a, "-smp"), ["2"]);
        assert_eq!(
            value_of(&a, "-qmp"),
            ["unix:/r/cl-x/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            value_of(&a, "-chardev"),
            [
                "ringbuf,id=console,size=65536",
                "socket,id=agent,path=/r/cl-x/serial.sock,server=on,wait=off"
            ]
        );
        // The console is a bounded ring in QEMU, never a host file the guest could grow.
        assert_eq!(value_of(&a, "-serial"), ["chardev:console"]);
        assert!(value_of(&a, "-device").contains(&"virtserialport,chardev=agent,name=agent"));
        let cmdline = value_of(&a, "-append")[0];
        assert!(cmdline.contains("tsc_early_khz=2596140 tsc=reliable"));
        assert!(cmdline.ends_with("wrenn.host=cl-x"));
        assert!(!a.iter().any(|s| s == "-netdev" || s == "-incoming"));
        assert!(a.iter().any(|s| s == "-daemonize"));
        // Unprivileged under QEMU's seccomp filter once set up, its disk an fd set it can
        // reopen from without a path.
        assert_eq!(value_of(&a, "-runas"), ["1048576:1048576"]);
        assert_eq!(value_of(&a, "-add-fd"), ["fd=3,set=1", "fd=4,set=1"]);
        assert!(value_of(&a, "-drive")[0]
            .starts_with("id=root,file=/dev/fdset/1,file.locking=off,format=qcow2"));
        assert_eq!(
            value_of(&a, "-sandbox"),
            ["on,obsolete=deny,resourcecontrol=deny"]
        );
    }

    #[test]
    fn network_and_incoming_are_added() {
        let mut v = args();
        v.accel = Accel::Kvm;
        v.net = Some(NetArgs {
            tap: "tap0".into(),
            mac: "52:54:00:00:00:02".into(),
            addr: "10.213.0.2/30".into(),
            gateway: "10.213.0.1".into(),
            dns: vec!["192.0.2.53".into()],
        });
        v.incoming = true;
        let a = v.to_args();
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(
            value_of(&a, "-netdev"),
            ["tap,id=n0,ifname=tap0,script=no,downscript=no"]
        );
        assert_eq!(value_of(&a, "-incoming"), ["defer"]);
        assert!(v
            .cmdline()
            .ends_with("wrenn.ip=10.213.0.2/30 wrenn.gw=10.213.0.1 wrenn.dns=192.0.2.53"));
    }

    #[test]
    fn named_ram_is_one_block_whether_file_or_anonymous() {
        let mut v = args();
        v.ram = Ram::File {
            path: "/w/ram".into(),
            share: false,
        };
        v.incoming = true;
        let a = v.to_args();
        assert_eq!(value_of(&a, "-M"), ["microvm,memory-backend=ram0"]);
        assert_eq!(
            value_of(&a, "-object"),
            ["memory-backend-file,id=ram0,size=512M,mem-path=/w/ram,share=off"]
        );
        assert_eq!(value_of(&a, "-incoming"), ["defer"]);
        v.ram = Ram::Anon;
        assert_eq!(
            value_of(&v.to_args(), "-object"),
            ["memory-backend-ram,id=ram0,size=512M"]
        );
    }

    #[test]
    fn pid_file_must_hold_a_pid() {
        let d = std::env::temp_dir().join(format!("wrenn-qemu-pid-{}", std::process::id()));
        std::fs::write(&d, "1234\n").expect("write");
        assert_eq!(read_pid(&d).expect("pid"), 1234);
        std::fs::write(&d, "x").expect("write");
        assert!(read_pid(&d).is_err());
        let _ = std::fs::remove_file(&d);
    }
}
