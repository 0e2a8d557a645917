//! HTTP routes: one module per resource. Every route is served under `/v1` and `/api/v1`.

mod capsules;
mod events;
mod exec;
mod files;
mod openapi;
mod snapshots;
mod streams;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::AppState;

/// The largest non-streamed upload (contract §14).
pub const UPLOAD_LIMIT: u64 = 100 * 1024 * 1024;

fn v1() -> Router<AppState> {
    Router::new()
        .route("/capsules", post(capsules::create).get(capsules::list))
        .route("/capsules/stats", get(capsules::stats))
        .route("/capsules/usage", get(capsules::usage))
        .route(
            "/capsules/{id}",
            get(capsules::get).delete(capsules::destroy),
        )
        .route("/capsules/{id}/pause", post(capsules::pause))
        .route("/capsules/{id}/resume", post(capsules::resume))
        .route("/capsules/{id}/ping", post(capsules::ping))
        .route("/capsules/{id}/metrics", get(capsules::metrics))
        .route("/capsules/{id}/exec", post(exec::exec))
        .route("/capsules/{id}/exec/stream", get(streams::exec_stream))
        .route("/capsules/{id}/processes", get(exec::list_processes))
        .route(
            "/capsules/{id}/processes/{selector}",
            delete(exec::kill_process),
        )
        .route(
            "/capsules/{id}/processes/{selector}/stream",
            get(streams::process_stream),
        )
        .route("/capsules/{id}/pty", get(streams::pty))
        .route(
            "/capsules/{id}/files/write",
            post(files::write).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/capsules/{id}/files/stream/write",
            post(files::stream_write).layer(DefaultBodyLimit::disable()),
        )
        .route("/capsules/{id}/files/read", post(files::read))
        .route("/capsules/{id}/files/stream/read", post(files::stream_read))
        .route("/capsules/{id}/files/list", post(files::list))
        .route("/capsules/{id}/files/mkdir", post(files::mkdir))
        .route("/capsules/{id}/files/remove", post(files::remove))
        .route("/snapshots", get(snapshots::list).post(snapshots::create))
        .route("/snapshots/{name}", delete(snapshots::delete))
        .route("/events/stream", get(events::stream))
}

/// The whole router: the port proxy by `Host` first, then the API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::document))
        .nest("/v1", v1())
        .nest("/api/v1", v1())
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
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn fallback() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> Response {
    let body = wrenn_types::error::ErrorBody::new("invalid_request", "method not allowed");
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
