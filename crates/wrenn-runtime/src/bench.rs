//! Latency benchmark of the container runtime on the `busybox` template.
//!
//! Measures, over `n` capsules created back to back: `runtime.create_to_ready` (create until
//! the agent answers `/health`), `runtime.exec_true` (a foreground `true` through the agent
//! client), `runtime.freeze`, `runtime.thaw` and `runtime.destroy`.
//!
//! Run with: `cargo test -p wrenn-runtime --test root bench -- --nocapture` (as root; prints
//! one JSON line per bench).

use std::time::Instant;

use serde::Serialize;
use wrenn_agent_client::{AgentClient, ExecOutcome};
use wrenn_types::agent::ExecRequest;

use crate::container::ContainerRuntime;
use crate::{CapsuleSpec, NetworkMode, Runtime, RuntimeError, Source};

/// One benchmark's summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchLine {
    /// Name, e.g. `runtime.create_to_ready`.
    pub bench: String,
    /// Samples.
    pub n: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

impl BenchLine {
    /// Summarises samples (ms).
    pub fn from_samples(bench: &str, mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let pick = |q: f64| {
            if n == 0 {
                0.0
            } else {
                ms[((q * (n - 1) as f64).round() as usize).min(n - 1)]
            }
        };
        Self {
            bench: bench.to_owned(),
            n,
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            mean_ms: if n == 0 {
                0.0
            } else {
                ms.iter().sum::<f64>() / n as f64
            },
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn bench_id(i: usize) -> String {
    format!("cl-bench{}x{i:05}", std::process::id())
}

/// Disk size of the benchmark's capsules: the server's default (`wrenn serve --disk-mb`).
pub const BENCH_DISK_MB: u32 = 10240;

/// Runs the benchmark with `n` capsules (network: egress, disk: [`BENCH_DISK_MB`], as the
/// server's defaults).
pub async fn bench_runtime(
    rt: &ContainerRuntime,
    n: usize,
) -> Result<Vec<BenchLine>, RuntimeError> {
    bench_runtime_with_disk(rt, n, BENCH_DISK_MB).await
}

/// [`bench_runtime`] with capsules of `disk_mb` MiB disks (0: no disk).
pub async fn bench_runtime_with_disk(
    rt: &ContainerRuntime,
    n: usize,
    disk_mb: u32,
) -> Result<Vec<BenchLine>, RuntimeError> {
    rt.ensure_template("busybox").await?;
    let (mut create, mut exec, mut freeze, mut thaw, mut destroy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let req = ExecRequest {
        process: wrenn_types::agent::ProcessSpec {
            cmd: "true".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    for i in 0..n {
        let spec = CapsuleSpec {
            id: bench_id(i),
            source: Source::Template("busybox".into()),
            vcpus: 1,
            memory_mb: 256,
            pids_limit: 256,
            network: NetworkMode::Egress,
            disk_mb,
            backend: None,
        };
        let t = Instant::now();
        let h = rt.create(&spec).await?;
        create.push(ms(t));
        let result = async {
            let client = AgentClient::new(h.agent.clone());
            for _ in 0..5 {
                let t = Instant::now();
                let out = client.exec(&req).await.map_err(|e| RuntimeError::Host {
                    id: h.id.clone(),
                    step: "bench exec",
                    source: e.into(),
                })?;
                exec.push(ms(t));
                if !matches!(out, ExecOutcome::Finished(ref r) if r.exit_code == 0) {
                    return Err(RuntimeError::Host {
                        id: h.id.clone(),
                        step: "bench exec",
                        source: anyhow::anyhow!("unexpected outcome {out:?}"),
                    });
                }
            }
            let t = Instant::now();
            rt.pause(&h.id).await?;
            freeze.push(ms(t));
            let t = Instant::now();
            rt.resume(&h.id).await?;
            thaw.push(ms(t));
            Ok(())
        }
        .await;
        let t = Instant::now();
        let d = rt.destroy(&h.id).await;
        destroy.push(ms(t));
        result?;
        d?;
    }
    Ok(vec![
        BenchLine::from_samples("runtime.create_to_ready", create),
        BenchLine::from_samples("runtime.exec_true", exec),
        BenchLine::from_samples("runtime.freeze", freeze),
        BenchLine::from_samples("runtime.thaw", thaw),
        BenchLine::from_samples("runtime.destroy", destroy),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = BenchLine::from_samples("x", vec![3.0, 1.0, 2.0]);
        assert_eq!((l.n, l.p50_ms, l.p99_ms, l.mean_ms), (3, 2.0, 3.0, 2.0));
    }
}
