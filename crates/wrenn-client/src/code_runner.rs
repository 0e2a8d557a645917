//! Code cells in a capsule's Jupyter kernel, reached through the port proxy (contract §11–12),
//! the way the official SDK's `wrenn.code_runner.Capsule` does it:
//!
//! 1. `GET /api/kernels` on `8888-{id}.{host}`, retried every 0.5 s while the proxy or Jupyter
//!    answers 5xx or cannot be reached; the first kernel of the wanted kernelspec is used, or
//!    one is made with `POST /api/kernels`.
//! 2. One WebSocket to `/api/kernels/{kernel}/channels`; each cell is an `execute_request` on
//!    the shell channel, and its IOPub messages are collected until the kernel says `idle`.
//!
//! Requests go to the base URL's address with the proxy host in the `Host` header, so no
//! wildcard DNS is needed on the client's side.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::HOST;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::exec::Socket;
use crate::{segment, Client, ClientError};

/// The port Jupyter Server listens on in a code-runner capsule.
pub const JUPYTER_PORT: u16 = 8888;
/// The kernelspec the SDK asks for by default.
pub const DEFAULT_KERNEL: &str = "wrenn";
/// The SDK's pause between two tries while Jupyter is not reachable yet.
const RETRY: Duration = Duration::from_millis(500);

/// An open kernel session of one capsule: run cells with [`CodeRunner::run_code`].
#[derive(Debug)]
pub struct CodeRunner {
    ws: Socket,
    kernel_id: String,
    session: String,
}

/// What a cell produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Execution {
    /// Rich results (`execute_result` and `display_data`), in order.
    pub results: Vec<CellResult>,
    /// Chunks the cell wrote to stdout.
    pub stdout: Vec<String>,
    /// Chunks the cell wrote to stderr.
    pub stderr: Vec<String>,
    /// The exception the cell raised.
    pub error: Option<CellError>,
    /// The kernel's execution counter for this cell, when it had a main result.
    pub execution_count: Option<u64>,
}

impl Execution {
    /// The `text/plain` form of the cell's main result (its last expression), like the SDK's
    /// `Execution.text`.
    pub fn text(&self) -> Option<&str> {
        self.results
            .iter()
            .find(|r| r.is_main_result)
            .and_then(|r| r.data.get("text/plain"))
            .and_then(serde_json::Value::as_str)
    }
}

/// One rich output: a MIME bundle (`text/plain`, `text/html`, `image/png` as base64, …).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CellResult {
    /// MIME type → data, as the kernel sent it.
    pub data: BTreeMap<String, serde_json::Value>,
    /// Whether this is the cell's value (`execute_result`) rather than a display.
    pub is_main_result: bool,
}

/// An exception raised by a cell.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CellError {
    /// Exception class, e.g. `ZeroDivisionError`.
    pub name: String,
    /// Its message.
    pub value: String,
    /// The traceback, one frame a line (with the kernel's ANSI colours).
    pub traceback: String,
}

/// A kernel in `GET /api/kernels`.
#[derive(Debug, Deserialize)]
struct Kernel {
    id: String,
    #[serde(default)]
    name: String,
}

/// `POST /api/kernels`.
#[derive(Debug, Serialize)]
struct NewKernel<'a> {
    name: &'a str,
}

/// A Jupyter message header.
#[derive(Debug, Serialize, Deserialize, Default)]
struct Header {
    #[serde(default)]
    msg_id: String,
    #[serde(default)]
    msg_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

/// The content of an `execute_request`.
#[derive(Debug, Serialize)]
struct ExecuteRequest<'a> {
    code: &'a str,
    silent: bool,
    store_history: bool,
    user_expressions: BTreeMap<String, String>,
    allow_stdin: bool,
    stop_on_error: bool,
}

/// An outgoing shell message (the JSON form jupyter_server's kernel WebSocket takes).
#[derive(Debug, Serialize)]
struct Outgoing<'a> {
    header: Header,
    parent_header: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    content: ExecuteRequest<'a>,
    buffers: Vec<String>,
    channel: &'static str,
}

/// The fields of IOPub contents the code runner reads; all optional, as each message type
/// carries a different subset.
#[derive(Debug, Deserialize, Default)]
struct Content {
    name: Option<String>,
    text: Option<String>,
    data: Option<BTreeMap<String, serde_json::Value>>,
    execution_count: Option<u64>,
    ename: Option<String>,
    evalue: Option<String>,
    traceback: Option<Vec<String>>,
    execution_state: Option<String>,
}

/// Just the parent of an incoming message.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    parent_header: Header,
}

/// An incoming kernel message.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    msg_type: Option<String>,
    #[serde(default)]
    content: Content,
}

impl Client {
    /// The proxy host of `port` in capsule `id` (`{port}-{id}.{host}[:{port}]`), as the SDK
    /// builds it from the base URL.
    pub fn proxy_host(&self, id: &str, port: u16) -> String {
        format!("{port}-{id}.{}", self.authority())
    }

    /// `host[:port]` of the base URL.
    fn authority(&self) -> &str {
        let rest = self
            .base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }

    /// `scheme://host[:port]` of the base URL (no path prefix: the proxy routes by host).
    fn origin(&self) -> String {
        let scheme = self.base.split_once("://").map_or("http", |(s, _)| s);
        format!("{scheme}://{}", self.authority())
    }

    /// Opens a session with a kernel of `kernel` (the SDK's default is [`DEFAULT_KERNEL`]) in
    /// code-runner capsule `id`, waiting up to `jupyter_timeout` for Jupyter to answer.
    pub async fn code_runner(
        &self,
        id: &str,
        kernel: &str,
        jupyter_timeout: Duration,
    ) -> Result<CodeRunner, ClientError> {
        let host = self.proxy_host(id, JUPYTER_PORT);
        let kernel_id = self.ensure_kernel(&host, kernel, jupyter_timeout).await?;
        let url = format!(
            "{}/api/kernels/{}/channels",
            self.origin().replacen("http", "ws", 1),
            segment(&kernel_id)
        );
        let mut req = url.into_client_request()?;
        let bad = |_| ClientError::Protocol("the API key or host is not a valid header".into());
        req.headers_mut()
            .insert("host", HeaderValue::from_str(&host).map_err(bad)?);
        req.headers_mut().insert(
            "x-api-key",
            HeaderValue::from_str(&self.api_key).map_err(bad)?,
        );
        // Small frames (a keystroke, a cell) go out at once rather than behind Nagle.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
        Ok(CodeRunner {
            ws,
            kernel_id,
            session: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Step 1 of the SDK's sequence: an existing kernel of `kernel`, else a new one.
    async fn ensure_kernel(
        &self,
        host: &str,
        kernel: &str,
        jupyter_timeout: Duration,
    ) -> Result<String, ClientError> {
        let deadline = Instant::now() + jupyter_timeout;
        let url = format!("{}/api/kernels", self.origin());
        let mut last = String::new();
        while Instant::now() < deadline {
            let list = self
                .http
                .get(&url)
                .header(HOST, host)
                .header("x-api-key", &self.api_key)
                .send()
                .await;
            match list {
                Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
                Ok(r) if !r.status().is_success() => {
                    return Err(ClientError::from_response(r).await)
                }
                Ok(r) => {
                    let bytes = r.bytes().await.map_err(ClientError::Http)?;
                    let kernels: Vec<Kernel> =
                        serde_json::from_slice(&bytes).map_err(ClientError::Decode)?;
                    if let Some(k) = kernels.into_iter().find(|k| k.name == kernel) {
                        return Ok(k.id);
                    }
                    let made = self
                        .http
                        .post(&url)
                        .header(HOST, host)
                        .header("x-api-key", &self.api_key)
                        .json(&NewKernel { name: kernel })
                        .send()
                        .await;
                    match made {
                        Ok(r) if r.status().is_server_error() => {
                            last = format!("HTTP {}", r.status())
                        }
                        Ok(r) if !r.status().is_success() => {
                            return Err(ClientError::from_response(r).await)
                        }
                        Ok(r) => {
                            let bytes = r.bytes().await.map_err(ClientError::Http)?;
                            let k: Kernel =
                                serde_json::from_slice(&bytes).map_err(ClientError::Decode)?;
                            return Ok(k.id);
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(ClientError::Stream(format!(
            "Jupyter not available within {} s: {last}",
            jupyter_timeout.as_secs()
        )))
    }
}

impl CodeRunner {
    /// The kernel this session talks to.
    pub fn kernel_id(&self) -> &str {
        &self.kernel_id
    }

    /// Runs `code` and collects its output until the kernel is idle again; a cell still running
    /// after `timeout` gives [`ClientError::Stream`] (the kernel keeps running it).
    pub async fn run_code(
        &mut self,
        code: &str,
        timeout: Duration,
    ) -> Result<Execution, ClientError> {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let msg = Outgoing {
            header: Header {
                msg_id: msg_id.clone(),
                msg_type: "execute_request".into(),
                username: Some("wrenn-client".into()),
                session: Some(self.session.clone()),
                date: Some(
                    chrono::Utc::now()
                        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                        .to_string(),
                ),
                version: Some("5.3".into()),
            },
            parent_header: BTreeMap::new(),
            metadata: BTreeMap::new(),
            content: ExecuteRequest {
                code,
                silent: false,
                store_history: true,
                user_expressions: BTreeMap::new(),
                allow_stdin: false,
                stop_on_error: true,
            },
            buffers: Vec::new(),
            channel: "shell",
        };
        let text = serde_json::to_string(&msg).map_err(ClientError::Decode)?;
        self.ws.send(Message::Text(text.into())).await?;
        let mut out = Execution::default();
        let deadline = Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| {
                    ClientError::Stream(format!("the cell ran past {} s", timeout.as_secs()))
                })?;
            let msg = match next {
                Some(m) => m?,
                None => return Err(ClientError::Stream("the kernel WebSocket closed".into())),
            };
            let Message::Text(t) = msg else { continue };
            // Other sessions' and unsolicited messages may carry any content: only the
            // replies to this cell are decoded in full.
            let parent: Envelope = serde_json::from_str(&t).map_err(ClientError::Decode)?;
            if parent.parent_header.msg_id != msg_id {
                continue;
            }
            let m: Incoming = serde_json::from_str(&t).map_err(ClientError::Decode)?;
            if apply(&mut out, m) {
                return Ok(out);
            }
        }
    }
}

/// Folds one IOPub message into `out`; true once the kernel went idle (the cell is done).
fn apply(out: &mut Execution, m: Incoming) -> bool {
    let kind = m.msg_type.unwrap_or(m.header.msg_type);
    let c = m.content;
    match kind.as_str() {
        "stream" => {
            let text = c.text.unwrap_or_default();
            if c.name.as_deref() == Some("stderr") {
                out.stderr.push(text);
            } else {
                out.stdout.push(text);
            }
        }
        "execute_result" | "display_data" => {
            let main = kind == "execute_result";
            if main {
                out.execution_count = c.execution_count;
            }
            out.results.push(CellResult {
                data: c.data.unwrap_or_default(),
                is_main_result: main,
            });
        }
        "error" => {
            out.error = Some(CellError {
                name: c.ename.unwrap_or_default(),
                value: c.evalue.unwrap_or_default(),
                traceback: c.traceback.unwrap_or_default().join("\n"),
            });
        }
        "status" => return c.execution_state.as_deref() == Some("idle"),
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(json: &str) -> Incoming {
        serde_json::from_str(json).expect("message")
    }

    #[test]
    fn proxy_host_follows_the_base_url() {
        let c = Client::new("http://localhost:8080/api", "k").expect("client");
        assert_eq!(c.proxy_host("cl-x", 8888), "8888-cl-x.localhost:8080");
        assert_eq!(c.origin(), "http://localhost:8080");
    }

    #[test]
    fn iopub_messages_fold_into_an_execution() {
        let mut e = Execution::default();
        let msgs = [
            r#"{"header":{"msg_type":"status"},"parent_header":{"msg_id":"m"},"content":{"execution_state":"busy"}}"#,
            r#"{"msg_type":"stream","header":{},"parent_header":{"msg_id":"m"},"content":{"name":"stdout","text":"hi\n"}}"#,
            r#"{"msg_type":"stream","header":{},"parent_header":{"msg_id":"m"},"content":{"name":"stderr","text":"w\n"}}"#,
            r#"{"msg_type":"execute_result","header":{},"parent_header":{"msg_id":"m"},"content":{"execution_count":3,"data":{"text/plain":"2"},"metadata":{}}}"#,
            r#"{"msg_type":"error","header":{},"parent_header":{"msg_id":"m"},"content":{"ename":"E","evalue":"v","traceback":["a","b"]}}"#,
        ];
        for m in msgs {
            assert!(!apply(&mut e, incoming(m)));
        }
        let idle = r#"{"msg_type":"status","header":{},"parent_header":{"msg_id":"m"},"content":{"execution_state":"idle"}}"#;
        assert!(apply(&mut e, incoming(idle)));
        assert_eq!(e.text(), Some("2"));
        assert_eq!(e.execution_count, Some(3));
        assert_eq!(e.stdout, ["hi\n"]);
        assert_eq!(e.stderr, ["w\n"]);
        let err = e.error.expect("error");
        assert_eq!((err.name.as_str(), err.traceback.as_str()), ("E", "a\nb"));
    }
}
