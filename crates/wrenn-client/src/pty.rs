//! Interactive terminals (contract §7): a PTY session over a WebSocket.
//!
//! 1. [`Client::pty`] sends `start` (or [`Client::pty_connect`] sends `connect` with a tag) and
//!    waits for `started`, which names the session's tag and pid.
//! 2. A task owns the socket: it forwards [`PtyInput`] (binary keystrokes, `resize`, `kill`),
//!    delivers [`PtyEvent`]s (binary output, `exit`, errors) and answers the server's pings.
//! 3. Dropping every input sender closes the socket normally; the shell keeps running in the
//!    capsule and can be re-attached by tag. The event channel ends after `exit`, a fatal
//!    error, or a dropped connection.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wrenn_types::agent::ProcessSpec;
use wrenn_types::stream::{PtyClientMessage, PtyServerMessage, PtyStart};

use crate::exec::Socket;
use crate::{segment, Client, ClientError};

/// How a new PTY session starts; every field has a default.
#[derive(Debug, Clone, Default)]
pub struct PtyOptions {
    /// Program; empty means the capsule's shell (`/bin/bash`, else `/bin/sh`).
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment (`TERM` defaults to `xterm-256color`).
    pub envs: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User name or uid.
    pub user: Option<String>,
    /// Columns; 0 means 80.
    pub cols: u16,
    /// Rows; 0 means 24.
    pub rows: u16,
}

/// What goes to the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyInput {
    /// Keystrokes, verbatim.
    Data(Bytes),
    /// The window's new size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// SIGKILL the session's process.
    Kill,
}

/// What comes from the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Output bytes.
    Output(Bytes),
    /// The process ended with this status (128+N for signal N); the last event.
    Exit(i32),
    /// An error; a fatal one is the last event.
    Error {
        /// Message.
        message: String,
        /// Whether the session's socket closes after it.
        fatal: bool,
    },
}

/// The receiving half of a session: events until exit, a fatal error or a dropped connection
/// (then `None` without an [`PtyEvent::Exit`]).
#[derive(Debug)]
pub struct PtyEvents {
    rx: mpsc::Receiver<PtyEvent>,
}

impl PtyEvents {
    /// The next event; `None` once the socket is gone.
    pub async fn recv(&mut self) -> Option<PtyEvent> {
        self.rx.recv().await
    }
}

/// A live PTY session.
#[derive(Debug)]
pub struct PtySession {
    tag: String,
    pid: u32,
    input: mpsc::Sender<PtyInput>,
    events: PtyEvents,
}

impl PtySession {
    /// `pty-` + 8 hex: re-attach with [`Client::pty_connect`].
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The process id inside the capsule.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends keystrokes.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        self.send(PtyInput::Data(data.into())).await
    }

    /// Resizes the terminal.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), ClientError> {
        self.send(PtyInput::Resize { cols, rows }).await
    }

    /// Kills the session's process.
    pub async fn kill(&self) -> Result<(), ClientError> {
        self.send(PtyInput::Kill).await
    }

    async fn send(&self, input: PtyInput) -> Result<(), ClientError> {
        self.input
            .send(input)
            .await
            .map_err(|_| ClientError::Stream("the pty connection is closed".into()))
    }

    /// The next event.
    pub async fn recv(&mut self) -> Option<PtyEvent> {
        self.events.recv().await
    }

    /// Splits into an input sender (clone it freely; dropping all of them detaches) and the
    /// event receiver.
    pub fn into_parts(self) -> (mpsc::Sender<PtyInput>, PtyEvents) {
        (self.input, self.events)
    }
}

impl Client {
    /// Starts a new PTY session in a running capsule.
    pub async fn pty(&self, id: &str, opts: &PtyOptions) -> Result<PtySession, ClientError> {
        let first = PtyClientMessage::Start(PtyStart {
            process: ProcessSpec {
                cmd: opts.cmd.clone(),
                args: opts.args.clone(),
                envs: opts.envs.clone(),
                cwd: opts.cwd.clone(),
                user: opts.user.clone(),
            },
            cols: opts.cols,
            rows: opts.rows,
        });
        self.open_pty(id, first).await
    }

    /// Re-attaches to a live session by tag; the server replays recent output first.
    pub async fn pty_connect(&self, id: &str, tag: &str) -> Result<PtySession, ClientError> {
        let first = PtyClientMessage::Connect { tag: tag.into() };
        self.open_pty(id, first).await
    }

    async fn open_pty(&self, id: &str, first: PtyClientMessage) -> Result<PtySession, ClientError> {
        let mut ws = self
            .websocket(&format!("/capsules/{}/pty", segment(id)))
            .await?;
        send_json(&mut ws, &first).await?;
        let (tag, pid) = loop {
            let msg = ws
                .next()
                .await
                .ok_or_else(|| ClientError::Stream("the pty closed before it started".into()))??;
            let Message::Text(t) = msg else {
                continue;
            };
            match serde_json::from_str::<PtyServerMessage>(&t) {
                Ok(PtyServerMessage::Started { tag, pid }) => break (tag, pid),
                Ok(PtyServerMessage::Error { data, .. }) => return Err(ClientError::Stream(data)),
                Ok(PtyServerMessage::Exit { exit_code }) => {
                    return Err(ClientError::Stream(format!(
                        "the pty exited with {exit_code} before it started"
                    )))
                }
                Ok(PtyServerMessage::Ping) | Err(_) => {}
            }
        };
        let (in_tx, in_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(256);
        tokio::spawn(pump(ws, in_rx, ev_tx));
        Ok(PtySession {
            tag,
            pid,
            input: in_tx,
            events: PtyEvents { rx: ev_rx },
        })
    }
}

async fn send_json(ws: &mut Socket, msg: &PtyClientMessage) -> Result<(), ClientError> {
    let text = serde_json::to_string(msg).map_err(ClientError::Decode)?;
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// Owns the socket until exit, a fatal error, a dropped connection, or every sender dropped.
async fn pump(mut ws: Socket, mut input: mpsc::Receiver<PtyInput>, events: mpsc::Sender<PtyEvent>) {
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { return };
                match msg {
                    Message::Binary(b) => {
                        let delivered = events.send(PtyEvent::Output(b)).await;
                        if delivered.is_err() {
                            break;
                        }
                    }
                    Message::Text(t) => match serde_json::from_str::<PtyServerMessage>(&t) {
                        Ok(PtyServerMessage::Ping) => {
                            if send_json(&mut ws, &PtyClientMessage::Pong).await.is_err() {
                                return;
                            }
                        }
                        Ok(PtyServerMessage::Exit { exit_code }) => {
                            let _ = events.send(PtyEvent::Exit(exit_code)).await;
                            return;
                        }
                        Ok(PtyServerMessage::Error { data, fatal }) => {
                            let _ = events.send(PtyEvent::Error { message: data, fatal }).await;
                            if fatal {
                                return;
                            }
                        }
                        Ok(PtyServerMessage::Started { .. }) | Err(_) => {}
                    },
                    Message::Close(_) => return,
                    _ => {}
                }
            }
            inp = input.recv() => {
                let sent = match inp {
                    None => break,
                    Some(PtyInput::Data(b)) => ws.send(Message::Binary(b)).await.map_err(ClientError::from),
                    Some(PtyInput::Resize { cols, rows }) => {
                        send_json(&mut ws, &PtyClientMessage::Resize { cols, rows }).await
                    }
                    Some(PtyInput::Kill) => send_json(&mut ws, &PtyClientMessage::Kill).await,
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
    // Detach: a normal close leaves the session running in the capsule.
    let _ = ws.close(None).await;
}
