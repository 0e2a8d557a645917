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
use crate::lifecycle::check_id;
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

/// `GET /v1/capsules/stats` (contract §5.8): current reservation of the team's capsules.
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let range = q.range.unwrap_or_else(|| "1h".into());
    if !["5m", "1h", "6h", "24h", "30d"].contains(&range.as_str()) {
        return Err(ApiError::InvalidRequest(format!("invalid range {range:?}")));
    }
    let running: Vec<Capsule> = state
        .capsules
        .list(&caller.team_id)
        .into_iter()
        .filter(|c| c.status == CapsuleStatus::Running)
        .collect();
    let count = running.len() as u64;
    let vcpus: u64 = running.iter().map(|c| u64::from(c.vcpus)).sum();
    let mem: u64 = running.iter().map(|c| u64::from(c.memory_mb)).sum();
    let now = Utc::now();
    Ok(Json(serde_json::json!({
        "range": range,
        "current": {"running_count": count, "vcpus_reserved": vcpus, "memory_mb_reserved": mem, "sampled_at": now},
        "peaks": {"running_count": count, "vcpus": vcpus, "memory_mb": mem},
        "series": {"labels": [now], "running": [count], "vcpus": [vcpus], "memory_mb": [mem]},
    })))
}

#[derive(Debug, Deserialize)]
pub(super) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /v1/capsules/usage` (contract §5.9). Usage accounting is not recorded yet: the days
/// are listed with zero use.
pub(super) async fn usage(
    caller: Caller,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let _ = caller;
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
        None => to - Duration::days(29),
    };
    if from > to {
        return Err(ApiError::InvalidRequest("from is after to".into()));
    }
    if (to - from).num_days() > 92 {
        return Err(ApiError::InvalidRequest(
            "range is longer than 92 days".into(),
        ));
    }
    let points: Vec<_> = from
        .iter_days()
        .take_while(|d| *d <= to)
        .map(|d| serde_json::json!({"date": d.to_string(), "cpu_minutes": 0.0, "ram_mb_minutes": 0.0}))
        .collect();
    Ok(Json(
        serde_json::json!({"from": from.to_string(), "to": to.to_string(), "points": points}),
    ))
}

/// `GET /v1/capsules/{id}/metrics` (contract §5.10): the current sample of a running or
/// paused capsule.
pub(super) async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    check_id(&id)?;
    let range = q.range.unwrap_or_else(|| "10m".into());
    if !["5m", "10m", "1h", "2h", "6h", "12h", "24h"].contains(&range.as_str()) {
        return Err(ApiError::InvalidRequest(format!("invalid range {range:?}")));
    }
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
    let usage = state.capsules.runtime().usage(&id).await?;
    Ok(Json(serde_json::json!({
        "sandbox_id": id,
        "range": range,
        "points": [{
            "timestamp_unix": Utc::now().timestamp(),
            "cpu_pct": 0.0,
            "mem_bytes": usage.memory_bytes,
            "disk_bytes": usage.disk_bytes,
        }],
    })))
}
