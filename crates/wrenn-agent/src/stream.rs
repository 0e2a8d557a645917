//! WebSocket streams of process output: `GET /exec/stream` (contract §6.5) and
//! `GET /processes/{selector}/stream` (§6.4).
//!
//! Exchange: `start` {pid} → `stdout`/`stderr` text chunks → `exit` {exit_code} → close 1000;
//! or `error` {data} → close. The socket is read all along, so pings are answered and a client
//! close is noticed (which kills an exec stream's process group).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use tokio::sync::{broadcast, mpsc};
use wrenn_types::stream::{ExecStreamRequest, StreamEvent, EXEC_FIRST_MESSAGE_ERROR};

use crate::error::ApiError;
use crate::launch::{launch, KillOnDrop, STREAM_CHUNK};
use crate::processes::{ProcEvent, Sink};
use crate::state::SharedState;
use crate::sys;
use crate::ws::{close, first_text, send_json, PING_PERIOD};

/// Decodes a byte stream to UTF-8 text, carrying a sequence split across chunks to the next.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Text of `chunk` (invalid bytes → U+FFFD), minus an incomplete trailing sequence.
    pub fn decode(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let keep = match std::str::from_utf8(&self.pending) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => self.pending.len() - e.valid_up_to(),
            Err(_) => {
                // An invalid sequence inside: find an incomplete tail after the last valid char.
                let tail_start = self.pending.len().saturating_sub(3);
                (tail_start..self.pending.len())
                    .find(|&i| {
                        let tail = &self.pending[i..];
                        matches!(std::str::from_utf8(tail), Err(e) if e.error_len().is_none() && e.valid_up_to() == 0)
                    })
                    .map(|i| self.pending.len() - i)
                    .unwrap_or(0)
            }
        };
        let split = self.pending.len() - keep;
        let rest = self.pending.split_off(split);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// Whatever is left, lossily.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

async fn fail(socket: &mut WebSocket, data: String) {
    send_json(socket, &StreamEvent::Error { data }).await;
    close(socket).await;
}

/// Output decoders of both streams.
#[derive(Debug, Default)]
struct Decoders {
    out: Utf8Carry,
    err: Utf8Carry,
}

impl Decoders {
    fn event(&mut self, ev: &ProcEvent) -> Option<StreamEvent> {
        let (data, stdout) = match ev {
            ProcEvent::Stdout(b) => (self.out.decode(b), true),
            ProcEvent::Stderr(b) => (self.err.decode(b), false),
            ProcEvent::Exit(_) => return None,
        };
        if data.is_empty() {
            None
        } else if stdout {
            Some(StreamEvent::Stdout { data })
        } else {
            Some(StreamEvent::Stderr { data })
        }
    }

    fn flush(&mut self) -> Vec<StreamEvent> {
        let mut v = Vec::new();
        let out = self.out.finish();
        if !out.is_empty() {
            v.push(StreamEvent::Stdout { data: out });
        }
        let err = self.err.finish();
        if !err.is_empty() {
            v.push(StreamEvent::Stderr { data: err });
        }
        v
    }
}

/// Sends what one process event means to the client. On `Exit` it flushes the decoders, sends
/// `exit` and closes. Returns whether the stream goes on.
async fn deliver(socket: &mut WebSocket, decoders: &mut Decoders, ev: ProcEvent) -> bool {
    if let ProcEvent::Exit(exit_code) = ev {
        for e in decoders.flush() {
            send_json(socket, &e).await;
        }
        send_json(socket, &StreamEvent::Exit { exit_code }).await;
        close(socket).await;
        return false;
    }
    match decoders.event(&ev) {
        Some(e) => send_json(socket, &e).await,
        None => true,
    }
}

/// `GET /exec/stream`.
pub async fn exec_stream(State(state): State<SharedState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| run_exec_stream(state, socket))
}

async fn run_exec_stream(state: SharedState, mut socket: WebSocket) {
    let first = first_text(&mut socket).await;
    let spec = match first.map(|t| serde_json::from_str::<ExecStreamRequest>(&t)) {
        Some(Ok(ExecStreamRequest::Start(spec))) if !spec.cmd.is_empty() => spec,
        _ => return fail(&mut socket, EXEC_FIRST_MESSAGE_ERROR.to_string()).await,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let pid = match launch(&state, &spec, None, Sink::Direct(tx), STREAM_CHUNK) {
        Ok(pid) => pid,
        Err(e) => return fail(&mut socket, ApiError::from(e).message).await,
    };
    let mut guard = KillOnDrop { pid, armed: true };
    if !send_json(&mut socket, &StreamEvent::Start { pid }).await {
        return;
    }
    let mut decoders = Decoders::default();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    if matches!(ev, ProcEvent::Exit(_)) {
                        guard.armed = false;
                    }
                    if !deliver(&mut socket, &mut decoders, ev).await {
                        return;
                    }
                }
                None => return fail(&mut socket, "output stream ended".to_string()).await,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(ExecStreamRequest::Stop) = serde_json::from_str(&t) {
                        let _ = sys::kill_group(pid, libc::SIGKILL);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `GET /processes/{selector}/stream`.
pub async fn attach(
    State(state): State<SharedState>,
    Path(selector): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| run_attach(state, selector, socket))
}

async fn run_attach(state: SharedState, selector: String, mut socket: WebSocket) {
    let (pid, mut rx) = match state.procs.subscribe(&selector) {
        Ok(s) => s,
        Err(e) => return fail(&mut socket, ApiError::from(e).message).await,
    };
    if !send_json(&mut socket, &StreamEvent::Start { pid }).await {
        return;
    }
    let mut decoders = Decoders::default();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if !deliver(&mut socket, &mut decoders, ev).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return fail(&mut socket, "output stream ended".to_string()).await
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_carry_joins_split_sequences() {
        let bytes = "aé€z".as_bytes();
        let mut c = Utf8Carry::default();
        let mut text = String::new();
        for b in bytes {
            text.push_str(&c.decode(&[*b]));
        }
        text.push_str(&c.finish());
        assert_eq!(text, "aé€z");
        let mut c = Utf8Carry::default();
        assert_eq!(c.decode(&[0xff, b'a', 0xe2, 0x82]), "\u{fffd}a");
        assert_eq!(c.decode(&[0xac]), "€");
    }
}
