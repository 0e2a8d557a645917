//! `POST /exec` (foreground runs with a deadline, and background launches), `GET /processes`
//! and `DELETE /processes/{selector}`.

use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use wrenn_types::agent::{
    BackgroundStarted, ExecRequest, ExecResult, KillSignal, OutputEncoding, ProcessList,
    DEFAULT_EXEC_TIMEOUT_SEC,
};

use crate::error::{json_rejection, ApiError};
use crate::launch::{launch, KillOnDrop, STREAM_CHUNK};
use crate::processes::{ProcEvent, ProcessError, Sink};
use crate::spawn;
use crate::state::SharedState;
use crate::sys;

/// Each of stdout and stderr of a foreground run is capped at this; the rest is dropped.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// Exit code reported when the deadline killed the process group (as timeout(1)).
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// Read size of foreground pipes.
const FOREGROUND_CHUNK: usize = 64 * 1024;

/// `POST /exec`.
pub async fn exec(
    State(state): State<SharedState>,
    req: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req.map_err(json_rejection)?;
    if req.process.cmd.is_empty() {
        return Err(ApiError::invalid("cmd is required"));
    }
    if req.background {
        let tag = match req.tag.as_deref() {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => spawn::new_tag("proc-"),
        };
        if state.procs.tag_in_use(&tag) {
            return Err(ProcessError::TagTaken { tag }.into());
        }
        let (tx, _) = broadcast::channel(1024);
        let pid = launch(
            &state,
            &req.process,
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
        &req.process,
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

/// `GET /processes`.
pub async fn processes(State(state): State<SharedState>) -> Json<ProcessList> {
    Json(state.procs.list())
}

/// The query of `DELETE /processes/{selector}`.
#[derive(Debug, Deserialize)]
pub struct KillQuery {
    signal: Option<String>,
}

/// `DELETE /processes/{selector}?signal=`.
pub async fn kill(
    State(state): State<SharedState>,
    Path(selector): Path<String>,
    query: Result<Query<KillQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let signal = KillSignal::from_query(query.signal.as_deref())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    state.procs.kill(&selector, signal)?;
    Ok(StatusCode::NO_CONTENT)
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
