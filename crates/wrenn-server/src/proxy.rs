//! Host-based port proxy (contract §11): `{port}-{capsule_id}.{domain}` on the API listener
//! reaches `port` inside the capsule. E2B's sandbox traffic is told apart first (E2B contract
//! §1.6) and served by `api::e2b::traffic`; the routing order is:
//!
//! 0. `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers → E2B sandbox traffic (one without the
//!    other → 400); else a host `^(\d+)-([0-9a-z]+)\.` (an E2B sandbox id has no `-`) → E2B
//!    sandbox traffic; the rules below are the Wrenn API's.
//! 1. The `Host` header (port stripped) is matched against `^(\d+)-(cl-[0-9a-z]+)\.`; anything
//!    else goes to the API router.
//! 2. Bad port or id → 400; unknown capsule → 404; starting or resuming → held up to 4 s
//!    until it runs, then 503 (retry); otherwise not running → 409; no address → 503 (plain
//!    text, as upstream).
//! 3. Access: the owning team's `X-API-Key` (the official SDK always sends it), or none when the
//!    capsule was created with metadata `public_traffic: "true"`. No key → 401; a key of another
//!    team → 404, exactly as for a capsule that does not exist.
//! 4. The request is forwarded unchanged (method, path, query, body, headers; `Host` rewritten,
//!    `X-API-Key` removed) over a fresh HTTP/1.1 connection to the capsule's veth address; the
//!    dial is retried twice (100 ms, 200 ms) to cover a listener that is just starting;
//!    failures are 502 `proxy error: …` so clients such as the code runner keep retrying.
//! 5. WebSocket and other upgrades are spliced byte for byte once both sides switched.
//! 6. `Location` headers pointing at the internal target are made relative.
//!
//! Unlike upstream v0.1.5 (where the URL alone is the capability) a capsule's ports are private
//! to its team by default. Proxy traffic does not count as activity for the inactivity timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use wrenn_types::api::CapsuleStatus;

use crate::api::e2b;
use crate::ids;
use crate::AppState;

/// How long a request to a starting or resuming capsule is held before it is answered 503:
/// below the 5 s read timeout of the official SDK's HTTP client.
const STARTING_HOLD: Duration = Duration::from_secs(4);

/// The header that carries an API key.
const API_KEY_HEADER: &str = "x-api-key";

/// What a `Host` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyHost<'a> {
    /// Not a proxy host: normal API routing.
    Api,
    /// A proxy host with a malformed port or id.
    Invalid(&'static str),
    /// Port and capsule id.
    Target(u16, &'a str),
    /// Port and E2B sandbox id.
    E2b(u16, &'a str),
}

/// Parses a `Host` header value (contract §11 step 1–2).
pub fn parse_host(host: &str) -> ProxyHost<'_> {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let Some((label, rest)) = name.split_once('.') else {
        return ProxyHost::Api;
    };
    if rest.is_empty() {
        return ProxyHost::Api;
    }
    let Some((port, id)) = label.split_once('-') else {
        return ProxyHost::Api;
    };
    let e2b_id = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    if e2b_id && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        return match port.parse::<u16>() {
            Ok(p) if p > 0 => ProxyHost::E2b(p, id),
            _ => ProxyHost::Invalid("invalid port"),
        };
    }
    let id_ok = id.len() > 3
        && id.starts_with("cl-")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || !id_ok {
        return ProxyHost::Api;
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return ProxyHost::Invalid("invalid port"),
    }
    if !ids::is_capsule_id(id) {
        return ProxyHost::Invalid("invalid capsule id");
    }
    ProxyHost::Target(port.parse().unwrap_or(0), id)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", msg.into()),
    )
        .into_response()
}

/// The E2B routing headers of a request: `None` without them, `Some(Err)` when they are
/// malformed or only one is there.
fn e2b_headers(req: &Request) -> Option<Result<(u16, String), Response>> {
    let h = req.headers();
    let id = h.get("e2b-sandbox-id").map(|v| v.to_str().unwrap_or(""));
    let port = h.get("e2b-sandbox-port").map(|v| v.to_str().unwrap_or(""));
    match (id, port) {
        (None, None) => None,
        (Some(id), Some(port)) => Some(match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok((p, id.trim().to_owned())),
            _ => Err(e2b::traffic::bad_port()),
        }),
        _ => Some(Err(e2b::traffic::half_routed())),
    }
}

/// Middleware in front of the API router: proxies sandbox traffic (E2B's headers, then proxy
/// hosts), passes everything else on.
pub async fn route_by_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match e2b_headers(&req) {
        Some(Ok((port, id))) => return e2b::traffic::serve(&state, port, &id, req).await,
        Some(Err(resp)) => return resp,
        None => {}
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    match parse_host(&host) {
        ProxyHost::Api => next.run(req).await,
        ProxyHost::Invalid(why) => text(StatusCode::BAD_REQUEST, why),
        ProxyHost::Target(port, id) => proxy(&state, port, id, req).await,
        ProxyHost::E2b(port, id) => {
            let id = id.to_owned();
            e2b::traffic::serve(&state, port, &id, req).await
        }
    }
}

async fn proxy(state: &AppState, port: u16, id: &str, req: Request) -> Response {
    let not_found = || text(StatusCode::NOT_FOUND, format!("capsule {id} not found"));
    let Some(live) = state.capsules.live_get(id) else {
        return not_found();
    };
    if !live.public_traffic() {
        let key = req
            .headers()
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty());
        let Some(key) = key else {
            return text(
                StatusCode::UNAUTHORIZED,
                "the port proxy needs the owning team's X-API-Key (or a capsule created with \
                 metadata public_traffic=true)",
            );
        };
        match state.keys.resolve(key).await {
            Ok(Some(caller)) if caller.team_id == live.team_id() => {}
            Ok(Some(_)) => return not_found(),
            Ok(None) => return text(StatusCode::UNAUTHORIZED, "invalid API key"),
            Err(_) => return text(StatusCode::SERVICE_UNAVAILABLE, "cannot check the API key"),
        }
    }
    // A capsule that is about to run (a cold create's first request) is waited for rather
    // than answered 503 at once, which the SDK would retry only 0.5 s later.
    let status = live.settled(STARTING_HOLD).await;
    if matches!(
        status,
        CapsuleStatus::Pending | CapsuleStatus::Starting | CapsuleStatus::Resuming
    ) {
        // Soon running: a 5xx, which clients such as the SDK's code runner retry (§11).
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("capsule {id} is not running yet (status: {status})"),
        );
    }
    if status != CapsuleStatus::Running {
        return text(
            StatusCode::CONFLICT,
            format!("capsule {id} is not running (status: {status})"),
        );
    }
    let Some(ip) = live.ip() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("capsule {id} has no network address"),
        );
    };
    match forward(ip, port, req).await {
        Ok(resp) => resp,
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("proxy error: {e}")),
    }
}

async fn dial(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for backoff in [100u64, 200, 0] {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => {
                // Jupyter answers a cell with several small WebSocket frames: without this,
                // Nagle holds each behind the previous one's (delayed) ACK.
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::Error::other("connect timed out")),
        }
        if backoff > 0 {
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("connect failed")))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are not forwarded, except for upgrades.
pub(crate) const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// Nothing accepted the connection.
    #[error("{0}")]
    Dial(String),
    /// The exchange failed after connecting.
    #[error("{0}")]
    Other(String),
}

impl From<String> for ForwardError {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

/// Forwards `req` to `ip:port` (see the module's steps 4–6).
pub(crate) async fn forward(
    ip: Ipv4Addr,
    port: u16,
    mut req: Request,
) -> Result<Response, ForwardError> {
    let addr = SocketAddr::from((ip, port));
    let stream = dial(addr)
        .await
        .map_err(|e| ForwardError::Dial(format!("dial {addr}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    let conn = ConnTask(Some(tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxied connection ended");
        }
    })));

    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::try_from(path).map_err(|e| e.to_string())?;
    let target_host = format!("{ip}:{port}");
    let headers = &mut parts.headers;
    headers.remove(API_KEY_HEADER);
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if !upgrading {
        headers.remove(header::CONNECTION);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&target_host).map_err(|e| e.to_string())?,
    );
    let upstream_req = Request::from_parts(parts, body);
    let mut resp = sender
        .send_request(upstream_req)
        .await
        .map_err(|e| format!("request to {addr}: {e}"))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            tokio::spawn(async move {
                let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                    (Ok(c), Ok(u)) => (c, u),
                    _ => return,
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
        let (parts, _) = resp.into_parts();
        conn.keep();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let internal = [format!("http://{target_host}"), format!("http://{ip}")];
    if let Some(loc) = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(rest) = internal.iter().find_map(|p| loc.strip_prefix(p.as_str())) {
            let relative = if rest.is_empty() { "/" } else { rest };
            if let Ok(v) = HeaderValue::from_str(relative) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
        }
    }
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    conn.keep();
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The task driving a proxied connection. It owns the client's request body, so it is aborted
/// when the exchange fails or its caller goes away before the answer's head: stuck writing to
/// a capsule that stopped reading, it would otherwise hold the body and the connection for
/// ever. Once the head is in, the task streams the answer's body (or the upgrade) and lives on.
struct ConnTask(Option<tokio::task::JoinHandle<()>>);

impl ConnTask {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_forward_given_up_lets_go_of_the_request_body() {
        // A capsule's server that accepts and never reads.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = upstream.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = upstream.accept().await {
                held.push(conn);
            }
        });
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
        let pump = tokio::spawn(async move {
            let chunk = axum::body::Bytes::from(vec![0u8; 1 << 16]);
            while tx.send(Ok(chunk.clone())).await.is_ok() {}
        });
        let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let req = Request::post("/upload").body(body).expect("request");
        // The client goes away before any answer.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            forward(Ipv4Addr::LOCALHOST, port, req),
        )
        .await;
        assert!(gave_up.is_err(), "the capsule never answers");
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .expect("the body was dropped with the forward")
            .expect("pump");
    }

    #[test]
    fn hosts_are_told_apart() {
        let id = "cl-0123456789abcdefghijklmno";
        assert_eq!(
            parse_host(&format!("8888-{id}.localhost:8080")),
            ProxyHost::Target(8888, id)
        );
        assert_eq!(
            parse_host(&format!("80-{id}.wrenn.dev")),
            ProxyHost::Target(80, id)
        );
        assert_eq!(parse_host("127.0.0.1:8080"), ProxyHost::Api);
        assert_eq!(parse_host("localhost"), ProxyHost::Api);
        assert_eq!(parse_host("app.wrenn.dev"), ProxyHost::Api);
        assert_eq!(
            parse_host(&format!("0-{id}.x")),
            ProxyHost::Invalid("invalid port")
        );
        assert_eq!(
            parse_host(&format!("70000-{id}.x")),
            ProxyHost::Invalid("invalid port")
        );
        assert_eq!(
            parse_host("80-cl-abc.x"),
            ProxyHost::Invalid("invalid capsule id")
        );
        let sbx = "0123456789abcdefghijklmno";
        assert_eq!(
            parse_host(&format!("49983-{sbx}.localhost:3000")),
            ProxyHost::E2b(49983, sbx)
        );
        assert_eq!(
            parse_host(&format!("0-{sbx}.x")),
            ProxyHost::Invalid("invalid port")
        );
        assert_eq!(parse_host("80-Abc.x"), ProxyHost::Api);
        assert_eq!(parse_host("app-1.example.com"), ProxyHost::Api);
    }
}
