//! The capsule service: validated requests in, state transitions recorded in the store before
//! they are acted on, runtime calls in background tasks, events out. It knows no HTTP: verbs
//! answer [`CapsuleError`]s and each API front end maps them its own way.
//!
//! Every verb follows one order: look the capsule up → check the transition → record it → act
//! (runtime) → record the outcome → publish the event. One async lock per capsule serializes
//! runtime work, and every task re-reads the status after taking it (a destroy may have
//! overtaken a pause).
//!
//! | file | what |
//! |---|---|
//! | `registry.rs` | live capsules, [`Lookup`], `get`, `list`, `running` |
//! | `validate.rs` | a create request into a [`ValidCreate`] |
//! | `admission.rs` | [`Capacity`]: whether the host takes one more |
//! | `lanes.rs` | bounded starts and teardowns, in arrival order |
//! | `leftovers.rs` | failed teardowns, retried by housekeeping until the host is clean |
//! | `create.rs`, `destroy.rs`, `freezer.rs` (pause, resume), `snapshot.rs` | one verb each |
//! | `housekeeping.rs` | the inactivity reaper, dead capsules, sampling, activity |
//! | `e2b.rs` | E2B sandboxes: access token, absolute deadline (`endAt`), environment |
//! | `pool.rs` | warm pools: capsules made ahead of demand, handed out by create |
//! | `recover.rs` | start-up reconciliation with the runtime |

mod admission;
mod create;
mod destroy;
mod e2b;
pub mod error;
mod freezer;
mod housekeeping;
pub mod lanes;
mod leftovers;
mod pool;
mod recover;
mod registry;
mod snapshot;
mod validate;

#[cfg(any(test, feature = "test-support"))]
pub mod fake;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use wrenn_runtime::Runtime;
use wrenn_types::api::{Capsule, CapsuleStatus, EventKind};

pub use self::admission::{Capacity, TeamLimits};
pub use self::e2b::E2bSandboxes;
pub use self::error::{CapsuleError, CapsuleResult, Needed};
pub use self::leftovers::TeardownStats;
pub use self::pool::{WarmTargets, DEFAULT_CODE_RUNNER_WARM};
pub use self::registry::{LiveCapsule, Lookup, PUBLIC_TRAFFIC_KEY};
pub use self::snapshot::ResolvedTemplate;
pub use self::validate::{
    check_id, ValidCreate, DEFAULT_MEMORY_MB, DEFAULT_TEMPLATE, DEFAULT_VCPUS, MAX_MEMORY_MB,
    MAX_VCPUS, RESERVED_METADATA,
};
use crate::events::{Action, EventBus};
use crate::metrics::Metrics;
use crate::store::{CapsuleRow, Store};

/// Processes per capsule.
pub const PIDS_LIMIT: u32 = 1024;
/// How long a request waits for a `starting`/`resuming` capsule.
pub const READY_WAIT: Duration = Duration::from_secs(20);

/// Whether `from → to` is a transition of the lifecycle (ARCHITECTURE.md). Exhaustive on
/// purpose: a new status must be decided here.
pub fn can_transition(from: CapsuleStatus, to: CapsuleStatus) -> bool {
    use CapsuleStatus::*;
    match from {
        Pending => matches!(to, Starting | Stopping | Error),
        Starting => matches!(to, Running | Stopping | Error),
        Running => matches!(to, Pausing | Snapshotting | Stopping | Missing | Error),
        Pausing => matches!(to, Paused | Running | Stopping | Error),
        Paused => matches!(to, Resuming | Snapshotting | Stopping | Error),
        Snapshotting => matches!(to, Running | Paused | Stopping | Error),
        Resuming => matches!(to, Running | Paused | Stopping | Error),
        Stopping => matches!(to, Stopped | Error),
        Hibernated => matches!(to, Resuming | Stopping),
        Missing => matches!(to, Running | Stopping | Error),
        Stopped => false,
        Error => false,
    }
}

/// The capsule service.
pub struct Capsules {
    store: Store,
    runtime: Arc<dyn Runtime>,
    events: EventBus,
    live: registry::Registry,
    metrics: Metrics,
    capacity: Capacity,
    pool: pool::Pool,
    /// Runtime creates, at most `--max-starting` at once.
    starts: lanes::Lane,
    /// Runtime teardowns, bounded the same way.
    stops: lanes::Lane,
    leftovers: leftovers::Leftovers,
    /// Capsules admitted and not yet registered.
    admitted: admission::Pending,
}

impl std::fmt::Debug for Capsules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capsules")
            .field("runtime", &self.runtime.kind())
            .finish()
    }
}

impl Capsules {
    /// A service over `store` and `runtime`, admitting capsules within `capacity`, without
    /// warm pools.
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        events: EventBus,
        capacity: Capacity,
    ) -> Arc<Self> {
        Self::with_pools(store, runtime, events, capacity, WarmTargets::default())
    }

    /// [`Capsules::new`] with warm pools of `warm` (filled by [`Capsules::fill_pools`]).
    pub fn with_pools(
        store: Store,
        runtime: Arc<dyn Runtime>,
        events: EventBus,
        capacity: Capacity,
        warm: WarmTargets,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool: pool::Pool::new(warm),
            store,
            runtime,
            events,
            live: registry::Registry::default(),
            metrics: Metrics::default(),
            capacity,
            starts: lanes::Lane::new(lanes::default_width()),
            stops: lanes::Lane::new(lanes::default_width()),
            leftovers: leftovers::Leftovers::default(),
            admitted: admission::Pending::default(),
        })
    }

    /// Runs at most `n` capsule starts, and `n` teardowns, at once (at least 1); the rest wait
    /// in arrival order.
    pub fn set_max_starting(&self, n: usize) {
        self.starts.set_width(n);
        self.stops.set_width(n);
    }

    /// The queue of runtime creates.
    pub fn starts(&self) -> &lanes::Lane {
        &self.starts
    }

    /// The queue of runtime teardowns.
    pub fn stops(&self) -> &lanes::Lane {
        &self.stops
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The metrics store.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What this host may hand out.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Moves `live` to `to` when its status is one of `from` (all statuses when empty), applies
    /// `edit`, persists, and publishes `capsule.state.changed`. Returns the new record, or the
    /// current status when the transition is not allowed. Transitions of one capsule are
    /// serialized, so the store and the event stream see them in the order they were made.
    async fn transition(
        &self,
        live: &LiveCapsule,
        from: &[CapsuleStatus],
        to: CapsuleStatus,
        edit: impl FnOnce(&mut Capsule),
    ) -> Result<Capsule, CapsuleStatus> {
        let _writes = live.writes.lock().await;
        let (prev, record) = {
            let mut rec = live.record.lock().unwrap_or_else(|p| p.into_inner());
            let prev = rec.status;
            if (!from.is_empty() && !from.contains(&prev)) || !can_transition(prev, to) {
                return Err(prev);
            }
            rec.status = to;
            rec.last_updated = Utc::now();
            edit(&mut rec);
            (prev, rec.clone())
        };
        live.status.send_replace(to);
        self.persist(&live.team_id, &record).await;
        self.events.capsule(
            &live.team_id,
            &record,
            Action::state_changed(prev.as_str(), to.as_str()),
        );
        Ok(record)
    }

    async fn persist(&self, team_id: &str, capsule: &Capsule) {
        let row = CapsuleRow {
            team_id: team_id.to_owned(),
            capsule: capsule.clone(),
        };
        if let Err(e) = self.store.put_capsule(row).await {
            tracing::error!(id = %capsule.id, error = %wrenn_types::error::chain(&e), "persisting capsule failed");
        }
    }

    /// Moves `live` to `error` with `reason`; publishes `kind` (an action event) as failed.
    async fn fail(&self, live: &LiveCapsule, kind: Option<EventKind>, reason: String) {
        // The team reads the reason in the capsule's `error`: no host path in it.
        let reason = crate::error::scrub_host_paths(&reason);
        let r = reason.clone();
        if let Ok(rec) = self
            .transition(live, &[], CapsuleStatus::Error, |c| c.error = Some(r))
            .await
        {
            if let Some(kind) = kind {
                self.events
                    .capsule(&live.team_id, &rec, Action::failure(kind, reason));
            }
            self.unregister(&rec.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        use CapsuleStatus::*;
        for to in CapsuleStatus::ALL {
            assert!(!can_transition(Stopped, to));
            assert!(!can_transition(Error, to));
        }
        assert!(can_transition(Running, Pausing));
        assert!(!can_transition(Running, Resuming));
        assert!(!can_transition(Paused, Running));
    }
}
