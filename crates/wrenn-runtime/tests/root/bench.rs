//! Runs the runtime benchmark (`WRENN_BENCH_N` capsules, default 20; `WRENN_BENCH_DISK_MB`)
//! and prints JSON lines.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runtime_busybox() {
    if !privileged("bench_runtime_busybox") {
        return;
    }
    let n = std::env::var("WRENN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // RUST_LOG=wrenn_runtime=debug shows each create's phases (prep, launch, ready).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t = TestRuntime::new();
    // WRENN_BENCH_DISK_MB: disk size of the capsules (0: none); default the server's.
    let disk_mb = std::env::var("WRENN_BENCH_DISK_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(wrenn_runtime::bench::BENCH_DISK_MB);
    let lines = wrenn_runtime::bench::bench_runtime_with_disk(&t.rt, n, disk_mb)
        .await
        .expect("bench");
    for l in &lines {
        println!("{}", serde_json::to_string(l).expect("json"));
        assert!(l.n > 0);
    }
}
