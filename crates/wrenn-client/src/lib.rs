//! A typed async client of the Wrenn API (REST, WebSocket exec streams and PTYs, SSE events,
//! streamed file transfer, snapshots, templates and API keys), and code cells in a capsule's
//! Jupyter kernel through the port proxy ([`Client::code_runner`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), wrenn_client::ClientError> {
//! use wrenn_client::{Client, CreateCapsuleRequest};
//!
//! let client = Client::from_env()?; // WRENN_BASE_URL, WRENN_API_KEY
//! let capsule = client.create_capsule(&CreateCapsuleRequest::default()).await?;
//! let capsule = client.wait_running(&capsule.id).await?;
//! let out = client.run(&capsule.id, "echo hello").await?;
//! assert_eq!(out.stdout, "hello\n");
//! client.destroy_capsule(&capsule.id).await?;
//! # Ok(()) }
//! ```
//!
//! Every call returns [`ClientError`]; an answer of the server carries the contract's error
//! code ([`ClientError::code`]). Plain HTTP only: put a TLS-terminating proxy in front of a
//! remote server and reach it through a tunnel, or run the client next to it.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod capsules;
mod code_runner;
mod error;
mod events;
mod exec;
mod files;
mod keys;
mod pty;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

pub use crate::capsules::DEFAULT_WAIT;
pub use crate::code_runner::{
    CellError, CellResult, CodeRunner, Execution, DEFAULT_KERNEL, JUPYTER_PORT,
};
pub use crate::error::ClientError;
pub use crate::events::EventStream;
pub use crate::exec::{decode_output, shell, ExecStream};
pub use crate::files::ByteStream;
pub use crate::pty::{PtyEvent, PtyEvents, PtyInput, PtyOptions, PtySession};
pub use wrenn_types::agent::{ExecRequest, KillSignal, ProcessInfo, ProcessList, ProcessSpec};
pub use wrenn_types::api::{
    BackgroundExecResponse, Capsule, CapsuleStatus, CreateCapsuleRequest, Event, EventKind,
    ExecResponse, Outcome, Template, TemplateType,
};
pub use wrenn_types::files::{FileEntry, FileType};
pub use wrenn_types::keys::{ApiKey, CreatedApiKey};
pub use wrenn_types::stream::StreamEvent;

/// The API's base URL when `WRENN_BASE_URL` is unset: a server on this machine.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080";

/// Connect timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle to one Wrenn server as one API key; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`, optionally with a path prefix
    /// such as `/api`), authenticating with `api_key`.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::InvalidBaseUrl(base));
        }
        if api_key.is_empty() {
            return Err(ClientError::MissingApiKey);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            base,
            api_key: api_key.to_owned(),
        })
    }

    /// A client from `WRENN_BASE_URL` (default [`DEFAULT_BASE_URL`]) and `WRENN_API_KEY`.
    pub fn from_env() -> Result<Self, ClientError> {
        let base = std::env::var("WRENN_BASE_URL").unwrap_or_else(|_| DEFAULT_BASE_URL.into());
        let key = std::env::var("WRENN_API_KEY").map_err(|_| ClientError::MissingApiKey)?;
        Self::new(&base, &key)
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `{base}/v1{path}`.
    fn url(&self, path: &str) -> String {
        format!("{}/v1{}", self.base, path)
    }

    /// `ws://…/v1{path}` for a WebSocket route.
    fn ws_url(&self, path: &str) -> String {
        let url = self.url(path);
        match url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", url.trim_start_matches("http://")),
        }
    }

    /// A request to `/v1{path}` carrying the key.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("x-api-key", &self.api_key)
    }

    /// Sends `req`; a non-2xx answer becomes [`ClientError::Api`].
    async fn send(req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(ClientError::Http)?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(ClientError::from_response(resp).await)
        }
    }

    /// Sends `req` and decodes its JSON answer.
    async fn json<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, ClientError> {
        let resp = Self::send(req).await?;
        let bytes = resp.bytes().await.map_err(ClientError::Http)?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }
}

/// Percent-encodes one path segment (ids, names and tags are plain, but be safe).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_prefix_and_switch_scheme_for_websockets() {
        let c = Client::new("http://h:1/api/", "k").unwrap();
        assert_eq!(c.url("/capsules"), "http://h:1/api/v1/capsules");
        assert_eq!(
            c.ws_url("/capsules/x/pty"),
            "ws://h:1/api/v1/capsules/x/pty"
        );
        let s = Client::new("https://h", "k").unwrap();
        assert_eq!(s.ws_url("/a"), "wss://h/v1/a");
        assert!(matches!(
            Client::new("h:1", "k"),
            Err(ClientError::InvalidBaseUrl(_))
        ));
        assert!(matches!(
            Client::new("http://h", ""),
            Err(ClientError::MissingApiKey)
        ));
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("cl-abc_1.2"), "cl-abc_1.2");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
