//! The error body every non-2xx JSON response carries, on the agent and the public API.

use serde::{Deserialize, Serialize};

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The code and message.
    pub error: ErrorDetail,
}

/// Inside [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Machine-readable code (see [`AgentErrorCode`] for the agent's set).
    pub code: String,
    /// Human-readable message, lowercase, no trailing period.
    pub message: String,
}

impl ErrorBody {
    /// Builds a body from a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// The error codes the agent answers with. The server maps them to the public codes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorCode {
    /// Malformed request (400).
    InvalidRequest,
    /// Path, process or PTY session does not exist (404).
    NotFound,
    /// A path component or the target is not a directory (400).
    NotADirectory,
    /// The target is a directory where a file was expected (400).
    IsADirectory,
    /// The target exists already (409).
    AlreadyExists,
    /// The operating system refused (403).
    PermissionDenied,
    /// A per-capsule cap is reached: PTY sessions or tracked processes (429).
    LimitReached,
    /// Anything else (500).
    Internal,
}

impl AgentErrorCode {
    /// The wire string of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "not_found",
            Self::NotADirectory => "not_a_directory",
            Self::IsADirectory => "is_a_directory",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::LimitReached => "limit_reached",
            Self::Internal => "internal",
        }
    }

    /// Parses a wire string; unknown strings become [`AgentErrorCode::Internal`].
    pub fn parse(s: &str) -> Self {
        match s {
            "invalid_request" => Self::InvalidRequest,
            "not_found" => Self::NotFound,
            "not_a_directory" => Self::NotADirectory,
            "is_a_directory" => Self::IsADirectory,
            "already_exists" => Self::AlreadyExists,
            "permission_denied" => Self::PermissionDenied,
            "limit_reached" => Self::LimitReached,
            _ => Self::Internal,
        }
    }

    /// The HTTP status the agent answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::NotADirectory | Self::IsADirectory => 400,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::PermissionDenied => 403,
            Self::LimitReached => 429,
            Self::Internal => 500,
        }
    }
}

/// The message of `e` followed by those of its sources, joined with `": "` (as anyhow's
/// `{:#}`): the one way an error chain is written into a log line or a reason field.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn joins_every_source_in_order() {
        let e = Layer(
            "pause failed",
            Some(Box::new(Layer(
                "freeze cgroup",
                Some(Box::new(Layer("busy", None))),
            ))),
        );
        assert_eq!(chain(&e), "pause failed: freeze cgroup: busy");
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
