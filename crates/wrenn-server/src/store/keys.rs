//! Teams and API keys. Keys are stored as SHA-256 hashes; the key itself is shown once.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use wrenn_types::keys::{ApiKey, CreatedApiKey};

use super::{Store, StoreError};
use crate::ids::random_hex;

/// Which format a new key is minted in; both work for both APIs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// `wrn_` + 40 lowercase hex.
    #[default]
    Wrenn,
    /// `e2b_` + 40 lowercase hex: what E2B's SDKs expect (some versions check the prefix).
    E2b,
}

impl KeyFormat {
    fn prefix(self) -> &'static str {
        match self {
            Self::Wrenn => "wrn_",
            Self::E2b => "e2b_",
        }
    }
}

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
    /// `wrn_` or `e2b_` + 40 hex.
    pub secret: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl NewKey {
    /// The key as the API shows it on creation.
    pub fn to_api(&self) -> CreatedApiKey {
        CreatedApiKey {
            info: ApiKey {
                id: self.row.id.clone(),
                name: self.row.name.clone(),
                prefix: key_prefix(&self.secret).to_owned(),
                created_at: self.created_at,
                last_used_at: None,
            },
            key: self.secret.clone(),
        }
    }
}

/// A key as listed, with the name of its team (for the local `wrenn key ls`).
#[derive(Debug, Clone)]
pub struct KeyListing {
    /// The key as the API shows it.
    pub key: ApiKey,
    /// Owning team's id.
    pub team_id: String,
    /// Owning team's name.
    pub team_name: String,
}

/// SHA-256 of a key, hex.
pub fn hash_key(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The part of a key that is stored and shown: `wrn_`/`e2b_` + 4 characters.
fn key_prefix(secret: &str) -> &str {
    secret.get(..8).unwrap_or(secret)
}

/// Parses a stored RFC 3339 column `idx`.
fn time_column(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let Some(s) = r.get::<_, Option<String>>(idx)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&s)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
        })
}

/// Inserts a key for `team_id` inside `tx`.
fn insert_key(
    tx: &rusqlite::Transaction<'_>,
    team_id: String,
    key_name: String,
    format: KeyFormat,
) -> Result<NewKey, StoreError> {
    let created_at = Utc::now();
    let secret = random_hex(format.prefix(), 40);
    let id = random_hex("key-", 16);
    tx.execute(
        "INSERT INTO api_keys (id, team_id, name, key_hash, prefix, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            team_id,
            key_name,
            hash_key(&secret),
            key_prefix(&secret),
            created_at.to_rfc3339()
        ],
    )?;
    Ok(NewKey {
        row: ApiKeyRow {
            id,
            team_id,
            name: key_name,
        },
        secret,
        created_at,
    })
}

impl Store {
    /// Creates a key for team `team_name`, creating the team when missing.
    pub async fn create_key(&self, team_name: &str, key_name: &str) -> Result<NewKey, StoreError> {
        self.create_key_as(team_name, key_name, KeyFormat::Wrenn)
            .await
    }

    /// [`Store::create_key`] in `format`.
    pub async fn create_key_as(
        &self,
        team_name: &str,
        key_name: &str,
        format: KeyFormat,
    ) -> Result<NewKey, StoreError> {
        let team_name = team_name.to_owned();
        let key_name = key_name.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
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
                        params![id, team_name, Utc::now().to_rfc3339()],
                    )?;
                    id
                }
            };
            let key = insert_key(&tx, team_id, key_name, format)?;
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    /// Creates a key in an existing team.
    pub async fn create_team_key(
        &self,
        team_id: &str,
        key_name: &str,
    ) -> Result<NewKey, StoreError> {
        self.create_team_key_as(team_id, key_name, KeyFormat::Wrenn)
            .await
    }

    /// [`Store::create_team_key`] in `format`.
    pub async fn create_team_key_as(
        &self,
        team_id: &str,
        key_name: &str,
        format: KeyFormat,
    ) -> Result<NewKey, StoreError> {
        let team_id = team_id.to_owned();
        let key_name = key_name.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let key = insert_key(&tx, team_id, key_name, format)?;
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    /// The keys of `team_id` (every team's when `None`), oldest first.
    pub async fn list_keys(&self, team_id: Option<&str>) -> Result<Vec<KeyListing>, StoreError> {
        let team_id = team_id.map(str::to_owned);
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT k.id, k.name, k.prefix, k.created_at, k.last_used_at, t.id, t.name
                 FROM api_keys k JOIN teams t ON t.id = k.team_id
                 WHERE ?1 IS NULL OR k.team_id = ?1
                 ORDER BY k.created_at, k.id",
            )?;
            let rows = stmt
                .query_map(params![team_id], |r| {
                    let created_at = time_column(r, 3)?.ok_or_else(|| {
                        rusqlite::Error::InvalidColumnType(
                            3,
                            "created_at".into(),
                            rusqlite::types::Type::Null,
                        )
                    })?;
                    Ok(KeyListing {
                        key: ApiKey {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            prefix: r.get(2)?,
                            created_at,
                            last_used_at: time_column(r, 4)?,
                        },
                        team_id: r.get(5)?,
                        team_name: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes key `id` (only when it belongs to `team_id`, if given); whether it existed.
    pub async fn revoke_key(&self, team_id: Option<&str>, id: &str) -> Result<bool, StoreError> {
        let team_id = team_id.map(str::to_owned);
        let id = id.to_owned();
        self.call(move |conn| {
            let n = conn.execute(
                "DELETE FROM api_keys WHERE id = ?1 AND (?2 IS NULL OR team_id = ?2)",
                params![id, team_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Records that key `id` authenticated a request at `at`.
    pub async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.execute(
                "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
                params![id, at.to_rfc3339()],
            )?;
            Ok(())
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

    #[tokio::test]
    async fn e2b_keys_are_e2b_hex_and_resolve_like_any_key() {
        let store = Store::open_in_memory().unwrap();
        let a = store
            .create_key_as("alpha", "k1", KeyFormat::E2b)
            .await
            .unwrap();
        let hex = a.secret.strip_prefix("e2b_").expect("e2b_ prefix");
        assert_eq!(hex.len(), 40);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let found = store.find_key(&a.secret).await.unwrap().unwrap();
        assert_eq!(found.team_id, a.row.team_id);
        let b = store
            .create_team_key_as(&a.row.team_id, "k2", KeyFormat::E2b)
            .await
            .unwrap();
        assert!(b.secret.starts_with("e2b_"));
        assert_eq!(b.to_api().info.prefix, &b.secret[..8]);
    }

    #[tokio::test]
    async fn keys_list_per_team_and_revoke_only_within_their_team() {
        let store = Store::open_in_memory().unwrap();
        let a = store.create_key("alpha", "k1").await.unwrap();
        let b = store.create_team_key(&a.row.team_id, "k2").await.unwrap();
        let c = store.create_key("beta", "k3").await.unwrap();
        let listed = store.list_keys(Some(&a.row.team_id)).await.unwrap();
        let ids: Vec<_> = listed.iter().map(|k| k.key.id.as_str()).collect();
        assert_eq!(ids, [a.row.id.as_str(), b.row.id.as_str()]);
        assert_eq!(listed[0].key.prefix, &a.secret[..8]);
        assert_eq!(listed[0].team_name, "alpha");
        assert!(listed[0].key.last_used_at.is_none());
        assert_eq!(store.list_keys(None).await.unwrap().len(), 3);

        let now = Utc::now();
        store.touch_key(&a.row.id, now).await.unwrap();
        let used = store.list_keys(Some(&a.row.team_id)).await.unwrap()[0]
            .key
            .last_used_at
            .unwrap();
        assert!((used - now).num_milliseconds().abs() < 1000);

        // Another team's key is not found; its own team's is, once.
        assert!(!store
            .revoke_key(Some(&a.row.team_id), &c.row.id)
            .await
            .unwrap());
        assert!(store.find_key(&c.secret).await.unwrap().is_some());
        assert!(store
            .revoke_key(Some(&a.row.team_id), &b.row.id)
            .await
            .unwrap());
        assert!(!store
            .revoke_key(Some(&a.row.team_id), &b.row.id)
            .await
            .unwrap());
        assert!(store.find_key(&b.secret).await.unwrap().is_none());
        assert!(store.revoke_key(None, &c.row.id).await.unwrap());
    }
}
