//! Every raw syscall of the agent: safe functions in, typed `Result` out.
//!
//! Design: callers never touch `libc` directly. The one exception is [`child_setup`], which runs
//! between `fork` and `exec` and therefore may only use async-signal-safe libc calls.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Largest classic BPF program the kernel accepts (`BPF_MAXINSNS`, linux/bpf_common.h).
const BPF_MAXINSNS: usize = 4096;

/// Errors of the process-wide hardening done before serving.
#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    /// `prctl` refused an option.
    #[error("prctl {option} failed")]
    Prctl {
        /// Option name.
        option: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
    /// The seccomp program file has the wrong size.
    #[error("seccomp program has {len} bytes; expected a non-empty multiple of 8, at most {max} instructions")]
    SeccompSize {
        /// File size.
        len: usize,
        /// `BPF_MAXINSNS`.
        max: usize,
    },
}

fn prctl(option: libc::c_int, name: &'static str, arg: libc::c_ulong) -> Result<(), HardenError> {
    // SAFETY: the options used here take a plain integer second argument and ignore the rest;
    // no pointer is passed, so no memory can be touched by the kernel.
    let rc = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == -1 {
        return Err(HardenError::Prctl {
            option: name,
            source: Errno::last(),
        });
    }
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no exec may gain privileges (lets a process without CAP_SYS_ADMIN
/// load a seccomp filter).
pub fn set_no_new_privs() -> Result<(), HardenError> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, "PR_SET_NO_NEW_PRIVS", 1)
}

/// `PR_SET_DUMPABLE 0`: processes of the same uid cannot ptrace the agent or read its memory.
pub fn set_not_dumpable() -> Result<(), HardenError> {
    prctl(libc::PR_SET_DUMPABLE, "PR_SET_DUMPABLE", 0)
}

/// `CAP_SYS_ADMIN` (linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> Result<[CapData; 2], HardenError> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `hdr` and `data` are valid for writes for the call; version 3 makes the kernel
    // write exactly two `CapData` entries.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc == -1 {
        return Err(HardenError::Prctl {
            option: "capget",
            source: Errno::last(),
        });
    }
    Ok(data)
}

/// Whether the calling thread has capability `cap` in its effective set.
pub fn has_effective_cap(cap: u32) -> Result<bool, HardenError> {
    let data = capget()?;
    let (word, bit) = ((cap / 32) as usize, cap % 32);
    Ok(data
        .get(word)
        .is_some_and(|d| d.effective & (1 << bit) != 0))
}

/// Drops capability `cap` for good: from the bounding set (`PR_CAPBSET_DROP`, so no later exec
/// of a setuid or file-capability binary can grant it back), the ambient set, and the
/// inheritable set and, unless `keep_for_self`, the effective and permitted sets of the calling
/// thread (kept, only this process holds it: a child's exec computes its capabilities from the
/// bounding and inheritable sets). Call it while the process has a single thread.
pub fn drop_cap(cap: u32, keep_for_self: bool) -> Result<(), HardenError> {
    prctl(
        libc::PR_CAPBSET_DROP,
        "PR_CAPBSET_DROP",
        libc::c_ulong::from(cap),
    )?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer; unused arguments are zero.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == -1 {
        return Err(HardenError::Prctl {
            option: "PR_CAP_AMBIENT_CLEAR_ALL",
            source: Errno::last(),
        });
    }
    let mut data = capget()?;
    let (word, bit) = ((cap / 32) as usize, cap % 32);
    if let Some(d) = data.get_mut(word) {
        if !keep_for_self {
            d.effective &= !(1 << bit);
            d.permitted &= !(1 << bit);
        }
        d.inheritable &= !(1 << bit);
    }
    let hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: both pointers are valid for reads for the call; version 3 makes the kernel read
    // exactly two `CapData` entries.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    if rc == -1 {
        return Err(HardenError::Prctl {
            option: "capset",
            source: Errno::last(),
        });
    }
    Ok(())
}

/// `PR_SET_CHILD_SUBREAPER`: orphans below us are re-parented to us (prctl(2)), so we reap them
/// even when we are not PID 1 of a PID namespace.
pub fn set_child_subreaper() -> Result<(), HardenError> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, "PR_SET_CHILD_SUBREAPER", 1)
}

/// Installs `program` (raw `struct sock_filter` array, native endian) with
/// `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`. It applies to the calling thread and everything
/// it later creates, so call it before any other thread exists.
pub fn load_seccomp(program: &[u8]) -> Result<(), HardenError> {
    if program.is_empty()
        || !program.chunks_exact(8).remainder().is_empty()
        || program.len() / 8 > BPF_MAXINSNS
    {
        return Err(HardenError::SeccompSize {
            len: program.len(),
            max: BPF_MAXINSNS,
        });
    }
    let mut filter: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        // Fits: bounded by BPF_MAXINSNS above.
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, which lives until after the call; the kernel copies the
    // program during the call and keeps no pointer into our memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == -1 {
        return Err(HardenError::Prctl {
            option: "PR_SET_SECCOMP",
            source: Errno::last(),
        });
    }
    Ok(())
}

/// Whether we are PID 1 of our PID namespace.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// One `waitpid(-1, WNOHANG)`: `Ok(Some((pid, exit_code)))` for a reaped child, `Ok(None)` when
/// no child has changed state (or there are no children at all). Signal deaths give 128+N.
pub fn reap_one() -> Result<Option<(i32, i32)>, Errno> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => return Ok(Some((pid.as_raw(), code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                return Ok(Some((pid.as_raw(), 128 + sig as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
            // Stop/continue reports are not requested (no WUNTRACED); skip anything else.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends `signal` to the process group led by `pgid` (every spawned process leads its own).
pub fn kill_group(pgid: u32, signal: i32) -> Result<(), Errno> {
    let sig = Signal::try_from(signal)?;
    let pgid = i32::try_from(pgid).map_err(|_| Errno::EINVAL)?;
    nix::sys::signal::killpg(Pid::from_raw(pgid), sig)
}

/// Opens a PTY pair sized `cols`x`rows`; both ends close-on-exec from the start.
///
/// `O_CLOEXEC` is part of each `open`, never set afterwards: other threads fork children
/// concurrently, and a child forked between an `open` and a later `fcntl` would inherit the fd
/// (keeping the terminal open, and the session's output readable, from an unrelated process).
/// The child of the session gets the slave through `dup2` onto 0/1/2, which clears the flag on
/// those copies only.
pub fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::os::unix::fs::OpenOptionsExt;

    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = ptsname_r(&master)?;
    // SAFETY: `into_raw_fd` hands over the open master fd that `PtyMaster` owned (it will not
    // close it), so the new OwnedFd is its only owner.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&slave_path)?;
    set_winsize(master.as_fd(), cols, rows)?;
    Ok((master, OwnedFd::from(slave)))
}

fn winsize(cols: u16, rows: u16) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// `ioctl(TIOCSWINSZ)` on a PTY master; the kernel sends SIGWINCH to the foreground group.
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which is valid for the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &ws as *const nix::pty::Winsize,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why an inherited listening socket (`--listen-fd`) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListenFdError {
    /// Fds 0-2 are stdio, never a listener.
    #[error("fd {fd} is stdio, not a listening socket")]
    Stdio {
        /// The fd.
        fd: i32,
    },
    /// A syscall on the fd failed (e.g. `EBADF`: not open).
    #[error("fd {fd}: {step} failed")]
    Syscall {
        /// The fd.
        fd: i32,
        /// What was being done.
        step: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
    /// Open, but not a listening unix stream socket.
    #[error("fd {fd} is not a listening unix stream socket ({what})")]
    NotUnixListener {
        /// The fd.
        fd: i32,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// Takes ownership of the listening unix socket inherited at `fd` (`--listen-fd`): checks it is
/// a listening `AF_UNIX` stream socket, then sets `FD_CLOEXEC` (children must not inherit it)
/// and `O_NONBLOCK` (tokio needs it).
///
/// Call it once per fd, early in `main`, before anything could have closed or reused `fd`.
pub fn adopt_listener(fd: i32) -> Result<std::os::unix::net::UnixListener, ListenFdError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike};
    use nix::sys::socket::{SockType, SockaddrStorage};
    use std::os::fd::FromRawFd;

    let sys = |step| move |source| ListenFdError::Syscall { fd, step, source };
    if (0..=2).contains(&fd) {
        return Err(ListenFdError::Stdio { fd });
    }
    // Also proves the fd is open before we claim it.
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(sys("set FD_CLOEXEC"))?;
    // SAFETY: `fd` is open (F_SETFD just succeeded), is not stdio, and was handed to this process
    // to own (`--listen-fd`); nothing else in the agent refers to it, and this function is
    // called once per fd, so the OwnedFd is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr: SockaddrStorage = getsockname(fd).map_err(sys("getsockname"))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(ListenFdError::NotUnixListener {
            fd,
            what: "not AF_UNIX",
        });
    }
    if getsockopt(&owned, sockopt::SockType).map_err(sys("getsockopt SO_TYPE"))? != SockType::Stream
    {
        return Err(ListenFdError::NotUnixListener {
            fd,
            what: "not SOCK_STREAM",
        });
    }
    if !getsockopt(&owned, sockopt::AcceptConn).map_err(sys("getsockopt SO_ACCEPTCONN"))? {
        return Err(ListenFdError::NotUnixListener {
            fd,
            what: "not listening",
        });
    }
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(sys("get file status flags"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(sys("set O_NONBLOCK"))?;
    Ok(std::os::unix::net::UnixListener::from(owned))
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// `read(2)` into `buf`.
pub fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(fd.as_raw_fd(), buf).map_err(io::Error::from)
}

/// `write(2)` from `buf`.
pub fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    nix::unistd::write(fd, buf).map_err(io::Error::from)
}

/// The effective uid of the agent.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// What a child does between `fork` and `exec`, prepared (allocated) before the fork.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Make fd 0 (a PTY slave) the controlling terminal after `setsid`.
    pub controlling_tty: bool,
    /// Switch to these credentials: (uid, gid, supplementary groups).
    pub credentials: Option<(u32, u32, Vec<libc::gid_t>)>,
}

/// Runs in the forked child before `exec`: `setsid` (own session and process group, so a kill of
/// the group reaches every descendant), optionally `TIOCSCTTY`, then `setgroups`/`setgid`/
/// `setuid` in that order (dropping uid last, or the others would be refused).
///
/// # Safety
/// Must only be called in a freshly forked child (from `CommandExt::pre_exec`). It performs no
/// allocation and calls only async-signal-safe functions (signal-safety(7)).
pub unsafe fn child_setup(setup: &ChildSetup) -> io::Result<()> {
    // SAFETY: plain syscalls on integers or on `groups`, a slice allocated before
    // the fork and still alive; all are async-signal-safe.
    unsafe {
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        if setup.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
            return Err(io::Error::last_os_error());
        }
        if let Some((uid, gid, groups)) = &setup.credentials {
            if libc::setgroups(groups.len(), groups.as_ptr()) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(*gid) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(*uid) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A non-blocking `AF_VSOCK` stream socket listening on `port` of every local context id.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    use nix::sys::socket::VsockAddr;
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};

    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// Accepts one connection on a listening socket, non-blocking and close-on-exec.
pub fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{accept4, SockFlag};
    use std::os::fd::FromRawFd;

    let fd = accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4(2) just returned `fd`, a new descriptor that nothing else refers to, so
    // the OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers an owned, non-blocking descriptor with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an open OwnedFd moved into the AsyncFd, which owns it until it is
    // dropped; `OwnedFd::as_raw_fd` always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Makes `cmd` run [`child_setup`] with `setup` between fork and exec.
pub fn set_child_setup(cmd: &mut std::process::Command, setup: ChildSetup) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `child_setup` only calls async-signal-safe functions (setsid, ioctl TIOCSCTTY,
    // setgroups, setgid, setuid) on data allocated before the fork, as required after fork in
    // a multi-threaded process.
    unsafe {
        cmd.pre_exec(move || child_setup(&setup));
    }
}

/// What [`spawn_session`] starts: a program with its arguments and whole environment
/// (`KEY=value`), in `cwd`, with `stdio` as its fds 0, 1 and 2.
#[derive(Debug)]
pub struct SessionSpawn<'a> {
    /// Path of the program (no `PATH` search).
    pub program: &'a std::ffi::CStr,
    /// `argv`, the program's name first.
    pub argv: &'a [std::ffi::CString],
    /// `envp`.
    pub envp: &'a [std::ffi::CString],
    /// Working directory.
    pub cwd: &'a std::ffi::CStr,
    /// The child's stdin, stdout and stderr.
    pub stdio: [BorrowedFd<'a>; 3],
}

/// Starts `s` as the leader of a new session and process group with `posix_spawn` (glibc's
/// runs `clone(CLONE_VM | CLONE_VFORK)`: the agent's memory is neither copied nor made
/// copy-on-write, which a `fork` of the whole agent costs). The child starts with no blocked
/// signal and `SIGPIPE` at its default, as after [`child_setup`]. An exec failure is the error.
pub fn spawn_session(s: &SessionSpawn<'_>) -> io::Result<i32> {
    use std::ptr;
    let mut argv: Vec<*mut libc::c_char> = s.argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = s.envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(ptr::null_mut());
    let check = |rc: libc::c_int| match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    };
    // SAFETY: the attribute and file-action objects are initialised before use and destroyed
    // on every path; every pointer handed to libc (program, argv, envp, cwd: NUL-terminated
    // strings and NULL-terminated arrays) outlives the `posix_spawn` call, which copies what
    // it keeps; the fds are borrowed, so open for the call.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawnattr_init(&mut attr))?;
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawn_file_actions_init(&mut actions)) {
            libc::posix_spawnattr_destroy(&mut attr);
            return Err(e);
        }
        let result = (|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &pipe))?;
            let flags = libc::POSIX_SPAWN_SETSID
                | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
                | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
            check(libc::posix_spawnattr_setflags(&mut attr, flags))?;
            for (target, fd) in s.stdio.iter().enumerate() {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut actions,
                    fd.as_raw_fd(),
                    target as libc::c_int,
                ))?;
            }
            check(libc::posix_spawn_file_actions_addchdir_np(
                &mut actions,
                s.cwd.as_ptr(),
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                s.program.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        result
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Sets `CLOCK_REALTIME` to `unix_ns` nanoseconds since the epoch (needs `CAP_SYS_TIME`: only
/// in a microVM, where the agent is the guest's root).
pub fn set_realtime_clock(unix_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec for the duration of the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Credits `seed` (256 bits) to the kernel's entropy pool and makes its CRNG reseed now, so
/// two guests restored from one saved state stop drawing the same numbers (needs
/// `CAP_SYS_ADMIN`).
pub fn reseed_rng(seed: &[u8; 32]) -> io::Result<()> {
    /// `struct rand_pool_info` with room for the seed.
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 32],
    }
    // linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    let info = PoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: *seed,
    };
    // SAFETY: the fd is open; `info` is a rand_pool_info whose buffer holds buf_size bytes.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, &info) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open; the request takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_ends_are_close_on_exec_and_sized() {
        let (master, slave) = open_pty(100, 40).expect("open pty");
        for fd in [&master, &slave] {
            let flags =
                nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `struct winsize` to the pointer, valid for the call.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (100, 40));
    }
}
