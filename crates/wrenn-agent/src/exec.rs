//! `POST /exec`: foreground runs with a deadline, and background launches.

use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc};
use wrenn_types::agent::{
    BackgroundStarted, ExecRequest, ExecResult, OutputEncoding, DEFAULT_EXEC_TIMEOUT_SEC,
};
use wrenn_types::error::AgentErrorCode;

use crate::processes::{self, ProcEvent, Sink};
use crate::server::{json_rejection, ApiError, SharedState};
use crate::spawn::{self, ChildIo, SpawnSpec};
use crate::sys;

/// Each of stdout and stderr of a foreground run is capped at this; the rest is dropped.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// Exit code reported when the deadline killed the process group (as timeout(1)).
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// Read size of foreground pipes.
const FOREGROUND_CHUNK: usize = 64 * 1024;
/// Read size of streamed pipes: a JSON frame of it stays under 64 KiB even fully escaped.
pub const STREAM_CHUNK: usize = 8 * 1024;

/// Spawns `spec` on pipes, tracks it, and pumps its output into `sink`. Returns the pid.
pub fn launch(
    state: &SharedState,
    spec: &SpawnSpec,
    tag: Option<String>,
    sink: Sink,
    chunk: usize,
) -> Result<u32, ApiError> {
    let mut spawned = spawn::spawn(&state.reaper, spec, ChildIo::Pipes)?;
    let pid = spawned.pid;
    let pipes = spawned
        .child
        .stdout
        .take()
        .zip(spawned.child.stderr.take())
        .ok_or_else(|| ApiError::new(AgentErrorCode::Internal, "child has no pipes"))
        .and_then(|(o, e)| {
            let o = pipe::Receiver::from_owned_fd(o.into());
            let e = pipe::Receiver::from_owned_fd(e.into());
            o.and_then(|o| e.map(|e| (o, e))).map_err(|e| {
                ApiError::new(AgentErrorCode::Internal, format!("cannot watch pipes: {e}"))
            })
        });
    let events = match &sink {
        Sink::Broadcast(tx) => Some(tx.clone()),
        Sink::Direct(_) => None,
    };
    let tracked = pipes.and_then(|pipes| {
        state
            .procs
            .insert(pid, tag, &spec.cmd, &spec.args, events)
            .map(|()| pipes)
    });
    let (stdout, stderr) = match tracked {
        Ok(p) => p,
        Err(e) => {
            // The exit status still arrives at the reaper, which drops it with the receiver.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            return Err(e);
        }
    };
    let state = SharedState::clone(state);
    tokio::spawn(async move {
        processes::pump(&state.procs, pid, stdout, stderr, spawned.exit, sink, chunk).await;
    });
    Ok(pid)
}

/// Kills a process group when dropped while armed (a foreground request whose client left).
#[derive(Debug)]
pub struct KillOnDrop {
    /// The group.
    pub pid: u32,
    /// Whether to kill.
    pub armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = sys::kill_group(self.pid, libc::SIGKILL);
        }
    }
}

fn spec_of(req: &ExecRequest) -> SpawnSpec {
    SpawnSpec {
        cmd: req.cmd.clone(),
        args: req.args.clone(),
        envs: req.envs.clone(),
        cwd: req.cwd.clone(),
        user: req.user.clone(),
    }
}

/// `POST /exec`.
pub async fn exec(
    State(state): State<SharedState>,
    req: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    if req.cmd.is_empty() {
        return Err(ApiError::invalid("cmd is required"));
    }
    if req.background {
        let tag = match req.tag.as_deref() {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => spawn::new_tag("proc-"),
        };
        if state.procs.tag_in_use(&tag) {
            return Err(processes::tag_taken(&tag));
        }
        let (tx, _) = broadcast::channel(1024);
        let pid = launch(
            &state,
            &spec_of(&req),
            Some(tag.clone()),
            Sink::Broadcast(tx),
            STREAM_CHUNK,
        )?;
        tracing::debug!(pid, tag, "background process started");
        return Ok((StatusCode::ACCEPTED, Json(BackgroundStarted { pid, tag })).into_response());
    }
    Ok(Json(foreground(&state, &req).await?).into_response())
}

async fn foreground(state: &SharedState, req: &ExecRequest) -> Result<ExecResult, ApiError> {
    let timeout = match req.timeout_sec {
        None | Some(0) => DEFAULT_EXEC_TIMEOUT_SEC,
        Some(t) => t,
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let (tx, mut rx) = mpsc::channel(64);
    let pid = launch(
        state,
        &spec_of(req),
        None,
        Sink::Direct(tx),
        FOREGROUND_CHUNK,
    )?;
    let mut guard = KillOnDrop { pid, armed: true };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut timed_out = false;
    let code = loop {
        let event = if timed_out {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    tracing::debug!(pid, timeout, "deadline reached, killing process group");
                    let _ = sys::kill_group(pid, libc::SIGKILL);
                    timed_out = true;
                    continue;
                }
            }
        };
        match event {
            Some(ProcEvent::Stdout(b)) => append_capped(&mut stdout, &b),
            Some(ProcEvent::Stderr(b)) => append_capped(&mut stderr, &b),
            Some(ProcEvent::Exit(code)) => break code,
            None => break -1,
        }
    };
    guard.armed = false;
    let (stdout, stderr, encoding) = encode(stdout, stderr);
    Ok(ExecResult {
        stdout,
        stderr,
        exit_code: if timed_out { TIMEOUT_EXIT_CODE } else { code },
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        encoding,
        timed_out,
    })
}

fn append_capped(buf: &mut Vec<u8>, chunk: &[u8]) {
    let room = OUTPUT_CAP.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// Both as UTF-8 text, or both base64 when either is not UTF-8.
fn encode(stdout: Vec<u8>, stderr: Vec<u8>) -> (String, String, OutputEncoding) {
    match (String::from_utf8(stdout), String::from_utf8(stderr)) {
        (Ok(o), Ok(e)) => (o, e, OutputEncoding::Utf8),
        (o, e) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let bytes = |r: Result<String, std::string::FromUtf8Error>| match r {
                Ok(s) => s.into_bytes(),
                Err(e) => e.into_bytes(),
            };
            (
                b64.encode(bytes(o)),
                b64.encode(bytes(e)),
                OutputEncoding::Base64,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_both_as_base64_when_one_is_binary() {
        let (o, e, enc) = encode(b"hi".to_vec(), vec![0xff, 0x00]);
        assert_eq!(enc, OutputEncoding::Base64);
        assert_eq!((o.as_str(), e.as_str()), ("aGk=", "/wA="));
        let (o, _, enc) = encode("é".as_bytes().to_vec(), Vec::new());
        assert_eq!((o.as_str(), enc), ("é", OutputEncoding::Utf8));
    }

    #[test]
    fn caps_output() {
        let mut buf = vec![0u8; OUTPUT_CAP - 1];
        append_capped(&mut buf, b"abc");
        assert_eq!(buf.len(), OUTPUT_CAP);
    }
}
