//! Client of the wrenn-agent protocol over any [`AgentEndpoint`]: a unix socket, a vsock, or a
//! vsock behind a unix socket (see [`transport`]).
//!
//! One fresh HTTP/1.1 connection per request (the agent is local, connects are cheap), so the
//! client holds no connection state and is trivially `Clone`. Every call is bounded by the
//! client's [`Deadlines`] (see [`deadline`]): a stopped or hung agent fails the call with
//! [`AgentError::Timeout`], never hangs it. The WebSocket endpoints have typed
//! helpers ([`AgentClient::exec_stream`], [`AgentClient::attach`], [`AgentClient::pty_start`],
//! [`AgentClient::pty_connect`]) speaking the message types of [`wrenn_types::stream`];
//! [`AgentClient::websocket`] opens any endpoint raw.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wrenn_agent_client::AgentError> {
//! use wrenn_agent_client::{AgentClient, ExecOutcome};
//! use wrenn_types::agent::{ExecRequest, ProcessSpec};
//! let agent = AgentClient::new("/run/wrenn/cl-1/agent.sock");
//! let req = ExecRequest::from(ProcessSpec::new("/bin/sh", ["-c", "uname -a"]));
//! if let ExecOutcome::Finished(r) = agent.exec(&req).await? {
//!     println!("{}", r.stdout);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_tungstenite::WebSocketStream;
use wrenn_types::agent::{
    AgentEndpoint, BackgroundStarted, ExecRequest, ExecResult, Health, KillSignal, ProcessList,
    DEFAULT_EXEC_TIMEOUT_SEC,
};
use wrenn_types::error::{AgentErrorCode, ErrorBody};
use wrenn_types::files::{EntryResponse, FileEntry, ListRequest, ListResponse, PathRequest};

pub mod deadline;
pub mod envd;
pub mod stream;
pub mod transport;

pub use deadline::{Deadlines, Phase};
pub use stream::{PtyEvent, PtyEvents, PtyInput, StreamCommands, StreamEvents};
pub use tokio_tungstenite;
pub use transport::AgentStream;

type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest JSON answer decoded; a bigger one fails with [`AgentError::TooLarge`]. The agent runs
/// in an untrusted capsule, so nothing it sends may be buffered without bound.
pub const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read; the rest is dropped (the message is truncated).
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// A call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The endpoint is missing or refuses connections (agent not up, or gone).
    #[error("cannot connect to agent at {endpoint}")]
    Connect {
        /// Where the client tried to connect.
        endpoint: AgentEndpoint,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP or WebSocket exchange broke mid-request.
    #[error("agent request failed")]
    Transport(#[source] BoxError),
    /// The agent answered with an error body.
    #[error("agent error {status} {}: {message}", code.as_str())]
    Api {
        /// HTTP status.
        status: u16,
        /// The agent's code (`internal` for unknown codes or non-JSON bodies).
        code: AgentErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The agent's answer was not the expected JSON.
    #[error("cannot decode agent response")]
    Decode(#[source] BoxError),
    /// The agent did not get through a phase of the call within its deadline.
    #[error("capsule agent did not {phase} within {}s", .after.as_secs_f32())]
    Timeout {
        /// What it did not do in time.
        phase: Phase,
        /// The deadline that ran out.
        after: std::time::Duration,
    },
    /// The agent's answer was larger than the client accepts.
    #[error("agent response exceeds {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl AgentError {
    /// The agent's error code, for [`AgentError::Api`].
    pub fn code(&self) -> Option<AgentErrorCode> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn transport(e: impl Into<BoxError>) -> AgentError {
    AgentError::Transport(e.into())
}

/// What `POST /exec` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    /// A foreground run finished (200).
    Finished(ExecResult),
    /// A background process started (202).
    Started(BackgroundStarted),
}

/// Facts about a capsule's guest, as its agent reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFacts {
    /// The agent's version (`agent_version` metadata).
    pub agent_version: String,
    /// The guest kernel's release (`kernel_version` metadata); `None` from agents older than
    /// this field.
    pub kernel_version: Option<String>,
}

/// Client of one agent endpoint.
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: AgentEndpoint,
    limits: Limits,
    deadlines: Deadlines,
}

/// Body size limits (lowered in tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Largest JSON body decoded.
    json: usize,
    /// Largest error body kept.
    error: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            json: MAX_JSON_BYTES,
            error: MAX_ERROR_BYTES,
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keep_slash`).
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

impl AgentClient {
    /// A client of the agent at `endpoint` (a path means a unix socket).
    pub fn new(endpoint: impl Into<AgentEndpoint>) -> Self {
        Self {
            endpoint: endpoint.into(),
            limits: Limits::default(),
            deadlines: Deadlines::default(),
        }
    }

    /// The same client with other deadlines.
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Where this client connects.
    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    /// The deadlines of this client's calls.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    async fn connect(&self) -> Result<AgentStream, AgentError> {
        let after = self.deadlines.connect;
        match tokio::time::timeout(after, transport::connect(&self.endpoint)).await {
            Ok(r) => r.map_err(|source| AgentError::Connect {
                endpoint: self.endpoint.clone(),
                source,
            }),
            Err(_) => Err(AgentError::Timeout {
                phase: Phase::Connect,
                after,
            }),
        }
    }

    /// Sends one request on a fresh connection and waits for its answer's head as `wait`
    /// says; non-2xx answers become [`AgentError::Api`].
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: ReqBody,
        wait: Wait,
    ) -> Result<Response<Incoming>, AgentError> {
        let (mut sender, conn) = self.http1().await?;
        let exchange = async {
            let mut req = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(header::HOST, "localhost");
            if let Some(ct) = content_type {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            let req = req.body(body).map_err(transport)?;
            let resp = sender.send_request(req).await.map_err(transport)?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            let status = resp.status();
            let body = collect_truncated(resp.into_body(), self.limits.error).await?;
            Err(api_error(status, &body))
        };
        let answer =
            match wait {
                Wait::For(after) => tokio::time::timeout(after, exchange).await.unwrap_or(Err(
                    AgentError::Timeout {
                        phase: Phase::Answer,
                        after,
                    },
                )),
                Wait::Upload(upload) => {
                    let after = self.deadlines.request;
                    tokio::select! {
                        r = exchange => r,
                        phase = upload.stalled(after) => Err(AgentError::Timeout { phase, after }),
                    }
                }
            };
        if answer.is_ok() {
            conn.keep();
        }
        answer
    }

    /// Connects and starts an HTTP/1 connection on its own task (see [`ConnTask`]).
    pub(crate) async fn http1<B>(
        &self,
    ) -> Result<(hyper::client::conn::http1::SendRequest<B>, ConnTask), AgentError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let stream = self.connect().await?;
        // (An HTTP/1 handshake does no I/O.)
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, ConnTask(Some(conn))))
    }

    /// [`Wait::For`] the request deadline.
    fn wait(&self) -> Wait {
        Wait::For(self.deadlines.request)
    }

    async fn send_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        wait: Wait,
    ) -> Result<Response<Incoming>, AgentError> {
        let json = serde_json::to_vec(body).map_err(|e| AgentError::Decode(e.into()))?;
        let body = Full::new(Bytes::from(json))
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send(method, path, Some("application/json"), body, wait)
            .await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, AgentError> {
        self.decode(
            self.send(Method::GET, "/health", None, empty(), self.wait())
                .await?,
        )
        .await
    }

    /// What the capsule says about itself (`GET /health`): the facts a server shows as capsule
    /// metadata, read from inside the guest rather than from the host.
    pub async fn guest_facts(&self) -> Result<GuestFacts, AgentError> {
        let health = self.health().await?;
        Ok(GuestFacts {
            agent_version: health.version,
            kernel_version: health.kernel_version,
        })
    }

    /// `POST /exec`: a foreground run's result, or a started background process.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecOutcome, AgentError> {
        // The agent answers a foreground run when its own timeout (30 s when none) runs out.
        let wait = if req.background {
            self.wait()
        } else {
            let secs = match req.timeout_sec {
                None | Some(0) => DEFAULT_EXEC_TIMEOUT_SEC,
                Some(t) => t,
            };
            Wait::For(Duration::from_secs(secs).saturating_add(self.deadlines.exec_grace))
        };
        let resp = self.send_json(Method::POST, "/exec", req, wait).await?;
        if resp.status() == StatusCode::ACCEPTED {
            Ok(ExecOutcome::Started(self.decode(resp).await?))
        } else {
            Ok(ExecOutcome::Finished(self.decode(resp).await?))
        }
    }

    /// `GET /processes`.
    pub async fn processes(&self) -> Result<ProcessList, AgentError> {
        self.decode(
            self.send(Method::GET, "/processes", None, empty(), self.wait())
                .await?,
        )
        .await
    }

    /// `DELETE /processes/{selector}?signal=`: `selector` is a decimal pid or a tag.
    pub async fn kill(&self, selector: &str, signal: KillSignal) -> Result<(), AgentError> {
        let path = format!(
            "/processes/{}?signal={signal}",
            percent_encode(selector, false)
        );
        self.send(Method::DELETE, &path, None, empty(), self.wait())
            .await?;
        Ok(())
    }

    /// `POST /files/list`.
    pub async fn list(&self, path: &str, depth: u32) -> Result<ListResponse, AgentError> {
        let req = ListRequest {
            path: path.to_string(),
            depth,
        };
        self.decode(
            self.send_json(Method::POST, "/files/list", &req, self.wait())
                .await?,
        )
        .await
    }

    /// `POST /files/mkdir` (`mkdir -p`; `already_exists` when it is a directory already).
    pub async fn mkdir(&self, path: &str) -> Result<FileEntry, AgentError> {
        let resp = self
            .send_json(Method::POST, "/files/mkdir", &path_req(path), self.wait())
            .await?;
        Ok(self.decode::<EntryResponse>(resp).await?.entry)
    }

    /// `POST /files/remove` (recursive).
    pub async fn remove(&self, path: &str) -> Result<(), AgentError> {
        self.send_json(Method::POST, "/files/remove", &path_req(path), self.wait())
            .await?;
        Ok(())
    }

    /// `POST /files/stat`.
    pub async fn stat(&self, path: &str) -> Result<FileEntry, AgentError> {
        self.decode(
            self.send_json(Method::POST, "/files/stat", &path_req(path), self.wait())
                .await?,
        )
        .await
    }

    /// Streams a file; the length when known.
    pub async fn read(
        &self,
        path: &str,
    ) -> Result<(Option<u64>, BoxStream<'static, Result<Bytes, AgentError>>), AgentError> {
        let resp = self
            .send_json(Method::POST, "/files/read", &path_req(path), self.wait())
            .await?;
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let stream = resp.into_body().into_data_stream().map_err(transport);
        Ok((len, stream.boxed()))
    }

    /// Streams `body` into `path` (parents created, replaced atomically).
    pub async fn write<S>(&self, path: &str, body: S) -> Result<(), AgentError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let upload = deadline::Upload::new();
        let body = StreamBody::new(Box::pin(body).map_ok(Frame::data));
        let body = deadline::Watched::new(body, upload.clone()).boxed_unsync();
        let uri = format!("/files/write?path={}", percent_encode(path, true));
        let ct = Some("application/octet-stream");
        self.send(Method::POST, &uri, ct, body, Wait::Upload(upload))
            .await?;
        Ok(())
    }

    /// Decodes a JSON answer of at most `limits.json` bytes.
    async fn decode<T: DeserializeOwned>(&self, resp: Response<Incoming>) -> Result<T, AgentError> {
        let after = self.deadlines.request;
        let body = tokio::time::timeout(after, collect_limited(resp.into_body(), self.limits.json))
            .await
            .map_err(|_| AgentError::Timeout {
                phase: Phase::Answer,
                after,
            })??;
        serde_json::from_slice(&body).map_err(|e| AgentError::Decode(e.into()))
    }

    /// Opens an agent WebSocket endpoint, e.g. "/pty", "/exec/stream",
    /// "/processes/proc-1a2b3c4d/stream". A refused upgrade with an error body becomes
    /// [`AgentError::Api`].
    pub async fn websocket(
        &self,
        path_and_query: &str,
    ) -> Result<WebSocketStream<AgentStream>, AgentError> {
        let stream = self.connect().await?;
        let url = format!("ws://localhost{path_and_query}");
        let after = self.deadlines.request;
        let upgrade = tokio::time::timeout(after, tokio_tungstenite::client_async(url, stream))
            .await
            .map_err(|_| AgentError::Timeout {
                phase: Phase::Answer,
                after,
            })?;
        match upgrade {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                Err(api_error(resp.status(), &body))
            }
            Err(e) => Err(transport(e)),
        }
    }
}

/// How [`AgentClient::send`] waits for the answer's head.
/// The task driving one connection to the agent. It owns the request body and outlives the
/// call only to stream an answer's body, so it is aborted when the call fails or its caller
/// goes away, unless [`ConnTask::keep`] was called: stuck writing to a stopped agent, it would
/// otherwise hold the body for ever, and with it whoever feeds that body.
pub(crate) struct ConnTask(Option<tokio::task::JoinHandle<()>>);

impl ConnTask {
    /// Lets the task run on (the answer's head is in).
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

enum Wait {
    /// At most this long.
    For(Duration),
    /// While the upload makes progress, then [`Deadlines::request`] after its last byte.
    Upload(std::sync::Arc<deadline::Upload>),
}

fn path_req(path: &str) -> PathRequest {
    PathRequest {
        path: path.to_string(),
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> AgentError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => AgentError::Api {
            status: status.as_u16(),
            code: AgentErrorCode::parse(&b.error.code),
            message: b.error.message,
        },
        Err(_) => AgentError::Api {
            status: status.as_u16(),
            code: AgentErrorCode::Internal,
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// The whole of `body`, or [`AgentError::TooLarge`] as soon as it exceeds `limit` bytes.
async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, AgentError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(AgentError::TooLarge { limit }),
        Err(e) => Err(AgentError::Transport(e)),
    }
}

/// The first `limit` bytes of `body`; the rest is never read.
async fn collect_truncated<B>(body: B, limit: usize) -> Result<Vec<u8>, AgentError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = body;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.map_err(transport)?.into_data() {
            let take = data.len().min(limit - out.len());
            out.extend_from_slice(&data[..take]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes() {
        assert_eq!(percent_encode("/a b/ü?&=", true), "/a%20b/%C3%BC%3F%26%3D");
        assert_eq!(percent_encode("proc-1/x", false), "proc-1%2Fx");
    }

    #[test]
    fn parses_error_bodies() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"gone"}}"#,
        );
        assert_eq!(e.code(), Some(AgentErrorCode::NotFound));
        let e = api_error(StatusCode::BAD_GATEWAY, b"oops");
        assert!(matches!(e, AgentError::Api { status: 502, .. }));
    }

    /// What the fake agent answers to every request.
    #[derive(Clone)]
    enum Answer {
        /// Status line (e.g. "200 OK") and a body with its length.
        Fixed(&'static str, Vec<u8>),
        /// "200 OK" and an endless chunked body.
        Endless,
        /// Nothing: the connection stays open and unread after the request head, as with a
        /// stopped agent.
        Silent,
    }

    /// A fake agent on a fresh socket, answering every connection with `answer`.
    async fn fake_agent(answer: Answer) -> (AgentClient, std::path::PathBuf) {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wrenn-agent-client-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    // Read the request head; bodies are small and ignored.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    match answer {
                        Answer::Silent => {
                            std::future::pending::<()>().await;
                        }
                        Answer::Fixed(status, body) => {
                            let head = format!(
                                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            let _ = conn.write_all(head.as_bytes()).await;
                            let _ = conn.write_all(&body).await;
                        }
                        Answer::Endless => {
                            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                            if conn.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let mut chunk = format!("{:x}\r\n", 1 << 20).into_bytes();
                            chunk.extend(std::iter::repeat_n(b' ', 1 << 20));
                            chunk.extend_from_slice(b"\r\n");
                            // Until the client hangs up.
                            while conn.write_all(&chunk).await.is_ok() {}
                        }
                    }
                });
            }
        });
        (AgentClient::new(&socket), dir)
    }

    fn short() -> Deadlines {
        Deadlines {
            connect: Duration::from_millis(200),
            request: Duration::from_millis(300),
            exec_grace: Duration::from_millis(100),
        }
    }

    /// Asserts `r` timed out in `phase` after `after`, and took about that long.
    async fn times_out<T: std::fmt::Debug>(
        call: impl std::future::Future<Output = Result<T, AgentError>>,
        phase: Phase,
        after: Duration,
    ) {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call is bounded");
        match r {
            Err(AgentError::Timeout { phase: p, after: a }) => {
                assert_eq!((p, a), (phase, after));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= after, "{:?}", started.elapsed());
        assert!(started.elapsed() < after + Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_silent_agent_times_every_call_out() {
        let (client, dir) = fake_agent(Answer::Silent).await;
        let client = client.with_deadlines(short());
        let request = short().request;
        times_out(client.health(), Phase::Answer, request).await;
        times_out(client.list("/", 1), Phase::Answer, request).await;
        let read = async { client.read("/x").await.map(|(len, _)| len) };
        times_out(read, Phase::Answer, request).await;
        times_out(client.websocket("/pty"), Phase::Answer, request).await;
        let mut bg = ExecRequest::from(wrenn_types::agent::ProcessSpec::new("true", [""; 0]));
        bg.background = true;
        times_out(client.exec(&bg), Phase::Answer, request).await;
        // A foreground run waits its own timeout plus the grace.
        let mut fg = bg.clone();
        fg.background = false;
        fg.timeout_sec = Some(1);
        let fg_wait = Duration::from_secs(1) + short().exec_grace;
        times_out(client.exec(&fg), Phase::Answer, fg_wait).await;
        // A small upload goes out whole, then no answer comes.
        let one = futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]);
        times_out(client.write("/x", one), Phase::Answer, request).await;
        // A large one stops when the agent stops taking bytes.
        let chunk = Bytes::from(vec![0u8; 1 << 16]);
        let endless = futures_util::stream::repeat_with(move || Ok(chunk.clone()));
        times_out(client.write("/x", endless), Phase::Upload, request).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_stalled_upload_lets_go_of_its_body() {
        // A caller pumping an upload through a bounded channel (as the API's multipart
        // handler does) must see the channel close once the call gave up on the agent, or it
        // would wait on a full channel for ever and never answer its own client.
        let (client, dir) = fake_agent(Answer::Silent).await;
        let client = client.with_deadlines(short());
        let pumped = || {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
            let pump = tokio::spawn(async move {
                let chunk = Bytes::from(vec![0u8; 1 << 16]);
                while tx.send(Ok(chunk.clone())).await.is_ok() {}
            });
            (
                futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
                pump,
            )
        };
        let let_go = |pump: tokio::task::JoinHandle<()>| async move {
            tokio::time::timeout(Duration::from_secs(5), pump)
                .await
                .expect("the body was dropped with the call")
                .expect("pump");
        };
        let (body, pump) = pumped();
        times_out(client.write("/x", body), Phase::Upload, short().request).await;
        let_go(pump).await;
        // The same for a forwarded envd call.
        let (body, pump) = pumped();
        let req = Request::post("/files")
            .body(StreamBody::new(body.map_ok(Frame::data)))
            .expect("request");
        let call = async { client.forward_envd(req).await.map(|_| ()) };
        times_out(call, Phase::Upload, short().request).await;
        let_go(pump).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_silent_vsock_forwarder_times_the_connect_out() {
        let dir =
            std::env::temp_dir().join(format!("wrenn-agent-client-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("vsock.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let client = AgentClient::new(AgentEndpoint::HybridVsock { path, port: 1024 })
            .with_deadlines(short());
        times_out(client.health(), Phase::Connect, short().connect).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_slow_upload_source_is_not_the_agents_fault() {
        // An agent that reads everything and answers at the end.
        let dir =
            std::env::temp_dir().join(format!("wrenn-agent-client-slow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // The chunked body ends with "0\r\n\r\n".
            while !seen.ends_with(b"0\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        });
        let client = AgentClient::new(&socket).with_deadlines(short());
        // Slower than the request deadline in total, but the agent always keeps up.
        let slow = futures_util::stream::iter(0..4).then(|_| async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(Bytes::from_static(b"chunk"))
        });
        client
            .write("/x", slow)
            .await
            .expect("a slow source is fine");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn processes_json(pad: usize) -> Vec<u8> {
        format!(r#"{{"processes":[]{}}}"#, " ".repeat(pad)).into_bytes()
    }

    #[tokio::test]
    async fn json_answers_are_limited() {
        let (mut client, dir) = fake_agent(Answer::Fixed("200 OK", processes_json(1000))).await;
        client.limits.json = 2000;
        assert_eq!(client.processes().await.expect("fits").processes, vec![]);
        client.limits.json = 1000;
        assert!(matches!(
            client.processes().await,
            Err(AgentError::TooLarge { limit: 1000 })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn endless_json_answer_stops_at_the_default_limit() {
        let (client, dir) = fake_agent(Answer::Endless).await;
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), client.list("/", 100))
            .await
            .expect("gives up at the limit");
        assert!(
            matches!(
                r,
                Err(AgentError::TooLarge {
                    limit: MAX_JSON_BYTES
                })
            ),
            "{r:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn error_bodies_are_truncated() {
        let mut body = br#"{"error":{"code":"internal","message":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 10_000));
        body.extend_from_slice(br#""}}"#);
        let (mut client, dir) = fake_agent(Answer::Fixed("500 Internal Server Error", body)).await;
        client.limits.error = 100;
        match client.health().await {
            Err(AgentError::Api {
                status: 500,
                code: AgentErrorCode::Internal,
                message,
            }) => {
                assert_eq!(message.len(), 100);
                assert!(message.starts_with(r#"{"error""#), "{message}");
            }
            other => panic!("expected a truncated api error, got {other:?}"),
        }
        // The real limit keeps a whole small error.
        client.limits.error = MAX_ERROR_BYTES;
        let e = client.health().await.expect_err("error");
        assert!(
            matches!(&e, AgentError::Api { message, .. } if message.len() == 10_000),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A fake vsock-over-UDS forwarder next to `agent`: answers `CONNECT <port>` with `answer`,
    /// then (when it said OK) proxies bytes to the agent's socket.
    async fn fake_forwarder(agent: std::path::PathBuf, answer: &'static str) -> AgentClient {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let path = agent.with_file_name(format!("vsock-{}.sock", answer.len()));
        let listener = tokio::net::UnixListener::bind(&path).expect("bind forwarder");
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let agent = agent.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.is_err() || line != "CONNECT 1024\n" {
                        return;
                    }
                    let _ = conn.write_all(answer.as_bytes()).await;
                    if !answer.starts_with("OK ") {
                        return;
                    }
                    let Ok(mut upstream) = tokio::net::UnixStream::connect(&agent).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                });
            }
        });
        AgentClient::new(AgentEndpoint::HybridVsock { path, port: 1024 })
    }

    #[tokio::test]
    async fn hybrid_vsock_speaks_http_after_the_handshake() {
        let (direct, dir) = fake_agent(Answer::Fixed("200 OK", processes_json(0))).await;
        let socket = direct.endpoint().host_path().expect("unix").to_path_buf();
        let client = fake_forwarder(socket, "OK 1073741824\n").await;
        assert_eq!(
            client.processes().await.expect("via forwarder").processes,
            vec![]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn refused_hybrid_handshake_is_a_connect_error() {
        let (direct, dir) = fake_agent(Answer::Fixed("200 OK", processes_json(0))).await;
        let socket = direct.endpoint().host_path().expect("unix").to_path_buf();
        let client = fake_forwarder(socket, "NO such port\n").await;
        match client.health().await {
            Err(AgentError::Connect { endpoint, source }) => {
                assert_eq!(&endpoint, client.endpoint());
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn missing_endpoints_are_connect_errors() {
        let gone = AgentClient::new(AgentEndpoint::HybridVsock {
            path: "/nonexistent/wrenn/vsock.sock".into(),
            port: 1,
        });
        assert!(matches!(
            gone.health().await,
            Err(AgentError::Connect { .. })
        ));
        assert!(matches!(
            gone.websocket("/pty").await,
            Err(AgentError::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn unreachable_vsock_is_a_connect_error() {
        // cid 1 is this machine's loopback context: nothing leaves the host, and with no
        // vsock_loopback transport (or nothing listening) the connect fails.
        let client = AgentClient::new(AgentEndpoint::Vsock {
            cid: 1,
            port: 0x7fff_fff0,
        });
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), client.health())
            .await
            .expect("connect gives up");
        assert!(matches!(r, Err(AgentError::Connect { .. })), "{r:?}");
    }
}
