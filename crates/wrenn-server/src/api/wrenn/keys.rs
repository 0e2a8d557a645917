//! API keys of the caller's team: list, create (the secret is shown once), revoke.
//!
//! A revoked key is forgotten by the auth cache at once, so it stops working on the next
//! request; revoking the key the request came with is allowed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use wrenn_types::keys::{ApiKey, CreateApiKeyRequest};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::store::KeyFormat;
use crate::AppState;

/// Default label of a key created without a name.
const DEFAULT_KEY_NAME: &str = "api-key";

/// Longest key name accepted.
const MAX_KEY_NAME: usize = 64;

fn validate_name(name: Option<String>) -> ApiResult<String> {
    let name = name.map(|n| n.trim().to_owned()).unwrap_or_default();
    if name.is_empty() {
        return Ok(DEFAULT_KEY_NAME.into());
    }
    if name.chars().count() > MAX_KEY_NAME {
        return Err(ApiError::InvalidRequest(format!(
            "name is longer than {MAX_KEY_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(
            "name must not contain control characters".into(),
        ));
    }
    Ok(name)
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiKey>>> {
    let keys = state
        .keys
        .store()
        .list_keys(Some(&caller.team_id))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(keys.into_iter().map(|k| k.key).collect()))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateApiKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    let name = validate_name(req.name)?;
    let format = if req.e2b {
        KeyFormat::E2b
    } else {
        KeyFormat::Wrenn
    };
    let key = state
        .keys
        .store()
        .create_team_key_as(&caller.team_id, &name, format)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(key_id = %key.row.id, team_id = %caller.team_id, "api key created");
    Ok((StatusCode::CREATED, Json(key.to_api())))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let gone = state
        .keys
        .store()
        .revoke_key(Some(&caller.team_id), &id)
        .await
        .map_err(ApiError::internal)?;
    if !gone {
        return Err(ApiError::NotFound(format!("api key {id} not found")));
    }
    state.keys.forget(&id);
    tracing::info!(key_id = %id, team_id = %caller.team_id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_trim_and_are_bounded() {
        assert_eq!(validate_name(None).unwrap(), DEFAULT_KEY_NAME);
        assert_eq!(validate_name(Some("  ".into())).unwrap(), DEFAULT_KEY_NAME);
        assert_eq!(validate_name(Some(" ci ".into())).unwrap(), "ci");
        assert!(validate_name(Some("x".repeat(65))).is_err());
        assert!(validate_name(Some("a\nb".into())).is_err());
    }
}
