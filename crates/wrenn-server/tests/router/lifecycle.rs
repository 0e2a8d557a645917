//! Create, pause, resume and destroy through the router, and the races between them.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_server::service::fake::Op;
use wrenn_server::service::Capacity;
use wrenn_types::api::{EventKind, Outcome};

use wrenn_types::api::Event;

use super::{events_until, reached, transitions, wait_call, Harness};

#[tokio::test]
async fn create_answers_starting_then_runs() {
    let h = Harness::new().await;
    let id = h
        .create(json!({"vcpus": 2, "memory_mb": 256, "metadata": {"who": "test"}}))
        .await;
    let c = h.wait_status(&id, "running").await;
    assert_eq!(
        (c["vcpus"].as_u64(), c["memory_mb"].as_u64()),
        (Some(2), Some(256))
    );
    assert_eq!(c["metadata"]["who"], "test");
    assert_eq!(c["metadata"]["vmm_version"], "fake");
    assert_eq!(h.rt.calls(Op::Create), vec![id.clone()]);
    let (status, list) = h.call(Method::GET, "/v1/capsules", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["id"], id.as_str());
}

#[tokio::test]
async fn destroy_overtakes_a_create_in_progress() {
    let h = Harness::new().await;
    let mut rx = h.state.events.subscribe();
    h.rt.delay(Op::Create, Duration::from_millis(300));
    let id = h.create(json!({})).await;
    assert_eq!(h.destroy(&id).await, StatusCode::ACCEPTED);
    assert_eq!(h.get(&id).await["status"], "stopping");
    h.wait_status(&id, "stopped").await;
    // The create finished first (it holds the capsule's lock), then the destroy removed it.
    assert_eq!(h.rt.calls(Op::Destroy), vec![id.clone()]);
    assert_eq!(h.rt.paused(&id), None, "nothing left in the runtime");
    let events = events_until(&mut rx, |e| reached(e, &id, "stopped")).await;
    assert_eq!(transitions(&events, &id), ["stopping", "stopped"]);
    // A second destroy of a stopped capsule is a no-op.
    assert_eq!(h.destroy(&id).await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn pause_while_starting_is_refused() {
    let h = Harness::new().await;
    h.rt.delay(Op::Create, Duration::from_millis(200));
    let id = h.create(json!({})).await;
    let (status, body) = h.verb(&id, "pause").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "invalid_state");
    assert_eq!(
        body["error"]["message"],
        format!("capsule {id} is not running (status: starting)")
    );
    h.wait_status(&id, "running").await;
}

#[tokio::test]
async fn destroy_overtakes_a_pause_in_progress() {
    let h = Harness::new().await;
    let mut rx = h.state.events.subscribe();
    let id = h.running().await;
    h.rt.delay(Op::Pause, Duration::from_millis(300));
    let (status, c) = h.verb(&id, "pause").await;
    assert_eq!(
        (status, c["status"].as_str()),
        (StatusCode::ACCEPTED, Some("pausing"))
    );
    // The runtime is freezing it when the destroy comes.
    wait_call(&h.rt, Op::Pause, &id).await;
    assert_eq!(h.destroy(&id).await, StatusCode::ACCEPTED);
    assert_eq!(h.get(&id).await["status"], "stopping");
    h.wait_status(&id, "stopped").await;
    let events = events_until(&mut rx, |e| reached(e, &id, "stopped")).await;
    assert_eq!(
        transitions(&events, &id),
        ["running", "pausing", "stopping", "stopped"]
    );
    assert_eq!(h.rt.calls(Op::Pause), vec![id.clone()]);
    assert_eq!(h.rt.calls(Op::Destroy), vec![id]);
}

#[tokio::test]
async fn pause_and_resume_are_idempotent() {
    let h = Harness::new().await;
    let id = h.running().await;
    assert_eq!(h.verb(&id, "pause").await.0, StatusCode::ACCEPTED);
    h.wait_status(&id, "paused").await;
    assert_eq!(h.rt.paused(&id), Some(true));
    let (status, c) = h.verb(&id, "pause").await;
    assert_eq!(
        (status, c["status"].as_str()),
        (StatusCode::ACCEPTED, Some("paused"))
    );
    assert_eq!(h.rt.calls(Op::Pause).len(), 1, "no second freeze");
    // Work inside a paused capsule is refused.
    let (status, body) = h.verb(&id, "ping").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(h.verb(&id, "resume").await.0, StatusCode::ACCEPTED);
    h.wait_status(&id, "running").await;
    let (status, c) = h.verb(&id, "resume").await;
    assert_eq!(
        (status, c["status"].as_str()),
        (StatusCode::ACCEPTED, Some("running"))
    );
    assert_eq!(h.rt.calls(Op::Resume).len(), 1);
    assert_eq!(h.verb(&id, "ping").await.0, StatusCode::NO_CONTENT);
}

/// The first failed `kind` event in `events`.
fn failure(events: &[Event], kind: EventKind) -> Option<&Event> {
    events
        .iter()
        .find(|e| e.event == kind && e.outcome == Some(Outcome::Error))
}

#[tokio::test]
async fn a_failed_pause_returns_to_running() {
    let h = Harness::new().await;
    let mut rx = h.state.events.subscribe();
    let id = h.running().await;
    h.rt.fail(Op::Pause, true);
    let (status, c) = h.verb(&id, "pause").await;
    assert_eq!(
        (status, c["status"].as_str()),
        (StatusCode::ACCEPTED, Some("pausing"))
    );
    h.wait_status(&id, "running").await;
    let events = events_until(&mut rx, |e| failure(e, EventKind::CapsulePause).is_some()).await;
    assert_eq!(transitions(&events, &id), ["running", "pausing", "running"]);
    let failed = failure(&events, EventKind::CapsulePause).expect("a failed capsule.pause");
    let reason = failed.error.as_deref().unwrap_or_default();
    assert!(reason.contains("fake freeze cgroup failure"), "{reason}");
    h.rt.fail(Op::Pause, false);
    assert_eq!(h.verb(&id, "pause").await.0, StatusCode::ACCEPTED);
    h.wait_status(&id, "paused").await;
}

#[tokio::test]
async fn a_failed_create_ends_in_error_with_the_cause() {
    let h = Harness::new().await;
    let mut rx = h.state.events.subscribe();
    h.rt.fail(Op::Create, true);
    let id = h.create(json!({})).await;
    let c = h.wait_status(&id, "error").await;
    let reason = c["error"].as_str().expect("error reason");
    assert!(reason.contains("fake launch failure"), "{reason}");
    assert_eq!(h.rt.calls(Op::Destroy), vec![id.clone()], "cleaned up");
    let events = events_until(&mut rx, |e| failure(e, EventKind::CapsuleCreate).is_some()).await;
    let failed = failure(&events, EventKind::CapsuleCreate).expect("a failed capsule.create");
    assert_eq!(failed.error.as_deref(), Some(reason));
    // Gone from the list, still answered by id.
    let (_, list) = h.call(Method::GET, "/v1/capsules", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn stopped_and_foreign_capsules() {
    let h = Harness::new().await;
    let id = h.running().await;
    assert_eq!(h.destroy(&id).await, StatusCode::ACCEPTED);
    h.wait_status(&id, "stopped").await;
    for verb in ["pause", "resume", "ping"] {
        let (status, body) = h.verb(&id, verb).await;
        assert_eq!(status, StatusCode::CONFLICT, "{verb}: {body}");
        assert_eq!(
            body["error"]["message"],
            format!("capsule {id} is not running (status: stopped)")
        );
    }
    let other = h
        .state
        .capsules
        .store()
        .create_key("other-team", "k")
        .await
        .expect("key");
    let live = h.running().await;
    for target in [&id, &live] {
        let (status, body) = h
            .call_as(
                &other.secret,
                Method::GET,
                &format!("/v1/capsules/{target}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(
            body["error"]["message"],
            format!("capsule {target} not found")
        );
    }
}

#[tokio::test]
async fn bad_ids_unknown_ids_and_server_errors() {
    let h = Harness::new().await;
    let (status, body) = h.call(Method::GET, "/v1/capsules/nope", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let unknown = "cl-0000000000000000000000000";
    for (method, path) in [
        (Method::GET, format!("/v1/capsules/{unknown}")),
        (Method::DELETE, format!("/v1/capsules/{unknown}")),
        (Method::POST, format!("/v1/capsules/{unknown}/pause")),
    ] {
        let (status, body) = h.call(method, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = h.call(Method::GET, "/v1/nope", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = h.call(Method::PUT, "/v1/capsules", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("invalid_request"))
    );
    let (status, _) = h
        .call_as("wrn_bad", Method::GET, "/v1/capsules", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A runtime failure is a 500 whose body hides the cause.
    h.rt.fail(Op::ListTemplates, true);
    let (status, body) = h.call(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({"error": {"code": "internal_error", "message": "internal error"}})
    );
}

#[tokio::test]
async fn admission_refuses_past_the_capsule_limit() {
    let h = Harness::with_capacity(Capacity {
        max_capsules: 1,
        ..super::ROOMY
    })
    .await;
    let first = h.running().await;
    let (status, body) = h.call(Method::POST, "/v1/capsules", Some(json!({}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "host_unavailable");
    assert_eq!(
        h.rt.calls(Op::Create).len(),
        1,
        "nothing reserved for the refused one"
    );
    // A stopped capsule frees its place.
    assert_eq!(h.destroy(&first).await, StatusCode::ACCEPTED);
    h.wait_status(&first, "stopped").await;
    h.running().await;
}

#[tokio::test]
async fn snapshot_of_a_running_capsule_is_a_template() {
    let h = Harness::new().await;
    let id = h.running().await;
    let (status, t) = h
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"sandbox_id": id, "name": "snap"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["name"], "snap");
    assert_eq!(h.get(&id).await["status"], "running", "left as it was");
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"sandbox_id": id, "name": "snap"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"sandbox_id": id, "name": "minimal"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = h.call(Method::DELETE, "/v1/snapshots/minimal", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let from_snap = h.create(json!({"template": "snap"})).await;
    h.wait_status(&from_snap, "running").await;
}
