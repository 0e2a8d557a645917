//! Capsule records. Rows are kept after destroy (status `stopped`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use wrenn_types::api::{Capsule, CapsuleStatus};

use super::{Store, StoreError};

/// A capsule and its owner.
#[derive(Debug, Clone)]
pub struct CapsuleRow {
    /// Owning team.
    pub team_id: String,
    /// The public object.
    pub capsule: Capsule,
}

const COLUMNS: &str = "id, team_id, status, template, vcpus, memory_mb, timeout_sec, \
     disk_size_mb, metadata, created_at, started_at, last_active_at, last_updated, error";

fn ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<CapsuleRow> {
    let status: String = r.get(2)?;
    let metadata: Option<String> = r.get(8)?;
    let created: String = r.get(9)?;
    let updated: String = r.get(12)?;
    let now = Utc::now();
    Ok(CapsuleRow {
        team_id: r.get(1)?,
        capsule: Capsule {
            id: r.get(0)?,
            status: CapsuleStatus::parse(&status).unwrap_or(CapsuleStatus::Error),
            template: r.get(3)?,
            vcpus: r.get(4)?,
            memory_mb: r.get(5)?,
            timeout_sec: r.get(6)?,
            disk_size_mb: r.get(7)?,
            disk_used_mb: None,
            metadata: metadata
                .and_then(|m| serde_json::from_str::<BTreeMap<String, String>>(&m).ok()),
            created_at: ts(Some(created)).unwrap_or(now),
            started_at: ts(r.get(10)?),
            last_active_at: ts(r.get(11)?),
            last_updated: ts(Some(updated)).unwrap_or(now),
            error: r.get(13)?,
        },
    })
}

impl Store {
    /// Inserts or replaces a capsule record.
    pub async fn put_capsule(&self, row: CapsuleRow) -> Result<(), StoreError> {
        self.call(move |conn| {
            let c = &row.capsule;
            let metadata = c.metadata.as_ref().map(serde_json::to_string).transpose()?;
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO capsules ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    c.id,
                    row.team_id,
                    c.status.as_str(),
                    c.template,
                    c.vcpus,
                    c.memory_mb,
                    c.timeout_sec,
                    c.disk_size_mb,
                    metadata,
                    c.created_at.to_rfc3339(),
                    c.started_at.map(|t| t.to_rfc3339()),
                    c.last_active_at.map(|t| t.to_rfc3339()),
                    c.last_updated.to_rfc3339(),
                    c.error,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// One capsule by id, any team.
    pub async fn get_capsule(&self, id: &str) -> Result<Option<CapsuleRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM capsules WHERE id = ?1"),
                    params![id],
                    from_row,
                )
                .optional()?)
        })
        .await
    }

    /// Capsules that are neither stopped nor in error (all teams), oldest first.
    pub async fn live_capsules(&self) -> Result<Vec<CapsuleRow>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM capsules WHERE status NOT IN ('stopped', 'error') \
                 ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Writes the activity time of many capsules at once.
    pub async fn touch_capsules(
        &self,
        touches: Vec<(String, DateTime<Utc>)>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt =
                    tx.prepare("UPDATE capsules SET last_active_at = ?2 WHERE id = ?1")?;
                for (id, at) in &touches {
                    stmt.execute(params![id, at.to_rfc3339()])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
