//! The Wrenn API's routes: one module per resource. Every route is served under `/v1` and
//! `/api/v1`. The capsule service's errors are mapped to the contract's codes once, in `error`.

mod capsules;
mod error;
mod events;
mod exec;
mod files;
mod host_metrics;
mod input;
mod keys;
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
        .route("/api-keys", get(keys::list).post(keys::create))
        .route("/api-keys/{id}", delete(keys::revoke))
}

/// The Wrenn API: health, host metrics, the OpenAPI document and every resource under `/v1` and
/// `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(host_metrics::metrics))
        .nest("/v1", v1())
        .nest("/api/v1", v1())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Unknown routes, in the Wrenn error shape.
pub(crate) async fn fallback() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// A known route with another method, in the Wrenn error shape.
pub(crate) async fn method_not_allowed() -> Response {
    let body = wrenn_types::error::ErrorBody::new("invalid_request", "method not allowed");
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
