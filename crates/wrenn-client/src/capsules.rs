//! Capsules (contract §5) and templates/snapshots (§9).

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use wrenn_types::api::{Capsule, CapsuleStatus, CreateCapsuleRequest, Template, TemplateType};

use crate::{segment, Client, ClientError};

/// How long [`Client::wait_running`] and friends wait by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// Poll interval while waiting for a status.
const POLL: Duration = Duration::from_millis(100);

#[derive(Serialize)]
struct SnapshotBody<'a> {
    sandbox_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl Client {
    /// Creates a capsule (`starting`); see [`Client::wait_running`].
    pub async fn create_capsule(&self, req: &CreateCapsuleRequest) -> Result<Capsule, ClientError> {
        Self::json(self.request(Method::POST, "/capsules").json(req)).await
    }

    /// The team's live capsules, newest first.
    pub async fn list_capsules(&self) -> Result<Vec<Capsule>, ClientError> {
        Self::json(self.request(Method::GET, "/capsules")).await
    }

    /// One capsule (also a stopped one the server still remembers).
    pub async fn get_capsule(&self, id: &str) -> Result<Capsule, ClientError> {
        Self::json(self.request(Method::GET, &format!("/capsules/{}", segment(id)))).await
    }

    /// Starts destroying a capsule (idempotent); see [`Client::wait_status`].
    pub async fn destroy_capsule(&self, id: &str) -> Result<(), ClientError> {
        Self::send(self.request(Method::DELETE, &format!("/capsules/{}", segment(id)))).await?;
        Ok(())
    }

    /// Starts pausing a running capsule.
    pub async fn pause_capsule(&self, id: &str) -> Result<Capsule, ClientError> {
        Self::json(self.request(Method::POST, &format!("/capsules/{}/pause", segment(id)))).await
    }

    /// Starts resuming a paused capsule.
    pub async fn resume_capsule(&self, id: &str) -> Result<Capsule, ClientError> {
        Self::json(self.request(Method::POST, &format!("/capsules/{}/resume", segment(id)))).await
    }

    /// Resets a running capsule's inactivity timer.
    pub async fn ping_capsule(&self, id: &str) -> Result<(), ClientError> {
        Self::send(self.request(Method::POST, &format!("/capsules/{}/ping", segment(id)))).await?;
        Ok(())
    }

    /// Polls until the capsule is `want`; fails at once when it reaches `error` (or `stopped`
    /// when that is not what is wanted), and after `timeout`.
    pub async fn wait_status(
        &self,
        id: &str,
        want: CapsuleStatus,
        timeout: Duration,
    ) -> Result<Capsule, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.get_capsule(id).await?;
            if c.status == want {
                return Ok(c);
            }
            if c.status.is_terminal() {
                return Err(ClientError::Failed {
                    id: id.to_owned(),
                    status: c.status.to_string(),
                    reason: c.error,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    id: id.to_owned(),
                    status: c.status.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (up to [`DEFAULT_WAIT`]) until the capsule runs.
    pub async fn wait_running(&self, id: &str) -> Result<Capsule, ClientError> {
        self.wait_status(id, CapsuleStatus::Running, DEFAULT_WAIT)
            .await
    }

    /// Snapshots a running or paused capsule into a template of the team (201, synchronous);
    /// `overwrite` replaces a template of the same name.
    pub async fn create_snapshot(
        &self,
        capsule_id: &str,
        name: Option<&str>,
        overwrite: bool,
    ) -> Result<Template, ClientError> {
        let path = if overwrite {
            "/snapshots?overwrite=true"
        } else {
            "/snapshots"
        };
        let body = SnapshotBody {
            sandbox_id: capsule_id,
            name,
        };
        Self::json(
            self.request(Method::POST, path)
                .json(&body)
                .timeout(Duration::from_secs(300)),
        )
        .await
    }

    /// Base templates plus the team's snapshots, newest first; `kind` filters.
    pub async fn list_templates(
        &self,
        kind: Option<TemplateType>,
    ) -> Result<Vec<Template>, ClientError> {
        let path = match kind {
            None => "/snapshots",
            Some(TemplateType::Base) => "/snapshots?type=base",
            Some(TemplateType::Snapshot) => "/snapshots?type=snapshot",
        };
        Self::json(self.request(Method::GET, path)).await
    }

    /// Deletes one of the team's snapshot templates.
    pub async fn delete_template(&self, name: &str) -> Result<(), ClientError> {
        Self::send(self.request(Method::DELETE, &format!("/snapshots/{}", segment(name)))).await?;
        Ok(())
    }
}
