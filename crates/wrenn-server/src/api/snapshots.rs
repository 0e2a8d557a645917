//! Templates (contract §9.2). Snapshot creation is not implemented yet.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use wrenn_types::api::{Template, TemplateType};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Template>>> {
    let want = match q.kind.as_deref() {
        None | Some("") => None,
        Some("base") => Some(TemplateType::Base),
        Some("snapshot") => Some(TemplateType::Snapshot),
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "invalid type {other:?}, want base or snapshot"
            )))
        }
    };
    let mut out: Vec<Template> = state
        .capsules
        .runtime()
        .list_templates()
        .await?
        .into_iter()
        .map(|t| Template {
            template_type: if t.base {
                TemplateType::Base
            } else {
                TemplateType::Snapshot
            },
            protected: t.base,
            platform: t.base,
            created_at: t.created_at.unwrap_or_else(Utc::now),
            size_bytes: t.size_bytes,
            name: t.name,
            vcpus: None,
            memory_mb: None,
            metadata: None,
        })
        .filter(|t| want.is_none_or(|w| w == t.template_type))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(Json(out))
}
