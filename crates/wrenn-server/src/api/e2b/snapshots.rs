//! Snapshots through E2B's routes (contract §2.3, optional): a snapshot is one of the team's
//! templates (the capsule service's snapshots), so `Sandbox.create(template=snapshotID)`
//! starts from it. Fork and network rules are not supported: a JSON 501.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::E2bError;
use super::sandboxes::find;
use super::{ids, E2bCaller, E2bJson, E2bQuery};
use crate::AppState;

/// `POST /sandboxes/{id}/snapshots` body.
#[derive(Debug, Default, Deserialize)]
pub(super) struct NewSnapshot {
    name: Option<String>,
}

fn snapshot_json(name: &str) -> Value {
    json!({"snapshotID": name, "names": [name]})
}

/// `POST /sandboxes/{id}/snapshots` → `201 {"snapshotID", "names"}`.
pub(super) async fn create(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(sid): Path<String>,
    E2bJson(body): E2bJson<NewSnapshot>,
) -> Result<Response, E2bError> {
    let (_, row) = find(&state, &caller, &sid)?;
    let t = state
        .capsules
        .snapshot(
            &caller.team_id,
            &caller.actor,
            &row.capsule_id,
            body.name,
            false,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&t.name))).into_response())
}

/// `GET /snapshots` query.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SnapshotQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
}

/// `GET /snapshots`: the team's snapshots, optionally of one sandbox or by name; one page.
pub(super) async fn list(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bQuery(q): E2bQuery<SnapshotQuery>,
) -> Result<Json<Vec<Value>>, E2bError> {
    let source = q.sandbox_id.as_deref().and_then(ids::capsule_id);
    if q.sandbox_id.is_some() && source.is_none() {
        return Ok(Json(Vec::new()));
    }
    let rows = state
        .capsules
        .store()
        .list_snapshots(&caller.team_id)
        .await
        .map_err(|e| E2bError::internal("listing snapshots failed", e))?;
    Ok(Json(
        rows.iter()
            .filter(|r| source.as_ref().is_none_or(|s| &r.source_capsule == s))
            .filter(|r| q.name.as_ref().is_none_or(|n| &r.name == n))
            .map(|r| snapshot_json(&r.name))
            .collect(),
    ))
}

/// `DELETE /templates/{id}`: deletes one of the team's snapshots; `404` when unknown.
pub(super) async fn delete(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(name): Path<String>,
) -> Result<StatusCode, E2bError> {
    let known = state
        .capsules
        .store()
        .get_snapshot(&caller.team_id, &name)
        .await
        .map_err(|e| E2bError::internal("looking up the snapshot failed", e))?;
    if known.is_none() {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("template {name} not found"),
        ));
    }
    state
        .capsules
        .delete_snapshot(&caller.team_id, &caller.actor, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fork and network rules: not supported by this server.
pub(super) async fn unsupported(E2bCaller(_): E2bCaller) -> E2bError {
    E2bError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not supported by this server (wrenn): fork and network rules",
    )
}
