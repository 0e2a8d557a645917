//! `wrenn-bench`: API benchmarks of a running server through `wrenn-client`, one JSON object
//! per line (`bench`, `n`, `p50_ms`, `p99_ms`, `mean_ms`, extras), the same names and shapes
//! as `bench/api_bench.py` so `bench/run.sh` can print both side by side.
//!
//! ```text
//! WRENN_BASE_URL=http://127.0.0.1:8080 WRENN_API_KEY=… wrenn-bench [--n 30] [--template busybox]
//! … wrenn-bench --code-runner [--n 10] [--refill-wait 8]
//! ```

mod api;
mod code_runner;

use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use wrenn_client::Client;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "wrenn-bench",
    about = "API benchmarks through the typed Rust client"
)]
struct Args {
    /// Iterations per measurement.
    #[arg(long, default_value_t = 30)]
    n: usize,
    /// Template of the capsule benchmarks.
    #[arg(long, default_value = "busybox")]
    template: String,
    /// Only the code-runner benchmarks (`code-runner-beta`, the server's warm pool on).
    #[arg(long)]
    code_runner: bool,
    /// Seconds between warm creates, so the pool refills.
    #[arg(long, default_value_t = 8.0)]
    refill_wait: f64,
    /// Server base URL.
    #[arg(long, env = "WRENN_BASE_URL", default_value = wrenn_client::DEFAULT_BASE_URL)]
    base_url: String,
    /// API key.
    #[arg(long, env = "WRENN_API_KEY", hide_env_values = true)]
    api_key: String,
}

/// One result line.
#[derive(Debug, Default, Serialize)]
pub struct Line {
    bench: &'static str,
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    /// Always `rust`: which client measured (the Python benchmark says `python`).
    client: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_pool: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upload_mib_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    download_mib_per_s: Option<f64>,
}

impl Line {
    /// The line of `bench` over `samples` (milliseconds); extras are set by the caller.
    pub fn new(bench: &'static str, samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let pick = |q: f64| -> f64 {
            let last = s.len().saturating_sub(1);
            let i = ((q * last as f64).round() as usize).min(last);
            s.get(i).copied().unwrap_or(0.0)
        };
        let mean = if s.is_empty() {
            0.0
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        };
        Self {
            bench,
            n: s.len(),
            p50_ms: round3(pick(0.5)),
            p99_ms: round3(pick(0.99)),
            mean_ms: round3(mean),
            client: "rust",
            ..Self::default()
        }
    }

    /// Prints the line.
    pub fn print(&self) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string(self)?);
        Ok(())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Milliseconds since `t0`.
pub fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let client = Client::new(&a.base_url, &a.api_key)?;
    if a.code_runner {
        let wait = Duration::from_secs_f64(a.refill_wait.max(0.0));
        return code_runner::run(&client, a.n, wait).await;
    }
    api::run(&client, a.n, &a.template).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let l = Line::new("x", &[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((l.n, l.p50_ms, l.p99_ms, l.mean_ms), (5, 3.0, 5.0, 3.0));
        assert_eq!(Line::new("x", &[]).n, 0);
    }
}
