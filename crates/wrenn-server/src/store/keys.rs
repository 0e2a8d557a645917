//! Teams and API keys. Keys are stored as SHA-256 hashes; the key itself is shown once.

use chrono::Utc;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
use crate::ids::random_hex;

/// A key as stored (never the key itself).
#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    /// `key-` + hex.
    pub id: String,
    /// Owning team.
    pub team_id: String,
    /// Label.
    pub name: String,
}

/// A freshly created key: the only time the secret exists in the clear.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Stored row.
    pub row: ApiKeyRow,
    /// `wrn_` + 40 hex.
    pub secret: String,
}

/// SHA-256 of a key, hex.
pub fn hash_key(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Creates a key for team `team_name`, creating the team when missing.
    pub async fn create_key(&self, team_name: &str, key_name: &str) -> Result<NewKey, StoreError> {
        let team_name = team_name.to_owned();
        let key_name = key_name.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let now = Utc::now().to_rfc3339();
            let team_id: Option<String> = tx
                .query_row(
                    "SELECT id FROM teams WHERE name = ?1",
                    params![team_name],
                    |r| r.get(0),
                )
                .optional()?;
            let team_id = match team_id {
                Some(id) => id,
                None => {
                    let id = random_hex("team-", 16);
                    tx.execute(
                        "INSERT INTO teams (id, name, created_at) VALUES (?1, ?2, ?3)",
                        params![id, team_name, now],
                    )?;
                    id
                }
            };
            let secret = random_hex("wrn_", 40);
            let id = random_hex("key-", 16);
            tx.execute(
                "INSERT INTO api_keys (id, team_id, name, key_hash, prefix, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, team_id, key_name, hash_key(&secret), &secret[..8], now],
            )?;
            tx.commit()?;
            Ok(NewKey {
                row: ApiKeyRow {
                    id,
                    team_id,
                    name: key_name,
                },
                secret,
            })
        })
        .await
    }

    /// Looks a key up by its secret.
    pub async fn find_key(&self, secret: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let hash = hash_key(secret);
        self.call(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id, team_id, name FROM api_keys WHERE key_hash = ?1",
                    params![hash],
                    |r| {
                        Ok(ApiKeyRow {
                            id: r.get(0)?,
                            team_id: r.get(1)?,
                            name: r.get(2)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Number of keys, to tell a first start apart.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        self.call(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_resolve_to_their_team_and_are_hashed() {
        let store = Store::open_in_memory().unwrap();
        let a = store.create_key("alpha", "k1").await.unwrap();
        let b = store.create_key("alpha", "k2").await.unwrap();
        let c = store.create_key("beta", "k3").await.unwrap();
        assert_eq!(a.row.team_id, b.row.team_id);
        assert_ne!(a.row.team_id, c.row.team_id);
        assert!(a.secret.starts_with("wrn_"));
        let found = store.find_key(&c.secret).await.unwrap().unwrap();
        assert_eq!(found.team_id, c.row.team_id);
        assert!(store.find_key("wrn_nope").await.unwrap().is_none());
        let stored: String = store
            .call(|conn| {
                Ok(conn.query_row("SELECT key_hash FROM api_keys LIMIT 1", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert!(!stored.starts_with("wrn_"));
    }
}
