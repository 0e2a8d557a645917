//! The in-capsule agent: PID 1 of the capsule's PID namespace, serving the agent protocol
//! (see `wrenn_types::agent`) over a unix socket.
//!
//! Run with: `wrenn-agent --listen-fd 3 [--seccomp /.wrenn/seccomp.bpf]` (in a capsule: the
//! runtime binds the socket on a host-only path and hands the listening socket over as fd 3),
//! `wrenn-agent --socket PATH [--seccomp FILE]` (the agent binds `PATH` itself; host-run tests),
//! `wrenn-agent --listen-vsock PORT` (in a microVM with vsock; it may be given beside either of
//! the others) or `wrenn-agent --listen-serial NAME` (a microVM's init: it mounts what the
//! guest needs, then serves over the virtio-serial port `NAME`, see `serial` and `guest`).
//!
//! Startup order matters: the process-wide `prctl`s and the seccomp filter are installed while
//! the process still has a single thread, so every runtime thread and every child inherits them.

// Raw syscalls, and with them every `unsafe` block, live in `sys` only.
#![deny(unsafe_code)]

mod envd;
mod error;
mod exec;
mod fdstream;
mod files;
mod health;
mod identity;
mod launch;
mod processes;
mod pty;
mod reaper;
mod serial;
mod server;
mod spawn;
mod state;
mod stream;
#[allow(unsafe_code)]
mod sys;
mod users;
mod vsock;
mod ws;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::error::error_chain;
use crate::state::AppState;

const USAGE: &str =
    "usage: wrenn-agent [--listen-fd N | --socket PATH] [--listen-vsock PORT] [--listen-serial NAME]
                   [--seccomp FILE] [--max-processes N] [--max-ptys N]

  --listen-fd N        serve on the already listening unix socket inherited as fd N
  --socket PATH        bind a unix socket at PATH (a stale file there is replaced)
  --listen-vsock PORT  also (or only) serve on this AF_VSOCK port, any local context id
  --listen-serial NAME also (or only) serve yamux streams over the virtio-serial port NAME
  --seccomp FILE       install this classic BPF program (raw sock_filter array) before serving
  --max-processes N    track at most N processes (default 512); more are refused
  --max-ptys N         keep at most N live PTY sessions (default 64); more are refused

At least one of --listen-fd, --socket, --listen-vsock and --listen-serial is required.";

/// Where the agent serves.
#[derive(Debug, PartialEq, Eq)]
enum Listen {
    /// Bind this path.
    Socket(PathBuf),
    /// Adopt this inherited listening socket.
    Fd(i32),
}

#[derive(Debug)]
struct Args {
    /// The unix socket, if any.
    listen: Option<Listen>,
    /// The vsock port, if any.
    vsock: Option<u32>,
    /// The virtio-serial port name, if any.
    serial: Option<String>,
    seccomp: Option<PathBuf>,
    /// Cap of the process table.
    max_processes: usize,
    /// Cap of the PTY table.
    max_ptys: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut vsock = None;
    let mut serial = None;
    let mut seccomp = None;
    let mut max_processes = processes::DEFAULT_MAX_PROCESSES;
    let mut max_ptys = pty::DEFAULT_MAX_SESSIONS;
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "--socket" | "--listen-fd" if listen.is_some() => {
                return Err("give exactly one of --socket and --listen-fd".into())
            }
            "--socket" => listen = Some(Listen::Socket(PathBuf::from(value()?))),
            "--listen-fd" => {
                let v = value()?;
                let fd = v
                    .parse::<i32>()
                    .ok()
                    .filter(|fd| *fd >= 3)
                    .ok_or_else(|| format!("--listen-fd needs a fd number >= 3, got {v:?}"))?;
                listen = Some(Listen::Fd(fd));
            }
            "--listen-vsock" => {
                let v = value()?;
                let port = v
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p != u32::MAX)
                    .ok_or_else(|| format!("--listen-vsock needs a port number, got {v:?}"))?;
                vsock = Some(port);
            }
            "--listen-serial" => serial = Some(value()?).filter(|n| !n.is_empty()),
            "--seccomp" => seccomp = Some(PathBuf::from(value()?)),
            "--max-processes" => max_processes = positive(&key, &value()?)?,
            "--max-ptys" => max_ptys = positive(&key, &value()?)?,
            "-h" | "--help" => return Err(String::new()),
            "-V" | "--version" => return Err(format!("wrenn-agent {}", env!("CARGO_PKG_VERSION"))),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    if listen.is_none() && vsock.is_none() && serial.is_none() {
        return Err(
            "one of --listen-fd, --socket, --listen-vsock and --listen-serial is required".into(),
        );
    }
    Ok(Args {
        listen,
        vsock,
        serial,
        seccomp,
        max_processes,
        max_ptys,
    })
}

fn positive(key: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{key} needs a positive number, got {v:?}"))
}

/// Process-wide hardening, while the process has a single thread (every later thread and child
/// inherits it).
///
/// With CAP_SYS_ADMIN (the capsule's agent: over the capsule's user namespace only) the seccomp
/// filter is loaded without `no_new_privs`, then CAP_SYS_ADMIN is dropped from every set, the
/// bounding set included: children may gain privileges through setuid binaries (`sudo` as in
/// Docker), but never beyond the capsule's bounding set and never outside the filter. Without
/// it (an agent run by a host user) `no_new_privs` is set first, as the kernel requires.
/// In a microVM (PID 1 serving on a virtio-serial port) the agent itself keeps CAP_SYS_ADMIN.
/// Last, the agent makes itself not dumpable: no process of the capsule, capsule root
/// included (it lacks CAP_SYS_PTRACE), can ptrace it or read its memory.
fn harden(args: &Args) -> Result<(), String> {
    if !sys::is_pid1() {
        sys::set_child_subreaper().map_err(|e| error_chain(&e))?;
    }
    let privileged = sys::has_effective_cap(sys::CAP_SYS_ADMIN).map_err(|e| error_chain(&e))?;
    if !privileged {
        sys::set_no_new_privs().map_err(|e| error_chain(&e))?;
    }
    if let Some(path) = &args.seccomp {
        let program = std::fs::read(path)
            .map_err(|e| format!("cannot read seccomp program {}: {e}", path.display()))?;
        sys::load_seccomp(&program).map_err(|e| {
            format!(
                "cannot load seccomp program {}: {}",
                path.display(),
                error_chain(&e)
            )
        })?;
    }
    if privileged {
        // A microVM's agent (serving on a virtio-serial port) is its own kernel's PID 1 and
        // keeps CAP_SYS_ADMIN for itself: it reseeds the RNG and sets the hostname after every
        // restore. Its children lose it all the same (bounding and inheritable sets).
        let keep_for_self = args.serial.is_some() && sys::is_pid1();
        sys::drop_cap(sys::CAP_SYS_ADMIN, keep_for_self).map_err(|e| error_chain(&e))?;
    }
    sys::set_not_dumpable().map_err(|e| error_chain(&e))?;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRENN_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) if msg.starts_with("wrenn-agent ") => {
            println!("{msg}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("wrenn-agent: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Claim the inherited listener first: mark it close-on-exec before anything can fork.
    let inherited = match args.listen {
        Some(Listen::Fd(fd)) => match sys::adopt_listener(fd) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("wrenn-agent: --listen-fd: {}", error_chain(&e));
                return ExitCode::FAILURE;
            }
        },
        Some(Listen::Socket(_)) | None => None,
    };
    if let Err(msg) = harden(&args) {
        eprintln!("wrenn-agent: {msg}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wrenn-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("wrenn-agent: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `path`, replacing a stale socket file.
fn bind(path: &Path) -> Result<UnixListener, String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ))
        }
    }
    UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))
}

async fn serve(
    args: Args,
    inherited: Option<std::os::unix::net::UnixListener>,
) -> Result<(), String> {
    let state = Arc::new(AppState::new(args.max_processes, args.max_ptys));
    state
        .reaper
        .start()
        .map_err(|e| format!("cannot watch SIGCHLD: {e}"))?;
    let (listener, socket) = match (&args.listen, inherited) {
        (Some(Listen::Socket(path)), _) => (Some(bind(path)?), Some(path.clone())),
        (Some(Listen::Fd(fd)), Some(l)) => (
            Some(UnixListener::from_std(l).map_err(|e| format!("cannot serve on fd {fd}: {e}"))?),
            None,
        ),
        (Some(Listen::Fd(fd)), None) => return Err(format!("fd {fd} was not adopted")),
        (None, _) => (None, None),
    };
    let vsock = match args.vsock {
        Some(port) => Some(
            vsock::VsockListener::bind(port)
                .map_err(|e| format!("cannot listen on vsock port {port}: {e}"))?,
        ),
        None => None,
    };
    let serial = match &args.serial {
        Some(name) => Some(
            serial::SerialListener::bind(name)
                .map_err(|e| format!("cannot serve on serial port {name}: {e}"))?,
        ),
        None => None,
    };
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    tracing::info!(
        listen = ?args.listen,
        vsock = ?args.vsock,
        serial = ?args.serial,
        version = env!("CARGO_PKG_VERSION"),
        "agent serving"
    );
    let app = server::app(Arc::clone(&state));
    let serve_unix = async {
        match listener {
            Some(l) => axum::serve(l, app.clone()).await,
            None => std::future::pending().await,
        }
    };
    let serve_vsock = async {
        match vsock {
            Some(l) => axum::serve(l, app.clone()).await,
            None => std::future::pending().await,
        }
    };
    let serve_serial = async {
        match serial {
            Some(l) => axum::serve(l, app.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = serve_serial => r.map_err(|e| format!("serial server failed: {e}"))?,
        r = serve_unix => r.map_err(|e| format!("server failed: {e}"))?,
        r = serve_vsock => r.map_err(|e| format!("vsock server failed: {e}"))?,
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    // Take our process groups down with us rather than leaving them orphaned.
    for pid in state.procs.pids() {
        let _ = sys::kill_group(pid, libc::SIGKILL);
    }
    // An inherited socket's path belongs to whoever bound it (the runtime removes it).
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_arguments() {
        let a = parse(&["--socket", "/s", "--seccomp=/f"]).expect("valid");
        assert_eq!(a.listen, Some(Listen::Socket(PathBuf::from("/s"))));
        assert_eq!(a.seccomp, Some(PathBuf::from("/f")));
        assert_eq!(a.vsock, None);
        let a = parse(&["--listen-fd=3"]).expect("valid");
        assert_eq!(a.listen, Some(Listen::Fd(3)));
        assert_eq!(a.seccomp, None);
        let a = parse(&["--listen-vsock", "1024"]).expect("valid");
        assert_eq!((a.listen, a.vsock), (None, Some(1024)));
        let a = parse(&["--listen-fd", "3", "--listen-vsock=52"]).expect("valid");
        assert_eq!((a.listen, a.vsock), (Some(Listen::Fd(3)), Some(52)));
        assert!(parse(&["--listen-vsock", "x"]).is_err());
        assert!(parse(&["--listen-vsock", "4294967295"]).is_err());
        let a = parse(&["--listen-serial", "agent"]).expect("valid");
        assert_eq!(a.serial.as_deref(), Some("agent"));
        assert!(parse(&["--listen-serial="]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--socket"]).is_err());
        assert!(parse(&["--socket", "/s", "--bogus"]).is_err());
        assert!(parse(&["--listen-fd", "1"]).is_err());
        assert!(parse(&["--listen-fd", "x"]).is_err());
        assert!(parse(&["--listen-fd", "3", "--socket", "/s"]).is_err());
        let a = parse(&["--socket", "/s", "--max-processes", "8", "--max-ptys=2"]).expect("caps");
        assert_eq!((a.max_processes, a.max_ptys), (8, 2));
        let a = parse(&["--socket", "/s"]).expect("default caps");
        assert_eq!(
            (a.max_processes, a.max_ptys),
            (processes::DEFAULT_MAX_PROCESSES, pty::DEFAULT_MAX_SESSIONS)
        );
        assert!(parse(&["--socket", "/s", "--max-ptys", "0"]).is_err());
        assert!(parse(&["--socket", "/s", "--max-processes", "x"]).is_err());
    }
}
