//! Command line and startup hardening.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wrenn_agent_client::AgentClient;

use crate::common::*;

fn agent_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wrenn-agent"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agent")
}

#[test]
fn rejects_bad_arguments_and_unloadable_filters() {
    assert_eq!(agent_cmd(&[]).status.code(), Some(2));
    assert_eq!(
        agent_cmd(&["--socket", "/tmp/x", "--nope"]).status.code(),
        Some(2)
    );
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.bpf");
    std::fs::write(&bad, [0u8; 7]).expect("write");
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().expect("utf8");
    let out = agent_cmd(&["--socket", sock, "--seccomp", bad.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("seccomp"));
    let missing = agent_cmd(&["--socket", sock, "--seccomp", "/no/such/filter"]);
    assert!(!missing.status.success());
}

#[tokio::test]
async fn serves_under_a_seccomp_filter_inherited_by_children() {
    // One instruction: BPF_RET|BPF_K with SECCOMP_RET_ALLOW.
    let mut prog = Vec::new();
    prog.extend_from_slice(&0x0006u16.to_ne_bytes());
    prog.extend_from_slice(&[0, 0]);
    prog.extend_from_slice(&0x7fff_0000u32.to_ne_bytes());
    let dir = tempfile::tempdir().expect("dir");
    let filter = dir.path().join("allow.bpf");
    std::fs::write(&filter, &prog).expect("write");
    let agent = TestAgent::start_with(&["--seccomp", filter.to_str().expect("utf8")]).await;
    let r = agent
        .run(sh(
            "grep -E '^(Seccomp|NoNewPrivs|CapBnd|CapPrm):' /proc/self/status",
        ))
        .await;
    assert!(r.stdout.contains("Seccomp:\t2"), "{r:?}");
    let caps = |name: &str| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("cap line")
    };
    const SYS_ADMIN: u64 = 1 << 21;
    if caps("CapBnd:") & SYS_ADMIN != 0 && caps("CapPrm:") == 0 {
        // An unprivileged agent: the filter took no_new_privs.
        assert!(r.stdout.contains("NoNewPrivs:\t1"), "{r:?}");
    } else {
        // A privileged agent loaded it with CAP_SYS_ADMIN and then dropped that for good.
        assert!(r.stdout.contains("NoNewPrivs:\t0"), "{r:?}");
        assert_eq!(caps("CapBnd:") & SYS_ADMIN, 0, "{r:?}");
        assert_eq!(caps("CapPrm:") & SYS_ADMIN, 0, "{r:?}");
    }
}

/// Makes `fd` the child's fd 3 (without close-on-exec), as the runtime's launcher does.
fn pass_as_fd3(cmd: &mut Command, fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which are
    // async-signal-safe; `raw` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Kills (SIGKILL) and reaps the child on drop.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn readlink(p: String) -> String {
    std::fs::read_link(&p)
        .unwrap_or_else(|e| panic!("readlink {p}: {e}"))
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn serves_on_an_inherited_listening_socket() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("host-only.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrenn-agent"));
    cmd.args(["--listen-fd", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env("WRENN_AGENT_LOG", "warn");
    pass_as_fd3(&mut cmd, listener.as_fd());
    let mut agent = Reap(cmd.spawn().expect("spawn agent"));
    // The agent holds the only listening fd from here on.
    drop(listener);
    let client = AgentClient::new(path.clone());
    assert!(
        wait_until(DEADLINE, || {
            let c = client.clone();
            async move { c.health().await.is_ok() }
        })
        .await,
        "agent did not answer on the inherited socket"
    );
    let pid = agent.0.id();
    assert!(readlink(format!("/proc/{pid}/fd/3")).starts_with("socket:"));

    // The listener is close-on-exec in the agent: its children get no socket at all.
    let r = match client
        .exec(&sh("for f in /proc/$$/fd/*; do readlink $f; done; true"))
        .await
        .expect("exec")
    {
        wrenn_agent_client::ExecOutcome::Finished(r) => r,
        other => panic!("expected a foreground result, got {other:?}"),
    };
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(!r.stdout.contains("socket:"), "child fds: {}", r.stdout);

    // On SIGTERM the agent stops but leaves the path alone: whoever bound it owns it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sigterm");
    let mut status = None;
    for _ in 0..500 {
        status = agent.0.try_wait().expect("try_wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        path.exists(),
        "the agent removed a socket path it did not bind"
    );
}

#[test]
fn refuses_a_listen_fd_that_is_not_a_listening_unix_socket() {
    let run = |cmd: &mut Command| {
        let out = cmd.stdin(Stdio::null()).output().expect("run agent");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let agent = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wrenn-agent"));
        c.args(["--listen-fd", "3"]);
        c
    };
    // Nothing open at fd 3 (std opens everything close-on-exec).
    let (code, err) = run(&mut agent());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--listen-fd"), "{err}");

    // A regular file.
    let file = tempfile::tempfile().expect("file");
    let mut c = agent();
    pass_as_fd3(&mut c, file.as_fd());
    let (code, err) = run(&mut c);
    assert_eq!(code, Some(1), "{err}");

    // A unix socket that is bound but not listening.
    let dir = tempfile::tempdir().expect("dir");
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = nix::sys::socket::UnixAddr::new(&dir.path().join("s")).expect("addr");
    nix::sys::socket::bind(sock.as_raw_fd(), &addr).expect("bind");
    let mut c = agent();
    pass_as_fd3(&mut c, sock.as_fd());
    let (code, err) = run(&mut c);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not listening"), "{err}");

    // Stdio and junk are refused by the parser.
    let (code, _) = run(Command::new(env!("CARGO_BIN_EXE_wrenn-agent")).args(["--listen-fd", "0"]));
    assert_eq!(code, Some(2));
}

#[tokio::test]
async fn serves_on_vsock_beside_the_unix_socket_and_reports_the_guest() {
    // vsock_loopback is not available here, so no client reaches the vsock port: this proves the
    // listener binds and the agent still serves its unix socket, and that a taken port fails
    // startup with a clear message.
    let port = 20_000 + std::process::id() % 40_000;
    let port_arg = port.to_string();
    let agent = TestAgent::start_with(&["--listen-vsock", &port_arg]).await;
    let facts = agent.client.guest_facts().await.expect("guest facts");
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(facts.kernel_version.as_deref(), Some(release.trim()));

    let out = agent_cmd(&["--listen-vsock", &port_arg]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on vsock port {port}")),
        "{stderr}"
    );
}
