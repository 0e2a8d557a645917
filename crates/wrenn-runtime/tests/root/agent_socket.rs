//! The agent socket the host connects to: bound by the launcher on a host-only path and handed
//! to the agent as fd 3, so nothing inside the capsule can redirect the host's connections; and
//! the capsule's init inherits nothing else from the host.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use wrenn_runtime::{NetworkMode, Runtime};

use crate::common::*;

/// Whether `p` is a unix socket itself (not a symlink to one).
fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_cannot_see_or_redirect_the_agent_socket() {
    if !privileged("capsule_cannot_see_or_redirect_the_agent_socket") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let host_path = t.data_dir.join("capsules").join(c.id()).join("agent.sock");
    assert_eq!(socket_path(&c.handle.agent), host_path);
    assert_eq!(socket_path(&t.rt.agent_endpoint(c.id())), host_path);
    assert!(is_socket(&host_path));

    // A host socket the capsule would love the server to talk to.
    let decoy_dir = t.data_dir.join("decoy");
    std::fs::create_dir_all(&decoy_dir).expect("decoy dir");
    let decoy_path = decoy_dir.join("host-daemon.sock");
    let decoy = std::os::unix::net::UnixListener::bind(&decoy_path).expect("bind decoy");
    decoy.set_nonblocking(true).expect("nonblocking decoy");

    // The capsule has no agent socket and no writable host dir; its root owns every path it can
    // name, so plant symlinks to the decoy (and to a file) everywhere plausible.
    let script = format!(
        "test ! -e /run/wrenn/agent.sock || exit 10
         ! grep -q ' /run/wrenn ' /proc/self/mountinfo || exit 11
         rm -rf /run/wrenn && mkdir -p /run/wrenn || exit 12
         ln -s {decoy} /run/wrenn/agent.sock || exit 13
         ln -s /etc/passwd /agent.sock || exit 14
         ln -s {decoy} /../agent.sock 2>/dev/null
         mkdir -p {capsule_dir} && ln -sf {decoy} {capsule_dir}/agent.sock || exit 15
         ls -la /run/wrenn",
        decoy = decoy_path.display(),
        capsule_dir = host_path.parent().expect("parent").display(),
    );
    let r = sh(&c, &script).await;
    assert_eq!(r.exit_code, 0, "{r:?}");

    // The host still reaches the agent at the same path, and the decoy saw nothing.
    assert!(is_socket(&host_path), "host path replaced");
    for _ in 0..3 {
        let h = c
            .client
            .health()
            .await
            .expect("health after the symlink attack");
        assert_eq!(h.status, "ok");
    }
    let r = sh(&c, "echo still-the-agent").await;
    assert_eq!(r.stdout.trim(), "still-the-agent", "{r:?}");
    match decoy.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host connected to the decoy: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_init_holds_only_stdio_and_its_listener() {
    if !privileged("capsule_init_holds_only_stdio_and_its_listener") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let pid = c.handle.init_pid;

    // Inside, /proc/1/fd lists the init's fds (their targets are hidden: the agent is not
    // dumpable), and a child of the agent inherits none of its sockets.
    let r = sh(&c, "ls /proc/1/fd; echo --; ls -l /proc/$$/fd").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let (inside, child) = r.stdout.split_once("--\n").expect("separator");
    let inside: Vec<&str> = inside.split_whitespace().collect();
    for fd in ["0", "1", "2", "3"] {
        assert!(inside.contains(&fd), "capsule's /proc/1/fd: {inside:?}");
    }
    assert!(!child.contains("socket:"), "agent child fds: {child}");

    // From the host, the targets: stdio on /dev/null, the listener at 3, and only what the
    // agent made itself (sockets, epoll, eventfds, pipes). No file path, let alone a host one.
    let data_dir = t.data_dir.to_string_lossy().into_owned();
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("init fds") {
        let e = e.expect("fd entry");
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue; // closed meanwhile
        };
        let fd: i32 = e.file_name().to_string_lossy().parse().expect("fd number");
        fds.push((fd, target.to_string_lossy().into_owned()));
    }
    fds.sort();
    let target = |n: i32| fds.iter().find(|(fd, _)| *fd == n).map(|(_, t)| t.as_str());
    for n in 0..=2 {
        assert_eq!(target(n), Some("/dev/null"), "{fds:?}");
    }
    assert!(
        target(3).is_some_and(|t| t.starts_with("socket:[")),
        "{fds:?}"
    );
    for (fd, t) in &fds {
        assert!(!t.contains(&data_dir), "fd {fd} -> host path {t}");
        let own =
            t.starts_with("socket:[") || t.starts_with("pipe:[") || t.starts_with("anon_inode:");
        assert!(*fd <= 2 || own, "fd {fd} -> {t} (all: {fds:?})");
    }
}
