//! API-key authentication: `X-API-Key` → team. Checked before any work, WebSocket upgrades
//! included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use wrenn_types::api::Actor;

use crate::error::ApiError;
use crate::store::{ApiKeyRow, Store};
use crate::AppState;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's team; every lookup is scoped to it.
    pub team_id: String,
    /// The key, as an event actor.
    pub actor: Actor,
}

/// Resolves keys, remembering the ones seen (keys are never deleted while the server runs).
#[derive(Debug, Clone)]
pub struct KeyResolver {
    store: Store,
    cache: Arc<Mutex<HashMap<String, ApiKeyRow>>>,
}

impl KeyResolver {
    /// A resolver over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    /// The caller behind `secret`, if any.
    pub async fn resolve(&self, secret: &str) -> Result<Option<Caller>, ApiError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(secret)
            .cloned();
        let row = match cached {
            Some(row) => row,
            None => match self
                .store
                .find_key(secret)
                .await
                .map_err(ApiError::internal)?
            {
                Some(row) => {
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(secret.to_owned(), row.clone());
                    row
                }
                None => return Ok(None),
            },
        };
        Ok(Some(Caller {
            team_id: row.team_id,
            actor: Actor {
                actor_type: "api_key".into(),
                id: Some(row.id),
                name: Some(row.name),
            },
        }))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("missing X-API-Key header".into()))?;
        state
            .keys
            .resolve(key)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
    }
}
