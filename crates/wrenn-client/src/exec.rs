//! Commands and processes (contract §6): foreground and background exec, the process table,
//! and the streamed WebSocket forms.

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wrenn_types::agent::{
    ExecRequest, KillSignal, OutputEncoding, ProcessList, ProcessSpec, DEFAULT_EXEC_TIMEOUT_SEC,
};
use wrenn_types::api::{BackgroundExecResponse, ExecResponse};
use wrenn_types::stream::{ExecStreamRequest, StreamEvent};

use crate::{segment, Client, ClientError};

/// A client WebSocket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Extra time the HTTP request of a foreground exec gets past the command's own deadline.
const EXEC_SLACK: Duration = Duration::from_secs(10);

/// The raw bytes of a foreground exec's stdout and stderr, undoing the base64 the server uses
/// when either is not UTF-8.
pub fn decode_output(r: &ExecResponse) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
    match r.encoding {
        OutputEncoding::Utf8 => Ok((r.stdout.clone().into_bytes(), r.stderr.clone().into_bytes())),
        OutputEncoding::Base64 => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let out = b64
                .decode(&r.stdout)
                .map_err(|e| ClientError::Protocol(format!("stdout is not base64: {e}")))?;
            let err = b64
                .decode(&r.stderr)
                .map_err(|e| ClientError::Protocol(format!("stderr is not base64: {e}")))?;
            Ok((out, err))
        }
    }
}

impl Client {
    /// Runs a command in the foreground and returns its collected output; `req.background`
    /// is ignored (see [`Client::exec_background`]).
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResponse, ClientError> {
        let req = ExecRequest {
            background: false,
            ..req.clone()
        };
        let secs = req
            .timeout_sec
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_EXEC_TIMEOUT_SEC);
        Self::json(
            self.request(Method::POST, &format!("/capsules/{}/exec", segment(id)))
                .json(&req)
                .timeout(Duration::from_secs(secs) + EXEC_SLACK),
        )
        .await
    }

    /// Runs `command` through `/bin/sh -c` in the foreground.
    pub async fn run(&self, id: &str, command: &str) -> Result<ExecResponse, ClientError> {
        self.exec(id, &shell(command)).await
    }

    /// Starts a command in the background; it keeps running after this returns.
    pub async fn exec_background(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<BackgroundExecResponse, ClientError> {
        let req = ExecRequest {
            background: true,
            ..req.clone()
        };
        Self::json(
            self.request(Method::POST, &format!("/capsules/{}/exec", segment(id)))
                .json(&req),
        )
        .await
    }

    /// The processes the capsule's agent tracks.
    pub async fn list_processes(&self, id: &str) -> Result<ProcessList, ClientError> {
        Self::json(self.request(Method::GET, &format!("/capsules/{}/processes", segment(id)))).await
    }

    /// Signals a tracked process by pid or tag.
    pub async fn kill_process(
        &self,
        id: &str,
        selector: &str,
        signal: KillSignal,
    ) -> Result<(), ClientError> {
        let name = match signal {
            KillSignal::Kill => "SIGKILL",
            KillSignal::Term => "SIGTERM",
        };
        let path = format!(
            "/capsules/{}/processes/{}?signal={name}",
            segment(id),
            segment(selector)
        );
        Self::send(self.request(Method::DELETE, &path)).await?;
        Ok(())
    }

    /// Starts a command and streams its output as it comes (`exec/stream`).
    pub async fn exec_stream(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<ExecStream, ClientError> {
        let mut ws = self
            .websocket(&format!("/capsules/{}/exec/stream", segment(id)))
            .await?;
        let start = ExecStreamRequest::Start(req.process.clone());
        let text = serde_json::to_string(&start).map_err(ClientError::Decode)?;
        ws.send(Message::Text(text.into())).await?;
        Ok(ExecStream { ws, done: false })
    }

    /// Follows a running background process's output (from now on).
    pub async fn process_stream(
        &self,
        id: &str,
        selector: &str,
    ) -> Result<ExecStream, ClientError> {
        let ws = self
            .websocket(&format!(
                "/capsules/{}/processes/{}/stream",
                segment(id),
                segment(selector)
            ))
            .await?;
        Ok(ExecStream { ws, done: false })
    }

    /// Opens a WebSocket to `/v1{path}` with the key; a refused upgrade carries the server's
    /// error code.
    pub(crate) async fn websocket(&self, path: &str) -> Result<Socket, ClientError> {
        let mut req = self.ws_url(path).into_client_request()?;
        let key = HeaderValue::from_str(&self.api_key)
            .map_err(|_| ClientError::Protocol("the API key is not a valid header".into()))?;
        req.headers_mut().insert("x-api-key", key);
        // Small frames (a keystroke, a cell) go out at once rather than behind Nagle.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
        Ok(ws)
    }
}

/// `/bin/sh -c command`, the way the SDK runs commands.
pub fn shell(command: &str) -> ExecRequest {
    ExecRequest::from(ProcessSpec::new("/bin/sh", ["-c", command]))
}

/// The events of a streamed command: `start`, `stdout`/`stderr` chunks, then `exit` or
/// `error`.
#[derive(Debug)]
pub struct ExecStream {
    ws: Socket,
    done: bool,
}

impl ExecStream {
    /// The next event; `None` after `exit`/`error` or when the server closed.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            match msg {
                Message::Text(t) => {
                    let ev = serde_json::from_str::<StreamEvent>(&t).map_err(ClientError::Decode);
                    if matches!(ev, Ok(StreamEvent::Exit { .. } | StreamEvent::Error { .. })) {
                        self.done = true;
                    }
                    return Some(ev);
                }
                Message::Close(_) => {
                    self.done = true;
                    return None;
                }
                _ => {}
            }
        }
    }

    /// Asks the server to kill the command (exec streams only).
    pub async fn stop(&mut self) -> Result<(), ClientError> {
        let text = serde_json::to_string(&ExecStreamRequest::Stop).map_err(ClientError::Decode)?;
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_output_is_decoded() {
        let r = ExecResponse {
            sandbox_id: "cl-x".into(),
            cmd: "/bin/sh".into(),
            stdout: "/w==".into(),
            stderr: "".into(),
            exit_code: 0,
            duration_ms: 1,
            encoding: OutputEncoding::Base64,
        };
        assert_eq!(decode_output(&r).unwrap(), (vec![0xff], vec![]));
    }
}
