//! Host-side hardening after the security review: what capsules leave on the host and what
//! the host exposes to capsules.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use wrenn_runtime::NetworkMode;

use crate::common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The mount options (field 6) of the mount at exactly `target` in /proc/self/mountinfo.
fn mount_options(target: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let t = target.to_str().expect("utf-8 path");
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&t)).then(|| f.get(5).copied().unwrap_or("").to_owned())
    })
}

/// Whether uid/gid 65534 (no groups) can `ls -d` path on the host.
fn nobody_can_reach(p: &Path) -> bool {
    std::process::Command::new("/bin/ls")
        .arg("-d")
        .arg(p)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("spawn ls as nobody")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_files_of_capsule_root_are_private_and_nosuid_on_the_host() {
    if !privileged("setuid_files_private_nosuid") {
        return;
    }
    // A runtime dir whose data dir is gone is swept when a runtime starts.
    let stale = Path::new("/run/wrenn/rt/0000000000000000");
    std::fs::create_dir_all(stale).expect("stale runtime dir");
    std::fs::write(stale.with_extension("owner"), "/nonexistent/wrenn-data").expect("owner");
    let t = TestRuntime::new();
    assert!(!stale.exists() && !stale.with_extension("owner").exists());
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    for d in ["capsules", "templates", "state"] {
        assert_eq!(mode(&t.data_dir.join(d)), 0o700, "data_dir/{d}");
    }
    // Capsule root (an unprivileged host uid) reads the agent and seccomp program through
    // the /.wrenn bind; the dir lives outside the data dir, in a dir only host root enters.
    let rt = wrenn_runtime::container::runtime_dir_for(&t.data_dir);
    assert_eq!(mode(&rt), 0o755, "runtime dir");
    assert_eq!(mode(rt.parent().expect("parent")), 0o700, "runtime dirs");
    assert!(!t.data_dir.join("runtime").exists(), "data_dir/runtime");
    assert_eq!(
        std::fs::read(rt.with_extension("owner")).expect("owner"),
        t.data_dir.as_os_str().as_encoded_bytes()
    );
    // Neither it nor any other host path shows in the capsule's mountinfo.
    let info = sh(&c, "cat /proc/self/mountinfo").await.stdout;
    let data_dir = t.data_dir.to_string_lossy().into_owned();
    for leak in [data_dir.as_str(), "/capsules/", "/templates/", "disk.img"] {
        assert!(
            !info.contains(leak),
            "{leak:?} in the capsule's mountinfo:\n{info}"
        );
    }
    let wrenn = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/.wrenn"))
        .unwrap_or_else(|| panic!("no /.wrenn mount:\n{info}"));
    // Its root is the runtime dir (relative to the filesystem /run is on).
    let root = wrenn.split(' ').nth(3).unwrap_or("");
    assert!(
        root.starts_with('/') && rt.to_string_lossy().ends_with(root),
        "{wrenn}"
    );
    assert_eq!(
        mode(&cache_dir().join("templates")),
        0o700,
        "cache templates"
    );
    let cdir = t.data_dir.join("capsules").join(c.id());
    assert_eq!(mode(&cdir), 0o700, "capsule dir");

    let r = sh(
        &c,
        "cp /bin/busybox /suid && chmod 4755 /suid && stat -c %a /suid",
    )
    .await;
    assert_eq!(r.stdout.trim(), "4755", "{r:?}");
    let (upper, merged) = (
        upper_dir(&t.data_dir, c.id()).join("suid"),
        cdir.join("rootfs/suid"),
    );
    // The file is on the host with its bit (root sees it) ...
    assert_eq!(mode(&upper), 0o4755);
    assert_eq!(mode(&merged), 0o4755);
    // ... but no other host user can get to it: positive control first.
    assert!(nobody_can_reach(Path::new("/")), "control: nobody runs ls");
    assert!(nobody_can_reach(&t.data_dir), "control: data dir itself");
    assert!(!nobody_can_reach(&upper), "upper copy reachable by nobody");
    assert!(
        !nobody_can_reach(&merged),
        "merged copy reachable by nobody"
    );
    // And the host-side overlay never honours setuid / file capabilities.
    let opts = mount_options(&cdir.join("rootfs")).expect("overlay mounted");
    assert!(opts.split(',').any(|o| o == "nosuid"), "{opts}");
    assert!(opts.split(',').any(|o| o == "nodev"), "{opts}");
    let st = nix::sys::statvfs::statvfs(&merged).expect("statvfs");
    assert!(st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID));
    // So is the capsule's disk, which holds the upper copy.
    if cdir.join("disk.img").exists() {
        let opts = mount_options(&cdir.join("disk")).expect("disk mounted");
        assert!(opts.split(',').any(|o| o == "nosuid"), "{opts}");
        assert!(opts.split(',').any(|o| o == "nodev"), "{opts}");
        let st = nix::sys::statvfs::statvfs(&upper).expect("statvfs");
        assert!(st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID));
    }
}

/// Tries each socket domain with `socket` and `socketpair`; prints `name=ok|ERRNO`.
const SOCKET_PROBES: &str = r#"
import errno, socket
def probe(name, f):
    try:
        r = f()
        for s in (r if isinstance(r, tuple) else (r,)):
            s.close()
        print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={errno.errorcode.get(e.errno, e.errno)}")
probe("vsock", lambda: socket.socket(40, socket.SOCK_STREAM))
probe("vsock_pair", lambda: socket.socketpair(40, socket.SOCK_STREAM))
probe("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
probe("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
probe("unix_pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_sockets_are_refused_in_capsules() {
    if !privileged("vsock_refused") || !minimal_allowed("vsock_refused") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("minimal", NetworkMode::Isolated).await;
    let r = exec(
        &c,
        wrenn_types::agent::ExecRequest {
            process: wrenn_types::agent::ProcessSpec {
                cmd: "python3".into(),
                args: vec!["-c".into(), SOCKET_PROBES.into()],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let got: std::collections::HashMap<&str, &str> =
        r.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(got.get("vsock"), Some(&"EPERM"), "{}", r.stdout);
    assert_eq!(got.get("vsock_pair"), Some(&"EPERM"), "{}", r.stdout);
    for ok in ["inet", "unix", "unix_pair"] {
        assert_eq!(got.get(ok), Some(&"ok"), "{ok}: {}", r.stdout);
    }
}
