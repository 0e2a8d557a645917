//! What a capsule must not see or do.

use wrenn_runtime::{NetworkMode, Runtime};

use crate::common::*;

/// A python3 script run in a `minimal` capsule; prints one `name=result` line per probe.
const PROBES: &str = r#"
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    print(f"{name}={'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}")
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("raw=ok")
except PermissionError:
    print("raw=EPERM")
sc("mount", 165, b"none", b"/mnt", b"tmpfs", 0, None)
sc("init_module", 175, None, 0, b"")
sc("finit_module", 313, -1, b"", 0)
sc("unshare_net", 272, 0x40000000)
sc("clone3", 435, None, 0)
sc("bpf", 321, 0, None, 0)
sc("ptrace_outside", 101, 16, int(os.environ["OUTSIDE_PID"]), None, None)
sc("keyctl", 250, 0, 0, 0, 0, 0)
sc("statmount", 457, None, None, 0, 0)
sc("listmount", 458, None, None, 0, 0)
sc("mbind", 237, None, 0, 0, None, 0, 0)
sc("set_mempolicy", 238, 0, None, 0)
sc("io_uring_setup", 425, 1, None)
sc("perf_event_open", 298, None, 0, -1, -1, 0)
sc("userfaultfd", 323, 0)
sc("open_by_handle_at", 304, -1, None, 0)
sc("future_syscall", 600)
sc("getpid", 39)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_template_denies_raw_sockets_mount_modules_ptrace() {
    if !privileged("minimal_denies") || !minimal_allowed("minimal_denies") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("minimal", NetworkMode::Egress).await;
    let r = sh(&c, "python3 --version && bash --version | head -1 && git --version && curl --version | head -1 && ps --version").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let mut envs = std::collections::BTreeMap::new();
    envs.insert("OUTSIDE_PID".to_string(), std::process::id().to_string());
    let r = exec(
        &c,
        wrenn_types::agent::ExecRequest {
            process: wrenn_types::agent::ProcessSpec {
                cmd: "python3".into(),
                args: vec!["-c".into(), PROBES.into()],
                envs,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let got: std::collections::HashMap<&str, &str> =
        r.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(got.get("raw"), Some(&"EPERM"), "{}", r.stdout);
    for denied in [
        "mount",
        "init_module",
        "finit_module",
        "unshare_net",
        "bpf",
        "keyctl",
        // Not denied by name anywhere: refused because the filter allows only a list.
        "statmount",
        "listmount",
        "mbind",
        "set_mempolicy",
        "io_uring_setup",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
        "future_syscall",
    ] {
        assert_eq!(got.get(denied), Some(&"EPERM"), "{denied}: {}", r.stdout);
    }
    assert_eq!(got.get("clone3"), Some(&"ENOSYS"), "{}", r.stdout);
    assert_eq!(got.get("getpid"), Some(&"ok"), "{}", r.stdout);
    // The host pid is either absent from the capsule's pid namespace or not traceable.
    assert!(
        matches!(got.get("ptrace_outside"), Some(&"ESRCH") | Some(&"EPERM")),
        "{}",
        r.stdout
    );
    // Processes still fork and exec normally under the filter (clone without CLONE_NEW*).
    assert_eq!(sh(&c, "bash -c 'echo $((6*7))' | cat").await.stdout, "42\n");
    // Everyday tools run under the allow-list: threads, git, a local TCP round trip.
    let r = sh(
        &c,
        "cd /tmp && git init -q repo && cd repo && echo x > f && git add f \
         && git -c user.email=a@b -c user.name=a commit -qm m && git log --oneline | wc -l \
         && python3 -c 'import threading,socket,subprocess; s=socket.socket(); s.bind((\"127.0.0.1\",0)); s.listen(); t=threading.Thread(target=lambda: s.accept()[0].sendall(b\"hi\")); t.start(); c=socket.create_connection(s.getsockname()); print(c.recv(2).decode()); t.join(); print(subprocess.run([\"ps\",\"-e\"],capture_output=True).returncode)'",
    )
    .await;
    assert_eq!(r.stdout, "1\nhi\n0\n", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_sees_only_its_own_processes() {
    if !privileged("capsule_sees_only_its_own_processes") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let r = sh(
        &c,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'",
    )
    .await;
    let mut lines = r.stdout.lines();
    assert!(
        lines
            .next()
            .unwrap_or("")
            .starts_with("/.wrenn/wrenn-agent"),
        "{r:?}"
    );
    let n: u32 = lines.next().unwrap_or("999").trim().parse().expect("count");
    assert!(n <= 5, "capsule sees {n} processes: {r:?}");
    let r = sh(
        &c,
        &format!(
            "kill -0 {} 2>/dev/null && echo visible || echo hidden",
            std::process::id()
        ),
    )
    .await;
    // The test process lives in the host pid namespace; its number means nothing inside.
    assert!(
        r.stdout.contains("hidden") || std::process::id() < 10,
        "{r:?}"
    );
    let r = sh(
        &c,
        "grep -c . /proc/self/mountinfo; cat /proc/self/status | grep -E 'CapEff|CapBnd|NoNewPrivs|Seccomp:'; \
         grep -E 'NoNewPrivs|CapBnd|CapPrm' /proc/1/status",
    )
    .await;
    // No no_new_privs (setuid works inside, as in Docker), but the filter is there.
    assert!(r.stdout.contains("NoNewPrivs:\t0"), "{r:?}");
    assert!(
        r.stdout.contains("Seccomp:\t2"),
        "seccomp filter not loaded: {r:?}"
    );
    // Docker's a80425fb minus CAP_NET_RAW (bit 13) and CAP_MKNOD (bit 27).
    assert!(r.stdout.contains("CapEff:\t00000000a00405fb"), "{r:?}");
    // The bounding set is the same (no CAP_SYS_ADMIN, bit 21), for the agent (PID 1) too, which
    // loaded the filter with it and dropped it before serving.
    assert_eq!(
        r.stdout.matches("CapBnd:\t00000000a00405fb").count(),
        2,
        "{r:?}"
    );
    assert!(r.stdout.contains("CapPrm:\t00000000a00405fb"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_sees_neither_host_files_nor_other_capsules() {
    if !privileged("capsule_sees_neither_host_files_nor_other_capsules") {
        return;
    }
    let t = TestRuntime::new();
    let scratch = Scratch::new("host-marker");
    let marker = scratch.path().join("marker");
    std::fs::write(&marker, "host").expect("marker");
    let a = t.capsule("busybox", NetworkMode::Isolated).await;
    let b = t.capsule("busybox", NetworkMode::Isolated).await;
    let r = sh(&a, "echo secret > /root/secret-a && cat /root/secret-a").await;
    assert_eq!(r.stdout, "secret\n");
    let probe = format!(
        "test -e {} && echo host-visible; test -e /root/secret-a && echo a-visible; \
         test -e {} && echo datadir-visible; echo done",
        marker.display(),
        t.data_dir.display()
    );
    let r = sh(&b, &probe).await;
    assert_eq!(r.stdout, "done\n", "{r:?}");
    drop((a, b));
}

/// Hash of a tree: paths, types, modes, owners, sizes, link targets and file contents.
fn tree_hash(root: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &std::path::Path, rel: &str, h: &mut Sha256) {
        let md = std::fs::symlink_metadata(p).expect("stat");
        h.update(format!(
            "{rel}|{:o}|{}|{}|{}\n",
            md.mode(),
            md.uid(),
            md.gid(),
            md.len()
        ));
        if md.file_type().is_symlink() {
            h.update(
                std::fs::read_link(p)
                    .expect("readlink")
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if md.is_file() {
            h.update(std::fs::read(p).expect("read"));
        } else if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .expect("readdir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            for n in names {
                walk(&p.join(&n), &format!("{rel}/{}", n.to_string_lossy()), h);
            }
        }
    }
    let mut h = Sha256::new();
    walk(root, "", &mut h);
    format!("{:x}", h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_tree_is_byte_identical_after_capsule_writes_everywhere() {
    if !privileged("template_tree_is_byte_identical") {
        return;
    }
    let t = TestRuntime::new();
    t.rt.ensure_template("busybox").await.expect("template");
    let tree = t.data_dir.join("templates/busybox");
    let before = tree_hash(&tree);
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let r = sh(
        &c,
        "for d in $(find / -xdev -type d 2>/dev/null); do echo x > $d/.wrenn-w 2>/dev/null; done; \
         for f in $(find / -xdev -type f 2>/dev/null | grep -v '^/proc'); do echo x >> $f 2>/dev/null; done; \
         chmod 777 /etc/passwd /bin; chown nobody /etc/group; rm -f /bin/ls /etc/hosts; \
         ln -sf /nowhere /bin/cat; mkdir -p /new/dir; touch /root/file; echo done",
    )
    .await;
    assert!(r.stdout.contains("done"), "{r:?}");
    assert!(
        sh(&c, "/bin/busybox cat /etc/passwd")
            .await
            .stdout
            .contains("x\n"),
        "writes took effect inside"
    );
    drop(c);
    assert_eq!(tree_hash(&tree), before, "template tree changed");
}
