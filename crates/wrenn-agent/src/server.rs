//! The HTTP router, shared state and the one error-to-response mapping.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wrenn_types::agent::{Health, KillSignal, ProcessList};
use wrenn_types::error::{AgentErrorCode, ErrorBody};

use crate::processes::ProcessTable;
use crate::pty::PtyTable;
use crate::reaper::Reaper;
use crate::{exec, files, pty, stream};

/// State shared by every handler.
#[derive(Debug, Default)]
pub struct AppState {
    /// The only owner of `waitpid`.
    pub reaper: Arc<Reaper>,
    /// Running processes.
    pub procs: ProcessTable,
    /// Live PTY sessions.
    pub ptys: PtyTable,
}

/// Handle to [`AppState`].
pub type SharedState = Arc<AppState>;

/// An error answered as [`ErrorBody`] with the code's status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Code.
    pub code: AgentErrorCode,
    /// Message, lowercase.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: AgentErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An `invalid_request` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(AgentErrorCode::InvalidRequest, message)
    }
}

impl From<crate::spawn::SpawnError> for ApiError {
    fn from(e: crate::spawn::SpawnError) -> Self {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self::new(e.code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.code == AgentErrorCode::Internal {
            tracing::error!(message = %self.message, "request failed");
        }
        (
            status,
            Json(ErrorBody::new(self.code.as_str(), self.message)),
        )
            .into_response()
    }
}

/// Builds the router.
pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/exec", post(exec::exec))
        .route("/exec/stream", get(stream::exec_stream))
        .route("/processes", get(processes))
        .route("/processes/{selector}", delete(kill))
        .route("/processes/{selector}/stream", get(stream::attach))
        .route("/pty", get(pty::pty))
        .route("/files/read", post(files::read))
        .route(
            "/files/write",
            post(files::write).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/list", post(files::list))
        .route("/files/mkdir", post(files::mkdir))
        .route("/files/remove", post(files::remove))
        .route("/files/stat", post(files::stat))
        .with_state(state)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn processes(State(state): State<SharedState>) -> Json<ProcessList> {
    Json(state.procs.list())
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

async fn kill(
    State(state): State<SharedState>,
    Path(selector): Path<String>,
    query: Result<Query<KillQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let signal = match query.signal.as_deref() {
        None | Some("") => KillSignal::Kill,
        Some(s) => KillSignal::parse(s)
            .ok_or_else(|| ApiError::invalid(format!("unsupported signal: {s}")))?,
    };
    state.procs.kill(&selector, signal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Maps a JSON body rejection to our error body.
pub fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::invalid(e.body_text())
}
