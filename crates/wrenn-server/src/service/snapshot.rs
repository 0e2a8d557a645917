//! Snapshot templates (contract §9): a capsule's filesystem copied into a new template its
//! team can create capsules from. Taken synchronously (201 + Template): the SDK waits up to
//! 60 s, and a copy takes seconds.

use std::sync::Arc;

use chrono::Utc;
use wrenn_runtime::RuntimeError;
use wrenn_types::api::{Actor, CapsuleStatus, EventKind, Template, TemplateType};
use wrenn_types::error::chain;

use super::error::{CapsuleError, CapsuleResult, Needed};
use super::{check_id, Capsules};
use crate::events::Action;
use crate::ids;
use crate::store::SnapshotRow;

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
    async fn base_templates(&self) -> CapsuleResult<Vec<Template>> {
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
    pub async fn list_templates(&self, team_id: &str) -> CapsuleResult<Vec<Template>> {
        let mut out = self.base_templates().await?;
        let snaps = self.store.list_snapshots(team_id).await?;
        out.extend(snaps.iter().map(template_of));
        out.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        Ok(out)
    }

    /// What `name` means for `team_id`: a base template or one of its snapshots.
    pub(super) async fn resolve_template(
        &self,
        team_id: &str,
        name: &str,
    ) -> CapsuleResult<ResolvedTemplate> {
        if self.base_templates().await?.iter().any(|t| t.name == name) {
            return Ok(ResolvedTemplate {
                runtime_name: name.to_owned(),
                sizes: None,
            });
        }
        match self.store.get_snapshot(team_id, name).await? {
            Some(row) => Ok(ResolvedTemplate {
                runtime_name: row.runtime_name,
                sizes: Some((row.vcpus, row.memory_mb)),
            }),
            None => Err(CapsuleError::TemplateNotFound(name.to_owned())),
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
    ) -> CapsuleResult<Template> {
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
        .map_err(|source| CapsuleError::Task {
            what: "snapshot",
            source,
        })?
    }

    async fn take_snapshot(
        self: &Arc<Self>,
        team_id: &str,
        actor: &Actor,
        sandbox_id: &str,
        name: Option<String>,
        overwrite: bool,
    ) -> CapsuleResult<Template> {
        if sandbox_id.is_empty() {
            return Err(CapsuleError::Invalid("sandbox_id is required".into()));
        }
        check_id(sandbox_id)?;
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ids::random_hex("template-", 8));
        if !ids::is_safe_name(&name) {
            return Err(CapsuleError::Invalid(format!(
                "invalid snapshot name {name:?}"
            )));
        }
        if self.base_templates().await?.iter().any(|t| t.name == name) {
            return Err(CapsuleError::BaseTemplateName(name));
        }
        let live = self
            .live_for(team_id, sandbox_id, Needed::RunningOrPaused)
            .await?;
        let _op = live.op.lock().await;
        let before = live.status();
        let wrong_state = |status| CapsuleError::InvalidState {
            id: sandbox_id.to_owned(),
            status,
            needed: Needed::RunningOrPaused,
        };
        if !matches!(before, CapsuleStatus::Running | CapsuleStatus::Paused) {
            return Err(wrong_state(before));
        }
        if let Some(old) = self.store.get_snapshot(team_id, &name).await? {
            if !overwrite {
                return Err(CapsuleError::SnapshotExists(name));
            }
            self.remove_snapshot(team_id, actor, &old).await?;
        }
        self.admit_snapshot(team_id).await?;
        let rec = self
            .transition(&live, &[before], CapsuleStatus::Snapshotting, |_| {})
            .await
            .map_err(wrong_state)?;
        let rt_name = runtime_name(team_id, &name);
        let made = self.runtime.snapshot(sandbox_id, &rt_name).await;
        let _ = self
            .transition(&live, &[CapsuleStatus::Snapshotting], before, |_| {})
            .await;
        let info = match made {
            Ok(info) => info,
            Err(source) => {
                self.events.snapshot(
                    team_id,
                    &name,
                    Action::failure(EventKind::SnapshotCreate, chain(&source)),
                );
                return Err(CapsuleError::Snapshot { name, source });
            }
        };
        let row = SnapshotRow {
            team_id: team_id.to_owned(),
            name: name.clone(),
            runtime_name: rt_name.clone(),
            vcpus: info.sizes.map_or(rec.vcpus, |s| s.0),
            memory_mb: info.sizes.map_or(rec.memory_mb, |s| s.1),
            size_bytes: info.template.size_bytes,
            created_at: info.template.created_at.unwrap_or_else(Utc::now),
            source_capsule: sandbox_id.to_owned(),
        };
        if let Err(e) = self.store.put_snapshot(row.clone()).await {
            let _ = self.runtime.delete_template(&rt_name).await;
            return Err(e.into());
        }
        self.events.snapshot(
            team_id,
            &name,
            Action::success(EventKind::SnapshotCreate, actor),
        );
        Ok(template_of(&row))
    }

    /// Deletes the team's snapshot `name`.
    pub async fn delete_snapshot(
        &self,
        team_id: &str,
        actor: &Actor,
        name: &str,
    ) -> CapsuleResult<()> {
        if !ids::is_safe_name(name) {
            return Err(CapsuleError::Invalid(format!(
                "invalid template name {name:?}"
            )));
        }
        if self.base_templates().await?.iter().any(|t| t.name == name) {
            return Err(CapsuleError::Protected(name.to_owned()));
        }
        let row = self
            .store
            .get_snapshot(team_id, name)
            .await?
            .ok_or_else(|| CapsuleError::TemplateNotFound(name.to_owned()))?;
        self.remove_snapshot(team_id, actor, &row).await
    }

    async fn remove_snapshot(
        &self,
        team_id: &str,
        actor: &Actor,
        row: &SnapshotRow,
    ) -> CapsuleResult<()> {
        match self.runtime.delete_template(&row.runtime_name).await {
            Ok(()) | Err(RuntimeError::TemplateNotFound(_)) => {}
            Err(RuntimeError::Protected { reason, .. }) => {
                return Err(CapsuleError::SnapshotInUse {
                    name: row.name.clone(),
                    state: reason.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.store.delete_snapshot(team_id, &row.name).await?;
        self.events.snapshot(
            team_id,
            &row.name,
            Action::success(EventKind::SnapshotDelete, actor),
        );
        Ok(())
    }
}
