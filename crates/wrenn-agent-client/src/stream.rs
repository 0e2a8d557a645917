//! Typed helpers for the agent's WebSocket endpoints.
//!
//! Exchange, as the helpers drive it:
//! 1. [`AgentClient::exec_stream`] opens `/exec/stream` and sends `start` with the process spec;
//!    [`AgentClient::attach`] opens `/processes/{selector}/stream` (the selector
//!    percent-encoded) and sends nothing.
//! 2. Both answer a [`StreamCommands`] (send `stop`, or close) and a [`StreamEvents`] yielding
//!    [`StreamEvent`]s: `start`, output chunks, then `exit` or `error`, then the end.
//! 3. [`AgentClient::pty_start`] / [`AgentClient::pty_connect`] open `/pty` and send `start` or
//!    `connect`; they answer a [`PtyInput`] (control messages and terminal input) and a
//!    [`PtyEvents`] yielding [`PtyEvent`]s (control messages and terminal output).
//!
//! Each pair is the two halves of one socket, so a caller can wait on both at once.

use std::marker::PhantomData;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wrenn_types::agent::ProcessSpec;
use wrenn_types::stream::{
    ExecStreamRequest, PtyClientMessage, PtyServerMessage, PtyStart, StreamEvent,
};

use crate::transport::AgentStream;
use crate::{percent_encode, AgentClient, AgentError};

/// A WebSocket to the agent.
pub type AgentWebSocket = WebSocketStream<AgentStream>;

/// The sending half of an agent WebSocket, typed by the messages it carries.
#[derive(Debug)]
pub struct Sender<C> {
    sink: SplitSink<AgentWebSocket, Message>,
    _command: PhantomData<fn(C)>,
}

impl<C: Serialize> Sender<C> {
    /// Sends one message as a JSON text frame.
    pub async fn send(&mut self, msg: &C) -> Result<(), AgentError> {
        let text = serde_json::to_string(msg).map_err(|e| AgentError::Decode(e.into()))?;
        self.sink.send(Message::text(text)).await.map_err(transport)
    }

    /// Closes the socket; the agent ends an exec stream's process when it sees the close.
    /// Errors are irrelevant at that point.
    pub async fn close(&mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
    }
}

impl Sender<ExecStreamRequest> {
    /// Asks the agent to kill the streamed process (ignored on an attach).
    pub async fn stop(&mut self) -> Result<(), AgentError> {
        self.send(&ExecStreamRequest::Stop).await
    }
}

impl Sender<PtyClientMessage> {
    /// Sends terminal input as a binary frame.
    pub async fn input(&mut self, bytes: Bytes) -> Result<(), AgentError> {
        self.sink
            .send(Message::Binary(bytes))
            .await
            .map_err(transport)
    }
}

/// A frame the agent sends, decoded.
pub trait Incoming: Sized {
    /// Decodes a text frame.
    fn from_text(text: &str) -> Result<Self, AgentError>;
    /// Decodes a binary frame.
    fn from_binary(bytes: Bytes) -> Result<Self, AgentError>;
}

impl Incoming for StreamEvent {
    fn from_text(text: &str) -> Result<Self, AgentError> {
        decode(text)
    }

    fn from_binary(_: Bytes) -> Result<Self, AgentError> {
        Err(AgentError::Decode(
            "unexpected binary frame on a process stream".into(),
        ))
    }
}

/// What a PTY socket carries from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// A control message (text frame).
    Message(PtyServerMessage),
    /// Terminal output (binary frame).
    Output(Bytes),
}

impl Incoming for PtyEvent {
    fn from_text(text: &str) -> Result<Self, AgentError> {
        decode(text).map(Self::Message)
    }

    fn from_binary(bytes: Bytes) -> Result<Self, AgentError> {
        Ok(Self::Output(bytes))
    }
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, AgentError> {
    serde_json::from_str(text).map_err(|e| AgentError::Decode(e.into()))
}

fn transport(e: tokio_tungstenite::tungstenite::Error) -> AgentError {
    AgentError::Transport(e.into())
}

/// The receiving half of an agent WebSocket, yielding typed frames.
#[derive(Debug)]
pub struct Receiver<E> {
    stream: SplitStream<AgentWebSocket>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Incoming> Receiver<E> {
    /// The next frame; `None` once the agent closed the socket. Pings are answered and skipped.
    pub async fn next(&mut self) -> Option<Result<E, AgentError>> {
        loop {
            return match self.stream.next().await? {
                Ok(Message::Text(t)) => Some(E::from_text(t.as_str())),
                Ok(Message::Binary(b)) => Some(E::from_binary(b)),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => None,
                Err(e) => Some(Err(transport(e))),
            };
        }
    }
}

/// Sends `stop` or closes an exec stream or attach.
pub type StreamCommands = Sender<ExecStreamRequest>;
/// Yields the [`StreamEvent`]s of an exec stream or attach.
pub type StreamEvents = Receiver<StreamEvent>;
/// Sends control messages and terminal input to a PTY session.
pub type PtyInput = Sender<PtyClientMessage>;
/// Yields the control messages and terminal output of a PTY session.
pub type PtyEvents = Receiver<PtyEvent>;

fn split<C, E>(ws: AgentWebSocket) -> (Sender<C>, Receiver<E>) {
    let (sink, stream) = ws.split();
    (
        Sender {
            sink,
            _command: PhantomData,
        },
        Receiver {
            stream,
            _event: PhantomData,
        },
    )
}

impl AgentClient {
    /// Starts `spec` on `/exec/stream`. The first event is `start` {pid}, or `error` when the
    /// agent refused the spec (e.g. an empty `cmd`, an unknown program).
    pub async fn exec_stream(
        &self,
        spec: &ProcessSpec,
    ) -> Result<(StreamCommands, StreamEvents), AgentError> {
        let (mut tx, rx) = split(self.websocket("/exec/stream").await?);
        tx.send(&ExecStreamRequest::Start(spec.clone())).await?;
        Ok((tx, rx))
    }

    /// Attaches to the output of the background process `selector` (a decimal pid or a tag).
    /// The first event is `start` {pid}, or `error` when there is no such process.
    pub async fn attach(
        &self,
        selector: &str,
    ) -> Result<(StreamCommands, StreamEvents), AgentError> {
        let path = format!("/processes/{}/stream", percent_encode(selector, false));
        Ok(split(self.websocket(&path).await?))
    }

    /// Starts a PTY session. The first event is `started` {tag, pid}, or a fatal `error`.
    pub async fn pty_start(&self, start: &PtyStart) -> Result<(PtyInput, PtyEvents), AgentError> {
        self.pty(&PtyClientMessage::Start(start.clone())).await
    }

    /// Re-attaches to the live PTY session `tag`. The first event is `started` {tag, pid} and
    /// the replay of recent output follows, or a fatal `error`.
    pub async fn pty_connect(&self, tag: &str) -> Result<(PtyInput, PtyEvents), AgentError> {
        self.pty(&PtyClientMessage::Connect {
            tag: tag.to_string(),
        })
        .await
    }

    async fn pty(&self, first: &PtyClientMessage) -> Result<(PtyInput, PtyEvents), AgentError> {
        let (mut tx, rx) = split(self.websocket("/pty").await?);
        tx.send(first).await?;
        Ok((tx, rx))
    }
}
