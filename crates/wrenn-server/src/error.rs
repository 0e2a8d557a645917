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
            // Its own words carry no host path.
            e @ (AgentError::Timeout { .. }
            | AgentError::TooLarge { .. }
            | AgentError::Decode(_)) => Self::Agent(e.to_string()),
            // The endpoint is a host path: logged, never sent.
            other => {
                tracing::warn!(error = %chain(&other), "capsule agent unreachable");
                Self::Agent("capsule agent unreachable".to_string())
            }
        }
    }
}

/// What replaces a host path in a text a team can read.
pub const HOST_PATH: &str = "<host path>";

/// `text` (a host-side failure's error chain, shown to a team as a capsule's `error` or an
/// event's reason) with every absolute path replaced by [`HOST_PATH`]: host failures name the
/// data dir, the template cache, `/run/wrenn` and cgroup paths, none of which a team may see.
/// A path starts with `/` at the start of the text or after a space, quote, `(` or `=`, and
/// runs to the next space, quote, `:`, `,`, `;` or `)`.
pub fn scrub_host_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let starts = c == '/'
            && prev.is_none_or(|p| p.is_whitespace() || matches!(p, '"' | '\'' | '(' | '=' | '`'));
        if !starts {
            out.push(c);
            prev = Some(c);
            continue;
        }
        while chars.peek().is_some_and(|n| {
            !n.is_whitespace() && !matches!(n, '"' | '\'' | ':' | ',' | ';' | ')' | '`')
        }) {
            chars.next();
        }
        out.push_str(HOST_PATH);
        prev = Some('>');
    }
    out
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

    #[test]
    fn host_paths_are_scrubbed() {
        assert_eq!(
            scrub_host_paths(
                "mount overlay /run/wrenn/ov/cl-1/l: open \"/var/lib/wrenn/capsules/cl-1/upper\" \
                 failed (/srv/cache/templates/t-team-1/rootfs): No such file or directory"
            ),
            "mount overlay <host path>: open \"<host path>\" failed (<host path>): \
             No such file or directory"
        );
        assert_eq!(scrub_host_paths("/data"), "<host path>");
        assert_eq!(
            scrub_host_paths("path=/x/y, 3/4 done"),
            "path=<host path>, 3/4 done"
        );
        assert_eq!(
            scrub_host_paths("init exited with 137"),
            "init exited with 137"
        );
    }

    #[test]
    fn agent_failures_name_no_host_path() {
        let connect = AgentError::Connect {
            endpoint: std::path::PathBuf::from("/var/lib/wrenn/capsules/cl-x/agent.sock").into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let timeout = AgentError::Timeout {
            phase: wrenn_agent_client::Phase::Answer,
            after: std::time::Duration::from_secs(20),
        };
        for (e, message) in [
            (connect, "capsule agent unreachable"),
            (timeout, "capsule agent did not answer within 20s"),
        ] {
            let api = ApiError::from(e);
            assert_eq!(
                api.status_and_code(),
                (StatusCode::BAD_GATEWAY, "agent_error")
            );
            assert_eq!(api.body().error.message, message);
        }
        let full = ApiError::from(AgentError::Api {
            status: 429,
            code: AgentErrorCode::LimitReached,
            message: "too many pty sessions".into(),
        });
        assert_eq!(full.status_and_code(), (StatusCode::CONFLICT, "conflict"));
    }
}
