//! `process.Process` (E2B contract §3.6) on the agent's process table and PTY sessions.
//!
//! Design: a process envd starts is an ordinary entry of [`crate::processes::ProcessTable`]
//! (piped, with a broadcast of its output) or an ordinary PTY session, so the Wrenn API sees and
//! kills it too. Beside that, [`EnvdProcs`] keeps what only envd needs: the original
//! `ProcessConfig` for `List`, the write end of stdin, and the signal envd sent (the reaper
//! reports a signal death as 128+N; envd reports `signal: killed` when it sent that signal).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::broadcast;
use wrenn_types::agent::{KillSignal, ProcessSpec};
use wrenn_types::stream::PtyStart;

use super::connect::{
    self, check_stream_content_type, de_int, de_opt_int, decode_bytes, stream_error,
    stream_response, Code, RpcError,
};
use super::output::{run_stream, Source};
use super::{check_text, request_user, resolve_path};
use crate::error::ApiError;
use crate::launch::{launch_io, STREAM_CHUNK};
use crate::processes::Sink;
use crate::pty::{self, PtySession};
use crate::state::SharedState;
use crate::users::User;

/// Output chunks buffered per process for slow readers before they lose some.
const EVENT_BUFFER: usize = 4096;

/// `ProcessConfig`: what was started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    /// Program.
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Request environment.
    pub envs: BTreeMap<String, String>,
    /// Working directory as requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// What envd knows of one process it started.
#[derive(Debug)]
pub struct EnvdProc {
    config: ProcessConfig,
    /// Write end of a piped stdin; `None` when closed, disabled, or a PTY.
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// The last signal envd sent it (0: none).
    signal: AtomicI32,
}

impl EnvdProc {
    /// A process started with `config`, with `stdin` when it is piped and open.
    pub(super) fn new(config: ProcessConfig, stdin: Option<pipe::Sender>) -> Self {
        Self {
            config,
            stdin: tokio::sync::Mutex::new(stdin),
            signal: AtomicI32::new(0),
        }
    }

    /// The last signal envd sent it (0: none).
    pub(super) fn signal(&self) -> i32 {
        self.signal.load(Ordering::Relaxed)
    }

    /// Notes that envd sends it `signal`.
    pub(super) fn mark_signal(&self, signal: i32) {
        self.signal.store(signal, Ordering::Relaxed);
    }
}

/// envd's processes by pid.
#[derive(Debug, Default)]
pub struct EnvdProcs {
    inner: Mutex<HashMap<u32, Arc<EnvdProc>>>,
}

impl EnvdProcs {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<EnvdProc>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, pid: u32, proc: Arc<EnvdProc>) {
        self.lock().insert(pid, proc);
    }

    fn get(&self, pid: u32) -> Option<Arc<EnvdProc>> {
        self.lock().get(&pid).cloned()
    }

    /// Forgets every pid not in `live`.
    fn retain(&self, live: &[u32]) {
        self.lock().retain(|pid, _| live.contains(pid));
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    #[serde(deserialize_with = "de_opt_int")]
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Size {
    #[serde(deserialize_with = "de_int")]
    cols: u16,
    #[serde(deserialize_with = "de_int")]
    rows: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PtyRequest {
    size: Size,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<PtyRequest>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SelectorRequest {
    process: Selector,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Selector,
    input: Input,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Selector,
    signal: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Selector,
    pty: Option<PtyRequest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputMessage {
    start: Option<SelectorRequest>,
    data: Option<StreamInputData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputData {
    input: Input,
}

/// `POST /envd/process.Process/{method}`.
pub async fn call(
    State(state): State<SharedState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method.as_str() {
        "Start" => start(state, headers, body)
            .await
            .unwrap_or_else(stream_error),
        "Connect" => attach(state, headers, body)
            .await
            .unwrap_or_else(stream_error),
        "StreamInput" => stream_input(state, headers, body)
            .await
            .unwrap_or_else(stream_error),
        _ => unary(state, &method, headers, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    }
}

async fn unary(
    state: SharedState,
    method: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RpcError> {
    let body = axum::body::to_bytes(body, connect::MAX_MESSAGE)
        .await
        .map_err(|e| RpcError::invalid(format!("reading request: {e}")))?;
    let reply = match method {
        "List" => list(&state),
        "SendInput" => {
            let req: SendInputRequest = connect::parse_unary(&headers, &body)?;
            let pid = find(&state, &req.process)?;
            write_input(&state, pid, &req.input).await?;
            json!({})
        }
        "SendSignal" => send_signal(&state, connect::parse_unary(&headers, &body)?)?,
        "Update" => update(&state, connect::parse_unary(&headers, &body)?)?,
        "CloseStdin" => {
            let req: SelectorRequest = connect::parse_unary(&headers, &body)?;
            close_stdin(&state, &req.process).await?
        }
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("process.Process/{other} is not implemented"),
            ))
        }
    };
    Ok(connect::unary(&reply))
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        use wrenn_types::error::AgentErrorCode as A;
        let code = match e.code {
            A::InvalidRequest | A::NotADirectory | A::IsADirectory => Code::InvalidArgument,
            A::NotFound => Code::NotFound,
            A::AlreadyExists => Code::AlreadyExists,
            A::PermissionDenied => Code::PermissionDenied,
            A::LimitReached => Code::ResourceExhausted,
            A::Internal => Code::Internal,
        };
        RpcError::new(code, e.message)
    }
}

/// The spawn request of `config` for `user`: sandbox env and defaults applied, strings checked.
fn build_spec(
    state: &SharedState,
    config: &ProcessConfig,
    user: &User,
) -> Result<ProcessSpec, RpcError> {
    if config.cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd is required"));
    }
    check_text("cmd", &config.cmd)?;
    for a in &config.args {
        check_text("argument", a)?;
    }
    for (k, v) in &config.envs {
        check_text("environment variable", k)?;
        check_text("environment value", v)?;
        if k.is_empty() || k.contains('=') {
            return Err(RpcError::invalid(format!(
                "invalid environment variable name {k:?}"
            )));
        }
    }
    let defaults = state.envd.config();
    let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(resolve_path(c, &user.home)?),
        None => match defaults.default_workdir.as_deref() {
            Some(w) => Some(resolve_path(w, &user.home)?),
            None => None,
        },
    };
    if let Some(c) = &cwd {
        if !std::path::Path::new(c).is_dir() {
            return Err(RpcError::invalid(format!(
                "cwd {c:?} does not exist or is not a directory"
            )));
        }
    }
    let mut envs = defaults.env_vars.clone();
    envs.insert("E2B_SANDBOX".to_string(), "true".to_string());
    envs.extend(config.envs.clone());
    Ok(ProcessSpec {
        cmd: config.cmd.clone(),
        args: config.args.clone(),
        envs,
        cwd,
        user: Some(user.name.clone()),
    })
}

async fn start(state: SharedState, headers: HeaderMap, body: Body) -> Result<Response, RpcError> {
    check_stream_content_type(&headers)?;
    let req: StartRequest = connect::read_single_envelope(body).await?;
    let user = request_user(&state, &headers, None)?;
    let spec = build_spec(&state, &req.process, &user)?;
    if let Some(t) = &req.tag {
        check_text("tag", t)?;
    }
    let deadline = connect::timeout(&headers).map(|d| tokio::time::Instant::now() + d);
    let keepalive = connect::keepalive_interval(&headers);
    let (pid, source, stdin) = match &req.pty {
        Some(p) => {
            let session = pty::start_session(
                &state,
                PtyStart {
                    process: spec,
                    cols: p.size.cols,
                    rows: p.size.rows,
                },
            )?;
            let pid = session.pid();
            let (id, rx, replay) = session.attach().ok_or_else(|| {
                RpcError::internal(format!("pty process {pid} ended before it was attached"))
            })?;
            let source = Source::Pty {
                session,
                id,
                rx,
                replay: Some(replay),
            };
            (pid, source, None)
        }
        None => {
            let (tx, rx) = broadcast::channel(EVENT_BUFFER);
            let (pid, stdin) = launch_io(
                &state,
                &spec,
                req.tag.clone().filter(|t| !t.is_empty()),
                Sink::Broadcast(tx),
                STREAM_CHUNK,
                req.stdin.unwrap_or(true),
            )
            .map_err(ApiError::from)?;
            (pid, Source::Pipe(rx), stdin)
        }
    };
    let proc = Arc::new(EnvdProc::new(req.process, stdin));
    let live: Vec<u32> = state.procs.list().processes.iter().map(|p| p.pid).collect();
    state.envd.procs.retain(&live);
    state.envd.procs.insert(pid, Arc::clone(&proc));
    tracing::debug!(pid, pty = req.pty.is_some(), "envd process started");
    let (resp, sender) = stream_response();
    tokio::spawn(run_stream(
        pid,
        Some(proc),
        source,
        sender,
        keepalive,
        deadline,
    ));
    Ok(resp)
}

async fn attach(state: SharedState, headers: HeaderMap, body: Body) -> Result<Response, RpcError> {
    check_stream_content_type(&headers)?;
    let req: SelectorRequest = connect::read_single_envelope(body).await?;
    let pid = find(&state, &req.process)?;
    let source = match find_pty(&state, pid) {
        Some(session) => {
            let (id, rx, _replay) = session
                .attach()
                .ok_or_else(|| RpcError::not_found(format!("process {pid} has ended")))?;
            Source::Pty {
                session,
                id,
                rx,
                replay: None,
            }
        }
        None => {
            let (_, rx) = state.procs.subscribe(&pid.to_string()).map_err(|e| {
                let e = ApiError::from(e);
                match e.code {
                    wrenn_types::error::AgentErrorCode::NotFound => RpcError::from(e),
                    _ => RpcError::new(Code::FailedPrecondition, e.message),
                }
            })?;
            Source::Pipe(rx)
        }
    };
    let keepalive = connect::keepalive_interval(&headers);
    let (resp, sender) = stream_response();
    let proc = state.envd.procs.get(pid);
    tokio::spawn(run_stream(pid, proc, source, sender, keepalive, None));
    Ok(resp)
}

/// The pid of a live process selected by pid or tag.
fn find(state: &SharedState, sel: &Selector) -> Result<u32, RpcError> {
    let list = state.procs.list().processes;
    let found = match (sel.pid, sel.tag.as_deref()) {
        (Some(pid), _) => list.iter().find(|p| p.pid == pid),
        (None, Some(tag)) => list.iter().find(|p| p.tag.as_deref() == Some(tag)),
        (None, None) => return Err(RpcError::invalid("process selector needs a pid or a tag")),
    };
    found.map(|p| p.pid).ok_or_else(|| {
        RpcError::not_found(match (sel.pid, &sel.tag) {
            (Some(pid), _) => format!("process with pid {pid} not found"),
            (_, tag) => format!(
                "process with tag {:?} not found",
                tag.as_deref().unwrap_or("")
            ),
        })
    })
}

/// The PTY session of `pid`, if it is one.
fn find_pty(state: &SharedState, pid: u32) -> Option<Arc<PtySession>> {
    let tag = state
        .procs
        .list()
        .processes
        .into_iter()
        .find(|p| p.pid == pid)?
        .tag?;
    state.ptys.get(&tag)
}

fn list(state: &SharedState) -> Value {
    let live = state.procs.list().processes;
    let pids: Vec<u32> = live.iter().map(|p| p.pid).collect();
    state.envd.procs.retain(&pids);
    let processes: Vec<Value> = live
        .into_iter()
        .map(|p| {
            let config = match state.envd.procs.get(p.pid) {
                Some(e) => e.config.clone(),
                None => ProcessConfig {
                    cmd: p.cmd,
                    args: p.args,
                    ..ProcessConfig::default()
                },
            };
            let mut v = json!({"config": config, "pid": p.pid});
            if let Some(tag) = p.tag {
                v["tag"] = Value::String(tag);
            }
            v
        })
        .collect();
    json!({ "processes": processes })
}

async fn write_input(state: &SharedState, pid: u32, input: &Input) -> Result<(), RpcError> {
    let pty = find_pty(state, pid);
    match (&input.stdin, &input.pty, pty) {
        (None, Some(data), Some(session)) => {
            if session.queue_input(Bytes::from(decode_bytes(data)?)) {
                Ok(())
            } else {
                Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("input to pty process {pid} dropped: it is not reading its terminal"),
                ))
            }
        }
        (None, Some(_), None) => Err(RpcError::new(
            Code::FailedPrecondition,
            format!("process {pid} has no pty; send stdin instead"),
        )),
        (Some(_), None, Some(_)) => Err(RpcError::new(
            Code::FailedPrecondition,
            format!("process {pid} is a pty process; send pty input instead"),
        )),
        (Some(data), None, None) => {
            let bytes = decode_bytes(data)?;
            let proc = state.envd.procs.get(pid).ok_or_else(|| no_stdin(pid))?;
            let mut stdin = proc.stdin.lock().await;
            let pipe = stdin.as_mut().ok_or_else(|| no_stdin(pid))?;
            pipe.write_all(&bytes).await.map_err(|e| {
                RpcError::new(
                    Code::FailedPrecondition,
                    format!("cannot write stdin of process {pid}: {e}"),
                )
            })
        }
        (None, None, _) => Ok(()),
        (Some(_), Some(_), _) => Err(RpcError::invalid("input has both stdin and pty")),
    }
}

fn no_stdin(pid: u32) -> RpcError {
    RpcError::new(
        Code::FailedPrecondition,
        format!("process {pid} has no open stdin (closed, or started with stdin false)"),
    )
}

fn send_signal(state: &SharedState, req: SendSignalRequest) -> Result<Value, RpcError> {
    let (signal, number) = match &req.signal {
        Value::String(s) if s == "SIGNAL_SIGKILL" => (KillSignal::Kill, libc::SIGKILL),
        Value::String(s) if s == "SIGNAL_SIGTERM" => (KillSignal::Term, libc::SIGTERM),
        Value::Number(n) if n.as_i64() == Some(9) => (KillSignal::Kill, libc::SIGKILL),
        Value::Number(n) if n.as_i64() == Some(15) => (KillSignal::Term, libc::SIGTERM),
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("signal {other} is not supported; use SIGNAL_SIGKILL or SIGNAL_SIGTERM"),
            ))
        }
    };
    let pid = find(state, &req.process)?;
    if let Some(p) = state.envd.procs.get(pid) {
        p.mark_signal(number);
    }
    state
        .procs
        .kill(&pid.to_string(), signal)
        .map_err(|e| RpcError::from(ApiError::from(e)))?;
    Ok(json!({}))
}

fn update(state: &SharedState, req: UpdateRequest) -> Result<Value, RpcError> {
    let pid = find(state, &req.process)?;
    let Some(pty) = req.pty else {
        return Ok(json!({}));
    };
    let (cols, rows) = (pty.size.cols, pty.size.rows);
    if cols == 0 || rows == 0 {
        return Err(RpcError::invalid("pty size needs cols and rows above 0"));
    }
    let session = find_pty(state, pid).ok_or_else(|| {
        RpcError::new(
            Code::FailedPrecondition,
            format!("process {pid} has no pty"),
        )
    })?;
    session
        .resize(cols, rows)
        .map_err(|e| RpcError::internal(format!("cannot resize pty of process {pid}: {e}")))?;
    Ok(json!({}))
}

async fn close_stdin(state: &SharedState, sel: &Selector) -> Result<Value, RpcError> {
    let pid = find(state, sel)?;
    if find_pty(state, pid).is_some() {
        return Err(RpcError::new(
            Code::FailedPrecondition,
            format!("process {pid} is a pty process; send end-of-transmission (0x04) instead"),
        ));
    }
    let proc = state.envd.procs.get(pid).ok_or_else(|| no_stdin(pid))?;
    drop(proc.stdin.lock().await.take());
    Ok(json!({}))
}

/// `StreamInput`: envelopes in (`start`, then `data` and `keepalive`), written as they arrive.
async fn stream_input(
    state: SharedState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RpcError> {
    check_stream_content_type(&headers)?;
    let mut reader = connect::EnvelopeReader::default();
    let mut body = body.into_data_stream();
    let mut pid: Option<u32> = None;
    loop {
        while let Some((flags, payload)) = reader.next_envelope()? {
            if flags & 0x02 != 0 {
                continue;
            }
            let msg: StreamInputMessage = connect::parse_message(&payload)?;
            if let Some(start) = msg.start {
                pid = Some(find(&state, &start.process)?);
            } else if let Some(data) = msg.data {
                let p = pid.ok_or_else(|| RpcError::invalid("first message must be start"))?;
                write_input(&state, p, &data.input).await?;
            }
        }
        match body.next().await {
            Some(Ok(chunk)) => reader.push(&chunk),
            Some(Err(e)) => return Err(RpcError::invalid(format!("reading request: {e}"))),
            None => break,
        }
    }
    if reader.has_partial() {
        return Err(RpcError::invalid("request ended inside a message"));
    }
    let mut out = connect::envelope(0, b"{}").to_vec();
    out.extend_from_slice(&connect::end_envelope(None));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(connect::STREAM_CONTENT_TYPE),
        )],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_accept_sdk_shapes() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false,"pty":{"size":{"cols":80,"rows":"24"}}}"#,
        )
        .expect("start");
        assert_eq!(r.process.args.len(), 3);
        assert_eq!(r.stdin, Some(false));
        assert_eq!(r.pty.map(|p| (p.size.cols, p.size.rows)), Some((80, 24)));
        let s: SelectorRequest =
            serde_json::from_str(r#"{"process":{"pid":"4711"}}"#).expect("pid string");
        assert_eq!(s.process.pid, Some(4711));
    }
}
