//! `GET /v2/sandboxes` (filters, paging) and the legacy `GET /sandboxes` (contract §2.3).
//!
//! Order is by `startedAt` (the capsule's creation time, which never changes) then id; a
//! `nextToken` is the position of the last item given, so a page is stable when sandboxes
//! come and go between calls.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use wrenn_types::api::Capsule;

use super::error::E2bError;
use super::{model, E2bCaller, E2bQuery};
use crate::auth::Caller;
use crate::AppState;

/// Items per page at most (and by default).
const MAX_LIMIT: usize = 100;

/// `GET /v2/sandboxes` query.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    metadata: Option<String>,
    limit: Option<String>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
    order: Option<String>,
    template: Option<String>,
}

/// The decoded `metadata` filter: the query value (already decoded once) split on `&` and `=`,
/// each part percent-decoded once more (contract §2.3).
pub fn parse_metadata(q: &str) -> Result<Vec<(String, String)>, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("metadata {s:?} is not UTF-8"))
}

/// A page position: after (`startedAt`, capsule id).
fn encode_token(c: &Capsule) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", c.created_at.to_rfc3339(), c.id))
}

fn decode_token(t: &str) -> Result<(DateTime<Utc>, String), E2bError> {
    let bad = || E2bError::bad_request("invalid nextToken");
    let raw = URL_SAFE_NO_PAD.decode(t).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad())?;
    Ok((at.with_timezone(&Utc), id.to_owned()))
}

/// The caller's E2B sandboxes with their listed form, before filters.
fn sandboxes(state: &AppState, caller: &Caller) -> Vec<(Capsule, Value)> {
    state
        .capsules
        .list(&caller.team_id)
        .into_iter()
        .filter_map(|c| {
            let row = state.e2b.get(&c.id)?;
            let v = model::listed(&c, &row)?;
            Some((c, v))
        })
        .collect()
}

fn matches_metadata(v: &Value, wanted: &[(String, String)]) -> bool {
    wanted
        .iter()
        .all(|(k, want)| v["metadata"][k.as_str()].as_str() == Some(want.as_str()))
}

/// One page of `items` (already filtered): sorted, after `token`, at most `limit`; and the
/// token of the next page when there is one.
fn page(
    mut items: Vec<(Capsule, Value)>,
    desc: bool,
    token: Option<(DateTime<Utc>, String)>,
    limit: usize,
) -> (Vec<(Capsule, Value)>, Option<String>) {
    items.sort_by(|(a, _), (b, _)| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    if desc {
        items.reverse();
    }
    if let Some((at, id)) = token {
        items.retain(|(c, _)| {
            let key = (c.created_at, c.id.as_str());
            if desc {
                key < (at, id.as_str())
            } else {
                key > (at, id.as_str())
            }
        });
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more
        .then(|| items.last().map(|(c, _)| encode_token(c)))
        .flatten();
    (items, next)
}

/// `GET /v2/sandboxes`.
pub(super) async fn list_v2(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bQuery(q): E2bQuery<ListQuery>,
) -> Result<Response, E2bError> {
    let states: Vec<String> = match q.state.as_deref() {
        None | Some("") => vec!["running".into(), "paused".into()],
        Some(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
    };
    if let Some(bad) = states
        .iter()
        .find(|s| !["running", "paused"].contains(&s.as_str()))
    {
        return Err(E2bError::bad_request(format!("invalid state {bad:?}")));
    }
    let limit = match q.limit.as_deref() {
        None | Some("") => MAX_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(E2bError::bad_request(format!(
                    "limit must be between 1 and {MAX_LIMIT}"
                )))
            }
        },
    };
    let desc = match q.order.as_deref() {
        None | Some("") | Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(E2bError::bad_request(format!("invalid order {o:?}"))),
    };
    let wanted =
        parse_metadata(q.metadata.as_deref().unwrap_or("")).map_err(E2bError::bad_request)?;
    let token = q
        .next_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_token)
        .transpose()?;
    let items: Vec<(Capsule, Value)> = sandboxes(&state, &caller)
        .into_iter()
        .filter(|(_, v)| states.iter().any(|s| v["state"] == s.as_str()))
        .filter(|(_, v)| matches_metadata(v, &wanted))
        .filter(|(c, _)| q.template.as_deref().is_none_or(|t| c.template == t))
        .collect();
    let (items, next) = page(items, desc, token, limit);
    let body: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
    let mut response = Json(body).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-next-token"), next);
    }
    Ok(response)
}

/// Legacy `GET /sandboxes` query.
#[derive(Debug, Default, Deserialize)]
pub(super) struct LegacyQuery {
    metadata: Option<String>,
}

/// `GET /sandboxes`: running sandboxes only, `metadata` filter, no paging.
pub(super) async fn list_v1(
    State(state): State<AppState>,
    E2bCaller(caller): E2bCaller,
    E2bQuery(q): E2bQuery<LegacyQuery>,
) -> Result<Json<Vec<Value>>, E2bError> {
    let wanted =
        parse_metadata(q.metadata.as_deref().unwrap_or("")).map_err(E2bError::bad_request)?;
    let items: Vec<(Capsule, Value)> = sandboxes(&state, &caller)
        .into_iter()
        .filter(|(_, v)| v["state"] == "running" && matches_metadata(v, &wanted))
        .collect();
    let (items, _) = page(items, true, None, usize::MAX);
    Ok(Json(items.into_iter().map(|(_, v)| v).collect()))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use wrenn_types::api::CapsuleStatus;

    use super::*;

    #[test]
    fn metadata_is_decoded_twice() {
        // {"owner": "alice b", "a&b": "x=y+"} as the SDK sends it, after the query decode.
        let q = "owner=alice%20b&a%26b=x%3Dy%2B";
        assert_eq!(
            parse_metadata(q).unwrap(),
            [
                ("owner".to_owned(), "alice b".to_owned()),
                ("a&b".to_owned(), "x=y+".to_owned())
            ]
        );
        assert!(parse_metadata("").unwrap().is_empty());
        assert!(parse_metadata("k=%zz").is_err());
    }

    fn capsule(n: u32) -> (Capsule, Value) {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, n).unwrap();
        let c = Capsule {
            id: format!("cl-{n:025}"),
            status: CapsuleStatus::Running,
            template: "base".into(),
            vcpus: 1,
            memory_mb: 512,
            timeout_sec: 0,
            disk_size_mb: 0,
            disk_used_mb: None,
            created_at: at,
            started_at: None,
            last_active_at: None,
            last_updated: at,
            metadata: None,
            error: None,
        };
        let v = serde_json::json!({"n": n});
        (c, v)
    }

    #[test]
    fn pages_follow_their_token_in_both_orders() {
        let all: Vec<_> = (0..5).map(capsule).collect();
        for desc in [true, false] {
            let mut seen = Vec::new();
            let mut token = None;
            loop {
                let (items, next) = page(all.clone(), desc, token, 2);
                seen.extend(items.iter().map(|(_, v)| v["n"].as_u64().unwrap()));
                match next {
                    Some(t) => token = Some(decode_token(&t).unwrap()),
                    None => break,
                }
            }
            let want: Vec<u64> = if desc {
                vec![4, 3, 2, 1, 0]
            } else {
                vec![0, 1, 2, 3, 4]
            };
            assert_eq!(seen, want);
        }
        let (items, next) = page(all, true, None, 5);
        assert_eq!((items.len(), next), (5, None));
        assert!(decode_token("%%%").is_err());
    }
}
