//! Bad strings in exec, process and file requests answer 400 `invalid_request` before the
//! agent is asked anything (the fake runtime has no agent: reaching it would be a 502).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::Harness;

async fn assert_invalid(h: &Harness, method: Method, path: &str, body: Option<Value>) {
    let (status, b) = h.call(method, path, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body:?}: {b}");
    assert_eq!(b["error"]["code"], "invalid_request", "{b}");
}

#[tokio::test]
async fn exec_with_nul_bytes_or_bad_env_is_invalid() {
    let h = Harness::new().await;
    let id = h.running().await;
    let exec = format!("/v1/capsules/{id}/exec");
    for body in [
        json!({"cmd": "echo", "args": ["a\u{0}b"]}),
        json!({"cmd": "ec\u{0}ho"}),
        json!({"cmd": "env", "envs": {"A=B": "x"}}),
        json!({"cmd": "env", "envs": {"A": "x\u{0}"}}),
        json!({"cmd": "env", "envs": {"": "x"}}),
        json!({"cmd": "pwd", "cwd": "/tmp\u{0}"}),
        json!({"cmd": "pwd", "cwd": "tmp"}),
        json!({"cmd": "id", "user": "ro\u{0}ot"}),
        json!({"cmd": "sleep", "args": ["1"], "background": true, "tag": "t\u{0}"}),
        json!({"cmd": ""}),
        json!({"cmd": "echo", "args": ["x".repeat(1024 * 1024 + 1)]}),
    ] {
        assert_invalid(&h, Method::POST, &exec, Some(body)).await;
    }
}

#[tokio::test]
async fn file_paths_with_nul_or_relative_are_invalid() {
    let h = Harness::new().await;
    let id = h.running().await;
    for route in ["read", "stream/read", "list", "mkdir", "remove"] {
        let uri = format!("/v1/capsules/{id}/files/{route}");
        for path in [
            "/tmp/a\u{0}b",
            "tmp/a",
            "",
            &format!("/{}", "a".repeat(5000)),
            &format!("/tmp/{}", "0".repeat(256)),
        ] {
            assert_invalid(&h, Method::POST, &uri, Some(json!({ "path": path }))).await;
        }
    }
}

#[tokio::test]
async fn an_upload_path_with_a_nul_byte_is_invalid() {
    let h = Harness::new().await;
    let id = h.running().await;
    let boundary = "XBOUNDARYX";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/tmp/a\u{0}b\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nhello\r\n--{boundary}--\r\n"
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/capsules/{id}/files/write"))
        .header("x-api-key", &h.key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .expect("request");
    let resp = h.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
}

#[tokio::test]
async fn a_process_selector_with_control_characters_is_invalid() {
    let h = Harness::new().await;
    let id = h.running().await;
    assert_invalid(
        &h,
        Method::DELETE,
        &format!("/v1/capsules/{id}/processes/a%00b"),
        None,
    )
    .await;
    let long = "a".repeat(300);
    assert_invalid(
        &h,
        Method::DELETE,
        &format!("/v1/capsules/{id}/processes/{long}"),
        None,
    )
    .await;
}

#[tokio::test]
async fn integral_floats_are_integers_and_huge_ones_are_refused() {
    let h = Harness::new().await;
    let (status, c) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"vcpus": 1.0, "memory_mb": 145.0, "timeout_sec": 120.0})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{c}");
    assert_eq!(c["memory_mb"], 145, "{c}");
    assert_eq!(c["timeout_sec"], 120, "{c}");
    // Parsed as a float, this rounds to i64::MIN: it must not pass as one.
    let huge: Value = serde_json::from_str(r#"{"vcpus": -9223372036854775809}"#).expect("JSON");
    for body in [huge, json!({"vcpus": 1.5}), json!({"memory_mb": "64"})] {
        assert_invalid(&h, Method::POST, "/v1/capsules", Some(body)).await;
    }
}
