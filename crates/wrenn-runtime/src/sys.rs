//! Every raw syscall of the runtime crate (the container backend and the template store), behind
//! safe functions.
//!
//! Anything here is a thin wrapper: typed arguments in, `std::io::Result` out. Callers add the
//! step context.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Marks this process a child subreaper (`prctl(2)` `PR_SET_CHILD_SUBREAPER`), so that capsule
/// inits whose launcher exited re-parent to us and not to the host's PID 1 (which reaps lazily).
/// Idempotent.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Writes `/proc/self/oom_score_adj` (proc(5)); children inherit it.
pub(crate) fn set_oom_score_adj(adj: i32) -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
}

/// `pidfd_open(2)`: a file descriptor that becomes readable when `pid` exits.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or -1; no memory is
    // shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd registered with tokio's reactor; it becomes readable when `pid` exits.
pub(crate) fn pidfd_async(pid: i32) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid)?;
    // SAFETY: `fd` is an open pidfd that the returned AsyncFd owns; an OwnedFd always reports the
    // same raw fd and is closed only when the AsyncFd drops it.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    afd.map_err(io::Error::from)
}

/// Outcome of a non-blocking reap of one pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reap {
    /// Still running.
    Running,
    /// Exited (and reaped) with this wait status description.
    Exited(i32),
    /// Not our child (`ECHILD`): somebody else reaps it; use the pidfd to see it exit.
    NotChild,
}

/// `waitid(P_PID, pid, WEXITED | WNOHANG)`: reaps exactly this pid and never any other child
/// (the server also owns tokio::process children).
pub(crate) fn reap_nohang(pid: i32) -> io::Result<Reap> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    match waitid(
        Id::Pid(nix::unistd::Pid::from_raw(pid)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    ) {
        Ok(WaitStatus::StillAlive) => Ok(Reap::Running),
        Ok(WaitStatus::Exited(_, code)) => Ok(Reap::Exited(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Reap::Exited(128 + sig as i32)),
        Ok(_) => Ok(Reap::Running),
        Err(nix::errno::Errno::ECHILD) => Ok(Reap::NotChild),
        Err(e) => Err(e.into()),
    }
}

/// Whether `pid` exists (`kill(pid, 0)`); zombies count as existing.
pub(crate) fn pid_exists(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Sends SIGKILL to `pid`; a vanished pid is not an error.
pub(crate) fn sigkill(pid: i32) -> io::Result<()> {
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Moves `fd` to the fd number `target`, without close-on-exec (so an `exec`ed program
/// inherits it there), and returns the owner of `target`. `fd` is closed unless it already was
/// `target`.
///
/// # Safety
/// Nothing else in the process may own or use the fd number `target`: if it is open, `dup2(2)`
/// silently closes and replaces it.
pub(crate) unsafe fn install_fd_at(fd: OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if fd.as_raw_fd() == target {
        fcntl(target, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
        return Ok(fd);
    }
    // dup2 never sets FD_CLOEXEC on the new fd.
    let got = nix::unistd::dup2(fd.as_raw_fd(), target).map_err(io::Error::from)?;
    drop(fd);
    // SAFETY: dup2 just made `got` (== target) refer to the socket; the caller guarantees that
    // nothing else owns that fd number, so the returned OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(got) })
}

/// Filesystem magic of the filesystem holding `path` (`statfs(2)`).
pub(crate) fn fs_magic(path: &Path) -> io::Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64)
}

/// `mount -t overlay overlay -o nosuid,nodev,lowerdir=..,upperdir=..,workdir=.. target`.
pub(crate) fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(opts.as_str()),
    )
    .map_err(io::Error::from)
}

/// `renameat2(RENAME_NOREPLACE)`: renames `from` to `to`, failing with `AlreadyExists` (and
/// never replacing anything, not even an empty dir) when `to` exists.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// Opens directory `name` (relative to `parent`, or to the cwd / absolute when `None`) for
/// reading with `O_DIRECTORY | O_NOFOLLOW`: a symlink (even one swapped in a moment ago) or a
/// non-directory fails (`ENOTDIR` / `ELOOP`); nothing is ever followed.
pub(crate) fn open_dir_nofollow<P: ?Sized + nix::NixPath>(
    parent: Option<RawFd>,
    name: &P,
) -> io::Result<nix::dir::Dir> {
    use nix::fcntl::OFlag;
    nix::dir::Dir::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// `fstatat(parent, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, a symlink as a link.
pub(crate) fn lstat_at(parent: RawFd, name: &std::ffi::CStr) -> io::Result<libc::stat> {
    nix::sys::stat::fstatat(Some(parent), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

/// Detaching unmount (`umount2(MNT_DETACH)`); "not mounted" is not an error.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The hard `RLIMIT_NOFILE` of this process (capsules may not get more: the host may lack
/// CAP_SYS_RESOURCE).
pub(crate) fn nofile_hard_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`); tells a
/// re-used pid from the original.
pub(crate) fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `path` is a mount point listed in `/proc/self/mountinfo`.
pub(crate) fn mounts_under(prefix: &Path) -> Vec<std::path::PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = prefix.as_os_str().as_bytes();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| is_under(p.as_os_str().as_bytes(), prefix))
        .collect()
}

/// `prefix` itself or a path below it; not a sibling that merely shares the bytes
/// (`/data/capsules/a` must not match `/data/capsules/ab`).
fn is_under(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

fn unescape_mountinfo(s: &str) -> std::path::PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Marks every fd above stderr that this process inherited close-on-exec, so what its parent left
/// open (a lock, a socket) never reaches a program it starts: a capsule's launcher, QEMU, `nft`.
/// Fds this process opens itself are close-on-exec already (Rust's default). Call it first in
/// `main`, before any thread starts.
pub fn seal_inherited_fds() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC closes nothing; it only sets a flag on
    // fds, and the caller runs it before starting threads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: flag each open fd.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a number that is not open fails with EBADF and changes nothing.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod boundary_tests {
    use super::is_under;

    #[test]
    fn mounts_under_needs_a_path_boundary() {
        assert!(is_under(b"/d/capsules/a", b"/d/capsules/a"));
        assert!(is_under(b"/d/capsules/a/rootfs", b"/d/capsules/a"));
        assert!(!is_under(b"/d/capsules/ab/rootfs", b"/d/capsules/a"));
        assert!(!is_under(b"/d/caps", b"/d/capsules"));
    }
}

/// `ioctl` numbers of `linux/loop.h`.
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// The loop device detaches itself when its last user (here: the mount) goes away.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of `linux/loop.h`.
#[repr(C)]
#[allow(dead_code)] // read by the kernel
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `linux/loop.h`.
#[repr(C)]
#[allow(dead_code)] // read by the kernel
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn loop_info(image: &Path) -> LoopInfo64 {
    let mut name = [0u8; 64];
    let bytes = image.as_os_str().as_bytes();
    let n = bytes.len().min(63);
    name[..n].copy_from_slice(&bytes[..n]);
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: name,
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// An attached loop device: its number and an open fd. Dropping the fd after the device is
/// mounted leaves the mount as its only user; once that is unmounted the kernel detaches the
/// device (`LO_FLAGS_AUTOCLEAR`). Dropping it unmounted detaches it at once.
#[derive(Debug)]
pub(crate) struct LoopDevice {
    /// `N` of `/dev/loopN`.
    pub number: u32,
    /// Held open until the device is mounted (closing it earlier detaches the device).
    _fd: OwnedFd,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> std::path::PathBuf {
        loop_dev_path(self.number)
    }
}

fn loop_dev_path(n: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/dev/loop{n}"))
}

/// Attaches `image` to a free loop device (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`, or
/// `LOOP_SET_FD` + `LOOP_SET_STATUS64` on kernels before 5.8) with `LO_FLAGS_AUTOCLEAR`.
/// Retries when another process grabs the same free device first.
pub(crate) fn loop_attach(image: &Path) -> io::Result<LoopDevice> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)?;
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")?;
    let mut last = io::Error::other("no free loop device");
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1; `ctl`
        // is an open loop-control fd.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = u32::try_from(n).map_err(|_| io::Error::other("loop number out of range"))?;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(loop_dev_path(n))?;
        match loop_configure(&dev, &file, image) {
            Ok(()) => {
                return Ok(LoopDevice {
                    number: n,
                    _fd: dev.into(),
                })
            }
            // Taken by somebody else between GET_FREE and configure: ask again.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn loop_configure(dev: &std::fs::File, file: &std::fs::File, image: &Path) -> io::Result<()> {
    let cfg = LoopConfig {
        fd: u32::try_from(file.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
        block_size: 0,
        info: loop_info(image),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` (repr(C), same layout) from the
    // pointer, which lives across the call; `dev` and `file` are open fds.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &cfg as *const LoopConfig,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) {
        return Err(e);
    }
    // Kernels before 5.8: attach, then set the flags.
    // SAFETY: LOOP_SET_FD takes the backing fd by value.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD as _, file.as_raw_fd()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let info = loop_info(image);
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` (repr(C), same layout) from the
    // pointer, which lives across the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_STATUS64 as _,
            &info as *const LoopInfo64,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
        return Err(e);
    }
    Ok(())
}

/// Detaches loop device `n` (`LOOP_CLR_FD`); while it is still in use the kernel only marks it
/// to detach when its last user goes. Not attached (`ENXIO`) or gone is not an error.
pub(crate) fn loop_detach(n: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(loop_dev_path(n))
    {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // SAFETY: LOOP_CLR_FD takes no argument; `dev` is an open loop device.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(()),
        _ => Err(e),
    }
}

/// Attached loop devices whose backing file is `prefix` or lies below it
/// (`/sys/block/loopN/loop/backing_file`, which ends in ` (deleted)` once the file is
/// unlinked).
pub(crate) fn loops_backed_by(prefix: &Path) -> Vec<(u32, std::path::PathBuf)> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let prefix = prefix.as_os_str().as_bytes();
    let mut out = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("loop"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(backing) = std::fs::read(e.path().join("loop/backing_file")) else {
            continue;
        };
        let mut b = backing.strip_suffix(b"\n").unwrap_or(&backing);
        b = b.strip_suffix(b" (deleted)").unwrap_or(b);
        if is_under(b, prefix) {
            out.push((n, std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b))));
        }
    }
    out
}

/// Mounts the ext4 filesystem on `dev` at `target` with `nosuid,nodev` and `noinit_itable`
/// (no background zeroing of inode tables, which would fill a sparse image).
pub(crate) fn mount_ext4(dev: &Path, target: &Path) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some(dev),
        target,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some("noinit_itable"),
    )
    .map_err(io::Error::from)
}

/// Mounts the ext4 filesystem on `dev` with `nosuid,nodev` and `noinit_itable` (as
/// [`mount_ext4`]) but attaches it nowhere (fsopen(2), fsmount(2)): the returned fd is the only
/// way to it until [`attach_mount`]. Closing the fd unmounts it.
pub(crate) fn mount_ext4_detached(dev: &Path) -> io::Result<OwnedFd> {
    let source = std::ffi::CString::new(dev.as_os_str().as_bytes())?;
    // SAFETY: the name is a NUL-terminated literal; fsopen returns a new fd or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"ext4".as_ptr(), libc::FSOPEN_CLOEXEC) };
    let fs = owned_fd(fs)?;
    let config =
        |cmd: libc::c_uint, key: Option<&std::ffi::CStr>, value: Option<&std::ffi::CStr>| {
            // SAFETY: `fs` is an open filesystem context; `key` and `value` are NUL-terminated
            // strings (or null, as the command wants) that outlive the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    cmd,
                    key.map_or(std::ptr::null(), |k| k.as_ptr()),
                    value.map_or(std::ptr::null(), |v| v.as_ptr()),
                    0,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
    config(libc::FSCONFIG_SET_STRING, Some(c"source"), Some(&source))?;
    config(libc::FSCONFIG_SET_FLAG, Some(c"noinit_itable"), None)?;
    config(libc::FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: `fs` is a filesystem context that was just created; fsmount returns a new fd or
    // -1.
    let mnt = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        )
    };
    owned_fd(mnt)
}

/// Attaches the detached mount `mnt` (from [`mount_ext4_detached`] or `open_tree`) at `target`
/// (move_mount(2)).
pub(crate) fn attach_mount(mnt: &OwnedFd, target: &Path) -> io::Result<()> {
    let dst = std::ffi::CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: `mnt` is an open mount fd, the empty path and `dst` NUL-terminated strings that
    // outlive the call; move_mount keeps no pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mkdirat(2)` of `name` in the directory `dir` with mode 0777 less the umask, as
/// `std::fs::create_dir`.
pub(crate) fn mkdir_at(dir: &OwnedFd, name: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: `dir` is an open directory fd and `name` a NUL-terminated string that outlives
    // the call.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new fd returned by a raw syscall (or its error).
fn owned_fd(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(r).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bytes in use on the filesystem mounted at `path` (`statvfs(2)`: blocks minus free blocks;
/// ext4 leaves its own metadata out of both).
pub(crate) fn fs_used_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let blocks = st.blocks().saturating_sub(st.blocks_free());
    Ok(blocks.saturating_mul(st.fragment_size()))
}

/// Lowers the calling thread's CPU (nice 19) and I/O (idle class) priority; children it
/// spawns inherit both. Best effort.
pub(crate) fn lower_thread_priority() {
    // SAFETY: setpriority takes integers only; `who` 0 with PRIO_PROCESS is the calling thread
    // on Linux.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: ioprio_set takes integers only; `who` 0 is the calling thread.
    unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        )
    };
}

/// Makes a user namespace owned by host uid `base` that maps ids `0..size` to
/// `base..base+size` (uid and gid), and bind-mounts it at `target` (an existing empty file)
/// so it lives without a process; unmounting `target` lets it go.
///
/// A forked child (no exec: cheaper than starting a helper binary) drops to uid/gid `base`
/// with no supplementary groups and unshares `CLONE_NEWUSER` (user_namespaces(7)): the
/// namespace's owner is then `base`, so per-user kernel counters of everything in it
/// (inotify instances and watches, ...) are charged to `base` in the host namespace, never to
/// host root. We write its `uid_map` and `gid_map` (privileged writer: no `setgroups` deny
/// needed), bind its `ns/user`, then kill and reap it.
pub(crate) fn make_userns(base: u32, size: u32, target: &Path) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let ready_w_raw = libc::c_long::from(ready_w.as_raw_fd());
    // SAFETY: after fork(2) in a multi-threaded process the child may only call
    // async-signal-safe functions: it makes raw system calls (setgroups, setresgid, setresuid,
    // unshare, write, pause) until it is killed, allocates nothing and touches no lock or
    // memory shared with the parent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; raw system calls on ids and an fd this child owns.
        unsafe {
            let b = libc::c_long::from(base);
            let ok = libc::syscall(libc::SYS_setgroups, 0 as libc::c_long, 0 as libc::c_long) == 0
                && libc::syscall(libc::SYS_setresgid, b, b, b) == 0
                && libc::syscall(libc::SYS_setresuid, b, b, b) == 0
                && libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER as libc::c_long) == 0;
            let byte = [u8::from(ok)];
            libc::syscall(
                libc::SYS_write,
                ready_w_raw,
                byte.as_ptr(),
                1 as libc::c_long,
            );
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
    }
    drop(ready_w);
    let child = nix::unistd::Pid::from_raw(pid);
    let made = (|| {
        let mut byte = [0u8; 1];
        let n = nix::unistd::read(ready_r.as_raw_fd(), &mut byte)?;
        if n != 1 || byte[0] != 1 {
            return Err(io::Error::other("user namespace helper could not unshare"));
        }
        let map = format!("0 {base} {size}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        nix::mount::mount(
            Some(Path::new(&format!("/proc/{pid}/ns/user"))),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })();
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    made
}

/// `struct mount_attr` of mount_setattr(2) (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mounts a copy of the tree at `source` at `target`, idmapped through the user namespace
/// `userns` (mount_setattr(2) `MOUNT_ATTR_IDMAP`), `nosuid,nodev`: a file owned by host id `x`
/// shows as the id `x` maps to in `userns`; the tree itself is unchanged. open_tree(2) with
/// `OPEN_TREE_CLONE` makes a detached bind mount, which is idmapped before move_mount(2)
/// attaches it (an attached mount cannot be idmapped).
pub(crate) fn mount_idmapped(
    source: &Path,
    userns: &std::fs::File,
    target: &Path,
) -> io::Result<()> {
    let src = std::ffi::CString::new(source.as_os_str().as_bytes())?;
    let empty = c"";
    // SAFETY: `src` is a NUL-terminated path that outlives the call; open_tree returns a new
    // fd or -1 and keeps no pointer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `tree` and `userns` are open fds, `empty` is a NUL-terminated string and `attr` a
    // live `struct mount_attr` whose size we pass; the kernel only reads them during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    attach_mount(&tree, target)
}

/// Bind-mounts `source` at `target` (recursively with `recursive`), then makes it read-only,
/// `nosuid,nodev` (a bind mount takes new flags only through a remount).
pub(crate) fn bind_mount(
    source: &Path,
    target: &Path,
    read_only: bool,
    recursive: bool,
) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(io::Error::from)?;
    if read_only {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(io::Error::from)?;
    }
    Ok(())
}

/// `lchown(2)`: the entry itself, a symlink as a link.
pub(crate) fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Removes the `security.capability` xattr (file capabilities) of `path` itself (never
/// followed); none there is not an error.
pub(crate) fn remove_file_caps(path: &Path) -> io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both arguments are NUL-terminated strings that outlive the call; the kernel only
    // reads them.
    let r = unsafe { libc::lremovexattr(p.as_ptr(), c"security.capability".as_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(e);
        }
    }
    Ok(())
}

/// Reconfigures the superblock mounted at `path` with exactly the flag parameters `flags`
/// (fspick(2), fsconfig(2) `FSCONFIG_SET_FLAG` each, then `FSCONFIG_CMD_RECONFIGURE`). Only
/// the superblock changes, never the mount's own flags (`nosuid`, ...). A filesystem may reset
/// every flag not given, so pass all that should stay set.
pub(crate) fn reconfigure_flags(path: &Path, flags: &[&str]) -> io::Result<()> {
    const FSPICK_CLOEXEC: libc::c_long = 1;
    const FSCONFIG_SET_FLAG: libc::c_long = 0;
    const FSCONFIG_CMD_RECONFIGURE: libc::c_long = 7;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `p` is a NUL-terminated path that outlives the call; fspick returns a new fd or
    // -1 and keeps no pointer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fspick,
            libc::c_long::from(libc::AT_FDCWD),
            p.as_ptr(),
            FSPICK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = libc::c_long::from(ctx.as_raw_fd());
    for flag in flags {
        let key = std::ffi::CString::new(*flag)?;
        // SAFETY: `key` is NUL-terminated and outlives the call; a flag takes no value.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                raw,
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0 as libc::c_long,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("set {flag}: {e}")));
        }
    }
    // SAFETY: no pointers; the context fd is ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            raw,
            FSCONFIG_CMD_RECONFIGURE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
