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
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Socket file name inside the capsule's run directory.
pub const AGENT_SOCKET_NAME: &str = "agent.sock";

/// Name of the virtio-serial port a microVM's agent serves on.
pub const SERIAL_PORT_NAME: &str = "agent";

/// First line the host writes on a newly connected virtio-serial port; a yamux session (host
/// = client) follows. The guest discards everything before it (the tail of an old session).
pub const SERIAL_MUX_HELLO: &str = "WRENN-MUX/1\n";

/// What the host tells the guest on every connect, as a line right before
/// [`SERIAL_MUX_HELLO`] (guests that do not know it discard it with the rest of the preamble):
/// the host's wall clock and fresh randomness. A connect follows every boot and resume, so a
/// guest restored from saved state gets the right time and a reseeded RNG before it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSync {
    /// The host's `CLOCK_REALTIME`, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// Bytes for the guest's RNG.
    pub seed: [u8; 32],
}

impl SerialSync {
    const PREFIX: &'static str = "WRENN-SYNC ";

    /// The line the host writes (with its newline).
    pub fn line(&self) -> String {
        let hex: String = self.seed.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{} {hex}\n", Self::PREFIX, self.unix_ns)
    }

    /// Parses one line (without its newline); `None` when it is not a sync line.
    pub fn parse(line: &[u8]) -> Option<Self> {
        let rest = std::str::from_utf8(line).ok()?.strip_prefix(Self::PREFIX)?;
        let (ns, hex) = rest.split_once(' ')?;
        if hex.len() != 64 {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self {
            unix_ns: ns.parse().ok()?,
            seed,
        })
    }
}

/// A capsule's `/etc/hosts`: loopback names and its own hostname (`127.0.1.1`, as Debian does),
/// so programs that resolve the machine's name (`sudo`, `hostname -f`) find it.
pub fn etc_hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// What makes a guest this capsule and no other, as a line the host writes before
/// [`SERIAL_MUX_HELLO`] on every connect (after the [`SerialSync`] line; older guests discard
/// it). A guest restored from a snapshot or cloned from a warm template carries the identity
/// of the machine that was saved; on a connect whose identity differs from the one it applied
/// last, the guest takes this one: hostname, machine id, the address of its network interface,
/// its default route and resolvers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SerialIdentity {
    /// Hostname (the capsule id).
    pub hostname: String,
    /// `/etc/machine-id`: 32 lowercase hex digits.
    pub machine_id: String,
    /// Address with prefix length (`10.213.0.2/30`), when the capsule has a network.
    pub addr: Option<String>,
    /// Default gateway.
    pub gateway: Option<String>,
    /// Resolvers for `/etc/resolv.conf`.
    pub dns: Vec<String>,
}

impl SerialIdentity {
    const PREFIX: &'static str = "WRENN-ID";

    /// The line the host writes (with its newline).
    pub fn line(&self) -> String {
        let mut l = format!(
            "{} host={} mid={}",
            Self::PREFIX,
            self.hostname,
            self.machine_id
        );
        if let Some(a) = &self.addr {
            l.push_str(&format!(" ip={a}"));
        }
        if let Some(g) = &self.gateway {
            l.push_str(&format!(" gw={g}"));
        }
        if !self.dns.is_empty() {
            l.push_str(&format!(" dns={}", self.dns.join(",")));
        }
        l.push('\n');
        l
    }

    /// Parses one line (without its newline); `None` when it is not a well-formed identity
    /// line. Values are restricted to the characters hostnames and addresses use.
    pub fn parse(line: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(line).ok()?;
        let mut words = text.split(' ');
        if words.next()? != Self::PREFIX {
            return None;
        }
        let mut id = Self::default();
        for w in words {
            let (k, v) = w.split_once('=')?;
            let tame = !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/,".contains(&b));
            if !tame {
                return None;
            }
            match k {
                "host" => id.hostname = v.to_owned(),
                "mid" => id.machine_id = v.to_owned(),
                "ip" => id.addr = Some(v.to_owned()),
                "gw" => id.gateway = Some(v.to_owned()),
                "dns" => id.dns = v.split(',').map(str::to_owned).collect(),
                _ => {}
            }
        }
        let mid_ok = id.machine_id.len() == 32
            && id
                .machine_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (!id.hostname.is_empty() && mid_ok).then_some(id)
    }
}

/// The guest's answer to [`SERIAL_MUX_HELLO`]; the host discards everything before it (what an
/// old session of the guest still wrote). A host that gets no answer in time reconnects: the
/// guest was still in an old session (it may miss the disconnect when it was saved and restored
/// across it), and the reconnect ends that session.
pub const SERIAL_MUX_ACK: &str = "WRENN-MUX/1 OK\n";

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

/// `GET /health`: the agent is up, and what it sees of its guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Agent version.
    pub version: String,
    /// The guest kernel's release (`uname -r` inside the capsule); absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
}

/// What to run: shared by `POST /exec` ([`ExecRequest`]), `exec/stream` start
/// ([`crate::stream::ExecStreamRequest::Start`]) and PTY start ([`crate::stream::PtyStart`]),
/// each of which embeds it flattened, so the fields sit at the top level of their JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Program (a path, or a name looked up in `PATH`).
    #[serde(default)]
    pub cmd: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment, on top of the agent's defaults (PATH, HOME, ...).
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Working directory; default the user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User name or numeric uid; default root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ProcessSpec {
    /// `cmd` with `args`, everything else default.
    pub fn new(cmd: impl Into<String>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            cmd: cmd.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// `POST /exec` (contract §6.1 plus `user`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    /// What to run.
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// Detach and track under `tag`.
    #[serde(default)]
    pub background: bool,
    /// Foreground deadline in seconds; absent or 0 → [`DEFAULT_EXEC_TIMEOUT_SEC`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integral::option"
    )]
    pub timeout_sec: Option<u64>,
    /// Background tag; default `proc-` + 8 hex. Ignored for foreground.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl From<ProcessSpec> for ExecRequest {
    fn from(process: ProcessSpec) -> Self {
        Self {
            process,
            ..Self::default()
        }
    }
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

/// A signal name [`KillSignal`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSignal(pub String);

impl fmt::Display for UnknownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid signal {:?}, want SIGKILL or SIGTERM", self.0)
    }
}

impl std::error::Error for UnknownSignal {}

impl KillSignal {
    /// The wire name, as the `signal` query parameter carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL",
            Self::Term => "SIGTERM",
        }
    }

    /// The signal number.
    pub fn number(self) -> i32 {
        match self {
            Self::Kill => 9,
            Self::Term => 15,
        }
    }

    /// The `signal` query parameter of a kill: absent or empty means [`KillSignal::Kill`].
    pub fn from_query(s: Option<&str>) -> Result<Self, UnknownSignal> {
        match s {
            None | Some("") => Ok(Self::default()),
            Some(s) => s.parse(),
        }
    }
}

impl FromStr for KillSignal {
    type Err = UnknownSignal;

    /// Parses `SIGKILL`/`SIGTERM` (also `KILL`/`TERM`, `9`/`15`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "SIGKILL" | "KILL" | "9" => Ok(Self::Kill),
            "SIGTERM" | "TERM" | "15" => Ok(Self::Term),
            _ => Err(UnknownSignal(s.to_string())),
        }
    }
}

impl fmt::Display for KillSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    //! Pins the exact JSON of the agent's request and answer bodies.

    use super::*;

    #[test]
    fn serial_sync_line_round_trips_and_refuses_other_lines() {
        let mut seed = [0u8; 32];
        seed[0] = 0xab;
        seed[31] = 0x01;
        let sync = SerialSync {
            unix_ns: 1_764_000_000_123_456_789,
            seed,
        };
        let line = sync.line();
        assert!(line.starts_with("WRENN-SYNC 1764000000123456789 ab00"));
        assert!(line.ends_with("01\n"));
        let body = line.trim_end().as_bytes();
        assert_eq!(SerialSync::parse(body), Some(sync));
        assert_eq!(SerialSync::parse(b"WRENN-MUX/1"), None);
        assert_eq!(SerialSync::parse(&body[..body.len() - 2]), None);
        assert_eq!(SerialSync::parse(b"WRENN-SYNC x 00"), None);
    }

    #[test]
    fn serial_identity_line_round_trips_and_refuses_junk() {
        let id = SerialIdentity {
            hostname: "cl-abc".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            addr: Some("10.213.0.6/30".into()),
            gateway: Some("10.213.0.5".into()),
            dns: vec!["192.0.2.53".into(), "192.0.2.54".into()],
        };
        let line = id.line();
        assert_eq!(
            line,
            "WRENN-ID host=cl-abc mid=0123456789abcdef0123456789abcdef ip=10.213.0.6/30 \
             gw=10.213.0.5 dns=192.0.2.53,192.0.2.54\n"
        );
        assert_eq!(SerialIdentity::parse(line.trim_end().as_bytes()), Some(id));
        let bare = SerialIdentity {
            hostname: "h".into(),
            machine_id: "f".repeat(32),
            ..Default::default()
        };
        assert_eq!(
            SerialIdentity::parse(bare.line().trim_end().as_bytes()),
            Some(bare)
        );
        assert_eq!(SerialIdentity::parse(b"WRENN-SYNC 1 00"), None);
        assert_eq!(SerialIdentity::parse(b"WRENN-ID host=h mid=xyz"), None);
        assert_eq!(
            SerialIdentity::parse(format!("WRENN-ID host=a;b mid={}", "0".repeat(32)).as_bytes()),
            None
        );
    }

    #[test]
    fn exec_request_json() {
        let minimal = ExecRequest::default();
        assert_eq!(
            serde_json::to_string(&minimal).expect("encode"),
            r#"{"cmd":"","args":[],"envs":{},"background":false}"#
        );
        let full = ExecRequest {
            process: ProcessSpec {
                cmd: "c".into(),
                args: vec!["a".into()],
                envs: [("K".to_string(), "V".to_string())].into(),
                cwd: Some("/w".into()),
                user: Some("u".into()),
            },
            background: true,
            timeout_sec: Some(5),
            tag: Some("t".into()),
        };
        let json = r#"{"cmd":"c","args":["a"],"envs":{"K":"V"},"cwd":"/w","user":"u","background":true,"timeout_sec":5,"tag":"t"}"#;
        assert_eq!(serde_json::to_string(&full).expect("encode"), json);
        let decode = |s: &str| serde_json::from_str::<ExecRequest>(s).expect("decode");
        assert_eq!(decode(json), full);
        // The field order before the process spec was shared, and what the SDK sends.
        assert_eq!(
            decode(
                r#"{"cmd":"c","args":["a"],"background":true,"timeout_sec":5,"envs":{"K":"V"},"cwd":"/w","tag":"t","user":"u"}"#
            ),
            full
        );
        assert_eq!(
            decode(r#"{"cmd":"ls"}"#),
            ProcessSpec::new("ls", [""; 0]).into()
        );
        assert_eq!(decode("{}"), minimal);
        assert_eq!(
            decode(r#"{"cmd":"ls","timeout_sec":null,"tag":null,"cwd":null,"user":null}"#),
            ProcessSpec::new("ls", [""; 0]).into()
        );
    }

    #[test]
    fn health_json() {
        let old = Health {
            status: "ok".into(),
            version: "1".into(),
            kernel_version: None,
        };
        let json = r#"{"status":"ok","version":"1"}"#;
        assert_eq!(serde_json::to_string(&old).expect("encode"), json);
        assert_eq!(
            serde_json::from_str::<Health>(json).expect("old agent"),
            old
        );
        let new = Health {
            kernel_version: Some("6.1.0".into()),
            ..old
        };
        let json = r#"{"status":"ok","version":"1","kernel_version":"6.1.0"}"#;
        assert_eq!(serde_json::to_string(&new).expect("encode"), json);
        assert_eq!(serde_json::from_str::<Health>(json).expect("decode"), new);
    }

    #[test]
    fn exec_answers_json() {
        let r = ExecResult {
            stdout: "o".into(),
            stderr: "".into(),
            exit_code: 1,
            duration_ms: 2,
            encoding: OutputEncoding::Base64,
            timed_out: false,
        };
        let json = r#"{"stdout":"o","stderr":"","exit_code":1,"duration_ms":2,"encoding":"base64","timed_out":false}"#;
        assert_eq!(serde_json::to_string(&r).expect("encode"), json);
        let older =
            r#"{"stdout":"o","stderr":"","exit_code":1,"duration_ms":2,"encoding":"base64"}"#;
        assert_eq!(
            serde_json::from_str::<ExecResult>(older).expect("decode"),
            r
        );
        let b = BackgroundStarted {
            pid: 4,
            tag: "proc-1".into(),
        };
        assert_eq!(
            serde_json::to_string(&b).expect("encode"),
            r#"{"pid":4,"tag":"proc-1"}"#
        );
    }

    #[test]
    fn kill_signals_parse_in_one_place() {
        for (s, sig) in [
            ("SIGKILL", KillSignal::Kill),
            ("KILL", KillSignal::Kill),
            ("9", KillSignal::Kill),
            ("SIGTERM", KillSignal::Term),
            ("TERM", KillSignal::Term),
            ("15", KillSignal::Term),
        ] {
            assert_eq!(s.parse::<KillSignal>(), Ok(sig));
            assert_eq!(KillSignal::from_query(Some(s)), Ok(sig));
        }
        assert_eq!(KillSignal::from_query(None), Ok(KillSignal::Kill));
        assert_eq!(KillSignal::from_query(Some("")), Ok(KillSignal::Kill));
        let e = "SIGHUP".parse::<KillSignal>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            r#"invalid signal "SIGHUP", want SIGKILL or SIGTERM"#
        );
        for sig in [KillSignal::Kill, KillSignal::Term] {
            assert_eq!(sig.as_str().parse::<KillSignal>(), Ok(sig));
            assert_eq!(
                serde_json::to_string(&sig).expect("encode"),
                format!("\"{sig}\"")
            );
        }
    }

    #[test]
    fn endpoints_json() {
        let eps = [
            (
                AgentEndpoint::from("/a.sock"),
                r#"{"kind":"unix","path":"/a.sock"}"#,
            ),
            (
                AgentEndpoint::Vsock { cid: 3, port: 52 },
                r#"{"kind":"vsock","cid":3,"port":52}"#,
            ),
            (
                AgentEndpoint::HybridVsock {
                    path: "/v.sock".into(),
                    port: 52,
                },
                r#"{"kind":"hybrid_vsock","path":"/v.sock","port":52}"#,
            ),
        ];
        for (ep, json) in eps {
            assert_eq!(serde_json::to_string(&ep).expect("encode"), json);
            assert_eq!(
                serde_json::from_str::<AgentEndpoint>(json).expect("decode"),
                ep
            );
        }
    }
}
