//! HTTP front ends over the capsule service: `wrenn` serves the Wrenn API, `e2b` E2B's
//! control plane (root paths `/sandboxes`, `/v2/sandboxes`, `/snapshots`, `/templates`), beside
//! them the web dashboard (`/dashboard/`). In front of them, the port proxy (by `Host`) and the middleware
//! that logs server errors once.

pub mod e2b;
pub mod wrenn;

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
        .fallback(wrenn::fallback)
        .method_not_allowed_fallback(wrenn::method_not_allowed)
        .with_state(state.clone());
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::proxy::route_by_host,
        ))
        .layer(axum::middleware::from_fn(log_server_errors))
}
