//! Every capsule runs in a user namespace of its own: capsule root is an unprivileged host uid
//! from a range no other live capsule has.

use std::os::unix::fs::MetadataExt;

use wrenn_runtime::{NetworkMode, Runtime, Source};

use crate::common::*;

/// `(inside, host base, count)` of the single line of a capsule's `/proc/self/uid_map`.
async fn uid_map(c: &Capsule) -> (u32, u32, u32) {
    let r = sh(c, "cat /proc/self/uid_map /proc/self/gid_map").await;
    let lines: Vec<Vec<u32>> = r
        .stdout
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(lines.len(), 2, "one uid and one gid line: {r:?}");
    assert_eq!(lines[0], lines[1], "gid map equals uid map");
    (lines[0][0], lines[0][1], lines[0][2])
}

/// The `Uid:` line of `/proc/<pid>/status` on the host: real, effective, saved, fs.
fn host_uids(pid: i32) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = s.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    line.split_whitespace()
        .skip(1)
        .map(|w| w.parse().expect("uid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_root_is_an_unprivileged_host_uid_of_a_range_of_its_own() {
    if !privileged("capsule_root_is_an_unprivileged_host_uid_of_a_range_of_its_own") {
        return;
    }
    let t = TestRuntime::new();
    let a = t.capsule("busybox", NetworkMode::Isolated).await;
    let b = t.capsule("busybox", NetworkMode::Egress).await;
    let (ina, base_a, na) = uid_map(&a).await;
    let (inb, base_b, nb) = uid_map(&b).await;
    assert_eq!((ina, na, inb, nb), (0, 65536, 0, 65536));
    assert!(base_a >= 1 << 20 && base_b >= 1 << 20, "{base_a} {base_b}");
    // Disjoint ranges.
    assert!(
        base_a + na <= base_b || base_b + nb <= base_a,
        "{base_a}+{na} overlaps {base_b}+{nb}"
    );
    // Seen from the host, the init and every process the agent starts run as the base uid.
    assert_eq!(host_uids(a.handle.init_pid), vec![base_a; 4]);
    let r = sh(&a, "sleep 30 & echo $!").await;
    let inner: i32 = r.stdout.trim().parse().expect("pid");
    let host_pids: Vec<i32> = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        a.handle.init_pid, a.handle.init_pid
    ))
    .unwrap_or_default()
    .split_whitespace()
    .filter_map(|p| p.parse().ok())
    .collect();
    let _ = inner;
    for p in host_pids {
        let uids = host_uids(p);
        assert!(uids.iter().all(|u| *u == base_a), "pid {p}: {uids:?}");
    }
    // A uid other than root inside is base + uid on the host.
    let r = exec(
        &a,
        wrenn_types::agent::ExecRequest::from(wrenn_types::agent::ProcessSpec {
            user: Some("1000".into()),
            ..wrenn_types::agent::ProcessSpec::new("/bin/sh", ["-c", "touch /tmp/by-1000; id -u"])
        }),
    )
    .await;
    assert_eq!(r.stdout.trim(), "1000", "{r:?}");
    // Files capsule root writes are owned by the base uid on the host; the template tree,
    // shared by both capsules, is unchanged (owned by host root).
    let r = sh(
        &a,
        "touch /owned && mkdir -p /etc/x && stat -c %u /etc/hostname /bin/busybox",
    )
    .await;
    assert_eq!(r.stdout, "0\n0\n", "{r:?}");
    let upper = upper_dir(&t.data_dir, a.id());
    for f in ["owned", "etc/x", "etc/hostname", "tmp/by-1000"] {
        let md = std::fs::symlink_metadata(upper.join(f)).expect(f);
        let want = if f == "tmp/by-1000" {
            base_a + 1000
        } else {
            base_a
        };
        assert_eq!((md.uid(), md.gid()), (want, want), "{f}");
    }
    let tmpl = t.data_dir.join("templates/busybox/rootfs/bin/busybox");
    let tmpl = if tmpl.exists() {
        tmpl
    } else {
        cache_dir().join("templates/busybox/rootfs/bin/busybox")
    };
    if let Ok(md) = std::fs::symlink_metadata(&tmpl) {
        assert_eq!(md.uid(), 0, "template file {}", tmpl.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_is_read_only_and_proc_sys_is_not_writable() {
    if !privileged("sys_is_read_only_and_proc_sys_is_not_writable") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Egress).await;
    let r = sh(
        &c,
        "grep ' /sys ' /proc/self/mountinfo | cut -d' ' -f6; \
         touch /sys/x 2>/dev/null && echo wrote-sys; \
         echo 1 > /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null && echo wrote-thp; \
         echo x > /proc/sys/kernel/domainname 2>/dev/null && echo wrote-proc-sys; \
         echo 0 > /proc/sys/net/ipv4/ping_group_range 2>/dev/null && echo wrote-net; \
         echo done",
    )
    .await;
    let opts = r.stdout.lines().next().unwrap_or("");
    assert!(opts.split(',').any(|o| o == "ro"), "{r:?}");
    assert!(!r.stdout.contains("wrote"), "{r:?}");
    assert!(r.stdout.ends_with("done\n"), "{r:?}");
    // The launcher's sysctl holds in the capsule's network namespace (read from the host:
    // inside, host gids outside the capsule's range show as 65534).
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.id()))
        .args(["cat", "/proc/sys/net/ipv4/ping_group_range"])
        .output()
        .expect("nsenter");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "2147483647"],
        "{out:?}"
    );
}

/// Holds inotify instances as `uid` until it has no more, prints how many, then keeps them
/// for `hold` seconds.
fn inotify_hog(hold: u32) -> String {
    format!(
        "perl -e 'my @fds; while (1) {{ my $fd = syscall(294, 0); last if $fd < 0; push @fds, $fd }} \
         $| = 1; print scalar(@fds), \" $!\\n\"; sleep {hold}'"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inotify_counters_are_per_capsule() {
    if !privileged("inotify_counters_are_per_capsule")
        || !minimal_allowed("inotify_counters_are_per_capsule")
    {
        return;
    }
    let t = TestRuntime::new();
    let a = t.capsule("minimal", NetworkMode::Isolated).await;
    let b = t.capsule("minimal", NetworkMode::Isolated).await;
    let as_4242 = |script: String| {
        wrenn_types::agent::ExecRequest::from(wrenn_types::agent::ProcessSpec {
            user: Some("4242".into()),
            ..wrenn_types::agent::ProcessSpec::new("/bin/sh", ["-c".to_string(), script])
        })
    };
    let (ra, rb) = tokio::join!(exec(&a, as_4242(inotify_hog(4))), async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        exec(
            &b,
            as_4242(
                "perl -e 'my $fd = syscall(294, 0); print $fd >= 0 ? \"ok\\n\" : \"failed $!\\n\"'"
                    .into(),
            ),
        )
        .await
    });
    // Capsule A ran out (the control: the limit is real) ...
    let n: u32 = ra
        .stdout
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{ra:?}"));
    assert!(n > 0 && n <= 128, "{ra:?}");
    assert!(ra.stdout.contains("Too many open files"), "{ra:?}");
    // ... while it held them, the same uid in capsule B still got one.
    assert_eq!(rb.stdout, "ok\n", "{rb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_moves_to_another_range_and_holds_no_root_setuid_file() {
    if !privileged("a_snapshot_moves_to_another_range_and_holds_no_root_setuid_file") {
        return;
    }
    let t = TestRuntime::new();
    let a = t.capsule("busybox", NetworkMode::Isolated).await;
    let r = sh(
        &a,
        "echo hi > /made && chown 1000:1000 /made && cp /bin/busybox /suid && chmod 4755 /suid \
         && cp /bin/busybox /suid-user && chown 1000:1000 /suid-user && chmod 4755 /suid-user \
         && echo ok",
    )
    .await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    let snap = format!("userns-snap-{}", std::process::id());
    t.rt.snapshot(a.id(), &snap).await.expect("snapshot");
    // On the host the snapshot's ids are the capsule's, shifted to 0..
    let tree = t.data_dir.join("templates").join(&snap).join("rootfs");
    let md = |f: &str| std::fs::symlink_metadata(tree.join(f)).expect(f);
    assert_eq!((md("made").uid(), md("made").gid()), (1000, 1000));
    assert_eq!((md("suid").uid(), md("suid").mode() & 0o7777), (0, 0o755));
    assert_eq!(md("suid-user").mode() & 0o7777, 0o4755);
    assert_eq!(md("bin/busybox").uid(), 0);
    // No file in it is owned by host root with setuid/setgid.
    let out = std::process::Command::new("find")
        .arg(&tree)
        .args([
            "-xdev", "-user", "0", "-perm", "/6000", "-not", "-type", "d",
        ])
        .output()
        .expect("find");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut s = spec("-", NetworkMode::Isolated, 256, 128, 0);
    s.source = Source::Snapshot(snap.clone());
    let b = t.capsule_spec(s).await;
    let r = sh(&b, "cat /made; stat -c '%u %g' /made /suid /").await;
    assert_eq!(r.stdout, "hi\n1000 1000\n0 0\n0 0\n", "{r:?}");
    let (_, base_a, _) = uid_map(&a).await;
    let (_, base_b, _) = uid_map(&b).await;
    assert_ne!(base_a, base_b);
    // On the host, b's copies are b's.
    let r = sh(&b, "touch /made && echo ok").await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    let up = upper_dir(&t.data_dir, b.id()).join("made");
    let m = std::fs::symlink_metadata(&up).expect("copied up");
    assert_eq!(m.uid(), base_b + 1000);
    drop(b);
    drop(a);
    let _ = t.rt.delete_template(&snap).await;
}
