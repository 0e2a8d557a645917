//! Work the server does on its own, every few seconds: activity flushing, the inactivity
//! reaper, noticing dead capsules and resource sampling.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use wrenn_types::api::{Capsule, CapsuleStatus, EventKind};
use wrenn_types::error::chain;

use super::freezer::Freeze;
use super::{Capsules, LiveCapsule};
use crate::events::{system_actor, Action};
use crate::metrics::Reservation;

impl Capsules {
    /// Samples the resource use of every running capsule.
    pub async fn sample(&self) {
        let all = self.live.all();
        let running: Vec<(String, Capsule)> = all
            .iter()
            .filter(|l| l.status() == CapsuleStatus::Running)
            .map(|l| (l.team_id.clone(), l.snapshot()))
            .collect();
        let now = Utc::now();
        let mut teams: HashMap<String, Reservation> = all
            .iter()
            .map(|l| {
                (
                    l.team_id.clone(),
                    Reservation {
                        at: now,
                        running: 0,
                        vcpus: 0,
                        memory_mb: 0,
                    },
                )
            })
            .collect();
        for (team, c) in running {
            let r = teams.entry(team.clone()).or_insert(Reservation {
                at: now,
                running: 0,
                vcpus: 0,
                memory_mb: 0,
            });
            r.running += 1;
            r.vcpus += u64::from(c.vcpus);
            r.memory_mb += u64::from(c.memory_mb);
            if let Ok(u) = self.runtime.usage(&c.id).await {
                self.metrics.record(&team, &c.id, c.vcpus, c.memory_mb, u);
            }
        }
        for (team, r) in teams {
            self.metrics.record_team(&team, r);
        }
    }

    /// Records activity on `live` (persisted by [`Capsules::flush_activity`]).
    pub fn touch(&self, live: &LiveCapsule) {
        live.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_active_at = Some(Utc::now());
        *live.active_dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub(super) async fn flush_one(&self, live: &LiveCapsule) {
        let _writes = live.writes.lock().await;
        let rec = live.snapshot();
        *live.active_dirty.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.persist(&live.team_id, &rec).await;
    }

    /// Writes pending activity times to the store.
    pub async fn flush_activity(&self) {
        let touched: Vec<(String, DateTime<Utc>)> = self
            .live
            .all()
            .iter()
            .filter_map(|l| {
                let mut dirty = l.active_dirty.lock().unwrap_or_else(|p| p.into_inner());
                let rec = l.record.lock().unwrap_or_else(|p| p.into_inner());
                match (std::mem::take(&mut *dirty), rec.last_active_at) {
                    (true, Some(at)) => Some((rec.id.clone(), at)),
                    _ => None,
                }
            })
            .collect();
        if !touched.is_empty() {
            if let Err(e) = self.store.touch_capsules(touched).await {
                tracing::warn!(error = %chain(&e), "flushing activity failed");
            }
        }
        let usage = self.metrics.take_pending();
        if !usage.is_empty() {
            if let Err(e) = self.store.add_usage(usage).await {
                tracing::warn!(error = %chain(&e), "recording usage failed");
            }
        }
    }

    /// Pauses running capsules idle longer than their `timeout_sec`.
    pub async fn reap_idle(self: &Arc<Self>) {
        self.reap_idle_at(Utc::now()).await;
    }

    /// [`Capsules::reap_idle`] as if it were `now` (tests move the clock forward).
    pub async fn reap_idle_at(self: &Arc<Self>, now: DateTime<Utc>) {
        let idle: Vec<Arc<LiveCapsule>> = self
            .live
            .all()
            .into_iter()
            .filter(|l| {
                let c = l.record.lock().unwrap_or_else(|p| p.into_inner());
                let since = c.last_active_at.or(c.started_at).unwrap_or(c.created_at);
                c.status == CapsuleStatus::Running
                    && c.timeout_sec > 0
                    && (now - since).num_seconds() >= i64::from(c.timeout_sec)
            })
            .collect();
        for live in idle {
            if let Ok(rec) = self
                .transition(
                    &live,
                    &[CapsuleStatus::Running],
                    CapsuleStatus::Pausing,
                    |_| {},
                )
                .await
            {
                let meta = BTreeMap::from([("reason".to_owned(), "ttl_expired".to_owned())]);
                self.events.capsule(
                    &live.team_id,
                    &rec,
                    Action::success(EventKind::CapsulePause, &system_actor())
                        .with_metadata(Some(meta)),
                );
                self.spawn_freeze(Freeze::Pause, live, Some("ttl_expired"));
            }
        }
    }

    /// Marks capsules whose init died on its own (an OOM kill of the agent, a crash) as
    /// failed, and frees what the runtime still holds for them.
    pub async fn reap_dead(self: &Arc<Self>) {
        let dead: Vec<(Arc<LiveCapsule>, i32)> = self
            .live
            .all()
            .into_iter()
            .filter(|l| matches!(l.status(), CapsuleStatus::Running | CapsuleStatus::Paused))
            .filter_map(|l| self.runtime.exit_status(&l.id()).map(|code| (l, code)))
            .collect();
        for (live, code) in dead {
            let _op = live.op.lock().await;
            if !matches!(
                live.status(),
                CapsuleStatus::Running | CapsuleStatus::Paused
            ) {
                continue;
            }
            let id = live.id();
            tracing::warn!(id = %id, exit_code = code, "capsule init exited on its own");
            if let Err(e) = self.runtime.destroy(&id).await {
                tracing::warn!(id = %id, error = %chain(&e), "cleanup of a dead capsule");
                self.leftover(&live.team_id, &id, &e);
            }
            let reason = format!("capsule init exited with status {code}");
            self.fail(&live, None, reason).await;
        }
    }
}
