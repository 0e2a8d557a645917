//! API errors and their one mapping to the contract's codes (§2); server errors are logged by
//! middleware, once. The capsule service's errors map to these in `api::wrenn::error`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wrenn_agent_client::AgentError;
use wrenn_types::error::{chain, AgentErrorCode, ErrorBody};

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
    /// The team is at a limit (402 with upstream's quota code, e.g. `vcpu_limit`).
    #[error("{1}")]
    Quota(&'static str, String),
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
            Self::Quota(code, _) => (StatusCode::PAYMENT_REQUIRED, code),
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
    /// The JSON body; a server error travels on in a [`ServerError`] extension, for
    /// [`log_server_errors`] to log.
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let mut response = (status, Json(self.body())).into_response();
        if let Self::Internal(e) = self {
            response.extensions_mut().insert(ServerError(Arc::new(e)));
        }
        response
    }
}

/// The cause of a 500, carried from [`ApiError::into_response`] to [`log_server_errors`].
#[derive(Debug, Clone)]
pub struct ServerError(pub Arc<anyhow::Error>);

/// Middleware: logs the cause of every server error once, with the request it failed.
pub async fn log_server_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    if let Some(ServerError(e)) = response.extensions().get::<ServerError>() {
        let cause: &(dyn std::error::Error + 'static) = (**e).as_ref();
        let error = chain(cause);
        tracing::error!(%method, %path, %error, "request failed");
    }
    response
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Api { code, message, .. } => match code {
                AgentErrorCode::NotFound => Self::NotFound(message),
                // The SDK knows no 429 code; `conflict` reaches it as WrennConflictError.
                AgentErrorCode::AlreadyExists | AgentErrorCode::LimitReached => {
                    Self::Conflict(message)
                }
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

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_errors_carry_their_cause_to_the_log() {
        let internal = ApiError::internal(anyhow::anyhow!("disk on fire").context("writing"));
        let response = internal.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let ServerError(cause) = response
            .extensions()
            .get::<ServerError>()
            .expect("a server error travels to the middleware");
        let cause: &(dyn std::error::Error + 'static) = (**cause).as_ref();
        assert_eq!(chain(cause), "writing: disk on fire");

        let missing = ApiError::NotFound("capsule x not found".into()).into_response();
        assert!(missing.extensions().get::<ServerError>().is_none());
    }
}
