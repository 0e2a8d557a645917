//! Start-up reconciliation: the store's live capsules against what the runtime still has.
//!
//! | stored status | runtime adopted it | outcome |
//! |---|---|---|
//! | any but stopping | no | `error` ("lost while the server was down") |
//! | stopping | no | `stopped` |
//! | running, paused | yes | kept |
//! | snapshotting, missing | yes | thawed, `running` |
//! | pausing, resuming | yes | the freezer finishes the verb |
//! | pending, starting | yes | destroyed, `error` |
//! | stopping, hibernated | yes | destroyed, `stopped` |

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use wrenn_types::api::{CapsuleStatus, EventKind};
use wrenn_types::error::chain;

use super::error::CapsuleResult;
use super::freezer::Freeze;
use super::Capsules;

impl Capsules {
    /// Start-up: reconciles the store with what the runtime still has.
    pub async fn recover(self: &Arc<Self>) -> CapsuleResult<()> {
        let rows = self.store.live_capsules().await?;
        let known: Vec<String> = rows.iter().map(|r| r.capsule.id.clone()).collect();
        let report = self.runtime.recover(&known).await?;
        let adopted: HashMap<String, Option<Ipv4Addr>> = report
            .adopted
            .iter()
            .map(|h| (h.id.clone(), h.ip))
            .collect();
        for id in &report.removed {
            tracing::info!(id = %id, "removed leftovers of an unknown capsule");
        }
        for row in rows {
            let id = row.capsule.id.clone();
            let status = row.capsule.status;
            let live = self.register(row.team_id.clone(), row.capsule);
            if let Some(ip) = adopted.get(&id) {
                live.set_ip(*ip);
            } else {
                if status == CapsuleStatus::Stopping {
                    let _ = self
                        .transition(&live, &[], CapsuleStatus::Stopped, |_| {})
                        .await;
                    self.unregister(&id);
                } else {
                    tracing::warn!(id = %id, status = %status, "capsule lost while the server was down");
                    self.fail(&live, None, "capsule lost while the server was down".into())
                        .await;
                }
                continue;
            }
            match status {
                CapsuleStatus::Running | CapsuleStatus::Paused => {}
                CapsuleStatus::Snapshotting | CapsuleStatus::Missing => {
                    // A snapshot cut short by the restart may have left the capsule frozen.
                    if let Err(e) = self.runtime.resume(&id).await {
                        tracing::warn!(id = %id, error = %chain(&e), "thawing after an interrupted snapshot");
                    }
                    let _ = self
                        .transition(&live, &[], CapsuleStatus::Running, |_| {})
                        .await;
                }
                CapsuleStatus::Pausing => {
                    self.spawn_freeze(Freeze::Pause, live, None);
                }
                CapsuleStatus::Resuming => {
                    self.spawn_freeze(Freeze::Resume, live, None);
                }
                CapsuleStatus::Pending | CapsuleStatus::Starting => {
                    let _ = self.runtime.destroy(&id).await;
                    self.fail(
                        &live,
                        Some(EventKind::CapsuleCreate),
                        "server restarted while the capsule was starting".into(),
                    )
                    .await;
                }
                CapsuleStatus::Stopping | CapsuleStatus::Hibernated => {
                    let _ = self
                        .transition(&live, &[], CapsuleStatus::Stopping, |_| {})
                        .await;
                    self.spawn_destroy(live);
                }
                CapsuleStatus::Stopped | CapsuleStatus::Error => self.unregister(&id),
            }
        }
        Ok(())
    }
}
