//! The code-runner benchmarks, in the official SDK's sequence (`wrenn.code_runner.Capsule`):
//! create `code-runner-beta`, then through the port proxy find the `wrenn` kernel, open its
//! WebSocket and run a cell.
//!
//! - `api.create_to_first_run_code`, warm: default sizes, so the server's pool serves it;
//!   `refill_wait` between creates lets the pool refill.
//! - `api.create_to_first_run_code`, cold: 768 MiB, a size the pool never serves.
//! - `api.run_code_roundtrip`: a trivial cell on a warm kernel.

use std::time::{Duration, Instant};

use anyhow::ensure;
use wrenn_client::{Client, CodeRunner, CreateCapsuleRequest, DEFAULT_KERNEL};

use crate::{ms, Line};

const TEMPLATE: &str = "code-runner-beta";
/// The SDK's `jupyter_timeout` in the Python benchmark.
const JUPYTER_TIMEOUT: Duration = Duration::from_secs(120);
/// The SDK's default cell timeout.
const CELL_TIMEOUT: Duration = Duration::from_secs(30);
/// A memory size the warm pool does not hold: a cold create.
const COLD_MEMORY_MB: i64 = 768;

/// Runs the code-runner benchmarks.
pub async fn run(c: &Client, n: usize, refill_wait: Duration) -> anyhow::Result<()> {
    // The first cold create may build the template into the data dir: not measured.
    first_cell(c, Some(COLD_MEMORY_MB)).await?;
    let (mut warm, mut pooled) = (Vec::with_capacity(n), 0);
    for _ in 0..n {
        tokio::time::sleep(refill_wait).await;
        let (t, from_pool) = first_cell(c, None).await?;
        warm.push(t);
        pooled += usize::from(from_pool);
    }
    Line {
        mode: Some("warm"),
        from_pool: Some(pooled),
        ..Line::new("api.create_to_first_run_code", &warm)
    }
    .print()?;
    let mut cold = Vec::new();
    for _ in 0..(n / 2).max(3) {
        cold.push(first_cell(c, Some(COLD_MEMORY_MB)).await?.0);
    }
    Line {
        mode: Some("cold"),
        ..Line::new("api.create_to_first_run_code", &cold)
    }
    .print()?;

    tokio::time::sleep(refill_wait).await;
    let cap = c.create_capsule(&request(None)).await?;
    let result = roundtrip(c, &cap.id, n * 10).await;
    c.destroy_capsule(&cap.id).await?;
    result
}

fn request(memory_mb: Option<i64>) -> CreateCapsuleRequest {
    CreateCapsuleRequest {
        template: Some(TEMPLATE.into()),
        memory_mb,
        ..CreateCapsuleRequest::default()
    }
}

/// Create → first cell answered (ms), and whether the capsule came from the pool.
async fn first_cell(c: &Client, memory_mb: Option<i64>) -> anyhow::Result<(f64, bool)> {
    let t0 = Instant::now();
    let cap = c.create_capsule(&request(memory_mb)).await?;
    let answered = async {
        let mut runner = c
            .code_runner(&cap.id, DEFAULT_KERNEL, JUPYTER_TIMEOUT)
            .await?;
        check(&mut runner, "1 + 1", "2").await
    }
    .await;
    let t = ms(t0);
    let info = c.get_capsule(&cap.id).await;
    c.destroy_capsule(&cap.id).await?;
    answered?;
    let pooled = info?
        .metadata
        .and_then(|m| m.get("warm_pool").cloned())
        .is_some_and(|v| v == "true");
    Ok((t, pooled))
}

/// Runs `code` and checks that its value is `want`.
async fn check(runner: &mut CodeRunner, code: &str, want: &str) -> anyhow::Result<()> {
    let e = runner.run_code(code, CELL_TIMEOUT).await?;
    ensure!(
        e.error.is_none() && e.text() == Some(want),
        "{code:?} gave {:?} (error {:?})",
        e.text(),
        e.error
    );
    Ok(())
}

async fn roundtrip(c: &Client, id: &str, n: usize) -> anyhow::Result<()> {
    let mut runner = c.code_runner(id, DEFAULT_KERNEL, JUPYTER_TIMEOUT).await?;
    runner.run_code("x = 1", CELL_TIMEOUT).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        check(&mut runner, "x", "1").await?;
        samples.push(ms(t0));
    }
    Line::new("api.run_code_roundtrip", &samples).print()
}
