//! The server's own work: the inactivity reaper and capsules whose init died.

use axum::http::StatusCode;
use chrono::{Duration, Utc};
use serde_json::json;
use wrenn_server::service::fake::Op;
use wrenn_types::api::EventKind;

use super::{events_until, transitions, Harness};

#[tokio::test]
async fn idle_capsules_are_paused_after_their_timeout() {
    let h = Harness::new().await;
    let mut rx = h.state.events.subscribe();
    let idle = h.create(json!({"timeout_sec": 60})).await;
    let forever = h.create(json!({})).await;
    h.wait_status(&idle, "running").await;
    h.wait_status(&forever, "running").await;

    h.state.capsules.reap_idle().await;
    assert_eq!(h.get(&idle).await["status"], "running", "not idle yet");

    h.state
        .capsules
        .reap_idle_at(Utc::now() + Duration::seconds(61))
        .await;
    h.wait_status(&idle, "paused").await;
    assert_eq!(
        h.get(&forever).await["status"],
        "running",
        "no timeout, never reaped"
    );
    assert_eq!(h.rt.calls(Op::Pause), vec![idle.clone()]);

    let pause_events = |e: &[wrenn_types::api::Event]| {
        e.iter()
            .filter(|e| e.event == EventKind::CapsulePause)
            .count()
    };
    let events = events_until(&mut rx, |e| pause_events(e) == 2).await;
    assert_eq!(
        transitions(&events, &idle),
        ["running", "pausing", "paused"]
    );
    let pauses: Vec<_> = events
        .iter()
        .filter(|e| e.event == EventKind::CapsulePause)
        .collect();
    assert_eq!(pauses.len(), 2, "accepted and done");
    for e in pauses {
        let actor = e.actor.as_ref().expect("actor");
        assert_eq!(actor.actor_type, "system");
        let reason = e.metadata.as_ref().and_then(|m| m.get("reason"));
        assert_eq!(reason.map(String::as_str), Some("ttl_expired"));
    }
}

#[tokio::test]
async fn activity_defers_the_timeout() {
    let h = Harness::new().await;
    let id = h.create(json!({"timeout_sec": 60})).await;
    let c = h.wait_status(&id, "running").await;
    let started: chrono::DateTime<Utc> =
        serde_json::from_value(c["started_at"].clone()).expect("started_at");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // A ping is activity: 60.5 s after the start is not 60 s after the ping.
    assert_eq!(h.verb(&id, "ping").await.0, StatusCode::NO_CONTENT);
    let past_start = started + Duration::milliseconds(60_500);
    h.state.capsules.reap_idle_at(past_start).await;
    assert_eq!(h.get(&id).await["status"], "running");
    assert!(h.rt.calls(Op::Pause).is_empty());
    h.state
        .capsules
        .reap_idle_at(Utc::now() + Duration::seconds(61))
        .await;
    h.wait_status(&id, "paused").await;
}

#[tokio::test]
async fn a_capsule_whose_init_died_is_failed_and_cleaned_up() {
    let h = Harness::new().await;
    let id = h.running().await;
    let alive = h.running().await;
    h.state.capsules.reap_dead().await;
    assert_eq!(h.get(&id).await["status"], "running");

    h.rt.exit(&id, 137);
    h.state.capsules.reap_dead().await;
    let c = h.get(&id).await;
    assert_eq!(c["status"], "error");
    assert_eq!(c["error"], "capsule init exited with status 137");
    assert_eq!(h.rt.calls(Op::Destroy), vec![id.clone()]);
    assert_eq!(h.get(&alive).await["status"], "running");
}
