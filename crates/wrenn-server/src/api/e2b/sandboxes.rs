//! Sandbox lifecycle routes (contract §2.3): create, get, kill, timeout, refreshes, pause,
//! connect, resume. Every verb is the capsule service's; this layer adds E2B's record (token,
//! `endAt`), waits for the state E2B answers in, and sends envd its defaults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use wrenn_types::api::{CapsuleStatus, CreateCapsuleRequest};

use super::error::E2bError;
use super::{envd, ids, model, sandbox_domain, E2bCaller, E2bJson};
use crate::auth::Caller;
use crate::service::LiveCapsule;
use crate::store::E2bRow;
use crate::AppState;

/// E2B's default template.
pub const DEFAULT_TEMPLATE: &str = "base";
/// Timeout when create or connect names none, s.
pub const DEFAULT_TIMEOUT: i64 = 300;
/// The longest timeout accepted (E2B documents 24 h), s.
pub const MAX_TIMEOUT: i64 = 24 * 3600;
/// How long create waits for the sandbox to run (the SDK gives up after 60 s).
const START_WAIT: Duration = Duration::from_secs(50);
/// How long pause, connect and resume wait for the freezer.
const FREEZE_WAIT: Duration = Duration::from_secs(50);
/// Environment variables per sandbox at most.
const MAX_ENV_VARS: usize = 256;

/// `NewSandbox` / `NewSandboxV2`; unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    auto_pause: Option<bool>,
}

/// A body with an optional `timeout` (connect, resume, set_timeout).
#[derive(Debug, Default, Deserialize)]
pub(super) struct TimeoutBody {
    timeout: Option<i64>,
}

/// `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RefreshBody {
    duration: Option<i64>,
}

/// A timeout in seconds: absent → [`DEFAULT_TIMEOUT`], else 1..=[`MAX_TIMEOUT`].
fn timeout_secs(t: Option<i64>) -> Result<i64, E2bError> {
    match t {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) if (1..=MAX_TIMEOUT).contains(&t) => Ok(t),
        Some(t) => Err(E2bError::bad_request(format!(
            "timeout must be between 1 and {MAX_TIMEOUT} seconds, got {t}"
        ))),
    }
}

/// `envVars` as a process environment allows them.
fn check_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, E2bError> {
    if env.len() > MAX_ENV_VARS {
        return Err(E2bError::bad_request(format!(
            "more than {MAX_ENV_VARS} envVars"
        )));
    }
    for (k, v) in &env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(E2bError::bad_request(format!(
                "invalid environment variable {k:?}"
            )));
        }
    }
    Ok(env)
}

/// The caller's live E2B sandbox `sid` and its record; 404 for anything else (unknown,
/// another team's, created through the Wrenn API, stopping or gone).
pub(super) fn find(
    state: &AppState,
    caller: &Caller,
    sid: &str,
) -> Result<(Arc<LiveCapsule>, E2bRow), E2bError> {
    let not_found = || E2bError::sandbox_not_found(sid);
    let cid = ids::capsule_id(sid).ok_or_else(not_found)?;
    let row = state.e2b.get(&cid).ok_or_else(not_found)?;
    let live = state
        .capsules
        .live_get(&cid)
        .filter(|l| l.team_id() == caller.team_id)
        .filter(|l| model::state_of(l.status()).is_some())
        .ok_or_else(not_found)?;
    Ok((live, row))
}

/// `POST /sandboxes`, `POST /v2/sandboxes`: answers `201` once the sandbox runs and envd has
/// its defaults; a sandbox that cannot get there is removed.
pub(super) async fn create(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    headers: HeaderMap,
    E2bJson(req): E2bJson<NewSandbox>,
) -> Result<Response, E2bError> {
    let timeout = timeout_secs(req.timeout)?;
    let env_vars = check_env(req.env_vars.unwrap_or_default())?;
    let template = req
        .template_id
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
    let capsule = state
        .capsules
        .create(
            &caller.team_id,
            &caller.actor,
            CreateCapsuleRequest {
                template: Some(template),
                metadata: req.metadata.filter(|m| !m.is_empty()),
                ..CreateCapsuleRequest::default()
            },
        )
        .await?;
    let row = E2bRow {
        capsule_id: capsule.id.clone(),
        access_token: crate::ids::random_hex("", 40),
        end_at: Utc::now() + chrono::Duration::seconds(timeout),
        auto_pause: req.auto_pause.unwrap_or(false),
        env_vars,
    };
    let made = match state.e2b.insert(row.clone()).await {
        Ok(()) => started(&state, &capsule.id, &row).await,
        Err(e) => Err(E2bError::internal("recording the sandbox failed", e)),
    };
    let live = match made {
        Ok(live) => live,
        Err(e) => {
            let _ = state
                .capsules
                .destroy(&caller.team_id, &capsule.id, &caller.actor)
                .await;
            return Err(e);
        }
    };
    let body = model::sandbox(&live.snapshot(), &row, &sandbox_domain(&headers));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Waits for a new capsule to run and configures its envd.
async fn started(
    state: &AppState,
    capsule_id: &str,
    row: &E2bRow,
) -> Result<Arc<LiveCapsule>, E2bError> {
    let live = state.capsules.live_get(capsule_id).ok_or_else(|| {
        E2bError::internal(
            "sandbox failed to start",
            anyhow::anyhow!("capsule {capsule_id} vanished while starting"),
        )
    })?;
    let status = live.settled(START_WAIT).await;
    if status != CapsuleStatus::Running {
        let why = live.snapshot().error.unwrap_or_default();
        return Err(E2bError::internal(
            "sandbox failed to start",
            anyhow::anyhow!("capsule {capsule_id} is {status} after create: {why}"),
        ));
    }
    configure(&live, row).await?;
    Ok(live)
}

/// Sends envd the sandbox's defaults: create's `envVars` plus, as upstream's envd has them,
/// `E2B_SANDBOX_ID` and `E2B_TEMPLATE_ID` (these win over a create-time variable of the same
/// name; `E2B_SANDBOX=true` is the agent's).
async fn configure(live: &LiveCapsule, row: &E2bRow) -> Result<(), E2bError> {
    envd::configure(live.agent(), &sandbox_env(row, &live.snapshot().template))
        .await
        .map_err(|e| E2bError::internal("envd in the sandbox did not answer", e))
}

/// The default environment of the sandbox of `row`, made from `template`.
fn sandbox_env(row: &E2bRow, template: &str) -> BTreeMap<String, String> {
    let mut env = row.env_vars.clone();
    env.insert(
        "E2B_SANDBOX_ID".to_owned(),
        ids::sandbox_id(&row.capsule_id).to_owned(),
    );
    env.insert("E2B_TEMPLATE_ID".to_owned(), template.to_owned());
    env
}

/// `GET /sandboxes/{id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Json<serde_json::Value>, E2bError> {
    let (live, row) = find(&state, &caller, &sid)?;
    model::detail(&live.snapshot(), &row, &sandbox_domain(&headers))
        .map(Json)
        .ok_or_else(|| E2bError::sandbox_not_found(&sid))
}

/// `DELETE /sandboxes/{id}`: `204`, then the sandbox is gone for every route.
pub(super) async fn kill(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(sid): Path<String>,
) -> Result<StatusCode, E2bError> {
    let (_, row) = find(&state, &caller, &sid)?;
    state
        .capsules
        .destroy(&caller.team_id, &row.capsule_id, &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout`: `endAt = now + timeout` (may shorten).
pub(super) async fn set_timeout(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(sid): Path<String>,
    E2bJson(body): E2bJson<TimeoutBody>,
) -> Result<StatusCode, E2bError> {
    let Some(t) = body.timeout else {
        return Err(E2bError::bad_request("timeout is required"));
    };
    let t = timeout_secs(Some(t))?;
    let (_, row) = find(&state, &caller, &sid)?;
    let end = Utc::now() + chrono::Duration::seconds(t);
    set_end(&state, &row, |_| end).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes`: `endAt = max(endAt, now + duration)`.
pub(super) async fn refresh(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(sid): Path<String>,
    E2bJson(body): E2bJson<RefreshBody>,
) -> Result<StatusCode, E2bError> {
    let d = timeout_secs(Some(body.duration.unwrap_or(60)))?;
    let (_, row) = find(&state, &caller, &sid)?;
    let end = Utc::now() + chrono::Duration::seconds(d);
    set_end(&state, &row, |old| old.max(end)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_end(
    state: &AppState,
    row: &E2bRow,
    edit: impl FnOnce(chrono::DateTime<Utc>) -> chrono::DateTime<Utc>,
) -> Result<E2bRow, E2bError> {
    state
        .e2b
        .set_end(&row.capsule_id, edit)
        .await
        .map_err(|e| E2bError::internal("recording the timeout failed", e))?
        .ok_or_else(|| E2bError::sandbox_not_found(ids::sandbox_id(&row.capsule_id)))
}

/// `POST /sandboxes/{id}/pause`: `204` once paused; `409` when it already is.
pub(super) async fn pause(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    Path(sid): Path<String>,
) -> Result<StatusCode, E2bError> {
    let (live, row) = find(&state, &caller, &sid)?;
    match live.settled(FREEZE_WAIT).await {
        CapsuleStatus::Running => {}
        CapsuleStatus::Paused => {
            return Err(E2bError::new(
                StatusCode::CONFLICT,
                format!("sandbox {sid} is already paused"),
            ))
        }
        _ => return Err(E2bError::sandbox_not_found(&sid)),
    }
    state
        .capsules
        .pause(&caller.team_id, &row.capsule_id, &caller.actor)
        .await?;
    match live.settled(FREEZE_WAIT).await {
        CapsuleStatus::Paused => Ok(StatusCode::NO_CONTENT),
        status => Err(E2bError::internal(
            "pausing the sandbox failed",
            anyhow::anyhow!("capsule {} is {status} after pause", row.capsule_id),
        )),
    }
}

/// `POST /v2/sandboxes/{id}/connect`, `POST /sandboxes/{id}/connect`: running → `200`
/// (`endAt` only moves later); paused → resumed, `201` (`endAt = now + timeout`). Same id
/// and token as before.
pub(super) async fn connect(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    headers: HeaderMap,
    Path(sid): Path<String>,
    E2bJson(body): E2bJson<TimeoutBody>,
) -> Result<Response, E2bError> {
    let timeout = timeout_secs(body.timeout)?;
    let (live, row) = find(&state, &caller, &sid)?;
    let end = Utc::now() + chrono::Duration::seconds(timeout);
    let status = match live.settled(FREEZE_WAIT).await {
        CapsuleStatus::Running => {
            set_end(&state, &row, |old| old.max(end)).await?;
            StatusCode::OK
        }
        CapsuleStatus::Paused => {
            resume_now(&state, &caller, &live, &row).await?;
            set_end(&state, &row, |_| end).await?;
            StatusCode::CREATED
        }
        _ => return Err(E2bError::sandbox_not_found(&sid)),
    };
    configure(&live, &row).await?;
    let body = model::sandbox(&live.snapshot(), &row, &sandbox_domain(&headers));
    Ok((status, Json(body)).into_response())
}

/// `POST /sandboxes/{id}/resume` (deprecated): a paused sandbox → `201`; a running one → `409`.
pub(super) async fn resume(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    headers: HeaderMap,
    Path(sid): Path<String>,
    E2bJson(body): E2bJson<TimeoutBody>,
) -> Result<Response, E2bError> {
    let timeout = timeout_secs(body.timeout)?;
    let (live, row) = find(&state, &caller, &sid)?;
    match live.settled(FREEZE_WAIT).await {
        CapsuleStatus::Paused => {}
        CapsuleStatus::Running => {
            return Err(E2bError::new(
                StatusCode::CONFLICT,
                format!("sandbox {sid} is already running"),
            ))
        }
        _ => return Err(E2bError::sandbox_not_found(&sid)),
    }
    resume_now(&state, &caller, &live, &row).await?;
    let end = Utc::now() + chrono::Duration::seconds(timeout);
    set_end(&state, &row, |_| end).await?;
    configure(&live, &row).await?;
    let body = model::sandbox(&live.snapshot(), &row, &sandbox_domain(&headers));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn resume_now(
    state: &AppState,
    caller: &Caller,
    live: &LiveCapsule,
    row: &E2bRow,
) -> Result<(), E2bError> {
    state
        .capsules
        .resume(&caller.team_id, &row.capsule_id, &caller.actor)
        .await?;
    match live.settled(FREEZE_WAIT).await {
        CapsuleStatus::Running => Ok(()),
        status => Err(E2bError::internal(
            "resuming the sandbox failed",
            anyhow::anyhow!("capsule {} is {status} after resume", row.capsule_id),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_default_and_are_bounded() {
        assert_eq!(timeout_secs(None).unwrap(), 300);
        assert_eq!(timeout_secs(Some(1)).unwrap(), 1);
        assert_eq!(timeout_secs(Some(MAX_TIMEOUT)).unwrap(), MAX_TIMEOUT);
        for bad in [0, -5, MAX_TIMEOUT + 1] {
            assert_eq!(
                timeout_secs(Some(bad)).unwrap_err().status(),
                StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn the_sandbox_env_names_the_sandbox_and_its_template() {
        let row = E2bRow {
            capsule_id: "cl-abc123".to_owned(),
            access_token: String::new(),
            end_at: Utc::now(),
            auto_pause: false,
            env_vars: BTreeMap::from([
                ("MODE".to_owned(), "test".to_owned()),
                ("E2B_SANDBOX_ID".to_owned(), "spoofed".to_owned()),
            ]),
        };
        let env = sandbox_env(&row, "base");
        assert_eq!(env.get("MODE").map(String::as_str), Some("test"));
        assert_eq!(
            env.get("E2B_SANDBOX_ID").map(String::as_str),
            Some("abc123")
        );
        assert_eq!(env.get("E2B_TEMPLATE_ID").map(String::as_str), Some("base"));
    }

    #[test]
    fn env_vars_must_be_an_environment() {
        let ok = BTreeMap::from([("A".to_owned(), "x=y".to_owned())]);
        assert!(check_env(ok).is_ok());
        for (k, v) in [("", "x"), ("A=B", "x"), ("A", "\0")] {
            let bad = BTreeMap::from([(k.to_owned(), v.to_owned())]);
            assert!(check_env(bad).is_err(), "{k:?}");
        }
    }
}
