//! Create, exec, pause/resume, destroy.

use std::time::Duration;

use wrenn_runtime::{NetworkMode, Runtime};
use wrenn_types::agent::ExecRequest;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_create_health_destroy_leaves_nothing() {
    if !privileged("busybox_create_health_destroy_leaves_nothing") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Egress).await;
    let id = c.id().to_owned();
    if std::env::var_os("WRENN_TEST_NO_HEALTH").is_none() {
        assert!(socket_path(&c.handle.agent).exists());
    }
    assert!(c.handle.ip.is_some());
    let u = t.rt.usage(&id).await.expect("usage");
    assert!(u.memory_bytes > 0);
    drop(c);
    assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
    // Idempotent.
    t.rt.destroy(&id).await.expect("second destroy");
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_env_cwd_user_exit_codes_and_streams() {
    if !privileged("exec_env_cwd_user_exit_codes_and_streams") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let mut envs = std::collections::BTreeMap::new();
    envs.insert("GREETING".to_string(), "hi there".to_string());
    let r = exec(
        &c,
        ExecRequest {
            process: wrenn_types::agent::ProcessSpec {
                cmd: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "echo \"$GREETING\"; pwd; id -u; echo oops >&2; exit 7".into(),
                ],
                envs,
                cwd: Some("/tmp".into()),
                user: Some("nobody".into()),
            },
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.exit_code, 7, "{r:?}");
    assert_eq!(r.stdout, "hi there\n/tmp\n65534\n");
    assert_eq!(r.stderr, "oops\n");
    let r = sh(&c, "true").await;
    assert_eq!(r.exit_code, 0);
    assert_eq!(sh(&c, "hostname").await.stdout.trim(), c.id());
}

/// Reads the counter the capsule's loop writes to /tmp/counter, from the host (upper dir).
fn counter(t: &TestRuntime, id: &str) -> u64 {
    std::fs::read_to_string(upper_dir(&t.data_dir, id).join("tmp/counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_stops_execution_and_thaw_resumes_it() {
    if !privileged("freeze_stops_execution_and_thaw_resumes_it") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let id = c.id().to_owned();
    let bg = c
        .client
        .exec(&ExecRequest { process: wrenn_types::agent::ProcessSpec { cmd: "/bin/sh".into(), args: vec!["-c".into(), "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; done".into()], ..Default::default() }, background: true, ..Default::default() })
        .await
        .expect("background exec");
    assert!(
        matches!(bg, wrenn_agent_client::ExecOutcome::Started(_)),
        "{bg:?}"
    );
    let running = wait_until(Duration::from_secs(10), || async {
        (counter(&t, &id) > 10).then_some(())
    })
    .await;
    assert!(running.is_some(), "counter never advanced");

    t.rt.pause(&id).await.expect("pause");
    let frozen_at = counter(&t, &id);
    // Observe for a while: a frozen capsule makes no progress at all.
    let moved = wait_until(Duration::from_millis(300), || async {
        (counter(&t, &id) != frozen_at).then_some(())
    })
    .await;
    assert!(moved.is_none(), "counter moved while frozen");

    t.rt.resume(&id).await.expect("resume");
    let resumed = wait_until(Duration::from_secs(10), || async {
        (counter(&t, &id) > frozen_at + 10).then_some(())
    })
    .await;
    assert!(resumed.is_some(), "counter did not advance after thaw");

    // Destroy works on a frozen capsule too.
    t.rt.pause(&id).await.expect("pause again");
    drop(c);
    assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensure_template_builds_once() {
    if !privileged("concurrent_ensure_template_builds_once") {
        return;
    }
    let t = TestRuntime::new();
    let (a, b) = tokio::join!(
        t.rt.ensure_template("busybox"),
        t.rt.ensure_template("busybox")
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(a.created_at, b.created_at, "built twice");
    assert!(a.size_bytes > 0 && a.base);
    assert!(matches!(
        t.rt.ensure_template("no-such").await,
        Err(wrenn_runtime::RuntimeError::TemplateNotFound(_))
    ));
    let names: Vec<String> =
        t.rt.list_templates()
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
    assert!(names.contains(&"busybox".to_string()) && names.contains(&"minimal".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_destroy_200_cycles_leave_nothing_behind() {
    if !privileged("create_destroy_200_cycles_leave_nothing_behind") {
        return;
    }
    let n: usize = std::env::var("WRENN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = TestRuntime::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let net = if i % 2 == 0 {
            NetworkMode::Egress
        } else {
            NetworkMode::Isolated
        };
        let c = t.capsule("busybox", net).await;
        ids.push(c.id().to_owned());
        t.rt.destroy(c.id()).await.expect("destroy");
        drop(c);
    }
    for id in &ids {
        assert_eq!(leftovers(&t.data_dir, id), Vec::<String>::new(), "{id}");
    }
    // Disks: no loop device backed by anything in the data dir but the pool's armed images
    // (one each), no image but the pool's.
    t.rt.wait_disk_pool_idle(std::time::Duration::from_secs(30));
    let pool_dir = t.data_dir.join("pool");
    let loops: Vec<String> = loops_backed_by(&t.data_dir)
        .into_iter()
        .filter(|l| !(l.contains(&format!("{}/", pool_dir.display())) && l.ends_with(".mnt")))
        .collect();
    assert_eq!(loops, Vec::<String>::new());
    let pool: Vec<String> = std::fs::read_dir(&pool_dir)
        .expect("pool")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        pool.len() <= wrenn_runtime::container::DISK_POOL_SIZE
            && pool
                .iter()
                .all(|n| n.ends_with(".img") || n.ends_with(".mnt")),
        "{pool:?}"
    );
    let armed = pool.iter().filter(|n| n.ends_with(".mnt")).count();
    assert_eq!(loops_backed_by(&pool_dir).len(), armed, "{pool:?}");
    if test_disk_mb() > 0 {
        assert_eq!(
            pool.len(),
            wrenn_runtime::container::DISK_POOL_SIZE,
            "{pool:?}"
        );
    }
    let procs = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let procs = String::from_utf8_lossy(&procs.stdout);
    let ours = std::fs::read_dir(t.data_dir.join("capsules"))
        .expect("capsules")
        .count();
    assert_eq!(ours, 0);
    let veths: Vec<String> = std::fs::read_dir("/run/wrenn-net")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !veths
            .iter()
            .any(|v| v.starts_with(&t.data_dir.display().to_string())),
        "{veths:?}"
    );
    assert!(
        !procs.contains(&t.data_dir.display().to_string()),
        "{procs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_init_is_noticed_and_destroy_still_cleans() {
    if !privileged("dead_init_is_noticed") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    let id = c.id().to_owned();
    let c_pid = c.handle.init_pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.handle.init_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let code = wait_until(Duration::from_secs(10), || async { t.rt.init_exit(&id) }).await;
    assert!(code.is_some(), "death not noticed");
    assert!(matches!(
        t.rt.usage(&id).await,
        Err(wrenn_runtime::RuntimeError::InvalidState { .. })
    ));
    drop(c);
    assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
    // The init was reaped, not left a zombie.
    let pid = c_pid;
    let gone = wait_until(Duration::from_secs(5), || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "init {pid} left as a zombie");
}
