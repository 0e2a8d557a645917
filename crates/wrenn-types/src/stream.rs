//! WebSocket message shapes for exec streams (contract §6.4, §6.5) and PTY sessions (§7).
//!
//! The agent speaks exactly these on its own WebSocket endpoints, so the server splices frames
//! through unchanged.

use serde::{Deserialize, Serialize};

use crate::agent::ProcessSpec;

/// Error of a bad first `exec/stream` message.
pub const EXEC_FIRST_MESSAGE_ERROR: &str = "first message must be type 'start' with a 'cmd' field";
/// Error of a bad first `pty` message.
pub const PTY_FIRST_MESSAGE_ERROR: &str = "first message must be type 'start' or 'connect'";
/// How long a client may take to send its first message, in seconds.
pub const FIRST_MESSAGE_TIMEOUT_SEC: u64 = 30;

/// Client → server, first text frame of `exec/stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecStreamRequest {
    /// Start a process and stream it; `cmd` must not be empty.
    Start(ProcessSpec),
    /// Kill the running process.
    Stop,
}

/// Server → client text frames of `exec/stream` and `processes/{sel}/stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamEvent {
    /// First event.
    Start {
        /// Process id inside the capsule.
        pid: u32,
    },
    /// A stdout chunk, UTF-8 (invalid bytes replaced).
    Stdout {
        /// Text.
        data: String,
    },
    /// A stderr chunk, UTF-8 (invalid bytes replaced).
    Stderr {
        /// Text.
        data: String,
    },
    /// Last event; the socket closes after it.
    Exit {
        /// Exit status, 128+N when killed by signal N.
        exit_code: i32,
    },
    /// Terminal error; the socket closes after it.
    Error {
        /// Message.
        data: String,
    },
}

/// A new PTY session: what to run and the terminal size.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyStart {
    /// What to run; an empty `cmd` means `/bin/bash` (or `/bin/sh` when bash is missing), and
    /// `TERM` defaults to `xterm-256color`.
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// Columns; 0 means 80.
    #[serde(default)]
    pub cols: u16,
    /// Rows; 0 means 24.
    #[serde(default)]
    pub rows: u16,
}

/// Client → server text frames of `pty`. Terminal input travels in binary frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtyClientMessage {
    /// First message: a new session.
    Start(PtyStart),
    /// First message: re-attach to a live session.
    Connect {
        /// `pty-` + 8 hex.
        #[serde(default)]
        tag: String,
    },
    /// Resize the terminal; ignored unless both are > 0.
    Resize {
        /// Columns.
        #[serde(default)]
        cols: u16,
        /// Rows.
        #[serde(default)]
        rows: u16,
    },
    /// SIGKILL the session's process.
    Kill,
    /// Answer to a server ping.
    Pong,
}

/// Server → client text frames of `pty`. Terminal output travels in binary frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtyServerMessage {
    /// The session exists (after `start`, and after `connect`).
    Started {
        /// `pty-` + 8 hex.
        tag: String,
        /// Process id.
        pid: u32,
    },
    /// The process ended; the socket closes after it.
    Exit {
        /// Exit status, 128+N when killed by signal N.
        exit_code: i32,
    },
    /// An error; `fatal` ends the session's socket.
    Error {
        /// Message.
        data: String,
        /// Whether the socket closes after it.
        fatal: bool,
    },
    /// Keepalive, every 30 s.
    Ping,
}

#[cfg(test)]
mod tests {
    //! Pins the exact JSON of every message: the agent, the server and the SDK speak it.

    use serde::de::DeserializeOwned;

    use super::*;

    fn spec() -> ProcessSpec {
        ProcessSpec {
            cmd: "c".into(),
            args: vec!["x".into()],
            envs: [("K".to_string(), "V".to_string())].into(),
            cwd: Some("/w".into()),
            user: Some("u".into()),
        }
    }

    /// `value` serializes to exactly `json`, and `json` decodes back to `value`.
    fn pin<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T, json: &str) {
        assert_eq!(serde_json::to_string(&value).expect("encode"), json);
        assert_eq!(serde_json::from_str::<T>(json).expect("decode"), value);
    }

    #[test]
    fn exec_stream_requests() {
        pin(
            ExecStreamRequest::Start(ProcessSpec::new("c", Vec::<String>::new())),
            r#"{"type":"start","cmd":"c","args":[],"envs":{}}"#,
        );
        pin(
            ExecStreamRequest::Start(spec()),
            r#"{"type":"start","cmd":"c","args":["x"],"envs":{"K":"V"},"cwd":"/w","user":"u"}"#,
        );
        pin(ExecStreamRequest::Stop, r#"{"type":"stop"}"#);
        // Omitted fields take their defaults; an empty start still decodes (the agent rejects it).
        assert_eq!(
            serde_json::from_str::<ExecStreamRequest>(r#"{"type":"start"}"#).expect("decode"),
            ExecStreamRequest::Start(ProcessSpec::default())
        );
        assert!(serde_json::from_str::<ExecStreamRequest>(r#"{"cmd":"c"}"#).is_err());
    }

    #[test]
    fn stream_events() {
        pin(StreamEvent::Start { pid: 7 }, r#"{"type":"start","pid":7}"#);
        pin(
            StreamEvent::Stdout { data: "o".into() },
            r#"{"type":"stdout","data":"o"}"#,
        );
        pin(
            StreamEvent::Stderr { data: "e".into() },
            r#"{"type":"stderr","data":"e"}"#,
        );
        pin(
            StreamEvent::Exit { exit_code: -1 },
            r#"{"type":"exit","exit_code":-1}"#,
        );
        pin(
            StreamEvent::Error { data: "x".into() },
            r#"{"type":"error","data":"x"}"#,
        );
    }

    #[test]
    fn pty_client_messages() {
        pin(
            PtyClientMessage::Start(PtyStart::default()),
            r#"{"type":"start","cmd":"","args":[],"envs":{},"cols":0,"rows":0}"#,
        );
        pin(
            PtyClientMessage::Start(PtyStart {
                process: spec(),
                cols: 80,
                rows: 24,
            }),
            r#"{"type":"start","cmd":"c","args":["x"],"envs":{"K":"V"},"cwd":"/w","user":"u","cols":80,"rows":24}"#,
        );
        assert_eq!(
            serde_json::from_str::<PtyClientMessage>(r#"{"type":"start","rows":5}"#)
                .expect("decode"),
            PtyClientMessage::Start(PtyStart {
                rows: 5,
                ..PtyStart::default()
            })
        );
        pin(
            PtyClientMessage::Connect {
                tag: "pty-1".into(),
            },
            r#"{"type":"connect","tag":"pty-1"}"#,
        );
        pin(
            PtyClientMessage::Resize { cols: 1, rows: 2 },
            r#"{"type":"resize","cols":1,"rows":2}"#,
        );
        pin(PtyClientMessage::Kill, r#"{"type":"kill"}"#);
        pin(PtyClientMessage::Pong, r#"{"type":"pong"}"#);
    }

    #[test]
    fn pty_server_messages() {
        pin(
            PtyServerMessage::Started {
                tag: "pty-1".into(),
                pid: 3,
            },
            r#"{"type":"started","tag":"pty-1","pid":3}"#,
        );
        pin(
            PtyServerMessage::Exit { exit_code: 0 },
            r#"{"type":"exit","exit_code":0}"#,
        );
        pin(
            PtyServerMessage::Error {
                data: "x".into(),
                fatal: true,
            },
            r#"{"type":"error","data":"x","fatal":true}"#,
        );
        pin(PtyServerMessage::Ping, r#"{"type":"ping"}"#);
    }
}
