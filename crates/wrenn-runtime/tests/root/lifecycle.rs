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
        assert!(c.handle.agent_socket.exists());
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
            cmd: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo \"$GREETING\"; pwd; id -u; echo oops >&2; exit 7".into(),
            ],
            envs,
            cwd: Some("/tmp".into()),
            user: Some("nobody".into()),
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
