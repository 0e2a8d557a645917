//! The client's one error type.

use wrenn_types::error::ErrorBody;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (contract §2): `code` is the machine code
    /// (`not_found`, `invalid_state`, `unauthorized`, …).
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The contract's error code; `internal_error` when the body had none.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The request could not be sent or its answer not read.
    #[error("request failed")]
    Http(#[source] reqwest::Error),
    /// A WebSocket could not be opened or broke.
    #[error("websocket failed")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// An answer did not have the expected shape.
    #[error("unexpected answer from the server")]
    Decode(#[source] serde_json::Error),
    /// A WebSocket stream ended with an in-band error (capsule gone or not running, session
    /// not found, …).
    #[error("{0}")]
    Stream(String),
    /// A stream sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A capsule did not reach the wanted status in time.
    #[error("capsule {id} is still {status} after {secs} s")]
    Timeout {
        /// Capsule id.
        id: String,
        /// Its last status.
        status: String,
        /// How long we waited.
        secs: u64,
    },
    /// A capsule ended up in a status it will not leave.
    #[error("capsule {id} ended up {status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Failed {
        /// Capsule id.
        id: String,
        /// `error` or `stopped`.
        status: String,
        /// The capsule's recorded error.
        reason: Option<String>,
    },
    /// Local I/O (a file being uploaded or downloaded) failed.
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    /// The base URL is not `http://` or `https://`.
    #[error("invalid base URL {0:?}: want http://host:port")]
    InvalidBaseUrl(String),
    /// No API key was given (`WRENN_API_KEY`).
    #[error("no API key: set WRENN_API_KEY")]
    MissingApiKey,
}

impl ClientError {
    /// The contract's error code, when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Http(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// Whether the server said the thing does not exist (`not_found`).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some("not_found")
    }

    /// Builds the error of a non-2xx answer from its JSON body.
    pub(crate) async fn from_response(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        Self::from_body(status, &body)
    }

    /// Parses an error body; a body that is not the contract's shape is an `internal_error`.
    pub(crate) fn from_body(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => Self::Api {
                status,
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => Self::Api {
                status,
                code: "internal_error".into(),
                message: String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
            },
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as W;
        match e {
            // A refused upgrade carries the server's JSON error: surface its code.
            W::Http(resp) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                Self::from_body(status, body)
            }
            other => Self::WebSocket(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_keep_their_code_and_others_become_internal() {
        let e = ClientError::from_body(404, br#"{"error":{"code":"not_found","message":"nope"}}"#);
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "not_found: nope (HTTP 404)");
        let e = ClientError::from_body(502, b"Bad Gateway");
        assert_eq!(e.code(), Some("internal_error"));
        assert_eq!(e.status(), Some(502));
    }
}
