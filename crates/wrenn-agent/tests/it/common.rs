//! The agent under test and helpers.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wrenn_agent_client::tokio_tungstenite::tungstenite::Message;
use wrenn_agent_client::tokio_tungstenite::WebSocketStream;
use wrenn_agent_client::{AgentClient, AgentError, AgentStream, ExecOutcome};
use wrenn_types::agent::{ExecRequest, ExecResult};
use wrenn_types::error::AgentErrorCode;

/// Default deadline of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Per-message deadline, shorter than [`DEADLINE`] so callers can report context.
pub const MSG_DEADLINE: Duration = Duration::from_secs(10);

/// A running agent on a temp socket; killed (SIGTERM, then SIGKILL) on drop.
pub struct TestAgent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub client: AgentClient,
}

impl TestAgent {
    /// Starts the agent as root.
    pub async fn start() -> Self {
        Self::start_as(None).await
    }

    /// Starts the agent, optionally as `uid` (its own gid too).
    pub async fn start_as(uid: Option<u32>) -> Self {
        Self::spawn(uid, &[]).await
    }

    /// Starts the agent as root with extra arguments.
    pub async fn start_with(args: &[&str]) -> Self {
        Self::spawn(None, args).await
    }

    async fn spawn(uid: Option<u32>, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod temp dir");
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrenn-agent"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env("WRENN_AGENT_LOG", "warn");
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("spawn agent");
        let agent = Self {
            child,
            dir,
            client: AgentClient::new(socket),
        };
        let client = agent.client.clone();
        assert!(
            wait_until(DEADLINE, || {
                let c = client.clone();
                async move { c.health().await.is_ok() }
            })
            .await,
            "agent did not become healthy"
        );
        agent
    }

    /// The agent's pid (on the host).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A path inside the test's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs a foreground exec and returns its result.
    pub async fn run(&self, req: ExecRequest) -> ExecResult {
        match self.client.exec(&req).await.expect("exec") {
            ExecOutcome::Finished(r) => r,
            other => panic!("expected a foreground result, got {other:?}"),
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/bin/sh -c script`.
pub fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        process: wrenn_types::agent::ProcessSpec {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Asserts `r` is an API error with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, AgentError>, code: AgentErrorCode) -> String {
    match r {
        Err(AgentError::Api {
            code: c,
            status,
            message,
        }) => {
            assert_eq!(c, code, "message: {message}");
            assert_eq!(status, code.http_status());
            message
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// Whether `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Zombie children of `ppid`.
pub fn zombies_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("procfs").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&ppid.to_string().as_str()) {
            out.push(pid);
        }
    }
    out
}

/// A WebSocket to the agent.
pub type Ws = WebSocketStream<AgentStream>;

/// The next data or close message, skipping pings/pongs; panics after [`DEADLINE`].
pub async fn next_msg(ws: &mut Ws) -> Option<Message> {
    loop {
        let msg = tokio::time::timeout(MSG_DEADLINE, ws.next())
            .await
            .expect("websocket message within deadline");
        match msg {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

/// The next text frame as JSON.
pub async fn next_json<T: serde::de::DeserializeOwned>(ws: &mut Ws) -> T {
    match next_msg(ws).await {
        Some(Message::Text(t)) => {
            serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("bad json {t}: {e}"))
        }
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Asserts the socket closes next (close frame 1000 or end of stream).
pub async fn expect_close(ws: &mut Ws) {
    match next_msg(ws).await {
        None => {}
        Some(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1000),
        Some(Message::Close(None)) => {}
        other => panic!("expected close, got {other:?}"),
    }
}

/// Sends a JSON text frame.
pub async fn send_json(ws: &mut Ws, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
