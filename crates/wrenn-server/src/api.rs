//! HTTP front ends over the capsule service: `wrenn` serves the Wrenn API, `e2b` E2B's
//! control plane (root paths `/sandboxes`, `/v2/sandboxes`, `/snapshots`, `/templates`), beside
//! them the web dashboard (`/dashboard/`). In front of them, the port proxy (by `Host`) and the middleware
//! that logs server errors once.

pub mod e2b;
mod early_answer;
pub mod wrenn;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use wrenn::UPLOAD_LIMIT;

use crate::error::log_server_errors;
use crate::AppState;

/// The whole router: the port proxy by `Host` first, then the API.
pub fn router(state: AppState) -> Router {
    let api = wrenn::routes()
        .merge(e2b::routes())
        .merge(crate::dashboard::router())
        .layer(axum::middleware::from_fn(crate::auth::confirm_ws_protocol))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::proxy::route_by_host,
        ))
        .layer(axum::middleware::from_fn(log_server_errors))
        .layer(axum::middleware::from_fn(
            early_answer::close_if_body_unread,
        ))
}

/// Unknown routes, in the error shape of the API the path belongs to.
async fn fallback(req: Request) -> Response {
    if e2b::is_e2b_path(req.uri().path()) {
        return e2b::unknown(StatusCode::NOT_FOUND).into_response();
    }
    wrenn::fallback().await.into_response()
}

/// A known route with another method, in the error shape of its API.
async fn method_not_allowed(req: Request) -> Response {
    if e2b::is_e2b_path(req.uri().path()) {
        return e2b::unknown(StatusCode::METHOD_NOT_ALLOWED).into_response();
    }
    wrenn::method_not_allowed().await
}
