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
    let mut warm = Vec::with_capacity(n);
    for _ in 0..n {
        tokio::time::sleep(refill_wait).await;
        warm.push(first_cell(c, None).await?);
    }
    print_first_cells("warm", &warm)?;
    let mut cold = Vec::new();
    for _ in 0..(n / 2).max(3) {
        cold.push(first_cell(c, Some(COLD_MEMORY_MB)).await?);
    }
    print_first_cells("cold", &cold)?;

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

/// One create → first cell, in ms: the whole and its three steps.
#[derive(Debug, Clone, Copy)]
struct FirstCell {
    total: f64,
    /// `POST /v1/capsules` answered.
    create: f64,
    /// Kernel found (`GET /api/kernels`, retried while Jupyter is not up) and its WebSocket
    /// open.
    connect: f64,
    /// `1 + 1` sent and its result back.
    cell: f64,
    pooled: bool,
}

/// Prints the `api.create_to_first_run_code` line of `mode` and one line per step.
fn print_first_cells(mode: &'static str, v: &[FirstCell]) -> anyhow::Result<()> {
    let col = |f: fn(&FirstCell) -> f64| v.iter().map(f).collect::<Vec<_>>();
    Line {
        mode: Some(mode),
        from_pool: Some(v.iter().filter(|s| s.pooled).count()),
        ..Line::new("api.create_to_first_run_code", &col(|s| s.total))
    }
    .print()?;
    for (bench, samples) in [
        ("api.create_to_first_run_code.create", col(|s| s.create)),
        ("api.create_to_first_run_code.connect", col(|s| s.connect)),
        ("api.create_to_first_run_code.cell", col(|s| s.cell)),
    ] {
        Line {
            mode: Some(mode),
            ..Line::new(bench, &samples)
        }
        .print()?;
    }
    Ok(())
}

/// Create → first cell answered, and whether the capsule came from the pool.
async fn first_cell(c: &Client, memory_mb: Option<i64>) -> anyhow::Result<FirstCell> {
    let t0 = Instant::now();
    let cap = c.create_capsule(&request(memory_mb)).await?;
    let create = ms(t0);
    let answered = async {
        let t1 = Instant::now();
        let mut runner = c
            .code_runner(&cap.id, DEFAULT_KERNEL, JUPYTER_TIMEOUT)
            .await?;
        let connect = ms(t1);
        let t2 = Instant::now();
        check(&mut runner, "1 + 1", "2").await?;
        anyhow::Ok((connect, ms(t2)))
    }
    .await;
    let total = ms(t0);
    let info = c.get_capsule(&cap.id).await;
    c.destroy_capsule(&cap.id).await?;
    let (connect, cell) = answered?;
    let pooled = info?
        .metadata
        .and_then(|m| m.get("warm_pool").cloned())
        .is_some_and(|v| v == "true");
    Ok(FirstCell {
        total,
        create,
        connect,
        cell,
        pooled,
    })
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
