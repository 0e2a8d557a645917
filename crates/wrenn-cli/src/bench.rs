//! `wrenn bench`: runtime measurements on the `busybox` template, one JSON object per line.

use std::sync::Arc;

use wrenn_runtime::container::ContainerRuntime;

/// Runs the runtime benchmarks and prints their lines.
pub async fn run(rt: Arc<ContainerRuntime>, n: usize) -> anyhow::Result<()> {
    for line in wrenn_runtime::bench::bench_runtime(&rt, n).await? {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}
