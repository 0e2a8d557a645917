//! Sandbox traffic (contract §1.6): requests routed to (`sandboxID`, port) by the
//! `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or by a `{port}-{sandboxID}.{domain}` host.
//!
//! 1. Only sandboxes made through the E2B API are reachable this way; an unknown, killed,
//!    failed or paused one answers `502` JSON "The sandbox … was not found" with an int `code`.
//!    A sandbox on its way (starting, pausing, resuming) holds the request up to [`HOLD`].
//! 2. Port [`ENVD_PORT`] (envd): `GET /health` needs nothing; everything else needs the
//!    sandbox's `X-Access-Token`, or for `GET|POST /files` a valid, unexpired signature
//!    (`signature`, `signature_expiration`); `401` JSON otherwise. The request then goes to
//!    the capsule's agent endpoint under `/envd` (through the agent client's transport),
//!    streamed both ways, whatever the status.
//! 3. Any other port: forwarded to the capsule's address like the Wrenn port proxy, with no
//!    key or token check. As on E2B (public traffic on by default), the 25-character random
//!    sandbox id is the capability for user ports; the code interpreter (49999) checks its
//!    own token where E2B's does. Nothing listening → `502` "port is not open".

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};
use wrenn_types::api::CapsuleStatus;
use wrenn_types::envd::ENVD_PORT;

use super::ids;
use crate::proxy::{forward, ForwardError, HOP_BY_HOP};
use crate::store::E2bRow;
use crate::AppState;

/// How long a request waits for a sandbox that is starting, pausing or resuming.
pub const HOLD: Duration = Duration::from_secs(30);

/// The header with envd's access token.
const ACCESS_TOKEN: &str = "x-access-token";

/// `502`: the sandbox is not there for traffic (the SDK's "not running" signal).
pub fn not_found(sid: &str) -> Response {
    let body = json!({"sandboxId": sid, "message": format!("The sandbox {sid} was not found"), "code": 502});
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

/// `502`: the sandbox runs but nothing answers on `port`.
fn port_closed(sid: &str, port: u16, why: &str) -> Response {
    tracing::debug!(sandbox = %sid, port, why, "sandbox port not open");
    let body = json!({
        "sandboxId": sid,
        "message": format!("The sandbox is running but port is not open"),
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"code": status.as_u16(), "message": message});
    (status, Json(body)).into_response()
}

/// `400` for a request that carries only one of the two routing headers.
pub fn half_routed() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "E2b-Sandbox-Id and E2b-Sandbox-Port must be sent together",
    )
}

/// `400` for a routing port that is not one.
pub fn bad_port() -> Response {
    error(StatusCode::BAD_REQUEST, "invalid E2b-Sandbox-Port")
}

/// Serves one request for port `port` of E2B sandbox `sid`.
pub async fn serve(state: &AppState, port: u16, sid: &str, req: Request) -> Response {
    let Some(cid) = ids::capsule_id(sid) else {
        return not_found(sid);
    };
    let (Some(row), Some(live)) = (state.e2b.get(&cid), state.capsules.live_get(&cid)) else {
        return not_found(sid);
    };
    if live.settled(HOLD).await != CapsuleStatus::Running {
        return not_found(sid);
    }
    if port != ENVD_PORT {
        let Some(ip) = live.ip() else {
            return port_closed(sid, port, "no address");
        };
        return match forward(ip, port, req).await {
            Ok(resp) => resp,
            Err(ForwardError::Dial(e)) => port_closed(sid, port, &e),
            Err(ForwardError::Other(e)) => {
                tracing::debug!(sandbox = %sid, port, error = %e, "sandbox port request failed");
                error(StatusCode::BAD_GATEWAY, &format!("proxy error: {e}"))
            }
        };
    }
    let health = req.method() == Method::GET && req.uri().path() == "/health";
    if !health && !authorized(&req, &row, chrono::Utc::now().timestamp()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid or missing X-Access-Token",
        );
    }
    let (mut parts, body) = req.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.remove(header::CONNECTION);
    parts.headers.remove("x-api-key");
    match live
        .agent()
        .forward_envd(Request::from_parts(parts, body))
        .await
    {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for h in HOP_BY_HOP {
                parts.headers.remove(h);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(e @ wrenn_agent_client::AgentError::Timeout { .. }) => {
            tracing::warn!(sandbox = %sid, error = %e, "envd request ran out of time");
            error(StatusCode::BAD_GATEWAY, &format!("the sandbox's {e}"))
        }
        Err(e) => port_closed(sid, port, &e.to_string()),
    }
}

/// Whether an envd request may pass: the access token, or a signed `/files` URL (§4.3).
fn authorized(req: &Request, row: &E2bRow, now: i64) -> bool {
    let token = req
        .headers()
        .get(ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok());
    if let Some(t) = token {
        return constant_eq(t.as_bytes(), row.access_token.as_bytes());
    }
    let op = match *req.method() {
        Method::GET => "read",
        Method::POST => "write",
        _ => return false,
    };
    if req.uri().path() != "/files" {
        return false;
    }
    let Ok(q) =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(req.uri()).map(|q| q.0)
    else {
        return false;
    };
    let Some(sig) = q.get("signature") else {
        return false;
    };
    let expiration = q.get("signature_expiration");
    let exp = match expiration.map(|e| e.parse::<i64>()) {
        None => None,
        Some(Ok(e)) if e >= now => Some(e),
        Some(_) => return false,
    };
    let want = signature(
        q.get("path").map_or("", String::as_str),
        op,
        q.get("username").map_or("", String::as_str),
        &row.access_token,
        exp,
    );
    constant_eq(sig.as_bytes(), want.as_bytes())
}

/// `v1_` + unpadded base64 of SHA-256 over `path:op:user:token[:expiration]`.
fn signature(path: &str, op: &str, user: &str, token: &str, exp: Option<i64>) -> String {
    let raw = match exp {
        None => format!("{path}:{op}:{user}:{token}"),
        Some(e) => format!("{path}:{op}:{user}:{token}:{e}"),
    };
    format!(
        "v1_{}",
        STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes()))
    )
}

/// Compares without an early exit on the first differing byte.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn row() -> E2bRow {
        E2bRow {
            capsule_id: "cl-x".into(),
            access_token: "tok".into(),
            end_at: chrono::Utc::now(),
            auto_pause: false,
            env_vars: BTreeMap::new(),
        }
    }

    fn req(method: Method, uri: &str, token: Option<&str>) -> Request {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(ACCESS_TOKEN, t);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn signature_matches_the_sdk() {
        // get_signature("/home/user/a.txt", "read", None, "tok") in e2b 2.63.0.
        assert_eq!(
            signature("/home/user/a.txt", "read", "", "tok", None),
            format!(
                "v1_{}",
                STANDARD_NO_PAD.encode(Sha256::digest(b"/home/user/a.txt:read::tok"))
            )
        );
    }

    #[test]
    fn tokens_and_signatures_are_checked() {
        let r = row();
        assert!(authorized(
            &req(Method::POST, "/process.Process/List", Some("tok")),
            &r,
            0
        ));
        assert!(!authorized(
            &req(Method::POST, "/process.Process/List", Some("bad")),
            &r,
            0
        ));
        assert!(!authorized(
            &req(Method::POST, "/process.Process/List", None),
            &r,
            0
        ));
        let sig = signature("a.txt", "read", "", "tok", Some(100));
        let enc = sig.replace('+', "%2B").replace('/', "%2F");
        let uri = format!("/files?path=a.txt&signature={enc}&signature_expiration=100");
        assert!(authorized(&req(Method::GET, &uri, None), &r, 99));
        assert!(
            !authorized(&req(Method::GET, &uri, None), &r, 101),
            "expired"
        );
        assert!(
            !authorized(&req(Method::POST, &uri, None), &r, 99),
            "read is not write"
        );
        let other = format!("/files?path=b.txt&signature={enc}&signature_expiration=100");
        assert!(
            !authorized(&req(Method::GET, &other, None), &r, 99),
            "another path"
        );
        let rpc = format!("/filesystem.Filesystem/Stat?signature={enc}");
        assert!(!authorized(&req(Method::POST, &rpc, None), &r, 99));
    }
}
