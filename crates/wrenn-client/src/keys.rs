//! API keys of the caller's team (`/v1/api-keys`).

use reqwest::Method;
use wrenn_types::keys::{ApiKey, CreateApiKeyRequest, CreatedApiKey};

use crate::{segment, Client, ClientError};

impl Client {
    /// The team's keys, oldest first (never their secrets).
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, ClientError> {
        Self::json(self.request(Method::GET, "/api-keys")).await
    }

    /// Creates a key in the team; the answer holds its secret, shown this once.
    pub async fn create_key(&self, name: Option<&str>) -> Result<CreatedApiKey, ClientError> {
        let body = CreateApiKeyRequest {
            name: name.map(str::to_owned),
            e2b: false,
        };
        Self::json(self.request(Method::POST, "/api-keys").json(&body)).await
    }

    /// Creates a key for the calling key's team in E2B's format (`e2b_` + 40 hex), for E2B's
    /// SDKs; it works for the Wrenn API too.
    pub async fn create_e2b_key(&self, name: Option<&str>) -> Result<CreatedApiKey, ClientError> {
        let body = CreateApiKeyRequest {
            name: name.map(str::to_owned),
            e2b: true,
        };
        Self::json(self.request(Method::POST, "/api-keys").json(&body)).await
    }

    /// Revokes a key of the team; it stops working at once (this client's own key too).
    pub async fn revoke_key(&self, id: &str) -> Result<(), ClientError> {
        Self::send(self.request(Method::DELETE, &format!("/api-keys/{}", segment(id)))).await?;
        Ok(())
    }
}
