//! `GET /openapi.json`: the OpenAPI document of what this server serves. The document is
//! written by hand (`openapi.json`) and checked against the router by the router tests; the
//! limits that depend on the host (the most vCPUs and memory one capsule may have) are filled
//! in when it is served, so every constraint it states is the one this server enforces.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;

use crate::service::{Capacity, MAX_MEMORY_MB, MAX_VCPUS};
use crate::AppState;

const DOCUMENT: &str = include_str!("../../../openapi.json");

/// The document with this host's limits.
pub fn document_for(capacity: &Capacity) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(DOCUMENT) else {
        return DOCUMENT.to_owned();
    };
    let props = &mut doc["components"]["schemas"]["CreateCapsule"]["properties"];
    if capacity.host_cpus > 0 {
        props["vcpus"]["maximum"] = MAX_VCPUS.min(i64::from(capacity.host_cpus)).into();
    }
    if capacity.host_memory_mb > 0 {
        let host = i64::try_from(capacity.host_memory_mb).unwrap_or(i64::MAX);
        props["memory_mb"]["maximum"] = MAX_MEMORY_MB.min(host).into();
    }
    serde_json::to_string(&doc).unwrap_or_else(|_| DOCUMENT.to_owned())
}

pub(super) async fn document(State(state): State<AppState>) -> impl IntoResponse {
    let body = document_for(state.capsules.capacity());
    ([(header::CONTENT_TYPE, "application/json")], body)
}
