//! Pause and resume: the same verb in two directions over the runtime's freezer.
//!
//! Accept (idempotent when already there or on the way) → record the transient status →
//! publish the caller's event → in a task, under the capsule's lock: act → record the outcome
//! (back to where it was on failure) → publish the system's event.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use wrenn_types::api::{Actor, Capsule, CapsuleStatus, EventKind};
use wrenn_types::error::chain;

use super::error::{CapsuleError, CapsuleResult, Needed};
use super::{Capsules, LiveCapsule};
use crate::events::{system_actor, Action};

/// Which way the freezer turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freeze {
    /// running → pausing → paused.
    Pause,
    /// paused → resuming → running.
    Resume,
}

impl Freeze {
    fn from(self) -> CapsuleStatus {
        match self {
            Self::Pause => CapsuleStatus::Running,
            Self::Resume => CapsuleStatus::Paused,
        }
    }

    fn transient(self) -> CapsuleStatus {
        match self {
            Self::Pause => CapsuleStatus::Pausing,
            Self::Resume => CapsuleStatus::Resuming,
        }
    }

    fn target(self) -> CapsuleStatus {
        match self {
            Self::Pause => CapsuleStatus::Paused,
            Self::Resume => CapsuleStatus::Running,
        }
    }

    fn event(self) -> EventKind {
        match self {
            Self::Pause => EventKind::CapsulePause,
            Self::Resume => EventKind::CapsuleResume,
        }
    }

    fn wrong_state(self, id: &str, status: CapsuleStatus) -> CapsuleError {
        let needed = match self {
            Self::Pause => Needed::Running,
            Self::Resume => Needed::Paused,
        };
        CapsuleError::InvalidState {
            id: id.to_owned(),
            status,
            needed,
        }
    }
}

impl Capsules {
    /// Starts pausing; idempotent for a paused capsule.
    pub async fn pause(
        self: &Arc<Self>,
        team_id: &str,
        id: &str,
        actor: &Actor,
    ) -> CapsuleResult<Capsule> {
        self.freeze(Freeze::Pause, team_id, id, actor).await
    }

    /// Starts resuming; idempotent for a running capsule.
    pub async fn resume(
        self: &Arc<Self>,
        team_id: &str,
        id: &str,
        actor: &Actor,
    ) -> CapsuleResult<Capsule> {
        self.freeze(Freeze::Resume, team_id, id, actor).await
    }

    async fn freeze(
        self: &Arc<Self>,
        verb: Freeze,
        team_id: &str,
        id: &str,
        actor: &Actor,
    ) -> CapsuleResult<Capsule> {
        // A capsule that is no longer live answers as "not running", whichever the verb.
        let live = self.live_for(team_id, id, Needed::Running).await?;
        if [verb.target(), verb.transient()].contains(&live.status()) {
            return Ok(live.snapshot());
        }
        let rec = self
            .transition(&live, &[verb.from()], verb.transient(), |_| {})
            .await
            .map_err(|s| verb.wrong_state(id, s))?;
        self.events
            .capsule(team_id, &rec, Action::success(verb.event(), actor));
        self.spawn_freeze(verb, live, None);
        Ok(rec)
    }

    /// Runs the runtime half of `verb` in a task; `reason` goes into the events' metadata.
    pub(super) fn spawn_freeze(
        self: &Arc<Self>,
        verb: Freeze,
        live: Arc<LiveCapsule>,
        reason: Option<&'static str>,
    ) {
        let this = self.clone();
        tokio::spawn(async move { this.run_freeze(verb, live, reason).await });
    }

    async fn run_freeze(
        self: Arc<Self>,
        verb: Freeze,
        live: Arc<LiveCapsule>,
        reason: Option<&'static str>,
    ) {
        let _op = live.op.lock().await;
        if live.status() != verb.transient() {
            return; // overtaken (e.g. by a destroy)
        }
        let id = live.id();
        let meta = reason.map(|r| BTreeMap::from([("reason".to_owned(), r.to_owned())]));
        let acted = match verb {
            Freeze::Pause => self.runtime.pause(&id).await,
            Freeze::Resume => self.runtime.resume(&id).await,
        };
        match acted {
            Ok(()) => {
                let rec = self
                    .transition(&live, &[verb.transient()], verb.target(), |c| {
                        if verb == Freeze::Resume {
                            let now = Utc::now();
                            c.started_at = Some(now);
                            c.last_active_at = Some(now);
                        }
                    })
                    .await;
                if let Ok(rec) = rec {
                    if verb == Freeze::Pause {
                        self.flush_one(&live).await;
                    }
                    let action = Action::success(verb.event(), &system_actor()).with_metadata(meta);
                    self.events.capsule(&live.team_id, &rec, action);
                }
            }
            Err(e) => {
                let reason = chain(&e);
                tracing::error!(id = %id, verb = ?verb, error = %reason, "freezer failed");
                if let Ok(rec) = self
                    .transition(&live, &[verb.transient()], verb.from(), |_| {})
                    .await
                {
                    let action = Action::failure(verb.event(), reason).with_metadata(meta);
                    self.events.capsule(&live.team_id, &rec, action);
                }
            }
        }
    }
}
