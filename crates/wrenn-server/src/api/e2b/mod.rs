//! E2B's control plane (contract `e2b-api.md` §2) on the Wrenn API's listener: one module per
//! concern over the same capsule service as the Wrenn API. Sandbox traffic (envd and other
//! ports) is routed before these routes, by `crate::proxy` and [`traffic`].
//!
//! | file | what |
//! |---|---|
//! | `ids.rs` | sandbox id ↔ capsule id |
//! | `error.rs` | the one error mapping (`{"code": int, "message"}`) |
//! | `model.rs` | the `Sandbox`, `ListedSandbox` and `SandboxDetail` objects |
//! | `sandboxes.rs` | create, get, kill, timeout, pause, connect, resume, refreshes |
//! | `list.rs` | `GET /v2/sandboxes`, `GET /sandboxes`: filters and paging |
//! | `metrics.rs` | `GET /sandboxes/{id}/metrics` |
//! | `snapshots.rs` | snapshots (templates), and the routes answered 501 |
//! | `envd.rs` | the sandbox defaults sent to envd before create/connect answer |
//! | `traffic.rs` | sandbox traffic: access rule, envd token and signatures, forwarding |

mod envd;
mod error;
pub mod ids;
mod list;
mod metrics;
mod model;
mod sandboxes;
mod snapshots;
pub mod traffic;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;

pub use self::error::E2bError;
use crate::auth::Caller;
use crate::AppState;

/// Environment variable naming the public sandbox domain (`{port}-{id}.{domain}`).
pub const DOMAIN_ENV: &str = "WRENN_E2B_DOMAIN";

/// E2B's control-plane routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(sandboxes::create).get(list::list_v1))
        .route("/v2/sandboxes", post(sandboxes::create).get(list::list_v2))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/metrics", get(metrics::metrics))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/templates/{id}", delete(snapshots::delete))
        .route("/sandboxes/{id}/fork", post(snapshots::unsupported))
        .route("/sandboxes/{id}/network", put(snapshots::unsupported))
}

/// The caller of an E2B route: `X-API-KEY` (any of the team's keys); 401 otherwise.
#[derive(Debug)]
pub struct E2bCaller(pub Caller);

impl FromRequestParts<AppState> for E2bCaller {
    type Rejection = E2bError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, E2bError> {
        let unauthorized =
            |m: &str| E2bError::new(axum::http::StatusCode::UNAUTHORIZED, m.to_owned());
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| unauthorized("missing X-API-KEY header"))?;
        match state.keys.resolve(key).await {
            Ok(Some(caller)) => Ok(Self(caller)),
            Ok(None) => Err(unauthorized("Invalid API key")),
            Err(e) => Err(E2bError::internal("cannot check the API key", e)),
        }
    }
}

/// A JSON body (an empty one is `{}`); unknown fields are ignored, a malformed body is a 400.
#[derive(Debug)]
pub struct E2bJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for E2bJson<T> {
    type Rejection = E2bError;

    async fn from_request(req: Request, state: &S) -> Result<Self, E2bError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| E2bError::bad_request(format!("unreadable body: {e}")))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(E2bJson)
            .map_err(|e| E2bError::bad_request(format!("invalid body: {e}")))
    }
}

/// A query string; a malformed one is a 400.
#[derive(Debug)]
pub struct E2bQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for E2bQuery<T> {
    type Rejection = E2bError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, E2bError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| E2bQuery(q.0))
            .map_err(|e| E2bError::bad_request(format!("invalid query: {e}")))
    }
}

/// The sandbox domain answered in `domain`: [`DOMAIN_ENV`] when set, else the host the
/// request came to without a leading `api.` (`api.example.net` → `example.net`). Never null and
/// never E2B's, so the SDK never sends a sandbox's traffic (and its token) elsewhere.
pub fn sandbox_domain(headers: &HeaderMap) -> String {
    if let Ok(d) = std::env::var(DOMAIN_ENV) {
        if !d.trim().is_empty() {
            return d.trim().to_owned();
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    host.strip_prefix("api.").unwrap_or(host).to_owned()
}
