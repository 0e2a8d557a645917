//! A create may name its backend (`"runtime"`): a server serving several runs each capsule on
//! the one asked for (or the one its template requires), and refuses with a 400 a backend it
//! does not serve.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_runtime::{Backend, Runtimes};
use wrenn_server::service::fake::{FakeRuntime, Op};
use wrenn_server::store::Store;

use super::{Harness, ROOMY};

/// A fake agent answering `/health` with `kernel`, on a fresh unix socket.
fn agent_saying(kernel: &'static str) -> std::path::PathBuf {
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || async move {
            axum::Json(json!({"status": "ok", "version": "fake", "kernel_version": kernel}))
        }),
    );
    let dir = std::env::temp_dir().join(format!("wrenn-backends-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("agent dir");
    let sock = dir.join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind agent");
    tokio::spawn(async move { axum::serve(listener, app).await });
    sock
}

/// A server with a fake container backend (the default) and a fake microvm backend, each with
/// its own agent (whose `/health` names the backend as the kernel).
async fn both() -> (Harness, Arc<FakeRuntime>, Arc<FakeRuntime>) {
    let container = FakeRuntime::named("container");
    let microvm = FakeRuntime::named("microvm");
    container.agent_at(agent_saying("container-kernel"));
    microvm.agent_at(agent_saying("microvm-kernel"));
    let rt = Runtimes::new(container.clone(), vec![microvm.clone()]).expect("two backends");
    let store = Store::open_in_memory().expect("in-memory store");
    let h = Harness::serving(store, ROOMY, Arc::new(rt), container.clone()).await;
    (h, container, microvm)
}

#[tokio::test]
async fn a_create_runs_on_the_backend_it_names_and_every_verb_follows() {
    let (h, container, microvm) = both().await;
    let vm = h.create(json!({"runtime": "microvm"})).await;
    let plain = h.create(json!({})).await;
    let vm_rec = h.wait_status(&vm, "running").await;
    let plain_rec = h.wait_status(&plain, "running").await;
    assert_eq!(vm_rec["metadata"]["vmm_version"], "microvm");
    assert_eq!(plain_rec["metadata"]["vmm_version"], "container");
    // The server reached each capsule's agent through its own backend's endpoint.
    assert_eq!(vm_rec["metadata"]["kernel_version"], "microvm-kernel");
    assert_eq!(plain_rec["metadata"]["kernel_version"], "container-kernel");
    assert_eq!(microvm.calls(Op::Create), vec![vm.clone()]);
    assert_eq!(container.calls(Op::Create), vec![plain.clone()]);

    let (status, body) = h
        .call(Method::POST, &format!("/v1/capsules/{vm}/pause"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    h.wait_status(&vm, "paused").await;
    assert_eq!(microvm.paused(&vm), Some(true));
    assert!(container.calls(Op::Pause).is_empty());

    let (status, _) = h
        .call(Method::DELETE, &format!("/v1/capsules/{vm}"), None)
        .await;
    assert!(status.is_success());
    h.wait_status(&vm, "stopped").await;
    assert_eq!(microvm.calls(Op::Destroy), vec![vm.clone()]);
    assert_eq!(microvm.paused(&vm), None);
    assert!(container.calls(Op::Destroy).is_empty());
}

#[tokio::test]
async fn a_template_that_requires_a_backend_gets_it() {
    let (h, container, microvm) = both().await;
    microvm.require("minimal", Backend::MicroVm);
    container.require("minimal", Backend::MicroVm);
    let id = h.create(json!({"template": "minimal"})).await;
    let rec = h.wait_status(&id, "running").await;
    assert_eq!(rec["metadata"]["vmm_version"], "microvm");
    assert_eq!(rec["metadata"]["kernel_version"], "microvm-kernel");
    assert_eq!(microvm.calls(Op::Create), vec![id]);

    let (status, body) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal", "runtime": "container"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("requires runtime microvm"), "{body}");
}

#[tokio::test]
async fn a_backend_not_served_or_unknown_is_a_400() {
    let h = Harness::new().await;
    for (runtime, says) in [
        ("microvm", "runtime microvm is not available"),
        ("qemu", "runtime must be one of: container, microvm"),
    ] {
        let (status, body) = h
            .call(
                Method::POST,
                "/v1/capsules",
                Some(json!({"runtime": runtime})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{runtime}: {body}");
    }
    assert!(h.rt.calls(Op::Create).is_empty());
}
