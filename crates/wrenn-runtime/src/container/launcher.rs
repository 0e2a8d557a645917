//! The single-threaded launcher: the only place that calls libcontainer's create/start.
//!
//! libcontainer clones the calling process and changes process-global state (cwd, signal
//! masks), which is undefined behaviour in a multi-threaded tokio server. So the runtime execs a
//! fresh launcher process per capsule (`wrenn __launch`, or the `wrenn-launcher` binary of this
//! crate), which does exactly one create+start and exits. The next one is exec'd ahead, while
//! nothing waits for it, and blocks reading its request (see `spare`).
//!
//! Exchange (one shot, over the launcher's stdin/stdout):
//! 1. The runtime spawns the launcher with stdin and stdout as pipes, stderr inherited.
//! 2. The runtime writes one JSON [`LaunchRequest`] and closes stdin.
//! 3. The launcher binds the agent's listening socket at [`LaunchRequest::agent_socket`] (a
//!    host-only path: the capsule never sees it and so cannot swap it for a symlink), moves it
//!    to fd [`AGENT_LISTEN_FD`] without close-on-exec, and has libcontainer preserve exactly
//!    that one fd (`with_preserved_fds(1)`: fds 0-2 are /dev/null, fd 3 survives, every higher
//!    fd is made close-on-exec in the init before it execs the agent with `--listen-fd 3`).
//! 4. The launcher joins the capsule's network namespace (setns(2); the capsule inherits it:
//!    libcontainer would join it only after entering the capsule's user namespace, which has
//!    no rights over a namespace the host owns) and allows unprivileged ICMP echo sockets in
//!    it (`net.ipv4.ping_group_range`, as Docker: ping without CAP_NET_RAW).
//!    Then, in a mount namespace of its own, it clears `nosuid` on the capsule's root path
//!    (see [`allow_setuid_inside`]), mounts a sysfs of that namespace read-only at the
//!    capsule's `/sys` (see [`mount_sysfs`]) and the capsule's own cgroups, read-only, at its
//!    `/sys/fs/cgroup` (see [`mount_cgroups`]).
//! 5. The launcher builds and starts the container (detached; the container's own stdio is
//!    /dev/null, never the reply pipe, so nothing keeps that pipe open after the launcher exits).
//! 6. The launcher writes one JSON [`LaunchReply`] line to stdout and exits 0 (1 on error),
//!    closing its copy of the listener: from then on only the agent holds it, and the socket
//!    file stays bound (connectable) for as long as the agent lives.
//!
//! The runtime removes `LISTEN_FDS`/`LISTEN_PID` from the launcher's environment: libcontainer
//! would otherwise preserve that many more fds into the capsule.
//!
//! The container init re-parents to the nearest subreaper (the runtime's process) once the
//! launcher and libcontainer's intermediate process have exited.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use super::steps::Steps;
use crate::sys;

/// The fd number at which the capsule's init (the agent) inherits its listening socket.
pub const AGENT_LISTEN_FD: i32 = 3;

/// What to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// Capsule id (libcontainer container id).
    pub id: String,
    /// Bundle dir holding `config.json`.
    pub bundle: PathBuf,
    /// libcontainer state root.
    pub root: PathBuf,
    /// Host path to bind the agent's listening socket at (must not exist yet).
    pub agent_socket: PathBuf,
    /// The capsule's network namespace, joined before libcontainer runs.
    pub netns: PathBuf,
    /// Where the capsule's `/sys` is mounted (its root path's `sys`), see [`mount_sysfs`].
    pub sysfs: PathBuf,
    /// The capsule's own cgroup directories, shown read-only at its `/sys/fs/cgroup`, see
    /// [`mount_cgroups`].
    pub cgroups: CgroupView,
    /// The capsule's root path (the bind of its overlay that the spec names), honouring
    /// setuid in the launcher's mount namespace only, see [`allow_setuid_inside`].
    pub rootfs: PathBuf,
}

/// Which of the capsule's cgroup directories its `/sys/fs/cgroup` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupView {
    /// cgroup v2: the capsule's one directory is `/sys/fs/cgroup` itself.
    Unified(PathBuf),
    /// cgroup v1: `(controller, directory)`, each at `/sys/fs/cgroup/<controller>`.
    PerController(Vec<(String, PathBuf)>),
}

/// Result of one launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchReply {
    /// Started; host pid of the container init.
    Started {
        /// Host pid.
        pid: i32,
        /// How long each of the launcher's steps took.
        #[serde(default)]
        steps: Steps,
    },
    /// Failed; the error chain, outermost first.
    Failed {
        /// Messages.
        error: Vec<String>,
    },
}

/// Entry point of the launcher process. `args` are ignored for now (the request comes on
/// stdin); they are taken so a CLI can forward its argv unchanged.
pub fn launcher_main(_args: Vec<OsString>) -> ExitCode {
    // A launcher may be started ahead and wait here: its steps begin with the request.
    let request = read_request();
    let mut steps = Steps::start();
    let reply = match request.and_then(|req| launch(&req, &mut steps)) {
        Ok(pid) => LaunchReply::Started { pid, steps },
        Err(e) => LaunchReply::Failed {
            error: chain(e.as_ref()),
        },
    };
    let ok = matches!(reply, LaunchReply::Started { .. });
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return ExitCode::from(2);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut v = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        v.push(s.to_string());
        cur = s.source();
    }
    v
}

fn read_request() -> Result<LaunchRequest, BoxError> {
    let mut buf = String::new();
    std::io::stdin().read_to_string(&mut buf)?;
    Ok(serde_json::from_str(&buf)?)
}

/// Binds the agent socket (mode 0600) and moves the listener to [`AGENT_LISTEN_FD`].
fn bind_agent_socket(path: &Path) -> Result<OwnedFd, BoxError> {
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("bind agent socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod agent socket {}: {e}", path.display()))?;
    // SAFETY: the launcher is single-threaded and has opened nothing else yet besides this
    // listener; std opens stdio only, so no owner of fd 3 exists in this process (an fd 3
    // inherited by accident is replaced, which is what we want).
    let fd = unsafe { sys::install_fd_at(OwnedFd::from(listener), AGENT_LISTEN_FD) }
        .map_err(|e| format!("move agent socket to fd {AGENT_LISTEN_FD}: {e}"))?;
    Ok(fd)
}

/// Moves this (single-threaded) process into the network namespace at `path` and sets the
/// namespace's `net.ipv4.ping_group_range` to every group.
fn join_netns(path: &Path) -> Result<(), BoxError> {
    let ns = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("join network namespace: {e}"))?;
    // /proc/sys/net shows the namespace of the process that opens it: now the capsule's.
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        .map_err(|e| format!("set ping_group_range: {e}"))?;
    Ok(())
}

/// Moves this (single-threaded) process into a new mount namespace that receives but never
/// sends mount events.
fn private_mount_namespace() -> Result<(), BoxError> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts slave: {e}"))?;
    Ok(())
}

/// Remounts the capsule's root path (`rootfs`, a bind of its overlay) without `nosuid` (still
/// `nodev`), in the launcher's own mount namespace only: the capsule's mount namespace is a
/// copy of this one, so setuid binaries (`sudo`) work inside, while the host's mounts of the
/// same overlay (`rootfs/` and the bind at `rootfs`) stay `nosuid` for every host user.
///
/// Setuid inside raises a capsule user to *capsule* root at most: an unprivileged host uid of
/// the capsule's user namespace, with the capsule's capability bounding set and its seccomp
/// filter (see `docs/architecture.md`, trust zones).
fn allow_setuid_inside(rootfs: &Path) -> Result<(), BoxError> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("remount capsule root without nosuid: {e}"))?;
    Ok(())
}

/// Mounts a sysfs, read-only, `nosuid,nodev,noexec`, at `target` (the capsule's `/sys`, in its
/// root path), in the launcher's own mount namespace (see [`private_mount_namespace`]).
///
/// Capsule root cannot mount a sysfs itself: that takes CAP_SYS_ADMIN over the user namespace
/// owning the network namespace, which is the host's. A bind of the host's `/sys` (what runc
/// does) would show the host's network interfaces. A sysfs shows the network namespace of
/// whoever mounts it, so we mount it here, after joining the capsule's; libcontainer's mount
/// namespace is a copy of this one, where the mount is locked (capsule root can neither
/// unmount it nor make it writable).
fn mount_sysfs(target: &Path) -> Result<(), BoxError> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(target).map_err(|e| format!("create /sys: {e}"))?;
    mount(
        Some("sysfs"),
        target,
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount sysfs: {e}"))?;
    Ok(())
}

/// Shows the capsule its own cgroups at `sys/fs/cgroup` under `sysfs`: binds of the host's
/// directories of the capsule (which are made here if libcontainer has not made them yet; it
/// uses them as they are), read-only, `nosuid,nodev,noexec`. On v1 they sit on a small
/// read-only tmpfs, one per controller, as Docker shows them.
///
/// Tools that size themselves to the memory they may use (a JVM's heap, the code
/// interpreter's spare kernel) read these files: `/proc/meminfo` shows the host. A read-only
/// bind cannot be written, and capsule root cannot make it writable or unmount it (the mounts
/// are locked in its less privileged mount namespace): it reads its own limits and usage, and
/// nothing above its own group.
fn mount_cgroups(sysfs: &Path, view: &CgroupView) -> Result<(), BoxError> {
    use nix::mount::{mount, MsFlags};
    // The v1 tmpfs only holds one directory per controller.
    const TMPFS: &str = "mode=755,size=64k";
    let target = sysfs.join("fs/cgroup");
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let bind_ro = |from: &Path, to: &Path| -> Result<(), BoxError> {
        std::fs::create_dir_all(from).map_err(|e| format!("create {}: {e}", from.display()))?;
        mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("bind {}: {e}", from.display()))?;
        mount(
            None::<&str>,
            to,
            None::<&str>,
            ro | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| format!("make {} read-only: {e}", to.display()))?;
        Ok(())
    };
    match view {
        CgroupView::Unified(dir) => bind_ro(dir, &target),
        CgroupView::PerController(dirs) => {
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(TMPFS),
            )
            .map_err(|e| format!("mount tmpfs at /sys/fs/cgroup: {e}"))?;
            for (controller, dir) in dirs {
                let at = target.join(controller);
                std::fs::create_dir(&at).map_err(|e| format!("create {}: {e}", at.display()))?;
                bind_ro(dir, &at)?;
            }
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                ro | MsFlags::MS_REMOUNT,
                Some(TMPFS),
            )
            .map_err(|e| format!("make /sys/fs/cgroup read-only: {e}"))?;
            Ok(())
        }
    }
}

/// Each step is marked in `steps`.
fn launch(req: &LaunchRequest, steps: &mut Steps) -> Result<i32, BoxError> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    // First, before anything else takes fd 3. Kept open until the container init exists.
    let _listener = bind_agent_socket(&req.agent_socket)?;
    steps.mark("socket");
    join_netns(&req.netns)?;
    steps.mark("netns");
    private_mount_namespace()?;
    allow_setuid_inside(&req.rootfs)?;
    mount_sysfs(&req.sysfs)?;
    mount_cgroups(&req.sysfs, &req.cgroups)?;
    steps.mark("mounts");
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
    };
    let mut container = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_root_path(&req.root)?
        .validate_id()?
        .with_stdin(null()?)
        .with_stdout(null()?)
        .with_stderr(null()?)
        // Fds 0-2 plus this many: exactly the listener at AGENT_LISTEN_FD.
        .with_preserved_fds(AGENT_LISTEN_FD - 2)
        .as_init(&req.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    steps.mark("build");
    container.start()?;
    steps.mark("start");
    let pid = container
        .pid()
        .ok_or_else(|| BoxError::from("container started without a pid"))?;
    Ok(pid.as_raw())
}
