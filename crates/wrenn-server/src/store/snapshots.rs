//! Snapshot templates a team made; their trees live in the runtime under `runtime_name`.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use super::{Store, StoreError};

/// One team snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// Owning team.
    pub team_id: String,
    /// Name within the team.
    pub name: String,
    /// Name of the template in the runtime.
    pub runtime_name: String,
    /// CPUs of the capsule it was taken from (capsules made from it get the same).
    pub vcpus: u32,
    /// Memory of that capsule.
    pub memory_mb: u32,
    /// Size on disk.
    pub size_bytes: u64,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
    /// The capsule it was taken from.
    pub source_capsule: String,
}

const COLUMNS: &str =
    "team_id, name, runtime_name, vcpus, memory_mb, size_bytes, created_at, source_capsule";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let created: String = r.get(6)?;
    Ok(SnapshotRow {
        team_id: r.get(0)?,
        name: r.get(1)?,
        runtime_name: r.get(2)?,
        vcpus: r.get(3)?,
        memory_mb: r.get(4)?,
        size_bytes: r.get::<_, i64>(5)?.max(0) as u64,
        created_at: DateTime::parse_from_rfc3339(&created)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now()),
        source_capsule: r.get(7)?,
    })
}

impl Store {
    /// Records a snapshot.
    pub async fn put_snapshot(&self, row: SnapshotRow) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    row.team_id,
                    row.name,
                    row.runtime_name,
                    row.vcpus,
                    row.memory_mb,
                    row.size_bytes as i64,
                    row.created_at.to_rfc3339(),
                    row.source_capsule
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Exists(format!("snapshot {}", row.name))
                }
                e => StoreError::Sqlite(e),
            })?;
            Ok(())
        })
        .await
    }

    /// A team's snapshot by name.
    pub async fn get_snapshot(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        let (team, name) = (team_id.to_owned(), name.to_owned());
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM snapshots WHERE team_id = ?1 AND name = ?2"),
                    params![team, name],
                    from_row,
                )
                .optional()?)
        })
        .await
    }

    /// A team's snapshots, newest first.
    pub async fn list_snapshots(&self, team_id: &str) -> Result<Vec<SnapshotRow>, StoreError> {
        let team = team_id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM snapshots WHERE team_id = ?1 ORDER BY created_at DESC"
            ))?;
            let rows = stmt.query_map(params![team], from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Forgets a snapshot.
    pub async fn delete_snapshot(&self, team_id: &str, name: &str) -> Result<(), StoreError> {
        let (team, name) = (team_id.to_owned(), name.to_owned());
        self.call(move |conn| {
            conn.execute(
                "DELETE FROM snapshots WHERE team_id = ?1 AND name = ?2",
                params![team, name],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn snapshots_are_per_team_and_unique() {
        let store = Store::open_in_memory().unwrap();
        let a = store.create_key("a", "k").await.unwrap().row.team_id;
        let b = store.create_key("b", "k").await.unwrap().row.team_id;
        let row = |team: &str| SnapshotRow {
            team_id: team.to_owned(),
            name: "snap".into(),
            runtime_name: format!("{team}.snap"),
            vcpus: 1,
            memory_mb: 512,
            size_bytes: 10,
            created_at: Utc::now(),
            source_capsule: "cl-x".into(),
        };
        store.put_snapshot(row(&a)).await.unwrap();
        store.put_snapshot(row(&b)).await.unwrap();
        assert!(matches!(
            store.put_snapshot(row(&a)).await,
            Err(StoreError::Exists(_))
        ));
        assert_eq!(store.list_snapshots(&a).await.unwrap().len(), 1);
        assert!(store.get_snapshot(&b, "snap").await.unwrap().is_some());
        store.delete_snapshot(&a, "snap").await.unwrap();
        assert!(store.get_snapshot(&a, "snap").await.unwrap().is_none());
        assert!(store.get_snapshot(&b, "snap").await.unwrap().is_some());
    }
}
