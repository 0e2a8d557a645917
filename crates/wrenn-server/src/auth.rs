//! API-key authentication: `X-API-Key` → team. Checked before any work, WebSocket upgrades
//! included.
//!
//! Browsers cannot set headers on a WebSocket, so a WebSocket upgrade may instead offer the
//! subprotocols [`WS_PROTOCOL`] and `wrenn.key.<key>` (`new WebSocket(url, ["wrenn",
//! "wrenn.key." + key])`); [`confirm_ws_protocol`] then answers the upgrade with
//! `Sec-WebSocket-Protocol: wrenn`, as browsers require. The key never appears in a URL, so it
//! is not written to access logs or history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
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

/// How long a resolved key is trusted without asking the store again: a key revoked by
/// another process (`wrenn key revoke --dir`) stops working within this.
const CACHE_TTL: Duration = Duration::from_millis(500);

/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A resolved key and when it was last checked against the store.
#[derive(Debug, Clone)]
struct CachedKey {
    row: ApiKeyRow,
    checked: Instant,
}

/// Resolves keys, remembering each for [`CACHE_TTL`]; a key revoked through the API is
/// forgotten at once.
#[derive(Debug, Clone)]
pub struct KeyResolver {
    store: Store,
    cache: Arc<Mutex<HashMap<String, CachedKey>>>,
    touched: Arc<Mutex<HashMap<String, Instant>>>,
}

impl KeyResolver {
    /// A resolver over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::default(),
            touched: Arc::default(),
        }
    }

    /// The store the keys live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Forgets every cached secret of key `key_id` (after a revoke).
    pub fn forget(&self, key_id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, k| k.row.id != key_id);
    }

    /// The caller behind `secret`, if any.
    pub async fn resolve(&self, secret: &str) -> Result<Option<Caller>, ApiError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(secret)
            .filter(|k| k.checked.elapsed() < CACHE_TTL)
            .map(|k| k.row.clone());
        let row = match cached {
            Some(row) => row,
            None => {
                let found = self
                    .store
                    .find_key(secret)
                    .await
                    .map_err(ApiError::internal)?;
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                match found {
                    Some(row) => {
                        cache.insert(
                            secret.to_owned(),
                            CachedKey {
                                row: row.clone(),
                                checked: Instant::now(),
                            },
                        );
                        row
                    }
                    None => {
                        cache.remove(secret);
                        return Ok(None);
                    }
                }
            }
        };
        self.touch(&row.id);
        Ok(Some(Caller {
            team_id: row.team_id,
            actor: Actor {
                actor_type: "api_key".into(),
                id: Some(row.id),
                name: Some(row.name),
            },
        }))
    }

    /// Records the key's use in the store, at most every [`TOUCH_EVERY`], off the request path.
    fn touch(&self, key_id: &str) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched
                .get(key_id)
                .is_some_and(|t| t.elapsed() < TOUCH_EVERY)
            {
                return;
            }
            touched.insert(key_id.to_owned(), Instant::now());
        }
        let store = self.store.clone();
        let id = key_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(&id, Utc::now()).await {
                tracing::warn!(key_id = %id, error = %e, "recording a key's use failed");
            }
        });
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = presented_key(&parts.headers)
            .ok_or_else(|| ApiError::Unauthorized("missing X-API-Key header".into()))?;
        state
            .keys
            .resolve(key)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
    }
}

/// The subprotocol a browser offers next to its key, and the one the upgrade answers with.
pub const WS_PROTOCOL: &str = "wrenn";

/// Prefix of the subprotocol that carries the key.
const WS_KEY_PREFIX: &str = "wrenn.key.";

/// The key of a request: the `X-API-Key` header, or for a WebSocket upgrade only, the
/// `wrenn.key.<key>` subprotocol.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let nonempty = |k: &&str| !k.is_empty();
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok().map(str::trim).filter(nonempty);
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    offered_protocols(headers)
        .find_map(|p| p.strip_prefix(WS_KEY_PREFIX))
        .filter(nonempty)
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Middleware: answers a WebSocket upgrade that offered [`WS_PROTOCOL`] with that protocol
/// (a browser drops a connection whose offered protocols were all ignored).
pub async fn confirm_ws_protocol(req: Request, next: Next) -> Response {
    let offered = offered_protocols(req.headers()).any(|p| p == WS_PROTOCOL);
    let mut response = next.run(req).await;
    if offered
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
        && !response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_PROTOCOL)
    {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_PROTOCOL),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn header_key_wins_and_is_trimmed() {
        let h = headers(&[
            ("x-api-key", " wrn_a "),
            ("sec-websocket-protocol", "wrenn.key.wrn_b"),
        ]);
        assert_eq!(presented_key(&h), Some("wrn_a"));
        assert_eq!(presented_key(&headers(&[("x-api-key", " ")])), None);
    }

    #[test]
    fn subprotocol_key_only_on_websocket_upgrades() {
        let offer = ("sec-websocket-protocol", "wrenn, wrenn.key.wrn_b");
        assert_eq!(presented_key(&headers(&[offer])), None);
        let ws = headers(&[("upgrade", "WebSocket"), offer]);
        assert_eq!(presented_key(&ws), Some("wrn_b"));
        let split = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "wrenn"),
            ("sec-websocket-protocol", "wrenn.key.wrn_c"),
        ]);
        assert_eq!(presented_key(&split), Some("wrn_c"));
        let empty = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "wrenn.key."),
        ]);
        assert_eq!(presented_key(&empty), None);
    }
}
