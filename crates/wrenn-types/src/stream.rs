//! WebSocket message shapes for exec streams (contract §6.4, §6.5) and PTY sessions (§7).
//!
//! The agent speaks exactly these on its own WebSocket endpoints, so the server splices frames
//! through unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Client → server, first text frame of `exec/stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecStreamRequest {
    /// Start a process and stream it.
    Start {
        /// Program.
        #[serde(default)]
        cmd: String,
        /// Arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment.
        #[serde(default)]
        envs: BTreeMap<String, String>,
        /// Working directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// User name or uid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
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

/// Client → server text frames of `pty`. Terminal input travels in binary frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtyClientMessage {
    /// First message: a new session.
    Start {
        /// Program; empty means `/bin/bash` (or `/bin/sh` when bash is missing).
        #[serde(default)]
        cmd: String,
        /// Arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment (`TERM` defaults to `xterm-256color`).
        #[serde(default)]
        envs: BTreeMap<String, String>,
        /// Working directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// User name or uid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Columns; 0 means 80.
        #[serde(default)]
        cols: u16,
        /// Rows; 0 means 24.
        #[serde(default)]
        rows: u16,
    },
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
