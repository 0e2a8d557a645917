//! Snapshot templates (contract §9): a capsule's filesystem copied into a new template its
//! team can create capsules from. Taken synchronously (201 + Template): the SDK waits up to
//! 60 s, and a copy takes seconds.

use std::sync::Arc;

use chrono::Utc;
use wrenn_types::api::{Actor, CapsuleStatus, EventKind, Template, TemplateType};

use super::{check_id, Capsules};
use crate::error::{ApiError, ApiResult};
use crate::events::Action;
use crate::ids;
use crate::store::{SnapshotRow, StoreError};

/// A template a create request may name, resolved for the runtime.
#[derive(Debug, Clone)]
pub struct ResolvedTemplate {
    /// Name in the runtime.
    pub runtime_name: String,
    /// CPUs and memory baked into a snapshot.
    pub sizes: Option<(u32, u32)>,
}

fn runtime_name(team_id: &str, name: &str) -> String {
    format!("{team_id}.{name}")
}

fn template_of(row: &SnapshotRow) -> Template {
    Template {
        name: row.name.clone(),
        template_type: TemplateType::Snapshot,
        vcpus: Some(row.vcpus),
        memory_mb: Some(row.memory_mb),
        size_bytes: row.size_bytes,
        created_at: row.created_at,
        platform: false,
        protected: false,
        metadata: Some(
            [("source_capsule".to_owned(), row.source_capsule.clone())]
                .into_iter()
                .collect(),
        ),
    }
}

impl Capsules {
    async fn base_templates(&self) -> ApiResult<Vec<Template>> {
        Ok(self
            .runtime
            .list_templates()
            .await?
            .into_iter()
            .filter(|t| t.base)
            .map(|t| Template {
                name: t.name,
                template_type: TemplateType::Base,
                vcpus: None,
                memory_mb: None,
                size_bytes: t.size_bytes,
                created_at: t.created_at.unwrap_or_else(Utc::now),
                platform: true,
                protected: true,
                metadata: None,
            })
            .collect())
    }

    /// Base templates plus the team's snapshots, newest first.
    pub async fn list_templates(&self, team_id: &str) -> ApiResult<Vec<Template>> {
        let mut out = self.base_templates().await?;
        let snaps = self
            .store
            .list_snapshots(team_id)
            .await
            .map_err(ApiError::internal)?;
        out.extend(snaps.iter().map(template_of));
        out.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        Ok(out)
    }

    /// What `name` means for `team_id`: a base template or one of its snapshots.
    pub(super) async fn resolve_template(
        &self,
        team_id: &str,
        name: &str,
    ) -> ApiResult<ResolvedTemplate> {
        if self.base_templates().await?.iter().any(|t| t.name == name) {
            return Ok(ResolvedTemplate {
                runtime_name: name.to_owned(),
                sizes: None,
            });
        }
        match self
            .store
            .get_snapshot(team_id, name)
            .await
            .map_err(ApiError::internal)?
        {
            Some(row) => Ok(ResolvedTemplate {
                runtime_name: row.runtime_name,
                sizes: Some((row.vcpus, row.memory_mb)),
            }),
            None => Err(ApiError::NotFound(format!("template {name} not found"))),
        }
    }

    /// Snapshots capsule `sandbox_id` into template `name` (default `template-` + 8 hex).
    ///
    /// Runs in its own task: a client that gives up (the SDK waits 60 s) must not cancel it
    /// half way, which would leave the capsule frozen and the template half recorded.
    pub async fn snapshot(
        self: &Arc<Self>,
        team_id: &str,
        actor: &Actor,
        sandbox_id: &str,
        name: Option<String>,
        overwrite: bool,
    ) -> ApiResult<Template> {
        let (this, team, actor, id) = (
            self.clone(),
            team_id.to_owned(),
            actor.clone(),
            sandbox_id.to_owned(),
        );
        tokio::spawn(async move {
            this.take_snapshot(&team, &actor, &id, name, overwrite)
                .await
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("snapshot task failed: {e}")))?
    }

    async fn take_snapshot(
        self: &Arc<Self>,
        team_id: &str,
        actor: &Actor,
        sandbox_id: &str,
        name: Option<String>,
        overwrite: bool,
    ) -> ApiResult<Template> {
        if sandbox_id.is_empty() {
            return Err(ApiError::InvalidRequest("sandbox_id is required".into()));
        }
        check_id(sandbox_id)?;
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ids::random_hex("template-", 8));
        if !ids::is_safe_name(&name) {
            return Err(ApiError::InvalidRequest(format!(
                "invalid snapshot name {name:?}"
            )));
        }
        if self.base_templates().await?.iter().any(|t| t.name == name) {
            return Err(ApiError::Conflict(format!(
                "{name} is the name of a base template"
            )));
        }
        let live = match self.live_for(team_id, sandbox_id) {
            Ok(l) => l,
            Err(ApiError::NotFound(m)) => {
                return match self
                    .store
                    .get_capsule(sandbox_id)
                    .await
                    .map_err(ApiError::internal)?
                {
                    Some(row) if row.team_id == team_id => Err(ApiError::InvalidState(format!(
                        "capsule {sandbox_id} is {}; snapshots need running or paused",
                        row.capsule.status
                    ))),
                    _ => Err(ApiError::NotFound(m)),
                }
            }
            Err(e) => return Err(e),
        };
        let _op = live.op.lock().await;
        let before = live.status();
        if !matches!(before, CapsuleStatus::Running | CapsuleStatus::Paused) {
            return Err(ApiError::InvalidState(format!(
                "capsule {sandbox_id} is {before}; snapshots need running or paused"
            )));
        }
        if let Some(old) = self
            .store
            .get_snapshot(team_id, &name)
            .await
            .map_err(ApiError::internal)?
        {
            if !overwrite {
                return Err(ApiError::Conflict(format!(
                    "snapshot {name} already exists"
                )));
            }
            self.remove_snapshot(team_id, actor, &old).await?;
        }
        let rec = self
            .transition(&live, &[before], CapsuleStatus::Snapshotting, |_| {})
            .await
            .map_err(|s| ApiError::InvalidState(format!("capsule {sandbox_id} is {s}")))?;
        let rt_name = runtime_name(team_id, &name);
        let made = self.runtime.snapshot(sandbox_id, &rt_name).await;
        let _ = self
            .transition(&live, &[CapsuleStatus::Snapshotting], before, |_| {})
            .await;
        let info = match made {
            Ok(info) => info,
            Err(e) => {
                let reason = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(id = %sandbox_id, error = %reason, "snapshot failed");
                self.events.snapshot(
                    team_id,
                    &name,
                    Action::failure(EventKind::SnapshotCreate, reason.clone()),
                );
                return Err(ApiError::Internal(anyhow::anyhow!(reason)));
            }
        };
        let row = SnapshotRow {
            team_id: team_id.to_owned(),
            name: name.clone(),
            runtime_name: rt_name.clone(),
            vcpus: rec.vcpus,
            memory_mb: rec.memory_mb,
            size_bytes: info.template.size_bytes,
            created_at: info.template.created_at.unwrap_or_else(Utc::now),
            source_capsule: sandbox_id.to_owned(),
        };
        if let Err(e) = self.store.put_snapshot(row.clone()).await {
            let _ = self.runtime.delete_template(&rt_name).await;
            return Err(match e {
                StoreError::Exists(m) => ApiError::Conflict(format!("{m} already exists")),
                e => ApiError::internal(e),
            });
        }
        self.events.snapshot(
            team_id,
            &name,
            Action::success(EventKind::SnapshotCreate, actor),
        );
        Ok(template_of(&row))
    }

    /// Deletes the team's snapshot `name`.
    pub async fn delete_snapshot(&self, team_id: &str, actor: &Actor, name: &str) -> ApiResult<()> {
        if !ids::is_safe_name(name) {
            return Err(ApiError::InvalidRequest(format!(
                "invalid template name {name:?}"
            )));
        }
        if self.base_templates().await?.iter().any(|t| t.name == name) {
            return Err(ApiError::Forbidden(format!(
                "{name} is a protected base template"
            )));
        }
        let row = self
            .store
            .get_snapshot(team_id, name)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("template {name} not found")))?;
        self.remove_snapshot(team_id, actor, &row).await
    }

    async fn remove_snapshot(
        &self,
        team_id: &str,
        actor: &Actor,
        row: &SnapshotRow,
    ) -> ApiResult<()> {
        match self.runtime.delete_template(&row.runtime_name).await {
            Ok(()) | Err(wrenn_runtime::RuntimeError::TemplateNotFound(_)) => {}
            Err(wrenn_runtime::RuntimeError::Protected { reason, .. }) => {
                return Err(ApiError::Conflict(format!(
                    "snapshot {} is {reason}",
                    row.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.store
            .delete_snapshot(team_id, &row.name)
            .await
            .map_err(ApiError::internal)?;
        self.events.snapshot(
            team_id,
            &row.name,
            Action::success(EventKind::SnapshotDelete, actor),
        );
        Ok(())
    }
}
