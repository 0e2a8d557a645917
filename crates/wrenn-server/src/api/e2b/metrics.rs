//! `GET /sandboxes/{id}/metrics` (contract §2.2 `SandboxMetric`): the server's samples (every
//! 2 s while running), oldest first; a running sandbox with none yet gets one live sample.
//! `memCache` is not measured by the runtime and is reported as 0.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use wrenn_types::api::{Capsule, CapsuleStatus};

use super::error::E2bError;
use super::sandboxes::find;
use super::{E2bCaller, E2bQuery};
use crate::metrics::Sample;
use crate::AppState;

/// Window when the query names no `start`.
const DEFAULT_WINDOW: chrono::Duration = chrono::Duration::minutes(10);
/// Interval of a live CPU reading.
const LIVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
const MIB: u64 = 1024 * 1024;

/// Query: unix seconds, both optional.
#[derive(Debug, Default, Deserialize)]
pub(super) struct MetricsQuery {
    start: Option<i64>,
    end: Option<i64>,
}

fn metric(c: &Capsule, s: &Sample) -> Value {
    json!({
        "timestamp": s.at,
        "timestampUnix": s.at.timestamp(),
        "cpuCount": c.vcpus,
        "cpuUsedPct": (s.cpu_pct * 100.0).round() / 100.0,
        "memUsed": s.mem_bytes,
        "memTotal": u64::from(c.memory_mb) * MIB,
        "memCache": 0,
        "diskUsed": s.disk_bytes,
        "diskTotal": u64::from(c.disk_size_mb) * MIB,
    })
}

fn unix(t: i64) -> Result<DateTime<Utc>, E2bError> {
    Utc.timestamp_opt(t, 0)
        .single()
        .ok_or_else(|| E2bError::bad_request(format!("invalid unix time {t}")))
}

/// `GET /sandboxes/{id}/metrics`.
pub(super) async fn metrics(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(sid): Path<String>,
    E2bQuery(q): E2bQuery<MetricsQuery>,
) -> Result<Json<Vec<Value>>, E2bError> {
    let (live, row) = find(&state, &caller, &sid)?;
    let now = Utc::now();
    let start = q
        .start
        .map(unix)
        .transpose()?
        .unwrap_or(now - DEFAULT_WINDOW);
    let end = q.end.map(unix).transpose()?.unwrap_or(now);
    let c = live.snapshot();
    let mut samples: Vec<Sample> = state
        .capsules
        .metrics()
        .points(&row.capsule_id, (now - start).max(chrono::Duration::zero()))
        .into_iter()
        .filter(|s| s.at >= start && s.at <= end)
        .collect();
    if samples.is_empty() && c.status == CapsuleStatus::Running && end >= now {
        samples.extend(live_sample(&state, &c).await);
    }
    Ok(Json(samples.iter().map(|s| metric(&c, s)).collect()))
}

/// One reading now: CPU over [`LIVE_INTERVAL`], memory and disk as they are.
async fn live_sample(state: &AppState, c: &Capsule) -> Option<Sample> {
    let rt = state.capsules.runtime();
    let a = rt.usage(&c.id).await.ok()?;
    let t0 = std::time::Instant::now();
    tokio::time::sleep(LIVE_INTERVAL).await;
    let b = rt.usage(&c.id).await.ok()?;
    let dt = t0.elapsed().as_secs_f64();
    let cpu = b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9 / dt / f64::from(c.vcpus.max(1));
    Some(Sample {
        at: Utc::now(),
        cpu_pct: (cpu * 100.0).clamp(0.0, 100.0),
        mem_bytes: b.memory_bytes,
        disk_bytes: b.disk_bytes,
    })
}
