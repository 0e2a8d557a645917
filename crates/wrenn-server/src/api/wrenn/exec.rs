//! Command execution and processes (contract §6.1–§6.3).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use wrenn_agent_client::ExecOutcome;
use wrenn_types::agent::{ExecRequest, KillSignal, ProcessList};
use wrenn_types::api::{BackgroundExecResponse, ExecResponse};

use super::input;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};
use crate::AppState;

pub(super) async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ExecRequest>,
) -> ApiResult<Response> {
    input::exec(&req)?;
    if !req.background && req.tag.is_some() {
        // The SDK sends a tag for foreground runs too; it means nothing there.
    }
    let live = state.capsules.running(&caller.team_id, &id).await?;
    let cmd = req.process.cmd.clone();
    let outcome = live.agent().exec(&req).await?;
    state.capsules.touch(&live);
    Ok(match outcome {
        ExecOutcome::Finished(r) => Json(ExecResponse {
            sandbox_id: id,
            cmd,
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            encoding: r.encoding,
        })
        .into_response(),
        ExecOutcome::Started(s) => (
            StatusCode::ACCEPTED,
            Json(BackgroundExecResponse {
                sandbox_id: id,
                cmd,
                pid: s.pid,
                tag: s.tag,
            }),
        )
            .into_response(),
    })
}

pub(super) async fn list_processes(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ProcessList>> {
    let live = state.capsules.running(&caller.team_id, &id).await?;
    Ok(Json(live.agent().processes().await?))
}

#[derive(Debug, Deserialize)]
pub(super) struct KillQuery {
    signal: Option<String>,
}

pub(super) async fn kill_process(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, selector)): Path<(String, String)>,
    Query(q): Query<KillQuery>,
) -> ApiResult<StatusCode> {
    input::selector(&selector)?;
    let signal = KillSignal::from_query(q.signal.as_deref())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let live = state.capsules.running(&caller.team_id, &id).await?;
    live.agent().kill(&selector, signal).await?;
    Ok(StatusCode::NO_CONTENT)
}
