//! The capsule's cgroups, written directly: freeze/thaw, usage, kill-all and removal.
//!
//! libcontainer creates the groups (absolute cgroupsPath `/wrenn/<id>`) when it starts the
//! capsule; everything after that is plain file I/O here, which is cheap (a freeze is a write
//! plus a few reads) and needs no fork.
//!
//! Design: v1 (and hybrid, as on the development host) uses one directory per controller under
//! `/sys/fs/cgroup/<controller>/wrenn/<id>`; v2 has one directory `/sys/fs/cgroup/wrenn/<id>`.
//!
//! Limitations: the v2 path is small and untested on the development host (which is v1 hybrid).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::launcher::CgroupView;
use crate::sys;

/// Root of all cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Parent group of every capsule, relative to a hierarchy root.
pub(crate) const CGROUP_PARENT: &str = "wrenn";
/// How long [`CapsuleCgroup::freeze`] waits for the thaw that undoes a failed freeze.
const UNDO_FREEZE_TIMEOUT: Duration = Duration::from_millis(500);
/// `CGROUP2_SUPER_MAGIC` from `statfs(2)`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Which cgroup layout this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    /// One hierarchy per controller (also hybrid hosts, where `/sys/fs/cgroup` is a tmpfs).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// Detects the layout: `/sys/fs/cgroup` on cgroup2 → v2, anything else (tmpfs) → v1.
    pub(crate) fn detect() -> io::Result<Self> {
        if sys::fs_magic(Path::new(CGROUP_ROOT))? == CGROUP2_MAGIC {
            Ok(Self::V2)
        } else {
            Ok(Self::V1)
        }
    }
}

/// The `cgroup2` superblock option that keeps task migration off the RCU slow path.
const FAVOR_DYNMODS: &str = "favordynmods";

/// Turns on `favordynmods` on the host's `cgroup2` mount (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host) unless it is on; returns whether it changed it.
///
/// Moving a process into a cgroup (libcontainer writes each capsule's init to `cgroup.procs`)
/// takes the kernel's global threadgroup lock for writing, which without this option first
/// waits for an RCU grace period: about 10 ms of every create on the development host, 0.25 ms
/// with it. The price, per the kernel's cgroup-v2 documentation, is slightly dearer forks and
/// exits host-wide. The option is global (one lock for every hierarchy, so it helps cgroup v1
/// too) and stays on after the runtime exits; nothing about isolation changes. Every other
/// superblock option of the mount (`nsdelegate`, ...) is passed again, so none is lost.
pub(crate) fn favor_dynmods() -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some((mount_point, opts)) = info.lines().find_map(cgroup2_mount) else {
        return Ok(false);
    };
    if opts.iter().any(|o| o == FAVOR_DYNMODS) {
        return Ok(false);
    }
    let mut flags: Vec<&str> = opts
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "rw" && *o != "ro")
        .collect();
    flags.push(FAVOR_DYNMODS);
    sys::reconfigure_flags(Path::new(&mount_point), &flags)?;
    Ok(true)
}

/// The mount point and superblock options of a `/proc/self/mountinfo` line of a `cgroup2`
/// mount under [`CGROUP_ROOT`].
fn cgroup2_mount(line: &str) -> Option<(String, Vec<String>)> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut r = right.split(' ');
    if r.next()? != "cgroup2" {
        return None;
    }
    let super_opts = r.nth(1)?;
    if !(mount_point == CGROUP_ROOT || mount_point.starts_with("/sys/fs/cgroup/")) {
        return None;
    }
    Some((
        mount_point.to_owned(),
        super_opts.split(',').map(str::to_owned).collect(),
    ))
}

/// The cgroups of one capsule.
#[derive(Debug, Clone)]
pub(crate) struct CapsuleCgroup {
    version: CgroupVersion,
    /// Root of the hierarchies: [`CGROUP_ROOT`], or a scratch dir in tests.
    root: PathBuf,
    id: String,
}

impl CapsuleCgroup {
    /// Cgroups of capsule `id`.
    pub(crate) fn new(version: CgroupVersion, id: &str) -> Self {
        Self::with_root(version, Path::new(CGROUP_ROOT), id)
    }

    /// Cgroups of capsule `id` under another hierarchy root (tests use a scratch dir).
    pub(crate) fn with_root(version: CgroupVersion, root: &Path, id: &str) -> Self {
        Self {
            version,
            root: root.to_owned(),
            id: id.to_owned(),
        }
    }

    /// `cgroupsPath` for the OCI spec.
    pub(crate) fn oci_path(id: &str) -> String {
        format!("/{CGROUP_PARENT}/{id}")
    }

    fn v1(&self, controller: &str) -> PathBuf {
        self.root
            .join(controller)
            .join(CGROUP_PARENT)
            .join(&self.id)
    }

    fn v2(&self) -> PathBuf {
        self.root.join(CGROUP_PARENT).join(&self.id)
    }

    /// The directories the capsule sees at its `/sys/fs/cgroup` (the launcher binds them
    /// read-only): on v1 those of the controllers that size a program (cpu, cpuacct, memory,
    /// pids) where the host has them.
    pub(crate) fn view(&self) -> CgroupView {
        match self.version {
            CgroupVersion::V2 => CgroupView::Unified(self.v2()),
            CgroupVersion::V1 => CgroupView::PerController(
                ["cpu", "cpuacct", "memory", "pids"]
                    .into_iter()
                    .filter(|c| self.root.join(c).is_dir())
                    .map(|c| (c.to_owned(), self.v1(c)))
                    .collect(),
            ),
        }
    }

    /// Every existing directory of this capsule, in any hierarchy.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        match self.version {
            CgroupVersion::V2 => vec![self.v2()].into_iter().filter(|d| d.is_dir()).collect(),
            CgroupVersion::V1 => {
                let Ok(rd) = std::fs::read_dir(&self.root) else {
                    return Vec::new();
                };
                rd.filter_map(Result::ok)
                    .map(|e| e.path().join(CGROUP_PARENT).join(&self.id))
                    .filter(|d| d.is_dir())
                    .collect()
            }
        }
    }

    /// Makes the group for a process the runtime starts itself (a microVM's QEMU; libcontainer
    /// makes a container's): in the memory, pids and cpuacct hierarchies on v1, one group with
    /// the memory and pids controllers on v2. Memory is limited to `memory_bytes` and tasks to
    /// `pids`. Answers its `cgroup.procs` files open for writing, for [`join_in_child`].
    pub(crate) fn create(&self, memory_bytes: u64, pids: u64) -> io::Result<Vec<std::fs::File>> {
        let open = |dir: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        };
        match self.version {
            CgroupVersion::V1 => {
                let mut procs = Vec::new();
                for (controller, file, value) in [
                    ("memory", "memory.limit_in_bytes", memory_bytes.to_string()),
                    ("pids", "pids.max", pids.to_string()),
                    ("cpuacct", "", String::new()),
                ] {
                    let dir = self.v1(controller);
                    std::fs::create_dir_all(&dir)?;
                    if !file.is_empty() {
                        write_in(&dir, file, &value)?;
                    }
                    procs.push(open(&dir)?);
                }
                Ok(procs)
            }
            CgroupVersion::V2 => {
                // Controllers are handed down one level at a time (writing what is on is a
                // no-op).
                let parent = self.root.join(CGROUP_PARENT);
                std::fs::create_dir_all(&parent)?;
                for dir in [self.root.as_path(), parent.as_path()] {
                    write_in(dir, "cgroup.subtree_control", "+memory +pids")?;
                }
                let dir = self.v2();
                std::fs::create_dir_all(&dir)?;
                write_in(&dir, "memory.max", &memory_bytes.to_string())?;
                write_in(&dir, "pids.max", &pids.to_string())?;
                Ok(vec![open(&dir)?])
            }
        }
    }

    /// Whether the cgroup exists at all.
    pub(crate) fn exists(&self) -> bool {
        match self.version {
            CgroupVersion::V2 => self.v2().is_dir(),
            CgroupVersion::V1 => self.v1("pids").is_dir() || self.v1("freezer").is_dir(),
        }
    }

    /// Stops every task and waits until the kernel says the group is frozen.
    ///
    /// On failure (typically a timeout: a task in uninterruptible sleep keeps a v1 freezer in
    /// FREEZING, or v2 never reports `frozen 1`) the freezer is set back to THAWED / `0` before
    /// the error is returned: the caller treats the capsule as running, so it must not be left
    /// half-stopped, with some tasks frozen and the freezer still trying to stop the rest.
    pub(crate) fn freeze(&self, timeout: Duration) -> io::Result<()> {
        let Err(e) = self.set_frozen(true, timeout) else {
            return Ok(());
        };
        if let Err(te) = self.set_frozen(false, UNDO_FREEZE_TIMEOUT) {
            tracing::error!(
                capsule = %self.id,
                error = %te,
                "thaw after a failed freeze failed; the capsule may stay stopped"
            );
        }
        Err(e)
    }

    /// Undoes [`CapsuleCgroup::freeze`] and waits until the group runs again.
    pub(crate) fn thaw(&self, timeout: Duration) -> io::Result<()> {
        self.set_frozen(false, timeout)
    }

    fn set_frozen(&self, frozen: bool, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        match self.version {
            CgroupVersion::V1 => {
                let f = self.v1("freezer").join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                std::fs::write(&f, want)?;
                // Reading back FREEZING means some tasks are not yet stopped; rewrite to retry.
                loop {
                    let now = std::fs::read_to_string(&f)?;
                    if now.trim() == want {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("freezer stuck in {}", now.trim()),
                        ));
                    }
                    std::thread::yield_now();
                    std::fs::write(&f, want)?;
                }
            }
            CgroupVersion::V2 => {
                let dir = self.v2();
                std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                loop {
                    let ev = std::fs::read_to_string(dir.join("cgroup.events"))?;
                    if ev.lines().any(|l| l.trim() == want) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "cgroup not frozen"));
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Whether the freezer currently holds the group stopped.
    pub(crate) fn is_frozen(&self) -> bool {
        match self.version {
            CgroupVersion::V1 => std::fs::read_to_string(self.v1("freezer").join("freezer.state"))
                .map(|s| s.trim() != "THAWED")
                .unwrap_or(false),
            CgroupVersion::V2 => std::fs::read_to_string(self.v2().join("cgroup.freeze"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false),
        }
    }

    /// CPU time (ns) and memory in use (bytes).
    pub(crate) fn usage(&self) -> io::Result<(u64, u64)> {
        match self.version {
            CgroupVersion::V1 => {
                let cpu = read_u64(&self.v1("cpuacct").join("cpuacct.usage"))?;
                let mem = read_u64(&self.v1("memory").join("memory.usage_in_bytes"))?;
                Ok((cpu, mem))
            }
            CgroupVersion::V2 => {
                let stat = std::fs::read_to_string(self.v2().join("cpu.stat"))?;
                let usec = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                let mem = read_u64(&self.v2().join("memory.current"))?;
                Ok((usec * 1000, mem))
            }
        }
    }

    /// Pids of every task in the group.
    pub(crate) fn pids(&self) -> Vec<i32> {
        let procs = match self.version {
            CgroupVersion::V1 => self.v1("pids").join("cgroup.procs"),
            CgroupVersion::V2 => self.v2().join("cgroup.procs"),
        };
        let Ok(s) = std::fs::read_to_string(procs) else {
            return Vec::new();
        };
        s.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// SIGKILLs every task (thawing first so the kill is delivered), waits until the group is
    /// empty, then removes the group in every hierarchy.
    pub(crate) fn kill_and_remove(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        if self.exists() {
            if self.version == CgroupVersion::V2 {
                // cgroup.kill (5.14+) kills atomically, including tasks forked meanwhile.
                let _ = std::fs::write(self.v2().join("cgroup.kill"), "1");
            }
            loop {
                let pids = self.pids();
                if pids.is_empty() {
                    break;
                }
                for pid in &pids {
                    sys::sigkill(*pid)?;
                }
                if self.is_frozen() {
                    let _ = self.thaw(Duration::from_millis(500));
                }
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("cgroup still has tasks {pids:?}"),
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for dir in self.dirs() {
            remove_dir_retry(&dir, deadline)?;
        }
        Ok(())
    }
}

/// In a forked child before exec: moves the child into the groups whose `cgroup.procs` `procs`
/// are (from [`CapsuleCgroup::create`]). Only write(2), which is async-signal-safe.
pub(crate) fn join_in_child(procs: &[std::os::fd::OwnedFd]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    for fd in procs {
        // SAFETY: a write of one byte from a static buffer to an open fd; the result is checked.
        if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn write_in(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value} to {file} in {}: {e}", dir.display()),
        )
    })
}

/// `rmdir` that retries while the kernel still reports the group busy (tasks just reaped).
fn remove_dir_retry(dir: &Path, deadline: Instant) -> io::Result<()> {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(500));
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_u64(p: &Path) -> io::Result<u64> {
    std::fs::read_to_string(p)?.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} not a number", p.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cgroup2_mount_is_found_with_its_superblock_options() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate";
        let (mp, opts) = super::cgroup2_mount(hybrid).expect("cgroup2 line");
        assert_eq!(mp, "/sys/fs/cgroup/unified");
        assert_eq!(opts, ["rw", "nsdelegate"]);
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,favordynmods";
        assert_eq!(
            super::cgroup2_mount(v2).map(|(m, _)| m).as_deref(),
            Some("/sys/fs/cgroup")
        );
        let v1 = "36 25 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids";
        assert!(super::cgroup2_mount(v1).is_none());
        let elsewhere = "40 25 0:30 / /run/x rw - cgroup2 cgroup2 rw";
        assert!(super::cgroup2_mount(elsewhere).is_none());
    }

    use super::*;

    #[test]
    fn oci_path_is_absolute_under_wrenn() {
        assert_eq!(CapsuleCgroup::oci_path("cl-x"), "/wrenn/cl-x");
    }

    use crate::test_utils::Scratch;

    /// A v2 group that never reports `frozen 1` (a fake dir: `cgroup.events` stays
    /// `frozen 0`): the freeze times out and leaves `cgroup.freeze` at `0`, not `1`.
    #[test]
    fn v2_freeze_timeout_thaws_again() {
        let scratch = Scratch::new("cg-v2");
        let root = scratch.path();
        let dir = root.join(CGROUP_PARENT).join("cl-x");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cgroup.freeze"), "0").expect("freeze file");
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").expect("events");
        let cg = CapsuleCgroup::with_root(CgroupVersion::V2, root, "cl-x");
        let err = cg
            .freeze(Duration::from_millis(20))
            .expect_err("never frozen");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let state = std::fs::read_to_string(dir.join("cgroup.freeze")).expect("read");
        assert_eq!(state.trim(), "0");
        assert!(!cg.is_frozen());
    }

    /// The v1 paths on a fake dir. A plain file always reads back what was written, so a v1
    /// timeout cannot be faked here; the undo in [`CapsuleCgroup::freeze`] does not depend on
    /// the version (it is `set_frozen(false)`, i.e. the THAWED write checked here), and the v2
    /// test above exercises it after a real timeout.
    #[test]
    fn v1_freeze_and_undo_write_the_state_file() {
        let scratch = Scratch::new("cg-v1");
        let root = scratch.path();
        let dir = root.join("freezer").join(CGROUP_PARENT).join("cl-x");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("freezer.state"), "THAWED").expect("state");
        let cg = CapsuleCgroup::with_root(CgroupVersion::V1, root, "cl-x");
        cg.freeze(Duration::from_millis(20)).expect("freeze");
        assert!(cg.is_frozen());
        cg.thaw(Duration::from_millis(20)).expect("thaw");
        assert!(!cg.is_frozen());
    }
}
