//! The agent protocol: HTTP/1.1 + WebSocket over the capsule's unix socket.
//!
//! Exchange (every body JSON unless said otherwise; errors are [`crate::error::ErrorBody`] with an
//! [`crate::error::AgentErrorCode`] and its status):
//! 1. `GET /health` → 200 [`Health`]. The runtime polls it to decide a capsule is ready.
//! 2. `POST /exec` [`ExecRequest`] → foreground 200 [`ExecResult`]; background 202
//!    [`BackgroundStarted`].
//! 3. `GET /processes` → 200 [`ProcessList`]; `DELETE /processes/{pid|tag}?signal=SIGKILL|SIGTERM`
//!    → 204; `GET /processes/{pid|tag}/stream` (WebSocket) → [`crate::stream::StreamEvent`]s.
//! 4. `GET /exec/stream` (WebSocket): first text frame [`crate::stream::ExecStreamRequest`], then
//!    [`crate::stream::StreamEvent`]s.
//! 5. `GET /pty` (WebSocket): [`crate::stream::PtyClientMessage`] /
//!    [`crate::stream::PtyServerMessage`] as text, terminal bytes as binary frames.
//! 6. Files: `POST /files/read` [`crate::files::PathRequest`] → 200 raw bytes (streamed);
//!    `POST /files/write?path=/abs/path` raw body (streamed, parents created, atomic replace) →
//!    204; `POST /files/list` [`crate::files::ListRequest`] → [`crate::files::ListResponse`];
//!    `POST /files/mkdir` → 200 [`crate::files::EntryResponse`] (409 `already_exists`);
//!    `POST /files/remove` → 204 (recursive); `POST /files/stat` → 200
//!    [`crate::files::FileEntry`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Socket file name inside the capsule's run directory.
pub const AGENT_SOCKET_NAME: &str = "agent.sock";

/// Where the host reaches a capsule's agent. A runtime hands one out per capsule; the agent client
/// connects through it. Every variant names a host-side endpoint the capsule cannot replace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEndpoint {
    /// A unix stream socket on the host (container capsules).
    Unix {
        /// Socket path.
        path: PathBuf,
    },
    /// An `AF_VSOCK` stream to a guest (microVMs with vhost-vsock).
    Vsock {
        /// Guest context id.
        cid: u32,
        /// Guest port.
        port: u32,
    },
    /// A host unix socket that forwards to a guest vsock port after a `CONNECT <port>\n`
    /// handshake answered by `OK <host port>\n` (Firecracker's and Cloud Hypervisor's
    /// vsock-over-UDS).
    HybridVsock {
        /// Host socket path.
        path: PathBuf,
        /// Guest port.
        port: u32,
    },
}

impl AgentEndpoint {
    /// The host socket path, for the variants that have one.
    pub fn host_path(&self) -> Option<&Path> {
        match self {
            Self::Unix { path } | Self::HybridVsock { path, .. } => Some(path),
            Self::Vsock { .. } => None,
        }
    }
}

impl fmt::Display for AgentEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix { path } => write!(f, "unix:{}", path.display()),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::HybridVsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
        }
    }
}

impl From<PathBuf> for AgentEndpoint {
    fn from(path: PathBuf) -> Self {
        Self::Unix { path }
    }
}

impl From<&Path> for AgentEndpoint {
    fn from(path: &Path) -> Self {
        Self::Unix {
            path: path.to_path_buf(),
        }
    }
}

impl From<&PathBuf> for AgentEndpoint {
    fn from(path: &PathBuf) -> Self {
        Self::Unix { path: path.clone() }
    }
}

impl From<&str> for AgentEndpoint {
    fn from(path: &str) -> Self {
        Self::Unix { path: path.into() }
    }
}

/// Default foreground deadline when `timeout_sec` is absent or 0.
pub const DEFAULT_EXEC_TIMEOUT_SEC: u64 = 30;

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Agent version.
    pub version: String,
}

/// `POST /exec` (contract §6.1 plus `user`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program (a path, or a name looked up in `PATH`).
    #[serde(default)]
    pub cmd: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Detach and track under `tag`.
    #[serde(default)]
    pub background: bool,
    /// Foreground deadline in seconds; absent or 0 → [`DEFAULT_EXEC_TIMEOUT_SEC`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u64>,
    /// Extra environment, on top of the agent's defaults (PATH, HOME, ...).
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Working directory; default the user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Background tag; default `proc-` + 8 hex. Ignored for foreground.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// User name or numeric uid; default root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// How `stdout`/`stderr` of an [`ExecResult`] are encoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum OutputEncoding {
    /// Both streams are valid UTF-8 text.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Both streams are standard padded base64 (one of them was not UTF-8).
    #[serde(rename = "base64")]
    Base64,
}

/// Foreground `POST /exec` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecResult {
    /// Collected stdout.
    pub stdout: String,
    /// Collected stderr.
    pub stderr: String,
    /// Exit status; 128+N when killed by signal N; 124 when the deadline killed it.
    pub exit_code: i32,
    /// Wall time from spawn to exit.
    pub duration_ms: u64,
    /// Encoding of both streams.
    pub encoding: OutputEncoding,
    /// Whether the deadline killed the process group.
    #[serde(default)]
    pub timed_out: bool,
}

/// Background `POST /exec` answer (202).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackgroundStarted {
    /// Process id inside the capsule.
    pub pid: u32,
    /// The caller's tag or `proc-` + 8 hex.
    pub tag: String,
}

/// One tracked process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id inside the capsule.
    pub pid: u32,
    /// Tag, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Program.
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
}

/// `GET /processes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessList {
    /// Running processes the agent started (foreground, background, PTY), never null.
    pub processes: Vec<ProcessInfo>,
}

/// The signals `DELETE /processes/{selector}` accepts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum KillSignal {
    /// 9, the default.
    #[default]
    #[serde(rename = "SIGKILL")]
    Kill,
    /// 15.
    #[serde(rename = "SIGTERM")]
    Term,
}

impl KillSignal {
    /// Parses `SIGKILL`/`SIGTERM` (also `KILL`/`TERM`, `9`/`15`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SIGKILL" | "KILL" | "9" => Some(Self::Kill),
            "SIGTERM" | "TERM" | "15" => Some(Self::Term),
            _ => None,
        }
    }

    /// The signal number.
    pub fn number(self) -> i32 {
        match self {
            Self::Kill => 9,
            Self::Term => 15,
        }
    }
}
