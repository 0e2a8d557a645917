//! E2B's facts about a sandbox that capsules do not have: the envd access token, the
//! absolute deadline (`endAt`), what happens at it, and the create-time environment.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Row};

use super::{Store, StoreError};

/// One E2B sandbox's record, keyed by its capsule id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bRow {
    /// The capsule (`cl-` + the E2B sandbox id).
    pub capsule_id: String,
    /// `X-Access-Token` of envd; fixed for the sandbox's life.
    pub access_token: String,
    /// When the timeout fires.
    pub end_at: DateTime<Utc>,
    /// Pause instead of kill at `end_at`.
    pub auto_pause: bool,
    /// Create's `envVars`.
    pub env_vars: BTreeMap<String, String>,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<(E2bRow, String)> {
    let end: String = r.get(2)?;
    let env: String = r.get(4)?;
    Ok((
        E2bRow {
            capsule_id: r.get(0)?,
            access_token: r.get(1)?,
            end_at: DateTime::parse_from_rfc3339(&end)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now()),
            auto_pause: r.get(3)?,
            env_vars: BTreeMap::new(),
        },
        env,
    ))
}

impl Store {
    /// Inserts or replaces an E2B sandbox record.
    pub async fn put_e2b(&self, row: E2bRow) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO e2b_sandboxes \
                 (capsule_id, access_token, end_at, auto_pause, env_vars) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    row.capsule_id,
                    row.access_token,
                    row.end_at.to_rfc3339(),
                    row.auto_pause,
                    serde_json::to_string(&row.env_vars)?,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The records of sandboxes whose capsule is neither stopped nor failed.
    pub async fn live_e2b(&self) -> Result<Vec<E2bRow>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT e.capsule_id, e.access_token, e.end_at, e.auto_pause, e.env_vars \
                 FROM e2b_sandboxes e JOIN capsules c ON c.id = e.capsule_id \
                 WHERE c.status NOT IN ('stopped', 'error')",
            )?;
            let rows = stmt
                .query_map([], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(mut row, env)| {
                    row.env_vars = serde_json::from_str(&env)?;
                    Ok(row)
                })
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use wrenn_types::api::{Capsule, CapsuleStatus};

    use super::*;
    use crate::store::CapsuleRow;

    fn capsule(id: &str, status: CapsuleStatus) -> Capsule {
        let now = Utc::now();
        Capsule {
            id: id.into(),
            status,
            template: "base".into(),
            vcpus: 1,
            memory_mb: 512,
            timeout_sec: 0,
            disk_size_mb: 0,
            disk_used_mb: None,
            created_at: now,
            started_at: None,
            last_active_at: None,
            last_updated: now,
            metadata: None,
            error: None,
        }
    }

    #[tokio::test]
    async fn records_of_live_capsules_round_trip() {
        let store = Store::open_in_memory().unwrap();
        let key = store.create_key("t", "k").await.unwrap();
        for (id, status) in [
            ("cl-a", CapsuleStatus::Running),
            ("cl-b", CapsuleStatus::Stopped),
        ] {
            let row = CapsuleRow {
                team_id: key.row.team_id.clone(),
                capsule: capsule(id, status),
            };
            store.put_capsule(row).await.unwrap();
            let e = E2bRow {
                capsule_id: id.into(),
                access_token: format!("tok-{id}"),
                end_at: DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
                auto_pause: true,
                env_vars: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            };
            store.put_e2b(e).await.unwrap();
        }
        let live = store.live_e2b().await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].capsule_id, "cl-a");
        assert_eq!(live[0].access_token, "tok-cl-a");
        assert!(live[0].auto_pause);
        assert_eq!(live[0].env_vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(live[0].end_at.to_rfc3339(), "2030-01-01T00:00:00+00:00");
    }
}
