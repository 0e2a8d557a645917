//! Create, exec, pause/resume, destroy.

use std::time::Duration;

use wrenn_runtime::{NetworkMode, Runtime};

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
