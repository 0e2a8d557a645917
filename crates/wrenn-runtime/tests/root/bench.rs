//! Runs the runtime benchmark (`WRENN_BENCH_N` capsules, default 20) and prints JSON lines.

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
    let lines = wrenn_runtime::bench::bench_runtime(&t.rt, n)
        .await
        .expect("bench");
    for l in &lines {
        println!("{}", serde_json::to_string(l).expect("json"));
        assert!(l.n > 0);
    }
}
