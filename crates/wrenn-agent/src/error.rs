//! The agent's one error-to-response mapping: every handler answers [`ApiError`], which the
//! typed errors of the process table, the spawner and the launcher convert into.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wrenn_types::error::{AgentErrorCode, ErrorBody};

use crate::launch::LaunchError;
use crate::processes::ProcessError;
use crate::spawn::SpawnError;

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

/// `e` and its sources, joined by `": "` (the workspace's one way to write an error chain).
pub use wrenn_types::error::chain as error_chain;

impl From<SpawnError> for ApiError {
    fn from(e: SpawnError) -> Self {
        Self::new(e.code(), error_chain(&e))
    }
}

impl From<ProcessError> for ApiError {
    fn from(e: ProcessError) -> Self {
        Self::new(e.code(), error_chain(&e))
    }
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Spawn(e) => e.into(),
            LaunchError::Track(e) => e.into(),
            e => Self::new(AgentErrorCode::Internal, error_chain(&e)),
        }
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

/// Maps a JSON body rejection to our error body.
pub fn json_rejection(e: JsonRejection) -> ApiError {
    ApiError::invalid(e.body_text())
}
