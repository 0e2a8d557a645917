//! API-key shapes (`/v1/api-keys`): list, create, revoke. The secret itself appears only in
//! the answer to a create.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An API key as listed: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKey {
    /// `key-` + hex.
    pub id: String,
    /// Label.
    pub name: String,
    /// The key's first 8 characters (`wrn_abcd`), to recognise it.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last time a request authenticated with it (to within a minute); null when never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `POST /v1/api-keys` answer (201): the key plus its secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreatedApiKey {
    /// The stored key.
    #[serde(flatten)]
    pub info: ApiKey,
    /// `wrn_` + 40 hex: send it as `X-API-Key`.
    pub key: String,
}

/// `POST /v1/api-keys` body; every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateApiKeyRequest {
    /// Label; default `api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Mint the key in E2B's format (`e2b_` + 40 hex) for E2B's SDKs; valid for both APIs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub e2b: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_flattens_the_listed_shape() {
        let k = CreatedApiKey {
            info: ApiKey {
                id: "key-1".into(),
                name: "ci".into(),
                prefix: "wrn_abcd".into(),
                created_at: "2026-05-02T10:00:00Z".parse().unwrap(),
                last_used_at: None,
            },
            key: "wrn_abcdef".into(),
        };
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "key-1", "name": "ci", "prefix": "wrn_abcd",
                "created_at": "2026-05-02T10:00:00Z", "last_used_at": null, "key": "wrn_abcdef"})
        );
        assert_eq!(serde_json::from_value::<CreatedApiKey>(v).unwrap(), k);
    }
}
