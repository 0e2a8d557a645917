//! Templates (contract §9): list base templates and the team's snapshots, snapshot a capsule,
//! delete a snapshot.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use wrenn_types::api::{Template, TemplateType};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Template>>> {
    let want = match q.kind.as_deref() {
        None => None,
        Some("base") => Some(TemplateType::Base),
        Some("snapshot") => Some(TemplateType::Snapshot),
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "invalid type {other:?}, want base or snapshot"
            )))
        }
    };
    let mut out = state.capsules.list_templates(&caller.team_id).await?;
    out.retain(|t| want.is_none_or(|w| w == t.template_type));
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateQuery {
    overwrite: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateBody {
    #[serde(default)]
    sandbox_id: String,
    #[serde(default)]
    name: Option<String>,
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<CreateQuery>,
    Body(body): Body<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    let template = state
        .capsules
        .snapshot(
            &caller.team_id,
            &caller.actor,
            &body.sandbox_id,
            body.name,
            q.overwrite.unwrap_or(false),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(template)))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .capsules
        .delete_snapshot(&caller.team_id, &caller.actor, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
