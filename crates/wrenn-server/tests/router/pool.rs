//! Warm pools over the fake runtime: hand-out, invisibility, refill, admission, shutdown.

use std::time::Instant;

use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_server::service::fake::{FakeRuntime, Op};
use wrenn_server::service::Capacity;
use wrenn_server::store::Store;
use wrenn_server::WarmTargets;

use super::{Harness, DEADLINE, ROOMY};

async fn pooled(capacity: Capacity, warm: &str) -> Harness {
    let store = Store::open_in_memory().expect("in-memory store");
    let key = store.create_key("team", "test").await.expect("key");
    let rt = FakeRuntime::new();
    let targets = WarmTargets::parse(&[warm.to_owned()]).expect("targets");
    let state = wrenn_server::state_with_pools(store, rt.clone(), capacity, targets);
    tokio::spawn(state.capsules.clone().fill_pools());
    Harness {
        app: wrenn_server::api::router(state.clone()),
        state,
        rt,
        key: key.secret,
        team_id: key.row.team_id,
    }
}

async fn wait_warm(h: &Harness, template: &str, n: usize) {
    let t0 = Instant::now();
    while h.state.capsules.warm_ready(template) < n {
        assert!(
            t0.elapsed() < DEADLINE,
            "pool of {template} never reached {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_create_takes_a_warm_capsule_and_the_pool_refills() {
    let h = pooled(ROOMY, "minimal=1").await;
    wait_warm(&h, "minimal", 1).await;
    let made = h.rt.calls(Op::Create);
    assert_eq!(made.len(), 1, "one pooled capsule made: {made:?}");
    // Invisible to the team and to the proxy's lookup.
    let (s, list) = h.call(Method::GET, "/v1/capsules", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list, json!([]));
    assert!(h.state.capsules.live_get(&made[0]).is_none());

    let (s, c) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal", "timeout_sec": 77, "metadata": {"who": "me"}})),
        )
        .await;
    assert!(s.is_success(), "{s} {c}");
    assert_eq!(c["id"], made[0], "the pooled capsule, under its own id");
    assert_eq!(c["status"], "running");
    assert_eq!(c["timeout_sec"], 77);
    assert_eq!(c["metadata"]["who"], "me");
    assert_eq!(c["metadata"]["warm_pool"], "true");
    let got = h.get(&made[0]).await;
    assert_eq!(got["status"], "running");
    // Refilled with a new capsule; the handed-out one is the team's.
    wait_warm(&h, "minimal", 1).await;
    let made = h.rt.calls(Op::Create);
    assert_eq!(made.len(), 2);
    assert_ne!(made[0], made[1]);
    // Other sizes are created cold.
    let (s, c) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal", "memory_mb": 768})),
        )
        .await;
    assert!(s.is_success(), "{s} {c}");
    assert_eq!(c["status"], "starting");
    assert!(c["metadata"].get("warm_pool").is_none(), "{c}");
}

#[tokio::test]
async fn warm_pool_metadata_key_is_reserved() {
    let h = pooled(ROOMY, "minimal=0").await;
    let (s, _) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal", "metadata": {"warm_pool": "true"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn admission_counts_pooled_capsules() {
    let cap = Capacity {
        max_capsules: 1,
        ..ROOMY
    };
    let h = pooled(cap, "minimal=1").await;
    wait_warm(&h, "minimal", 1).await;
    // The pool holds the only slot: a cold create is refused, a pooled one is served.
    let (s, body) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal", "memory_mb": 768})),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (s, c) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal"})),
        )
        .await;
    assert!(s.is_success(), "{s} {c}");
    assert_eq!(c["status"], "running");
}

#[tokio::test]
async fn draining_destroys_pooled_capsules() {
    let h = pooled(ROOMY, "minimal=2").await;
    wait_warm(&h, "minimal", 2).await;
    h.state.capsules.stop_pools();
    h.state.capsules.drain_pool().await;
    let mut made = h.rt.calls(Op::Create);
    let mut destroyed = h.rt.calls(Op::Destroy);
    made.sort();
    destroyed.sort();
    assert_eq!(made, destroyed);
    assert_eq!(h.state.capsules.warm_ready("minimal"), 0);
}

#[tokio::test]
async fn a_warm_capsule_that_died_in_the_pool_is_never_handed_out() {
    let h = pooled(ROOMY, "minimal=1").await;
    wait_warm(&h, "minimal", 1).await;
    let dead = h.rt.calls(Op::Create)[0].clone();
    h.rt.exit(&dead, 137);
    let (s, c) = h
        .call(
            Method::POST,
            "/v1/capsules",
            Some(json!({"template": "minimal"})),
        )
        .await;
    assert!(s.is_success(), "{s} {c}");
    assert_ne!(c["id"], dead.as_str());
    assert_eq!(c["status"], "starting", "made cold instead");
    super::wait_call(&h.rt, Op::Destroy, &dead).await;
}
