//! Real microVMs (QEMU, TCG here): boot the busybox template, run commands and move files
//! through the agent over the virtio-serial channel, pause to disk and resume with a process
//! still running, destroy with nothing left. Kept to a few boots (each ~2-3 s under TCG).
//!
//! Skipped (passing) when `qemu-system-x86_64` or the prepared guest kernel
//! (`scripts/microvm-kernel.sh`) is missing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wrenn_agent_client::{AgentClient, ExecOutcome};
use wrenn_runtime::microvm::{Accel, MicroVmConfig, MicroVmRuntime};
use wrenn_runtime::{NetworkMode, Runtime};
use wrenn_types::agent::{ExecRequest, ExecResult, ProcessSpec};

use crate::common::{self, Scratch};

fn usable(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    if !common::cache_dir().join("microvm/kernel/vmlinux").exists()
        || !Path::new("/usr/bin/qemu-system-x86_64").exists()
    {
        eprintln!("SKIP {test}: no qemu or guest kernel (scripts/deps.sh)");
        return false;
    }
    true
}

/// A TCG runtime on `data`; `compress` its saved state, `warm` its templates.
fn runtime(data: &Path, compress: bool, warm: bool) -> MicroVmRuntime {
    MicroVmRuntime::new(MicroVmConfig {
        data_dir: data.to_owned(),
        cache_dir: common::cache_dir(),
        agent_binary: common::agent_binary(),
        extra_recipes: None,
        accel: Accel::Tcg,
        compress_state: compress,
        warm_templates: warm,
    })
    .expect("microvm runtime")
}

async fn sh(agent: &AgentClient, script: &str) -> ExecResult {
    let req = ExecRequest {
        process: ProcessSpec {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: Some("/".into()),
            ..Default::default()
        },
        timeout_sec: Some(60),
        ..Default::default()
    };
    match agent.exec(&req).await.expect("exec") {
        ExecOutcome::Finished(r) => r,
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// Destroys every VM it was told about when dropped, so a failing assertion leaves no QEMU,
/// tap, image or socket behind.
struct Guard {
    rt: MicroVmRuntime,
    ids: Mutex<Vec<String>>,
}

impl Guard {
    fn new(rt: &MicroVmRuntime) -> Self {
        Self {
            rt: rt.clone(),
            ids: Mutex::new(Vec::new()),
        }
    }

    fn track(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_owned());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|p| p.into_inner()));
        let rt = self.rt.clone();
        common::block_on_side(async move {
            for id in ids {
                if let Err(e) = rt.destroy(&id).await {
                    eprintln!("guard: destroy {id}: {e:#}");
                }
            }
        });
    }
}

/// Processes whose command line names VM `id` (QEMU runs as `wrenn-<id>`).
fn processes_of(id: &str) -> Vec<i32> {
    let needle = format!("wrenn-{id}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Files and directories under `dir` whose name contains `id`.
fn paths_naming(dir: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(id) {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out
}

/// What VM `id` left on the host: QEMU processes, its network namespace (where its tap
/// lives), its run directory (sockets, disk, saved state) or any file naming it.
fn vm_leftovers(data: &Path, id: &str) -> Vec<String> {
    let mut out = common::leftovers(data, id);
    out.extend(processes_of(id).iter().map(|p| format!("process {p}")));
    out.extend(
        paths_naming(data, id)
            .iter()
            .map(|p| format!("path {}", p.display())),
    );
    out
}

fn qemu_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.starts_with("wrenn-") || c.starts_with("qemu"))
        .unwrap_or(false)
}

/// The guest's root filesystem is the capsule's disk limit: `df /` shows it, writing past it
/// fails with ENOSPC inside the guest, and the host holds no more than the limit for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_disk_is_the_disk_limit() {
    if !usable("microvm_disk_is_the_disk_limit") {
        return;
    }
    const LIMIT_MB: u64 = 320;
    let scratch = Scratch::new("microvm-disk");
    let data = scratch.path().join("data");
    let rt = runtime(&data, false, false);
    let guard = Guard::new(&rt);
    let spec = common::spec("busybox", NetworkMode::Isolated, 256, 128, LIMIT_MB as u32);
    let id = spec.id.clone();
    guard.track(&id);
    let t0 = Instant::now();
    let h = rt.create(&spec).await.expect("create");
    let boot = t0.elapsed();
    let agent = AgentClient::new(h.agent.clone());

    let r = sh(&agent, "df -k / | tail -n 1").await;
    let size_kib: u64 = r
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("df: {r:?}"));
    // ext4 keeps a few percent for its journal and tables.
    assert!(
        size_kib > (LIMIT_MB << 10) * 9 / 10 && size_kib <= LIMIT_MB << 10,
        "df / says {size_kib} KiB for a {LIMIT_MB} MiB limit"
    );

    let r = sh(
        &agent,
        "dd if=/dev/zero of=/root/big bs=1M count=400 2>&1; echo rc=$?; sync",
    )
    .await;
    assert!(r.stdout.contains("No space left on device"), "{r:?}");
    assert!(!r.stdout.contains("rc=0"), "{r:?}");
    let disk = data.join("microvm/capsules").join(&id).join("disk.qcow2");
    let held = std::fs::metadata(&disk).expect("disk").blocks() * 512;
    assert!(
        held <= (LIMIT_MB + 16) << 20,
        "the overlay holds {held} bytes"
    );

    // The guest keeps working, and freeing space makes writes work again.
    let r = sh(&agent, "rm /root/big && echo data > /root/f && cat /root/f").await;
    assert_eq!(r.stdout, "data\n", "{r:?}");
    eprintln!(
        "microvm disk: boot to agent with a {LIMIT_MB} MiB disk {:.0} ms, overlay after filling it {} MiB",
        boot.as_secs_f64() * 1e3,
        held >> 20
    );
    rt.destroy(&id).await.expect("destroy");
    assert_eq!(vm_leftovers(&data, &id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_boots_execs_pauses_to_disk_resumes_and_leaves_nothing() {
    if !usable("microvm_lifecycle") {
        return;
    }
    let scratch = Scratch::new("microvm");
    let data = scratch.path().join("data");
    let rt = runtime(&data, true, false);
    let guard = Guard::new(&rt);
    let spec = common::spec("busybox", NetworkMode::Isolated, 256, 128, 0);
    let id = spec.id.clone();
    guard.track(&id);
    let t0 = Instant::now();
    let h = rt.create(&spec).await.expect("create");
    let boot = t0.elapsed();
    let agent = AgentClient::new(h.agent.clone());

    // The guest is its own machine: its own kernel, hostname, PID 1.
    let r = sh(
        &agent,
        "uname -r; hostname; cat /proc/1/comm; cat /etc/machine-id",
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].ends_with("-cloud-amd64"), "{lines:?}");
    assert_eq!(lines[1], id);
    assert_eq!(lines[2], "wrenn-agent");
    let machine_id = lines[3].to_owned();
    assert!(
        machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{lines:?}"
    );

    // Files, a background process and many concurrent streams over the one channel.
    let r = sh(&agent, "echo kept > /root/f; (i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done) >/dev/null 2>&1 & echo $! > /tmp/pid").await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let t_exec = Instant::now();
    let rs = futures::future::join_all((0..8).map(|i| {
        let agent = agent.clone();
        async move { sh(&agent, &format!("echo {i}")).await }
    }))
    .await;
    let exec8 = t_exec.elapsed();
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.stdout.trim(), i.to_string());
    }

    let pid = rt.qemu_pid(&id).expect("qemu pid");
    assert!(qemu_running(pid));
    let usage = rt.usage(&id).await.expect("usage");
    assert!(usage.memory_bytes > 0);

    // Pause: QEMU ends, the state is on disk.
    let t = Instant::now();
    rt.pause(&id).await.expect("pause");
    let pause = t.elapsed();
    assert!(!qemu_running(pid), "qemu still runs after pause");
    let state = rt.capsule_dir(&id).join("state");
    let state_bytes = std::fs::metadata(&state).expect("state file").len();
    assert!(rt.pause(&id).await.is_err(), "pausing a paused capsule");

    // Long enough paused that a guest clock left as it was saved would be far behind.
    const PAUSED: Duration = Duration::from_secs(5);
    tokio::time::sleep(PAUSED).await;

    // Resume: the same processes, counting on; the clock is the host's again.
    let t = Instant::now();
    rt.resume(&id).await.expect("resume");
    let resume = t.elapsed();
    let guest_now: i64 = sh(&agent, "date +%s")
        .await
        .stdout
        .trim()
        .parse()
        .expect("guest date");
    let host_now = chrono::Utc::now().timestamp();
    assert!(
        (host_now - guest_now).abs() < 3,
        "guest clock {guest_now} vs host {host_now} after {PAUSED:?} paused"
    );
    let r = sh(
        &agent,
        "cat /root/f; kill -0 $(cat /tmp/pid) && echo alive; cat /tmp/n",
    )
    .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[..2], ["kept", "alive"], "{r:?}");
    let n1: u32 = lines[2].parse().expect("counter");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = sh(&agent, "cat /tmp/n").await;
    let n2: u32 = r.stdout.trim().parse().expect("counter");
    assert!(
        n2 > n1,
        "the background loop runs on after resume ({n1} -> {n2})"
    );
    assert!(!state.exists(), "state file removed after resume");
    eprintln!(
        "microvm: boot to agent {:.0} ms, 8 concurrent execs {:.0} ms, pause {:.0} ms ({} KiB zstd), resume to agent {:.0} ms",
        boot.as_secs_f64() * 1e3,
        exec8.as_secs_f64() * 1e3,
        pause.as_secs_f64() * 1e3,
        state_bytes / 1024,
        resume.as_secs_f64() * 1e3
    );

    // A full-state snapshot: a capsule made from it continues the running machine, with the
    // background process (same pid) still counting, as its own machine.
    let snap = rt.snapshot(&id, "microvm-snap").await.expect("snapshot");
    assert_eq!(snap.kind, wrenn_runtime::SnapshotKind::FullState);
    let snap_dir = data.join("templates/microvm-snap");
    assert!(snap_dir.join("disk.qcow2").exists() && snap_dir.join("state").exists());
    let mut s2 = common::spec("busybox", NetworkMode::Isolated, 256, 128, 0);
    s2.source = wrenn_runtime::Source::Snapshot("microvm-snap".into());
    guard.track(&s2.id);
    let h2 = match rt.create(&s2).await {
        Ok(h) => h,
        Err(e) => {
            let c = rt.console(&s2.id).await;
            panic!("create from snapshot: {e:?}\nCONSOLE:\n{c}");
        }
    };
    let clone = AgentClient::new(h2.agent.clone());
    let r = sh(
        &clone,
        "cat /root/f; hostname; cat /etc/machine-id; cat /tmp/pid; kill -0 $(cat /tmp/pid) && echo alive; cat /tmp/n",
    )
    .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "kept", "{r:?}");
    assert_eq!(lines[1], s2.id, "the copy has its own hostname");
    assert!(
        lines[2].len() == 32 && lines[2] != machine_id,
        "the copy has its own machine id: {lines:?}"
    );
    let source_pid = sh(&agent, "cat /tmp/pid").await.stdout;
    assert_eq!(lines[3], source_pid.trim(), "the same process");
    assert_eq!(lines[4], "alive", "{r:?}");
    let n1: u32 = lines[5].parse().expect("counter");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n2: u32 = sh(&clone, "cat /tmp/n")
        .await
        .stdout
        .trim()
        .parse()
        .expect("counter");
    assert!(n2 > n1, "the saved loop runs on in the copy ({n1} -> {n2})");
    assert!(rt.delete_template("microvm-snap").await.is_err(), "in use");
    rt.destroy(&s2.id).await.expect("destroy clone");
    assert_eq!(vm_leftovers(&data, &s2.id), Vec::<String>::new());
    rt.delete_template("microvm-snap")
        .await
        .expect("delete snapshot");
    assert!(!snap_dir.exists(), "deleting the snapshot frees its files");
    assert_eq!(
        sh(&agent, "cat /root/f").await.stdout.trim(),
        "kept",
        "runs on after snapshot"
    );

    // Destroy: nothing left.
    let pid = rt.qemu_pid(&id).expect("qemu pid");
    rt.destroy(&id).await.expect("destroy");
    assert!(!qemu_running(pid));
    assert!(!rt.capsule_dir(&id).exists());
    assert_eq!(vm_leftovers(&data, &id), Vec::<String>::new());
    rt.destroy(&id).await.expect("destroy is idempotent");
}

/// Starts `nc` on port 7000 of a VM, answering `hello` once.
async fn listen_hello(agent: &AgentClient) {
    let req = ExecRequest {
        process: ProcessSpec {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "nc -l -p 7000 -e echo hello".into()],
            ..Default::default()
        },
        background: true,
        ..Default::default()
    };
    agent.exec(&req).await.expect("start listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_template_clones_are_each_their_own_machine_on_their_own_address() {
    if !usable("microvm_warm_clones") {
        return;
    }
    use tokio::io::AsyncReadExt;
    let scratch = Scratch::new("microvm-warm");
    let data = scratch.path().join("data");
    let rt = runtime(&data, true, true);
    let guard = Guard::new(&rt);
    let mut seen = Vec::new();
    for n in 0..2 {
        let spec = common::spec("busybox", NetworkMode::Egress, 256, 128, 0);
        guard.track(&spec.id);
        let t = Instant::now();
        let h = match rt.create(&spec).await {
            Ok(h) => h,
            Err(e) => {
                let c = rt.console(&spec.id).await;
                panic!("create clone {n}: {e:?}\nCONSOLE:\n{c}");
            }
        };
        let took = t.elapsed();
        let agent = AgentClient::new(h.agent.clone());
        let ip = h.ip.expect("egress clone has an address");
        let gw = std::net::Ipv4Addr::from(u32::from(ip) - 1);
        let r = sh(
            &agent,
            "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; ip -4 addr show eth0; ip route",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{r:?}");
        let lines: Vec<&str> = r.stdout.lines().collect();
        let console = rt.console(&spec.id).await;
        assert_eq!(lines[0], spec.id, "{r:?}\nCONSOLE:\n{console}");
        assert!(
            r.stdout.contains(&format!("inet {ip}/30")),
            "clone {n} has its own address: {r:?}"
        );
        assert!(
            r.stdout.contains(&format!("default via {gw}")),
            "clone {n} routes through its own gateway: {r:?}"
        );
        listen_hello(&agent).await;
        let conn = common::wait_until(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect((ip, 7000)).await.ok()
        })
        .await;
        let mut s = conn.expect("host reaches the clone");
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        assert_eq!(out, "hello\n", "clone {n}");
        eprintln!(
            "microvm warm: create {n} (first makes the warm image) {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        seen.push((spec.id.clone(), lines[1].to_owned(), lines[2].to_owned()));
    }
    assert_ne!(seen[0].1, seen[1].1, "machine ids differ");
    assert_ne!(seen[0].2, seen[1].2, "the RNG is reseeded per clone");
    let warm: Vec<_> = std::fs::read_dir(data.join("microvm/warm"))
        .expect("warm dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(
        warm.len(),
        1,
        "one warm image per template and size: {warm:?}"
    );
    // A clone pauses to disk and resumes like any VM (its RAM was the warm file's mapping).
    let last = &seen[1].0;
    rt.pause(last).await.expect("pause clone");
    if let Err(e) = rt.resume(last).await {
        let c = rt.console(last).await;
        panic!("resume clone: {e:?}\nCONSOLE:\n{c}");
    }
    let clone = AgentClient::new(rt.agent_endpoint(last));
    assert_eq!(sh(&clone, "hostname").await.stdout.trim(), last);
    for (id, _, _) in &seen {
        rt.destroy(id).await.expect("destroy clone");
        assert_eq!(vm_leftovers(&data, id), Vec::<String>::new());
    }
    assert!(processes_of("warm-").is_empty(), "the warm VM ended");
    assert!(
        warm[0].join("ram").exists(),
        "the RAM file belongs to the template"
    );
}
