//! Capsule lifecycle routes (contract §5).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{Duration, NaiveDate, Utc};
use serde::Deserialize;
use wrenn_types::api::{Capsule, CapsuleStatus, CreateCapsuleRequest};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::service::check_id;
use crate::AppState;

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateCapsuleRequest>,
) -> ApiResult<impl IntoResponse> {
    let capsule = state
        .capsules
        .create(&caller.team_id, &caller.actor, req)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(capsule)))
}

pub(super) async fn list(State(state): State<AppState>, caller: Caller) -> Json<Vec<Capsule>> {
    Json(state.capsules.list(&caller.team_id))
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Capsule>> {
    let mut capsule = state.capsules.get(&caller.team_id, &id).await?;
    if matches!(
        capsule.status,
        CapsuleStatus::Running | CapsuleStatus::Paused
    ) {
        if let Ok(usage) = state.capsules.runtime().usage(&id).await {
            capsule.disk_used_mb = Some(usage.disk_bytes / (1024 * 1024));
        }
    }
    Ok(Json(capsule))
}

pub(super) async fn destroy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .capsules
        .destroy(&caller.team_id, &id, &caller.actor)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

pub(super) async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let c = state
        .capsules
        .pause(&caller.team_id, &id, &caller.actor)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(c)))
}

pub(super) async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let c = state
        .capsules
        .resume(&caller.team_id, &id, &caller.actor)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(c)))
}

pub(super) async fn ping(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.capsules.running(&caller.team_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(super) struct RangeQuery {
    range: Option<String>,
}

/// `GET /v1/capsules/stats` (contract §5.8): the team's reservation now, its peaks over 30
/// days and a per-minute series over `range` (kept since this server started).
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let range = q.range.unwrap_or_else(|| "1h".into());
    let span = match range.as_str() {
        "5m" => Duration::minutes(5),
        "1h" => Duration::hours(1),
        "6h" => Duration::hours(6),
        "24h" => Duration::hours(24),
        "30d" => Duration::days(30),
        _ => return Err(ApiError::InvalidRequest(format!("invalid range {range:?}"))),
    };
    let running: Vec<Capsule> = state
        .capsules
        .list(&caller.team_id)
        .into_iter()
        .filter(|c| c.status == CapsuleStatus::Running)
        .collect();
    let count = running.len() as u64;
    let vcpus: u64 = running.iter().map(|c| u64::from(c.vcpus)).sum();
    let mem: u64 = running.iter().map(|c| u64::from(c.memory_mb)).sum();
    let metrics = state.capsules.metrics();
    let month = metrics.team_series(&caller.team_id, Duration::days(30));
    let peak = |f: fn(&crate::metrics::Reservation) -> u64, now: u64| {
        month.iter().map(f).max().unwrap_or(0).max(now)
    };
    let series = metrics.team_series(&caller.team_id, span);
    Ok(Json(serde_json::json!({
        "range": range,
        "current": {"running_count": count, "vcpus_reserved": vcpus, "memory_mb_reserved": mem,
                    "sampled_at": Utc::now()},
        "peaks": {"running_count": peak(|r| r.running, count), "vcpus": peak(|r| r.vcpus, vcpus),
                  "memory_mb": peak(|r| r.memory_mb, mem)},
        "series": {
            "labels": series.iter().map(|r| r.at).collect::<Vec<_>>(),
            "running": series.iter().map(|r| r.running).collect::<Vec<_>>(),
            "vcpus": series.iter().map(|r| r.vcpus).collect::<Vec<_>>(),
            "memory_mb": series.iter().map(|r| r.memory_mb).collect::<Vec<_>>(),
        },
    })))
}

/// `n` days before `day`, or the first day there is.
fn days_before(day: NaiveDate, n: i64) -> NaiveDate {
    day.checked_sub_signed(Duration::days(n))
        .unwrap_or(NaiveDate::MIN)
}

/// The longest usage range, days (plus the last day).
const USAGE_MAX_DAYS: i64 = 92;

#[derive(Debug, Deserialize)]
pub(super) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /v1/capsules/usage` (contract §5.9): CPU minutes used and RAM MB·minutes reserved by
/// the team's running capsules, per UTC day; every day of the range is listed.
pub(super) async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let parse = |s: &str| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| ApiError::InvalidRequest(format!("invalid date {s:?}, want YYYY-MM-DD")))
    };
    let to = match q.to {
        Some(s) => parse(&s)?,
        None => Utc::now().date_naive(),
    };
    let from = match q.from {
        Some(s) => parse(&s)?,
        None => days_before(to, 29),
    };
    // A range longer than USAGE_MAX_DAYS keeps its last days (the answer's `from` says so);
    // one that ends before it starts has no days.
    let from = from.max(days_before(to, USAGE_MAX_DAYS));
    state.capsules.flush_activity().await;
    let recorded = state
        .capsules
        .store()
        .usage(&caller.team_id, from, to)
        .await
        .map_err(ApiError::internal)?;
    let points: Vec<_> = from
        .iter_days()
        .take_while(|d| *d <= to)
        .map(|d| {
            let (cpu, ram) = recorded
                .iter()
                .find(|(day, _, _)| *day == d)
                .map(|(_, c, r)| (*c, *r))
                .unwrap_or((0.0, 0.0));
            serde_json::json!({"date": d.to_string(), "cpu_minutes": cpu, "ram_mb_minutes": ram})
        })
        .collect();
    Ok(Json(
        serde_json::json!({"from": from.to_string(), "to": to.to_string(), "points": points}),
    ))
}

/// `GET /v1/capsules/{id}/metrics` (contract §5.10): samples every 2 s while running, kept
/// (not extended) while paused; averaged into at most 300 points per range.
pub(super) async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    check_id(&id)?;
    let range = q.range.unwrap_or_else(|| "10m".into());
    let span = match range.as_str() {
        "5m" => Duration::minutes(5),
        "10m" => Duration::minutes(10),
        "1h" => Duration::hours(1),
        "2h" => Duration::hours(2),
        "6h" => Duration::hours(6),
        "12h" => Duration::hours(12),
        "24h" => Duration::hours(24),
        _ => return Err(ApiError::InvalidRequest(format!("invalid range {range:?}"))),
    };
    let capsule = state.capsules.get(&caller.team_id, &id).await?;
    if !matches!(
        capsule.status,
        CapsuleStatus::Running | CapsuleStatus::Paused
    ) {
        return Err(ApiError::NotFound(format!(
            "capsule {id} has no metrics (status: {})",
            capsule.status
        )));
    }
    let points: Vec<_> = state
        .capsules
        .metrics()
        .points(&id, span)
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "timestamp_unix": p.at.timestamp(),
                "cpu_pct": (p.cpu_pct * 100.0).round() / 100.0,
                "mem_bytes": p.mem_bytes,
                "disk_bytes": p.disk_bytes,
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({"sandbox_id": id, "range": range, "points": points}),
    ))
}
