//! The embedded store: SQLite with numbered migrations (`PRAGMA user_version`).
//!
//! The store owns truth about teams, API keys and capsules. Every call runs on the blocking
//! pool; statements are short.

mod capsules;
mod e2b;
mod keys;
mod snapshots;
mod usage;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use capsules::CapsuleRow;
pub use e2b::E2bRow;
pub use keys::{ApiKeyRow, KeyFormat, KeyListing, NewKey};
pub use snapshots::SnapshotRow;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column did not parse.
    #[error("corrupt row")]
    Corrupt(#[from] serde_json::Error),
    /// The blocking task died.
    #[error("store task failed")]
    Join(#[from] tokio::task::JoinError),
    /// A unique name is taken.
    #[error("{0} already exists")]
    Exists(String),
}

/// Ordered schema migrations; entry N brings the schema to version N+1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE capsules (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id),
    status TEXT NOT NULL,
    template TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    timeout_sec INTEGER NOT NULL,
    disk_size_mb INTEGER NOT NULL,
    metadata TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    last_active_at TEXT,
    last_updated TEXT NOT NULL,
    error TEXT
);
CREATE INDEX capsules_by_team ON capsules(team_id, created_at);
CREATE INDEX capsules_by_status ON capsules(status);
"#,
    r#"
CREATE TABLE usage_daily (
    team_id TEXT NOT NULL REFERENCES teams(id),
    day TEXT NOT NULL,
    cpu_minutes REAL NOT NULL,
    ram_mb_minutes REAL NOT NULL,
    PRIMARY KEY (team_id, day)
);
"#,
    r#"
CREATE TABLE snapshots (
    team_id TEXT NOT NULL REFERENCES teams(id),
    name TEXT NOT NULL,
    runtime_name TEXT NOT NULL UNIQUE,
    vcpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    source_capsule TEXT NOT NULL,
    PRIMARY KEY (team_id, name)
);
"#,
    r#"
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
CREATE INDEX api_keys_by_team ON api_keys(team_id, created_at);
"#,
    r#"
CREATE TABLE e2b_sandboxes (
    capsule_id TEXT PRIMARY KEY,
    access_token TEXT NOT NULL,
    end_at TEXT NOT NULL,
    auto_pause INTEGER NOT NULL,
    env_vars TEXT NOT NULL
);
"#,
];

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating when missing) `path` and migrates it to the latest schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await?
    }
}
