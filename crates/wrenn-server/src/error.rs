//! API errors and their one mapping to the contract's codes (§2).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wrenn_agent_client::AgentError;
use wrenn_types::error::{AgentErrorCode, ErrorBody};

/// Every way a request can fail, as the public API reports it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input (400 `invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// Missing or unknown API key (401 `unauthorized`).
    #[error("{0}")]
    Unauthorized(String),
    /// Not allowed for this team (403 `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown capsule, path, process or template (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// Wrong lifecycle state (409 `invalid_state`).
    #[error("{0}")]
    InvalidState(String),
    /// Name taken, directory exists (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit (413 `payload_too_large`).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The capsule's agent failed (502 `agent_error`).
    #[error("{0}")]
    Agent(String),
    /// No capacity or runtime unavailable (503 `host_unavailable`).
    #[error("{0}")]
    HostUnavailable(String),
    /// A bug or a host failure (500 `internal_error`); the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// Status and code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Agent(_) => (StatusCode::BAD_GATEWAY, "agent_error"),
            Self::HostUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "host_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The error as a JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.status_and_code().1, self.to_string())
    }

    /// Shorthand for an internal error.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if let Self::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        (status, Json(self.body())).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Api { code, message, .. } => match code {
                AgentErrorCode::NotFound => Self::NotFound(message),
                AgentErrorCode::AlreadyExists => Self::Conflict(message),
                AgentErrorCode::InvalidRequest
                | AgentErrorCode::NotADirectory
                | AgentErrorCode::IsADirectory => Self::InvalidRequest(message),
                AgentErrorCode::PermissionDenied => Self::Forbidden(message),
                AgentErrorCode::Internal => Self::Agent(message),
            },
            other => Self::Agent(format!("capsule agent unreachable: {other}")),
        }
    }
}

impl From<wrenn_runtime::RuntimeError> for ApiError {
    fn from(e: wrenn_runtime::RuntimeError) -> Self {
        use wrenn_runtime::RuntimeError as R;
        match e {
            R::CapsuleNotFound(id) => Self::NotFound(format!("capsule {id} not found")),
            R::TemplateNotFound(n) => Self::NotFound(format!("template {n} not found")),
            R::InvalidState { id, state } => {
                Self::InvalidState(format!("capsule {id} is not running (status: {state})"))
            }
            e @ (R::AlreadyExists { .. } | R::Protected { .. }) => {
                Self::InvalidState(e.to_string())
            }
            other => Self::Internal(other.into()),
        }
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
