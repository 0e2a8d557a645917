//! Storms: bounded starts in arrival order, a queued capsule destroyed before its turn, and
//! teardowns that fail and are retried by housekeeping until they finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_server::service::fake::Op;
use wrenn_server::service::{Capacity, TeamLimits};
use wrenn_types::api::{EventKind, Outcome};

use super::{events_until, Harness, DEADLINE, ROOMY};

#[tokio::test]
async fn starts_run_within_the_bound_in_arrival_order() {
    let h = Harness::new().await;
    h.state.capsules.set_max_starting(2);
    h.rt.delay(Op::Create, Duration::from_millis(60));
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(h.create(json!({})).await);
    }
    let lane = h.state.capsules.starts();
    let mut max_running = 0;
    while ids
        .iter()
        .any(|id| h.state.capsules.live_get(id).map(|l| l.status().as_str()) != Some("running"))
    {
        max_running = max_running.max(lane.running());
        assert!(started.elapsed() < DEADLINE, "the storm never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(max_running <= 2, "{max_running} starts ran at once");
    assert!(max_running >= 1);
    assert_eq!(h.rt.calls(Op::Create), ids, "starts follow arrival order");
    // 8 starts of 60 ms, two at a time: about four rounds, not one.
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A start's place in the lane is given back just after its capsule is marked running.
    while (lane.queued(), lane.running()) != (0, 0) {
        assert!(started.elapsed() < DEADLINE, "the lane never emptied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_queued_capsule_destroyed_before_its_turn_never_starts() {
    let h = Harness::new().await;
    h.state.capsules.set_max_starting(1);
    h.rt.delay(Op::Create, Duration::from_millis(300));
    let first = h.create(json!({})).await;
    let queued = h.create(json!({})).await;
    assert_eq!(h.state.capsules.starts().queued(), 1);
    // A queued capsule is `starting` like any other.
    assert_eq!(h.get(&queued).await["status"], "starting");
    assert_eq!(h.destroy(&queued).await, StatusCode::ACCEPTED);
    h.wait_status(&queued, "stopped").await;
    h.wait_status(&first, "running").await;
    assert_eq!(h.rt.calls(Op::Create), vec![first.clone()]);
    assert_eq!(h.state.capsules.starts().queued(), 0);
    assert_eq!(h.rt.paused(&queued), None);
}

#[tokio::test]
async fn teardowns_run_within_the_bound() {
    let h = Harness::new().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(h.running().await);
    }
    h.state.capsules.set_max_starting(2);
    h.rt.delay(Op::Destroy, Duration::from_millis(50));
    for id in &ids {
        assert_eq!(h.destroy(id).await, StatusCode::ACCEPTED);
    }
    let lane = h.state.capsules.stops();
    let start = Instant::now();
    let mut max_running = 0;
    while h.rt.calls(Op::Destroy).len() < ids.len() || lane.running() > 0 {
        max_running = max_running.max(lane.running());
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        (1..=2).contains(&max_running),
        "{max_running} teardowns ran at once"
    );
    assert_eq!(
        h.rt.calls(Op::Destroy),
        ids,
        "teardowns follow arrival order"
    );
    for id in &ids {
        h.wait_status(id, "stopped").await;
    }
}

async fn metric(h: &Harness, name: &str) -> u64 {
    let req = axum::http::Request::builder()
        .uri("/metrics")
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = tower::ServiceExt::oneshot(h.app.clone(), req)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn a_failed_teardown_is_retried_until_it_finishes_and_reported_when_stuck() {
    let h = Harness::new().await;
    let mut rx = h.state.events.subscribe();
    let id = h.running().await;
    // Three in-line attempts fail, then four housekeeping retries: reported on the fifth
    // failure; the retry after that finishes.
    h.rt.fail_times(Op::Destroy, 3 + 4);
    assert_eq!(h.destroy(&id).await, StatusCode::ACCEPTED);
    let c = h.wait_status(&id, "error").await;
    assert!(
        c["error"].as_str().is_some_and(|e| e.contains("destroy")),
        "{c}"
    );
    assert_eq!(h.rt.calls(Op::Destroy).len(), 3);
    assert_eq!(metric(&h, "wrenn_teardowns_pending").await, 1);
    assert_eq!(metric(&h, "wrenn_teardown_failures_total").await, 1);
    // Not due yet: nothing is tried.
    h.state.capsules.retry_teardowns().await;
    assert_eq!(h.rt.calls(Op::Destroy).len(), 3);
    let mut later = Instant::now();
    for round in 1..=4 {
        later += Duration::from_secs(3600);
        assert_eq!(h.state.capsules.retry_teardowns_at(later).await, 1);
        assert_eq!(h.rt.calls(Op::Destroy).len(), 3 + round);
    }
    assert_eq!(metric(&h, "wrenn_teardowns_stuck_total").await, 1);
    let events = events_until(&mut rx, |e| {
        e.iter().any(|e| {
            e.event == EventKind::CapsuleDestroy
                && e.outcome == Some(Outcome::Error)
                && e.error
                    .as_deref()
                    .is_some_and(|m| m.contains("keeps failing"))
        })
    })
    .await;
    assert!(!events.is_empty());
    later += Duration::from_secs(3600);
    assert_eq!(h.state.capsules.retry_teardowns_at(later).await, 0);
    assert_eq!(metric(&h, "wrenn_teardowns_pending").await, 0);
    assert_eq!(metric(&h, "wrenn_teardowns_retried_total").await, 1);
    assert_eq!(metric(&h, "wrenn_teardown_failures_total").await, 5);
    // Nothing is left in the runtime, and the capsule stays failed.
    assert_eq!(h.rt.paused(&id), None);
    assert_eq!(h.get(&id).await["status"], "error");
}

/// Issue 14: admission and reservation are one step, so 32 creates at once against a team
/// limit of 4 vCPUs admit exactly 4 (before, 23 to 31 got through).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_exceed_a_team_limit() {
    let capacity = Capacity {
        team: TeamLimits {
            vcpus: 4,
            ..TeamLimits::NONE
        },
        ..ROOMY
    };
    let h = Arc::new(Harness::with_capacity(capacity).await);
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                h.call(Method::POST, "/v1/capsules", Some(json!({"vcpus": 1})))
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    for call in calls {
        let (status, body) = call.await.expect("task");
        match status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::PAYMENT_REQUIRED => assert_eq!(body["error"]["code"], "vcpu_limit"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(accepted, 4);
}
