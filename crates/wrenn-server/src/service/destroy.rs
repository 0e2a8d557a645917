//! Destroy: record `stopping` (overtaking whatever was under way) → answer; in a task, under the
//! capsule's lock and after its turn in the teardown queue ([`super::lanes`]): the runtime
//! tears it down, retried → `stopped` (or `error`, and housekeeping keeps retrying the
//! teardown: [`super::leftovers`]).

use std::sync::Arc;
use std::time::Duration;

use wrenn_types::api::{Actor, CapsuleStatus, EventKind};
use wrenn_types::error::chain;

use super::error::{CapsuleError, CapsuleResult};
use super::lanes::Place;
use super::{Capsules, LiveCapsule, Lookup};
use crate::events::{system_actor, Action};

/// Waits between destroy attempts after a failed one; after the last, housekeeping retries
/// ([`super::leftovers`]).
const DESTROY_RETRIES: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

impl Capsules {
    /// Starts destroying; a no-op for stopped or failed capsules.
    pub async fn destroy(
        self: &Arc<Self>,
        team_id: &str,
        id: &str,
        actor: &Actor,
    ) -> CapsuleResult<()> {
        let live = match self.lookup(team_id, id).await? {
            Lookup::Live(live) => live,
            Lookup::Stored(_) => return Ok(()),
            Lookup::Missing => return Err(CapsuleError::NotFound(id.to_owned())),
        };
        let rec = match self
            .transition(&live, &[], CapsuleStatus::Stopping, |_| {})
            .await
        {
            Ok(rec) => rec,
            // Already stopping, stopped or failed.
            Err(_) => return Ok(()),
        };
        self.events.capsule(
            team_id,
            &rec,
            Action::success(EventKind::CapsuleDestroy, actor),
        );
        self.spawn_destroy(live);
        Ok(())
    }

    /// Runs the runtime half of a destroy (the capsule is `stopping`) in a task.
    pub(super) fn spawn_destroy(self: &Arc<Self>, live: Arc<LiveCapsule>) {
        let this = self.clone();
        // The place in the teardown queue is taken now: teardowns follow arrival order.
        let place = self.stops.enter();
        tokio::spawn(async move { this.run_destroy(live, place).await });
    }

    async fn run_destroy(self: Arc<Self>, live: Arc<LiveCapsule>, place: Place) {
        let _op = live.op.lock().await;
        let _turn = place.ready(&self.stops).await;
        let id = live.id();
        // Teardown steps can fail transiently (a busy mount, a slow kill): retry before giving
        // up, so that a failure does not leave host resources behind unnoticed.
        let mut result = self.runtime.destroy(&id).await;
        for backoff in DESTROY_RETRIES {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(backoff).await;
            result = self.runtime.destroy(&id).await;
        }
        match result {
            Ok(()) => {
                if let Ok(rec) = self
                    .transition(
                        &live,
                        &[CapsuleStatus::Stopping],
                        CapsuleStatus::Stopped,
                        |_| {},
                    )
                    .await
                {
                    self.events.capsule(
                        &live.team_id,
                        &rec,
                        Action::success(EventKind::CapsuleDestroy, &system_actor()),
                    );
                }
                self.unregister(&id);
            }
            Err(e) => {
                let reason = chain(&e);
                tracing::error!(id = %id, error = %reason, "destroy failed");
                // Known as a leftover before anyone can see the capsule in `error`.
                self.leftover(&live.team_id, &id, &e);
                self.fail(&live, Some(EventKind::CapsuleDestroy), reason)
                    .await;
            }
        }
    }
}
