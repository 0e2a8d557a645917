//! The E2B front end over the fake runtime and a fake agent on a unix socket: error shapes, id
//! mapping, list paging and the metadata filter, the routing rules of sandbox traffic, the envd
//! token, envd forwarding under `/envd`, pause/connect and the deadline.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::routing::{any, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::Harness;

/// What the fake agent was sent on `PUT /envd-config`.
type Configs = Arc<Mutex<Vec<Value>>>;

/// A fake agent: `/etc/passwd` with a `user` account, `PUT /envd-config` recorded, and every
/// `/envd/...` request echoed (its path and token).
async fn fake_agent(h: &Harness) -> Configs {
    let configs: Configs = Arc::default();
    let seen = configs.clone();
    let app = Router::new()
        .route(
            "/files/read",
            post(|| async {
                "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n"
            }),
        )
        .route(
            "/envd-config",
            put(move |Json(v): Json<Value>| async move {
                seen.lock().unwrap().push(v);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/envd/{*rest}",
            any(|req: Request<Body>| async move {
                let token = req
                    .headers()
                    .get("x-access-token")
                    .map(|v| v.to_str().unwrap().to_owned());
                Json(json!({"path": req.uri().to_string(), "token": token}))
            }),
        );
    let dir = std::env::temp_dir().join(format!("wrenn-e2b-router-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    h.rt.agent_at(&sock);
    configs
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = h.app.clone().oneshot(req).await.expect("infallible");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    (status, headers, v)
}

async fn e2b(
    h: &Harness,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("X-API-KEY", &h.key)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    send(h, req).await
}

/// Sandbox traffic by the routing headers.
async fn traffic(
    h: &Harness,
    sid: &str,
    port: u16,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("E2b-Sandbox-Id", sid)
        .header("E2b-Sandbox-Port", port.to_string());
    if let Some(t) = token {
        b = b.header("X-Access-Token", t);
    }
    let (s, _, v) = send(h, b.body(Body::empty()).unwrap()).await;
    (s, v)
}

async fn create(h: &Harness, body: Value) -> Value {
    let (s, _, v) = e2b(h, Method::POST, "/v2/sandboxes", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

#[tokio::test]
async fn create_maps_ids_sends_envd_its_defaults_and_answers_the_sandbox() {
    let h = Harness::new().await;
    let configs = fake_agent(&h).await;
    let v = create(
        &h,
        json!({"templateID": "minimal", "envVars": {"A": "1"}, "secure": true, "mcp": {}}),
    )
    .await;
    let sid = v["sandboxID"].as_str().unwrap();
    assert_eq!(sid.len(), 25);
    assert_eq!(v["templateID"], "minimal");
    assert_eq!(v["envdVersion"], wrenn_types::envd::ENVD_VERSION);
    assert!(v["envdAccessToken"].as_str().unwrap().len() >= 32);
    assert_eq!(v["domain"], "localhost");
    let c = h.get(&format!("cl-{sid}")).await;
    assert_eq!(
        (c["status"].as_str(), c["timeout_sec"].as_u64()),
        (Some("running"), Some(0))
    );
    let sent = configs.lock().unwrap().clone();
    assert_eq!(
        sent,
        [json!({
            "envVars": {"A": "1", "E2B_SANDBOX_ID": sid, "E2B_TEMPLATE_ID": "minimal"},
            "defaultUser": "user",
            "defaultWorkdir": "/home/user"
        })]
    );
    let (s, _, detail) = e2b(&h, Method::GET, &format!("/sandboxes/{sid}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail["state"], "running");
    assert_eq!(detail["envdAccessToken"], v["envdAccessToken"]);
}

#[tokio::test]
async fn errors_are_e2b_shaped() {
    let h = Harness::new().await;
    fake_agent(&h).await;
    let (s, _, v) = e2b(&h, Method::GET, "/sandboxes/nope", None).await;
    assert_eq!(
        (s, v.clone()),
        (
            StatusCode::NOT_FOUND,
            json!({"code": 404, "message": "sandbox nope not found"})
        )
    );
    let (s, _, v) = e2b(
        &h,
        Method::POST,
        "/v2/sandboxes",
        Some(json!({"templateID": "missing"})),
    )
    .await;
    assert_eq!((s, v["code"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));
    let (s, _, v) = e2b(
        &h,
        Method::POST,
        "/v2/sandboxes",
        Some(json!({"templateID": "minimal", "timeout": 0})),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_u64()),
        (StatusCode::BAD_REQUEST, Some(400))
    );
    let req = Request::builder()
        .uri("/v2/sandboxes")
        .header("X-API-KEY", "e2b_bad")
        .body(Body::empty())
        .unwrap();
    let (s, _, v) = send(&h, req).await;
    assert_eq!(
        (s, v["code"].as_u64()),
        (StatusCode::UNAUTHORIZED, Some(401))
    );
    let (s, _, v) = e2b(&h, Method::GET, "/sandboxes/x/logs", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], 404, "{v}");
    let (s, _, v) = e2b(&h, Method::PUT, "/v2/sandboxes", None).await;
    assert_eq!(
        (s, v["code"].as_u64()),
        (StatusCode::METHOD_NOT_ALLOWED, Some(405))
    );
    let (s, _, v) = e2b(&h, Method::GET, "/v1/nothing", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, _, v) = e2b(&h, Method::PUT, "/sandboxes/x/network", Some(json!({}))).await;
    assert_eq!(
        (s, v["code"].as_u64()),
        (StatusCode::NOT_IMPLEMENTED, Some(501))
    );
    // A capsule made through the Wrenn API is not an E2B sandbox.
    let cid = h.running().await;
    let sid = cid.strip_prefix("cl-").unwrap();
    let (s, _, _) = e2b(&h, Method::GET, &format!("/sandboxes/{sid}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = traffic(&h, sid, 49983, "/health", None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        v["message"].as_str().unwrap().contains("was not found"),
        "{v}"
    );
}

#[tokio::test]
async fn list_pages_filter_by_metadata_and_state() {
    let h = Harness::new().await;
    fake_agent(&h).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let v = create(
            &h,
            json!({"templateID": "minimal", "metadata": {"tag": "t x", "n": i.to_string()}}),
        )
        .await;
        ids.push(v["sandboxID"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    create(
        &h,
        json!({"templateID": "minimal", "metadata": {"tag": "other"}}),
    )
    .await;
    // {"tag": "t x"} as the SDK encodes it: quote() then urlencode().
    let q = "/v2/sandboxes?metadata=tag%3Dt%2520x&limit=2";
    let (s, headers, page1) = e2b(&h, Method::GET, q, None).await;
    assert_eq!(s, StatusCode::OK);
    let next = headers
        .get("x-next-token")
        .expect("a next token")
        .to_str()
        .unwrap()
        .to_owned();
    let (_, headers, page2) = e2b(&h, Method::GET, &format!("{q}&nextToken={next}"), None).await;
    assert!(headers.get("x-next-token").is_none());
    let got: Vec<&str> = page1
        .as_array()
        .unwrap()
        .iter()
        .chain(page2.as_array().unwrap())
        .map(|v| v["sandboxID"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want);
    let (_, _, asc) = e2b(
        &h,
        Method::GET,
        "/v2/sandboxes?metadata=tag%3Dt%2520x&order=asc",
        None,
    )
    .await;
    assert_eq!(asc[0]["sandboxID"], ids[0].as_str());
    let (s, _, _) = e2b(
        &h,
        Method::POST,
        &format!("/sandboxes/{}/pause", ids[0]),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, _, paused) = e2b(&h, Method::GET, "/v2/sandboxes?state=paused", None).await;
    assert_eq!(paused.as_array().unwrap().len(), 1);
    assert_eq!(paused[0]["state"], "paused");
    let (_, _, legacy) = e2b(&h, Method::GET, "/sandboxes", None).await;
    assert_eq!(legacy.as_array().unwrap().len(), 3, "running ones only");
    for bad in [
        "limit=0",
        "limit=101",
        "state=dead",
        "order=up",
        "nextToken=%25%25",
    ] {
        let (s, _, v) = e2b(&h, Method::GET, &format!("/v2/sandboxes?{bad}"), None).await;
        assert_eq!(
            (s, v["code"].as_u64()),
            (StatusCode::BAD_REQUEST, Some(400)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn sandbox_traffic_routes_checks_the_token_and_forwards_under_envd() {
    let h = Harness::new().await;
    fake_agent(&h).await;
    let v = create(&h, json!({"templateID": "minimal"})).await;
    let (sid, token) = (
        v["sandboxID"].as_str().unwrap(),
        v["envdAccessToken"].as_str().unwrap(),
    );
    let (s, echo) = traffic(&h, sid, 49983, "/process.Process/List?x=1", Some(token)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(echo["path"], "/envd/process.Process/List?x=1");
    assert_eq!(
        traffic(&h, sid, 49983, "/process.Process/List", Some("bad"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, v) = traffic(&h, sid, 49983, "/process.Process/List", None).await;
    assert_eq!(
        (s, v["code"].as_u64()),
        (StatusCode::UNAUTHORIZED, Some(401))
    );
    // GET /health needs no token; by host too.
    let req = Request::builder()
        .uri("/health")
        .header("Host", format!("49983-{sid}.example.net"))
        .body(Body::empty())
        .unwrap();
    let (s, _, echo) = send(&h, req).await;
    assert_eq!(
        (s, echo["path"].as_str()),
        (StatusCode::OK, Some("/envd/health"))
    );
    // One routing header without the other.
    let req = Request::builder()
        .uri("/health")
        .header("E2b-Sandbox-Port", "49983")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h, req).await.0, StatusCode::BAD_REQUEST);
    // The fake capsule has no address: nothing listens on a user port.
    let (s, v) = traffic(&h, sid, 8080, "/", None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        v["message"].as_str().unwrap().contains("port is not open"),
        "{v}"
    );
    // The Wrenn API's own /health is still the API's.
    let req = Request::builder()
        .uri("/health")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h, req).await.2["status"], "ok");
}

#[tokio::test]
async fn pause_connect_kill_and_the_deadline() {
    let h = Harness::new().await;
    let configs = fake_agent(&h).await;
    let v = create(&h, json!({"templateID": "minimal", "timeout": 60})).await;
    let (sid, token) = (
        v["sandboxID"].as_str().unwrap().to_owned(),
        v["envdAccessToken"].clone(),
    );
    let path = |verb: &str| format!("/sandboxes/{sid}/{verb}");
    assert_eq!(
        e2b(&h, Method::POST, &path("pause"), Some(json!({})))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        e2b(&h, Method::POST, &path("pause"), None).await.0,
        StatusCode::CONFLICT
    );
    let (s, v) = traffic(&h, &sid, 49983, "/health", None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(v["code"], 502);
    let (s, _, v) = e2b(
        &h,
        Method::POST,
        &format!("/v2/sandboxes/{sid}/connect"),
        Some(json!({"timeout": 30})),
    )
    .await;
    assert_eq!((s, &v["envdAccessToken"]), (StatusCode::CREATED, &token));
    let (s, _, _) = e2b(
        &h,
        Method::POST,
        &path("connect"),
        Some(json!({"timeout": 30})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        configs.lock().unwrap().len(),
        3,
        "create and both connects configure envd"
    );
    assert_eq!(
        e2b(&h, Method::POST, &path("resume"), None).await.0,
        StatusCode::CONFLICT
    );
    // The deadline: set_timeout, then the reaper after it.
    assert_eq!(
        e2b(
            &h,
            Method::POST,
            &path("timeout"),
            Some(json!({"timeout": 5}))
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let (_, _, d) = e2b(&h, Method::GET, &format!("/sandboxes/{sid}"), None).await;
    let end = chrono::DateTime::parse_from_rfc3339(d["endAt"].as_str().unwrap()).unwrap();
    assert!(end.timestamp() - chrono::Utc::now().timestamp() <= 5);
    h.state
        .e2b
        .reap(&h.state.capsules, chrono::Utc::now())
        .await;
    assert_eq!(
        h.get(&format!("cl-{sid}")).await["status"],
        "running",
        "not yet"
    );
    h.state
        .e2b
        .reap(
            &h.state.capsules,
            chrono::Utc::now() + chrono::Duration::seconds(6),
        )
        .await;
    h.wait_status(&format!("cl-{sid}"), "stopped").await;
    assert_eq!(
        e2b(&h, Method::DELETE, &format!("/sandboxes/{sid}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        traffic(&h, &sid, 49983, "/health", None).await.0,
        StatusCode::BAD_GATEWAY
    );

    let v = create(&h, json!({"templateID": "minimal"})).await;
    let sid = v["sandboxID"].as_str().unwrap();
    assert_eq!(
        e2b(&h, Method::DELETE, &format!("/sandboxes/{sid}"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        e2b(&h, Method::DELETE, &format!("/sandboxes/{sid}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        e2b(&h, Method::GET, &format!("/sandboxes/{sid}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_auto_paused_sandbox_resumed_elsewhere_gets_a_fresh_deadline() {
    let h = Harness::new().await;
    let _configs = fake_agent(&h).await;
    let v = create(
        &h,
        json!({"templateID": "minimal", "timeout": 5, "autoPause": true}),
    )
    .await;
    let sid = v["sandboxID"].as_str().unwrap().to_owned();
    let id = format!("cl-{sid}");
    h.wait_status(&id, "running").await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(6);
    h.state.e2b.reap(&h.state.capsules, later).await;
    h.wait_status(&id, "paused").await;
    // Resumed through the Wrenn API (the dashboard's button), its deadline long past.
    assert!(h.verb(&id, "resume").await.0.is_success());
    h.wait_status(&id, "running").await;
    h.state.e2b.reap(&h.state.capsules, later).await;
    assert_eq!(h.get(&id).await["status"], "running", "not paused again");
    let (_, _, d) = e2b(&h, Method::GET, &format!("/sandboxes/{sid}"), None).await;
    let end = chrono::DateTime::parse_from_rfc3339(d["endAt"].as_str().unwrap()).unwrap();
    assert_eq!(
        (end.timestamp() - later.timestamp()) / 10,
        30,
        "E2B's default 300 s from then: {d}"
    );
    // The fresh deadline holds like any other.
    h.state
        .e2b
        .reap(&h.state.capsules, later + chrono::Duration::seconds(301))
        .await;
    h.wait_status(&id, "paused").await;
}

#[tokio::test]
async fn traffic_is_held_while_the_sandbox_is_on_its_way() {
    use wrenn_server::service::fake::Op;
    let h = Harness::new().await;
    fake_agent(&h).await;
    let v = create(&h, json!({"templateID": "minimal"})).await;
    let (sid, token) = (
        v["sandboxID"].as_str().unwrap().to_owned(),
        v["envdAccessToken"].as_str().unwrap().to_owned(),
    );
    let cid = format!("cl-{sid}");
    assert_eq!(h.verb(&cid, "pause").await.0, StatusCode::ACCEPTED);
    h.wait_status(&cid, "paused").await;
    h.rt.delay(Op::Resume, std::time::Duration::from_millis(300));
    assert_eq!(h.verb(&cid, "resume").await.0, StatusCode::ACCEPTED);
    // Resuming: the request waits for the resume, then goes through.
    let start = std::time::Instant::now();
    let (s, echo) = traffic(&h, &sid, 49983, "/process.Process/List", Some(&token)).await;
    assert_eq!(s, StatusCode::OK, "{echo}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));
    // Pausing: the request waits for the pause, then answers "not found".
    h.rt.delay(Op::Pause, std::time::Duration::from_millis(300));
    assert_eq!(h.verb(&cid, "pause").await.0, StatusCode::ACCEPTED);
    let (s, v) = traffic(&h, &sid, 49983, "/process.Process/List", Some(&token)).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        v["message"].as_str().unwrap().contains("was not found"),
        "{v}"
    );
    assert_eq!(h.get(&cid).await["status"], "paused");
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let h = Harness::new().await;
    let req = Request::builder()
        .uri("/e2b/openapi.json")
        .body(Body::empty())
        .unwrap();
    let (s, _, doc) = send(&h, req).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15);
    for (path, ops) in paths {
        let uri = path
            .replace("{sandboxID}", "0123456789abcdefghijklmno")
            .replace("{templateID}", "none");
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (s, _, v) = e2b(&h, m, &uri, Some(json!({"timeout": 10}))).await;
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {v}");
            assert_ne!(
                v["message"], "no such route on this server (wrenn)",
                "{method} {path}"
            );
            assert!(
                v.is_null() || v["code"].is_u64() || s.is_success(),
                "{method} {path}: {v}"
            );
        }
    }
}
