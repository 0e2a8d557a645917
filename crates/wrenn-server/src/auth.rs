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

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
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
