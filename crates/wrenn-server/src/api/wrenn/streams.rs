//! WebSocket routes (contract §6.4, §6.5, §7): authenticated before the upgrade, then spliced
//! message by message to the same endpoint of the capsule's agent, through the agent client's
//! typed helpers.
//!
//! 1. Auth and id checks answer before the upgrade (401/400 JSON).
//! 2. After the upgrade, a missing or stopped capsule is an in-band `error` frame, then close.
//! 3. The client's first message (`start`, or `connect` for a PTY) is read here, within the
//!    agent's own first-message deadline, and opens the agent stream; a bad one is answered
//!    with the agent's own error. An attach has no first message.
//! 4. Messages flow both ways, decoded and re-encoded; the client socket is read all along, so
//!    its pings are answered. Either side closing closes the other with 1000.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wrenn_agent_client::stream::{Incoming, Receiver, Sender};
use wrenn_agent_client::{AgentClient, AgentError, PtyEvent};
use wrenn_types::stream::{
    ExecStreamRequest, PtyClientMessage, PtyServerMessage, StreamEvent, EXEC_FIRST_MESSAGE_ERROR,
    FIRST_MESSAGE_TIMEOUT_SEC, PTY_FIRST_MESSAGE_ERROR,
};

use super::input;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::service::check_id;
use crate::AppState;

/// Inbound frame cap (contract §14).
const MAX_FRAME: usize = 4 * 1024 * 1024;
/// The error sent when the agent's side of a splice breaks.
const AGENT_LOST: &str = "capsule agent connection lost";

/// Which agent stream a route opens.
#[derive(Debug, Clone)]
enum Target {
    /// `exec/stream`: the client's `start` opens it.
    Exec,
    /// `processes/{selector}/stream`.
    Attach(String),
    /// `pty`: the client's `start` or `connect` opens it.
    Pty,
}

/// One kind of agent stream, as the splice sees it.
trait Channel {
    /// Client → agent control messages.
    type Command: DeserializeOwned + Serialize + Send;
    /// Agent → client frames.
    type Event: Incoming + Send;
    /// Whether client input counts as capsule activity.
    const INPUT_IS_ACTIVITY: bool;
    /// The in-band error frame that ends a stream of this kind.
    fn error(data: String) -> Option<Message>;
    /// The client frame of an agent event.
    fn frame(event: Self::Event) -> Option<Message>;
    /// Forwards a binary client frame.
    fn binary(
        tx: &mut Sender<Self::Command>,
        bytes: Bytes,
    ) -> impl Future<Output = Result<(), AgentError>> + Send;
}

/// `exec/stream` and `processes/{selector}/stream`.
struct ExecChannel;

impl Channel for ExecChannel {
    type Command = ExecStreamRequest;
    type Event = StreamEvent;
    const INPUT_IS_ACTIVITY: bool = false;

    fn error(data: String) -> Option<Message> {
        text(&StreamEvent::Error { data })
    }

    fn frame(event: StreamEvent) -> Option<Message> {
        text(&event)
    }

    /// The agent reads no binary frames on a process stream.
    async fn binary(_: &mut Sender<ExecStreamRequest>, _: Bytes) -> Result<(), AgentError> {
        Ok(())
    }
}

/// `pty`.
struct PtyChannel;

impl Channel for PtyChannel {
    type Command = PtyClientMessage;
    type Event = PtyEvent;
    const INPUT_IS_ACTIVITY: bool = true;

    fn error(data: String) -> Option<Message> {
        text(&PtyServerMessage::Error { data, fatal: true })
    }

    fn frame(event: PtyEvent) -> Option<Message> {
        match event {
            PtyEvent::Message(m) => text(&m),
            PtyEvent::Output(b) => Some(Message::Binary(b)),
        }
    }

    async fn binary(tx: &mut Sender<PtyClientMessage>, bytes: Bytes) -> Result<(), AgentError> {
        tx.input(bytes).await
    }
}

fn text<T: Serialize>(msg: &T) -> Option<Message> {
    serde_json::to_string(msg)
        .ok()
        .map(|t| Message::Text(t.into()))
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    }))
}

fn upgrade(
    state: AppState,
    caller: Caller,
    id: String,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    target: Target,
) -> ApiResult<Response> {
    check_id(&id)?;
    let ws =
        ws.map_err(|e| ApiError::InvalidRequest(format!("websocket upgrade required: {e}")))?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| splice(state, caller, id, target, socket)))
}

pub(super) async fn exec_stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    upgrade(state, caller, id, ws, Target::Exec)
}

pub(super) async fn process_stream(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, selector)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    input::selector(&selector)?;
    upgrade(state, caller, id, ws, Target::Attach(selector))
}

pub(super) async fn pty(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    upgrade(state, caller, id, ws, Target::Pty)
}

/// Sends `kind`'s error frame and a normal close.
async fn refuse<C: Channel>(mut socket: WebSocket, message: String) {
    if let Some(frame) = C::error(message) {
        let _ = socket.send(frame).await;
    }
    let _ = socket.send(normal_close()).await;
}

/// The client's first message, decoded; `None` when it is not a `T` (or does not come in time).
async fn first_message<T: DeserializeOwned>(socket: &mut WebSocket) -> Option<T> {
    let next_text = async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    };
    let t = tokio::time::timeout(Duration::from_secs(FIRST_MESSAGE_TIMEOUT_SEC), next_text)
        .await
        .ok()??;
    serde_json::from_str(t.as_str()).ok()
}

/// Opens the agent end of an exec stream or attach, or the message to refuse the client with.
async fn open_exec(
    agent: &AgentClient,
    socket: &mut WebSocket,
    target: &Target,
) -> Result<(Sender<ExecStreamRequest>, Receiver<StreamEvent>), String> {
    let opened = match target {
        Target::Attach(selector) => agent.attach(selector).await,
        _ => match first_message::<ExecStreamRequest>(socket).await {
            Some(ExecStreamRequest::Start(spec)) if !spec.cmd.is_empty() => {
                input::process(&spec, false).map_err(|e| e.to_string())?;
                agent.exec_stream(&spec).await
            }
            _ => return Err(EXEC_FIRST_MESSAGE_ERROR.to_string()),
        },
    };
    opened.map_err(|e| ApiError::from(e).to_string())
}

/// Opens the agent end of a PTY session, or the message to refuse the client with.
async fn open_pty(
    agent: &AgentClient,
    socket: &mut WebSocket,
) -> Result<(Sender<PtyClientMessage>, Receiver<PtyEvent>), String> {
    let opened = match first_message::<PtyClientMessage>(socket).await {
        Some(PtyClientMessage::Start(start)) => {
            input::pty(&start).map_err(|e| e.to_string())?;
            agent.pty_start(&start).await
        }
        Some(PtyClientMessage::Connect { tag }) => {
            input::selector(&tag).map_err(|e| e.to_string())?;
            agent.pty_connect(&tag).await
        }
        _ => return Err(PTY_FIRST_MESSAGE_ERROR.to_string()),
    };
    opened.map_err(|e| ApiError::from(e).to_string())
}

async fn splice(
    state: AppState,
    caller: Caller,
    id: String,
    target: Target,
    mut socket: WebSocket,
) {
    let is_pty = matches!(target, Target::Pty);
    let live = match state.capsules.running(&caller.team_id, &id).await {
        Ok(l) => l,
        Err(e) if is_pty => {
            return refuse::<PtyChannel>(socket, ApiError::from(e).to_string()).await
        }
        Err(e) => return refuse::<ExecChannel>(socket, ApiError::from(e).to_string()).await,
    };
    if is_pty {
        let opened = open_pty(live.agent(), &mut socket).await;
        // The first message was client input.
        state.capsules.touch(&live);
        match opened {
            Ok((tx, rx)) => {
                pump::<PtyChannel>(socket, tx, rx, || state.capsules.touch(&live)).await
            }
            Err(message) => return refuse::<PtyChannel>(socket, message).await,
        }
    } else {
        match open_exec(live.agent(), &mut socket, &target).await {
            Ok((tx, rx)) => pump::<ExecChannel>(socket, tx, rx, || {}).await,
            Err(message) => return refuse::<ExecChannel>(socket, message).await,
        }
    }
    state.capsules.touch(&live);
}

/// Moves messages both ways until either side ends, then closes the client with 1000.
/// `activity` runs on every client message of a kind whose input is activity.
async fn pump<C: Channel>(
    socket: WebSocket,
    mut agent_tx: Sender<C::Command>,
    mut agent_rx: Receiver<C::Event>,
    activity: impl Fn(),
) {
    let (mut client_tx, mut client_rx) = socket.split();
    loop {
        tokio::select! {
            from_client = client_rx.next() => {
                let sent = match from_client {
                    Some(Ok(Message::Text(t))) => {
                        // The agent ignores what it cannot decode; so does the splice.
                        match serde_json::from_str::<C::Command>(t.as_str()) {
                            Ok(cmd) => agent_tx.send(&cmd).await,
                            Err(_) => Ok(()),
                        }
                    }
                    Some(Ok(Message::Binary(b))) => C::binary(&mut agent_tx, b).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        agent_tx.close().await;
                        break;
                    }
                };
                if C::INPUT_IS_ACTIVITY {
                    activity();
                }
                if let Err(error) = sent {
                    tracing::debug!(?error, "agent stream broke");
                    if let Some(frame) = C::error(AGENT_LOST.to_string()) {
                        let _ = client_tx.send(frame).await;
                    }
                    break;
                }
            }
            from_agent = agent_rx.next() => {
                let event = match from_agent {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::debug!(?error, "agent stream broke");
                        if let Some(frame) = C::error(AGENT_LOST.to_string()) {
                            let _ = client_tx.send(frame).await;
                        }
                        break;
                    }
                    None => {
                        // Completes the closing handshake the agent started.
                        agent_tx.close().await;
                        break;
                    }
                };
                let Some(frame) = C::frame(event) else { continue };
                if client_tx.send(frame).await.is_err() {
                    agent_tx.close().await;
                    break;
                }
            }
        }
    }
    let _ = client_tx.send(normal_close()).await;
}
