//! Router tests that need no root: the real router and capsule service over an in-memory store
//! and the fake runtime, driven with `oneshot` (no socket). They pin what only the end-to-end
//! suite covered before: the create/pause/destroy races, the inactivity reaper and the
//! start-up recovery matrix.
//!
//! Run with `cargo test -p wrenn-server --test router`.

mod backends;
mod e2b;
mod input;
mod lifecycle;
mod openapi;
mod pool;
mod reaper;
mod recovery;
mod storm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tower::ServiceExt;
use wrenn_server::events::TeamEvent;
use wrenn_server::service::fake::FakeRuntime;
use wrenn_server::service::{Capacity, TeamLimits};
use wrenn_server::store::Store;
use wrenn_server::AppState;
use wrenn_types::api::{Event, EventKind};

/// Room for every test's capsules.
const ROOMY: Capacity = Capacity {
    host_memory_mb: 0,
    host_cpus: 0,
    memory_overcommit: 1.0,
    max_capsules: 100,
    disk_mb: 0,
    disk_overcommit: 1.0,
    disk_dir: None,
    team: TeamLimits::NONE,
};

/// How long a test waits for a background task to land.
const DEADLINE: Duration = Duration::from_secs(10);

/// One server: router, service, runtime and a key.
struct Harness {
    app: Router,
    state: AppState,
    rt: Arc<FakeRuntime>,
    key: String,
    team_id: String,
}

impl Harness {
    async fn new() -> Self {
        Self::with_capacity(ROOMY).await
    }

    async fn with_capacity(capacity: Capacity) -> Self {
        Self::over(Store::open_in_memory().expect("in-memory store"), capacity).await
    }

    /// A server over `store` (which may hold capsules from a "previous run").
    async fn over(store: Store, capacity: Capacity) -> Self {
        let rt = FakeRuntime::new();
        Self::serving(store, capacity, rt.clone(), rt).await
    }

    /// A server over `runtime`; `rt` is the fake the harness's helpers look at (the runtime
    /// itself or one of the backends behind it).
    async fn serving(
        store: Store,
        capacity: Capacity,
        runtime: Arc<dyn wrenn_runtime::Runtime>,
        rt: Arc<FakeRuntime>,
    ) -> Self {
        let key = store.create_key("team", "test").await.expect("key");
        let state = wrenn_server::state(store, runtime, capacity);
        Self {
            app: wrenn_server::api::router(state.clone()),
            state,
            rt,
            key: key.secret,
            team_id: key.row.team_id,
        }
    }

    /// Sends one request with the harness's key; answers the status and the JSON body (or
    /// `null` when there is none).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(&self.key, method, path, body).await
    }

    async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, value)
    }

    /// Creates a capsule with `body`; answers its id (still `starting`).
    async fn create(&self, body: Value) -> String {
        let (status, c) = self.call(Method::POST, "/v1/capsules", Some(body)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{c}");
        assert_eq!(c["status"], "starting");
        c["id"].as_str().expect("id").to_owned()
    }

    /// A capsule that reached `running`.
    async fn running(&self) -> String {
        let id = self.create(json!({})).await;
        self.wait_status(&id, "running").await;
        id
    }

    async fn get(&self, id: &str) -> Value {
        let (status, c) = self
            .call(Method::GET, &format!("/v1/capsules/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{c}");
        c
    }

    /// Polls the capsule until its status is `want`; answers the record.
    async fn wait_status(&self, id: &str, want: &str) -> Value {
        let start = Instant::now();
        loop {
            let c = self.get(id).await;
            if c["status"] == want {
                return c;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "capsule {id} never became {want}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn verb(&self, id: &str, verb: &str) -> (StatusCode, Value) {
        self.call(Method::POST, &format!("/v1/capsules/{id}/{verb}"), None)
            .await
    }

    async fn destroy(&self, id: &str) -> StatusCode {
        self.call(Method::DELETE, &format!("/v1/capsules/{id}"), None)
            .await
            .0
    }
}

/// The events published on `rx` until `done` holds for them, in order.
async fn events_until(
    rx: &mut broadcast::Receiver<Arc<TeamEvent>>,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let start = Instant::now();
    let mut out = Vec::new();
    while !done(&out) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) => out.push(ev.event.clone()),
            _ => panic!("the events never got there: {out:#?}"),
        }
    }
    out
}

/// Whether capsule `id` reached `status` in `events`.
fn reached(events: &[Event], id: &str, status: &str) -> bool {
    transitions(events, id).iter().any(|s| s == status)
}

/// Waits until the runtime saw `op` for capsule `id`.
async fn wait_call(rt: &FakeRuntime, op: wrenn_server::service::fake::Op, id: &str) {
    let start = Instant::now();
    while !rt.calls(op).iter().any(|c| c == id) {
        assert!(start.elapsed() < DEADLINE, "{op:?} never called for {id}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `to` of every state change of capsule `id` in `events`.
fn transitions(events: &[Event], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == EventKind::CapsuleStateChanged)
        .filter(|e| e.resource.as_ref().is_some_and(|r| r.id == id))
        .filter_map(|e| e.metadata.as_ref()?.get("to").cloned())
        .collect()
}
