//! The OpenAPI document against the router: every documented operation is served (never the
//! fallback's "no such route" or a 405), every authenticated one documents 401 and 500, the
//! create documents its quota and capacity answers, and the served limits are the host's.

use axum::http::{Method, StatusCode};
use serde_json::Value;
use wrenn_server::service::Capacity;

use super::{Harness, ROOMY};

/// Status and body (JSON, or the text as a string) of a request without a body.
async fn raw(h: &Harness, method: Method, uri: &str) -> (StatusCode, Value) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", &h.key)
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = tower::ServiceExt::oneshot(h.app.clone(), req)
        .await
        .expect("infallible");
    let status = resp.status();
    if resp
        .headers()
        .get("content-type")
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"))
    {
        // An event stream never ends; its status is what counts.
        return (status, Value::Null);
    }
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

async fn document(h: &Harness) -> Value {
    let (status, doc) = h.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    doc
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 25);
    for (path, ops) in paths {
        let uri = path
            .replace("{id}", "cl-0000000000000000000000000")
            .replace("{selector}", "1")
            .replace("{name}", "nosuch");
        for (method, op) in ops.as_object().expect("operations") {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, body) = raw(&h, m, &uri).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(body["error"]["message"], "no such route", "{method} {path}");
            let responses = op["responses"].as_object().expect("responses");
            let code = status.as_u16().to_string();
            assert!(
                responses.contains_key(&code),
                "{method} {path} answered an undocumented {code}: {body}"
            );
            if op.get("security") != Some(&Value::Array(vec![])) {
                for needed in ["401", "500"] {
                    assert!(responses.contains_key(needed), "{method} {path}: {needed}");
                }
            }
        }
    }
    let create = &doc["paths"]["/v1/capsules"]["post"]["responses"];
    for needed in ["202", "400", "402", "404", "503"] {
        assert!(create.get(needed).is_some(), "create documents {needed}");
    }
}

#[tokio::test]
async fn the_served_limits_are_the_hosts() {
    let h = Harness::with_capacity(Capacity {
        host_cpus: 2,
        host_memory_mb: 1000,
        ..ROOMY
    })
    .await;
    let doc = document(&h).await;
    let props = &doc["components"]["schemas"]["CreateCapsule"]["properties"];
    assert_eq!(props["vcpus"]["maximum"], 2);
    assert_eq!(props["memory_mb"]["maximum"], 1000);
    // And they are the ones enforced: one more is refused.
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(serde_json::json!({"vcpus": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(serde_json::json!({"memory_mb": 1001})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn an_empty_snapshot_type_is_invalid() {
    let h = Harness::new().await;
    let (status, body) = h.call(Method::GET, "/v1/snapshots?type=", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = h.call(Method::GET, "/v1/snapshots?type=base", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_create_documents_every_backend_it_can_be_asked_for() {
    let h = Harness::new().await;
    let doc = document(&h).await;
    let runtime = &doc["components"]["schemas"]["CreateCapsule"]["properties"]["runtime"];
    let names: Vec<&str> = runtime["enum"]
        .as_array()
        .expect("runtime enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let backends: Vec<&str> = wrenn_runtime::Backend::ALL
        .iter()
        .map(|b| b.as_str())
        .collect();
    assert_eq!(names, backends);
    assert!(runtime["description"]
        .as_str()
        .is_some_and(|d| d.contains("400")));
}
