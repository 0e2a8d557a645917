//! Resource limits: memory (OOM inside the capsule), pids, cpu quota.

use std::path::Path;

use wrenn_runtime::NetworkMode;

use crate::common::*;

fn cgroup_file(controller: &str, id: &str, file: &str) -> String {
    std::fs::read_to_string(
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("wrenn")
            .join(id)
            .join(file),
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_applied_to_the_cgroup() {
    if !privileged("limits_are_applied_to_the_cgroup") {
        return;
    }
    let t = TestRuntime::new();
    let c = t
        .capsule_with("busybox", NetworkMode::Isolated, 96, 48)
        .await;
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(
            cgroup_file("memory", c.id(), "memory.limit_in_bytes").trim(),
            (96u64 << 20).to_string()
        );
        assert_eq!(cgroup_file("pids", c.id(), "pids.max").trim(), "48");
        assert_eq!(
            cgroup_file("cpu", c.id(), "cpu.cfs_quota_us").trim(),
            "100000"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_oom_killed_inside_and_capsule_survives() {
    if !privileged("memory_bomb_is_oom_killed_inside") {
        return;
    }
    let t = TestRuntime::new();
    let c = t
        .capsule_with("busybox", NetworkMode::Isolated, 64, 64)
        .await;
    // The shell keeps the whole 256 MiB command substitution in memory.
    let r = sh(
        &c,
        "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo survived ${#x}",
    )
    .await;
    assert_ne!(r.exit_code, 0, "bomb was not killed: {r:?}");
    assert!(!r.stdout.contains("survived"), "{r:?}");
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let oom = cgroup_file("memory", c.id(), "memory.oom_control");
        assert!(
            oom.lines()
                .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
            "{oom}"
        );
    }
    let r = sh(&c, "echo alive; cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(r.stdout.starts_with("alive\n/.wrenn/wrenn-agent"), "{r:?}");
    c.client.health().await.expect("agent healthy after OOM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_pids_limit_and_capsule_survives() {
    if !privileged("fork_bomb_stops_at_pids_limit") {
        return;
    }
    let t = TestRuntime::new();
    let c = t
        .capsule_with("busybox", NetworkMode::Isolated, 128, 32)
        .await;
    // A subshell forks sleepers until fork fails (ash gives up on a failed fork), then the
    // outer shell kills everything but the agent with its builtin kill.
    let r = sh(
        &c,
        "(while true; do sleep 60 </dev/null >/dev/null 2>&1 & done) 2>/dev/null; \
         kill -9 -1; echo cleaned",
    )
    .await;
    assert!(r.stdout.contains("cleaned"), "{r:?}");
    if Path::new("/sys/fs/cgroup/pids").is_dir() {
        let ev = cgroup_file("pids", c.id(), "pids.events");
        assert!(ev.trim() != "max 0", "pids limit never hit: {ev}");
        let peak = cgroup_file("pids", c.id(), "pids.peak");
        assert!(peak.trim().parse::<u32>().unwrap_or(0) <= 32, "peak {peak}");
    }
    let r = wait_until(std::time::Duration::from_secs(10), || async {
        let req = wrenn_types::agent::ExecRequest {
            process: wrenn_types::agent::ProcessSpec {
                cmd: "true".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        match c.client.exec(&req).await {
            Ok(wrenn_agent_client::ExecOutcome::Finished(r)) if r.exit_code == 0 => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(r.is_some(), "capsule did not recover from the fork bomb");
}

/// A 1-vCPU capsule sees one CPU; capsules sit on distinct CPUs in turn; the capsule has its
/// own name, a bounded PTY pool, a sane open-files limit and dies first under host OOM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_sees_its_vcpus_own_name_and_bounded_pools() {
    if !privileged("capsule_sees_its_vcpus_own_name_and_bounded_pools") {
        return;
    }
    let t = TestRuntime::new();
    let a = t.capsule("busybox", NetworkMode::Isolated).await;
    let b = t.capsule("busybox", NetworkMode::Isolated).await;
    let script = "nproc; hostname; cat /etc/hostname; grep -c \"$(hostname)\" /etc/hosts; \
                  cat /proc/self/oom_score_adj; ulimit -n; grep devpts /proc/mounts";
    let (ra, rb) = (sh(&a, script).await, sh(&b, script).await);
    let la: Vec<&str> = ra.stdout.lines().collect();
    assert_eq!(la.first(), Some(&"1"), "nproc: {ra:?}");
    assert_eq!(la.get(1), Some(&a.id()), "{ra:?}");
    assert_eq!(la.get(2), Some(&a.id()), "/etc/hostname: {ra:?}");
    assert_eq!(la.get(3), Some(&"1"), "/etc/hosts: {ra:?}");
    assert_eq!(la.get(4), Some(&"500"), "oom_score_adj: {ra:?}");
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let nofile = hard
        .min(wrenn_runtime::container::CAPSULE_NOFILE)
        .to_string();
    assert_eq!(la.get(5), Some(&nofile.as_str()), "nofile: {ra:?}");
    assert!(la.get(6).is_some_and(|l| l.contains("max=256")), "{ra:?}");
    assert_eq!(rb.stdout.lines().nth(1), Some(b.id()));
    if Path::new("/sys/fs/cgroup/cpuset").is_dir() {
        let (ca, cb) = (
            cgroup_file("cpuset", a.id(), "cpuset.cpus"),
            cgroup_file("cpuset", b.id(), "cpuset.cpus"),
        );
        assert_eq!(ca.trim().len(), 1, "one CPU: {ca:?}");
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            assert_ne!(ca, cb, "two capsules in a row share a CPU");
        }
    }
    // The process running the runtime is the last the kernel would pick, where it may lower
    // its score (CAP_SYS_RESOURCE, bit 24).
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    let adj = std::fs::read_to_string("/proc/self/oom_score_adj").expect("oom_score_adj");
    if cap_eff & (1 << 24) != 0 {
        assert_eq!(adj.trim(), "-1000");
    } else {
        eprintln!(
            "NOTE: no CAP_SYS_RESOURCE here; the runtime's process keeps oom_score_adj {adj}"
        );
    }
}
