//! `GET /openapi.json`: the OpenAPI document of what this server serves. The document is
//! written by hand (`openapi.json`) and checked against the router by the router tests; the
//! limits that depend on the host (the most vCPUs and memory one capsule may have, the runtimes
//! a create may name) are filled in when it is served, so every constraint it states is the one
//! this server enforces.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;

use crate::service::{Capacity, MAX_MEMORY_MB, MAX_VCPUS};
use crate::AppState;

const DOCUMENT: &str = include_str!("../../../openapi.json");

/// The document with this host's limits and the runtimes (`backends`) this server serves.
pub fn document_for(capacity: &Capacity, backends: &[&str]) -> String {
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
    if !backends.is_empty() {
        let mut names: Vec<Value> = backends.iter().map(|b| Value::from(*b)).collect();
        names.push(Value::Null);
        props["runtime"]["enum"] = names.into();
    }
    serde_json::to_string(&doc).unwrap_or_else(|_| DOCUMENT.to_owned())
}

pub(super) async fn document(State(state): State<AppState>) -> impl IntoResponse {
    let backends: Vec<&str> = state
        .capsules
        .runtime()
        .backends()
        .into_iter()
        .map(|b| b.as_str())
        .collect();
    let body = document_for(state.capsules.capacity(), &backends);
    ([(header::CONTENT_TYPE, "application/json")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_may_name_only_the_runtimes_served() {
        let capacity = Capacity {
            host_memory_mb: 0,
            host_cpus: 0,
            memory_overcommit: 1.0,
            max_capsules: 1,
            disk_mb: 0,
            disk_overcommit: 1.0,
            disk_dir: None,
            team: crate::service::TeamLimits::NONE,
        };
        let doc: Value = serde_json::from_str(&document_for(&capacity, &["container"])).unwrap();
        let runtime = &doc["components"]["schemas"]["CreateCapsule"]["properties"]["runtime"];
        assert_eq!(runtime["enum"], serde_json::json!(["container", null]));
    }
}
