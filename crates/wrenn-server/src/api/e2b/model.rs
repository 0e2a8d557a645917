//! E2B's sandbox objects (contract §2.2), built from a capsule and its E2B record.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use wrenn_types::api::{Capsule, CapsuleStatus};
use wrenn_types::envd::ENVD_VERSION;

use super::ids::sandbox_id;
use crate::service::RESERVED_METADATA;
use crate::store::E2bRow;

/// The legacy `clientID`: one fixed value.
pub const CLIENT_ID: &str = "wrenn";

/// The E2B state of a capsule status: `running`, `paused`, or `None` when E2B clients must not
/// see it (stopping, stopped, failed).
pub fn state_of(status: CapsuleStatus) -> Option<&'static str> {
    use CapsuleStatus::*;
    match status {
        Pending | Starting | Running | Pausing | Snapshotting | Missing => Some("running"),
        Paused | Resuming | Hibernated => Some("paused"),
        Stopping | Stopped | Error => None,
    }
}

/// The caller's metadata, without the keys the server sets itself.
fn user_metadata(c: &Capsule) -> BTreeMap<String, String> {
    c.metadata
        .iter()
        .flatten()
        .filter(|(k, _)| !RESERVED_METADATA.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `Sandbox`: the create / connect / resume answer.
pub fn sandbox(c: &Capsule, row: &E2bRow, domain: &str) -> Value {
    json!({
        "templateID": c.template,
        "alias": c.template,
        "sandboxID": sandbox_id(&c.id),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": row.access_token,
        "trafficAccessToken": null,
        "domain": domain,
    })
}

/// `ListedSandbox`: a list item; `None` for a status E2B clients do not see.
pub fn listed(c: &Capsule, row: &E2bRow) -> Option<Value> {
    let state = state_of(c.status)?;
    Some(json!({
        "templateID": c.template,
        "alias": c.template,
        "sandboxID": sandbox_id(&c.id),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "startedAt": c.created_at,
        "endAt": row.end_at,
        "cpuCount": c.vcpus,
        "memoryMB": c.memory_mb,
        "diskSizeMB": c.disk_size_mb,
        "metadata": user_metadata(c),
        "state": state,
    }))
}

/// `SandboxDetail`: `GET /sandboxes/{id}`.
pub fn detail(c: &Capsule, row: &E2bRow, domain: &str) -> Option<Value> {
    let mut v = listed(c, row)?;
    let on_timeout = if row.auto_pause { "pause" } else { "kill" };
    if let Some(o) = v.as_object_mut() {
        o.insert("envdAccessToken".into(), json!(row.access_token));
        o.insert("domain".into(), json!(domain));
        o.insert(
            "lifecycle".into(),
            json!({"autoResume": false, "onTimeout": on_timeout}),
        );
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn objects_have_every_required_key_and_z_timestamps() {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let c = Capsule {
            id: "cl-0123456789abcdefghijklmno".into(),
            status: CapsuleStatus::Resuming,
            template: "base".into(),
            vcpus: 2,
            memory_mb: 512,
            timeout_sec: 0,
            disk_size_mb: 1024,
            disk_used_mb: None,
            created_at: at,
            started_at: None,
            last_active_at: None,
            last_updated: at,
            metadata: Some(BTreeMap::from([
                ("owner".to_owned(), "alice".to_owned()),
                ("agent_version".to_owned(), "0.1".to_owned()),
            ])),
            error: None,
        };
        let row = E2bRow {
            capsule_id: c.id.clone(),
            access_token: "tok".into(),
            end_at: at,
            auto_pause: false,
            env_vars: BTreeMap::new(),
        };
        let d = detail(&c, &row, "example.net").unwrap();
        assert_eq!(d["sandboxID"], "0123456789abcdefghijklmno");
        assert_eq!(d["state"], "paused");
        assert_eq!(d["startedAt"], "2026-03-01T12:00:00Z");
        assert_eq!(d["metadata"], json!({"owner": "alice"}));
        assert_eq!(d["lifecycle"]["onTimeout"], "kill");
        let s = sandbox(&c, &row, "example.net");
        for k in ["templateID", "sandboxID", "clientID", "envdVersion"] {
            assert!(s[k].is_string(), "{k}");
        }
        assert_eq!(s["domain"], "example.net");
        let gone = Capsule {
            status: CapsuleStatus::Stopping,
            ..c
        };
        assert!(listed(&gone, &row).is_none());
    }
}
