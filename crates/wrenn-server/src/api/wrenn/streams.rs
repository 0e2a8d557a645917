//! WebSocket routes (contract §6.4, §6.5, §7): authenticated before the upgrade, then spliced
//! frame by frame to the same endpoint of the capsule's agent, which speaks the public shapes.
//!
//! 1. Auth and id checks answer before the upgrade (401/400 JSON).
//! 2. After the upgrade, a missing or stopped capsule is an in-band `error` frame, then close.
//! 3. Frames flow both ways unchanged; the client socket is read all along, so its pings are
//!    answered. Either side closing closes the other with 1000.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as AgentMessage;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::service::check_id;
use crate::AppState;

/// Inbound frame cap (contract §14).
const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// exec and process streams: `{"type":"error","data":...}`.
    Exec,
    /// PTY: `{"type":"error","data":...,"fatal":true}`.
    Pty,
}

fn error_frame(flavor: Flavor, message: &str) -> Message {
    let v = match flavor {
        Flavor::Exec => serde_json::json!({"type": "error", "data": message}),
        Flavor::Pty => serde_json::json!({"type": "error", "data": message, "fatal": true}),
    };
    Message::Text(v.to_string().into())
}

fn upgrade(
    state: AppState,
    caller: Caller,
    id: String,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    agent_path: String,
    flavor: Flavor,
) -> ApiResult<Response> {
    check_id(&id)?;
    let ws =
        ws.map_err(|e| ApiError::InvalidRequest(format!("websocket upgrade required: {e}")))?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| splice(state, caller, id, agent_path, flavor, socket)))
}

pub(super) async fn exec_stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    upgrade(state, caller, id, ws, "/exec/stream".into(), Flavor::Exec)
}

pub(super) async fn process_stream(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, selector)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let path = format!("/processes/{}/stream", encode_segment(&selector));
    upgrade(state, caller, id, ws, path, Flavor::Exec)
}

pub(super) async fn pty(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    upgrade(state, caller, id, ws, "/pty".into(), Flavor::Pty)
}

fn encode_segment(s: &str) -> String {
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

async fn close_with(mut socket: WebSocket, flavor: Flavor, message: &str) {
    let _ = socket.send(error_frame(flavor, message)).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

async fn splice(
    state: AppState,
    caller: Caller,
    id: String,
    agent_path: String,
    flavor: Flavor,
    socket: WebSocket,
) {
    let live = match state.capsules.running(&caller.team_id, &id).await {
        Ok(l) => l,
        Err(e) => return close_with(socket, flavor, &ApiError::from(e).to_string()).await,
    };
    let agent_ws = match live.agent().websocket(&agent_path).await {
        Ok(ws) => ws,
        Err(e) => {
            let msg = ApiError::from(e).to_string();
            return close_with(socket, flavor, &msg).await;
        }
    };
    let (mut client_tx, mut client_rx) = socket.split();
    let (mut agent_tx, mut agent_rx) = agent_ws.split();
    loop {
        tokio::select! {
            from_client = client_rx.next() => {
                let msg = match from_client {
                    Some(Ok(m)) => m,
                    _ => {
                        let _ = agent_tx.send(AgentMessage::Close(None)).await;
                        break;
                    }
                };
                let forward = match msg {
                    Message::Text(t) => AgentMessage::Text(t.as_str().into()),
                    Message::Binary(b) => AgentMessage::Binary(b),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => {
                        let _ = agent_tx.send(AgentMessage::Close(None)).await;
                        break;
                    }
                };
                if flavor == Flavor::Pty {
                    state.capsules.touch(&live);
                }
                if agent_tx.send(forward).await.is_err() {
                    let _ = client_tx.send(error_frame(flavor, "capsule agent connection lost")).await;
                    break;
                }
            }
            from_agent = agent_rx.next() => {
                let msg = match from_agent {
                    Some(Ok(m)) => m,
                    Some(Err(_)) => {
                        let _ = client_tx.send(error_frame(flavor, "capsule agent connection lost")).await;
                        break;
                    }
                    None => break,
                };
                let forward = match msg {
                    AgentMessage::Text(t) => Message::Text(t.as_str().into()),
                    AgentMessage::Binary(b) => Message::Binary(b),
                    AgentMessage::Close(_) => break,
                    _ => continue,
                };
                if client_tx.send(forward).await.is_err() {
                    let _ = agent_tx.send(AgentMessage::Close(None)).await;
                    break;
                }
            }
        }
    }
    let _ = client_tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    state.capsules.touch(&live);
}
