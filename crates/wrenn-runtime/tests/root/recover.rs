//! Recovery after a server restart: a fresh runtime on the same data dir.

use std::time::Duration;

use wrenn_runtime::container::ContainerRuntime;
use wrenn_runtime::{NetworkMode, Runtime};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_readopts_running_and_removes_unknown() {
    if !privileged("recover_readopts_running_and_removes_unknown") {
        return;
    }
    let t = TestRuntime::new();
    let keep = t.capsule("busybox", NetworkMode::Egress).await;
    let unknown = t.capsule("busybox", NetworkMode::Egress).await;
    let (keep_id, unknown_id) = (keep.id().to_owned(), unknown.id().to_owned());
    sh(&keep, "echo state > /root/f").await;

    let rt2 = ContainerRuntime::new(TestRuntime::config(&t.data_dir)).expect("second runtime");
    let report = rt2
        .recover(std::slice::from_ref(&keep_id))
        .await
        .expect("recover");
    assert_eq!(report.adopted.len(), 1, "{report:?}");
    assert_eq!(report.adopted[0].id, keep_id);
    assert_eq!(report.adopted[0].init_pid, keep.handle.init_pid);
    assert_eq!(report.removed, vec![unknown_id.clone()]);
    assert!(report.lost.is_empty(), "{report:?}");
    assert_eq!(leftovers(&t.data_dir, &unknown_id), Vec::<String>::new());
    assert!(
        unknown_id.len() > 3
            && !std::path::Path::new("/run/netns")
                .join(&unknown_id)
                .exists()
    );

    // The adopted capsule works through the new runtime.
    assert_eq!(rt2.agent_endpoint(&keep_id), keep.handle.agent);
    assert_eq!(sh(&keep, "cat /root/f").await.stdout, "state\n");
    rt2.pause(&keep_id).await.expect("pause via new runtime");
    rt2.resume(&keep_id).await.expect("resume via new runtime");
    rt2.usage(&keep_id).await.expect("usage via new runtime");
    rt2.destroy(&keep_id)
        .await
        .expect("destroy via new runtime");
    assert_eq!(leftovers(&t.data_dir, &keep_id), Vec::<String>::new());
    drop((keep, unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_cleans_up_dead_known_capsule() {
    if !privileged("recover_cleans_up_dead_known_capsule") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Egress).await;
    let id = c.id().to_owned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.handle.init_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill init");
    // The runtime notices the death on its own.
    let noticed = wait_until(Duration::from_secs(10), || async { t.rt.init_exit(&id) }).await;
    assert!(noticed.is_some(), "init death not noticed");
    assert!(t.rt.usage(&id).await.is_err());
    assert!(t.rt.pause(&id).await.is_err());

    let rt2 = ContainerRuntime::new(TestRuntime::config(&t.data_dir)).expect("second runtime");
    let report = rt2
        .recover(&[id.clone(), "cl-neverexisted".into()])
        .await
        .expect("recover");
    assert!(report.adopted.is_empty(), "{report:?}");
    assert!(
        report.lost.contains(&id) && report.lost.contains(&"cl-neverexisted".to_string()),
        "{report:?}"
    );
    assert_eq!(leftovers(&t.data_dir, &id), Vec::<String>::new());
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_reconnects_to_the_host_only_socket_and_refuses_capsules_without_one() {
    if !privileged("recover_refuses_capsules_without_host_socket") {
        return;
    }
    let t = TestRuntime::new();
    let keep = t.capsule("busybox", NetworkMode::Isolated).await;
    let old = t.capsule("busybox", NetworkMode::Isolated).await;
    let (keep_id, old_id) = (keep.id().to_owned(), old.id().to_owned());
    // As if `old` were started by a runtime that let the agent bind inside the capsule.
    std::fs::remove_file(socket_path(&old.handle.agent)).expect("remove host socket");

    let rt2 = ContainerRuntime::new(TestRuntime::config(&t.data_dir)).expect("second runtime");
    let report = rt2
        .recover(&[keep_id.clone(), old_id.clone()])
        .await
        .expect("recover");
    assert_eq!(report.adopted.len(), 1, "{report:?}");
    assert_eq!(report.adopted[0].id, keep_id);
    assert_eq!(report.lost, vec![old_id.clone()], "{report:?}");
    assert_eq!(leftovers(&t.data_dir, &old_id), Vec::<String>::new());

    // The agent kept its listening fd: a fresh client on the same host path reaches it.
    let client = wrenn_agent_client::AgentClient::new(rt2.agent_endpoint(&keep_id));
    client
        .health()
        .await
        .expect("health via the recovered path");
    rt2.destroy(&keep_id).await.expect("destroy");
    assert!(
        !socket_path(&report.adopted[0].agent).exists(),
        "socket file left"
    );
    assert_eq!(leftovers(&t.data_dir, &keep_id), Vec::<String>::new());
    drop((keep, old));
}
