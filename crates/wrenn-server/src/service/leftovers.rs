//! Teardowns that failed: a destroy whose retries all failed leaves host resources (a loop
//! device still attached, a busy mount, a network namespace). The capsule is recorded `error`
//! at once, and its id is kept here; housekeeping ([`Capsules::retry_teardowns`]) tries the
//! runtime's destroy again with a growing backoff while the server runs, until it succeeds.
//! Every failure is logged; one that keeps failing ([`REPORT_AFTER`] attempts) is reported
//! once more loudly, as an error log line and a `capsule.destroy` failure event, and all of
//! them are counted in `/metrics`. A server restart forgets the list: the runtime's start-up
//! sweep removes what is left.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wrenn_runtime::RuntimeError;
use wrenn_types::api::EventKind;
use wrenn_types::error::chain;

use super::Capsules;
use crate::events::Action;

/// Wait before the first housekeeping retry; doubled after each failure, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between two retries.
pub const RETRY_MAX: Duration = Duration::from_secs(120);
/// Failed attempts after which a teardown is reported as stuck.
pub const REPORT_AFTER: u32 = 5;

#[derive(Debug)]
struct Leftover {
    team_id: String,
    attempts: u32,
    next: Instant,
    error: String,
}

/// Capsules whose teardown has not finished, with counters for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct Leftovers {
    pending: Mutex<HashMap<String, Leftover>>,
    failures: AtomicU64,
    finished: AtomicU64,
    stuck: AtomicU64,
}

/// What `/metrics` reports about teardowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeardownStats {
    /// Capsules whose teardown is still to be retried.
    pub pending: usize,
    /// Failed teardowns since start-up (a destroy after its in-line retries, each failed
    /// housekeeping retry).
    pub failures: u64,
    /// Teardowns that succeeded on a housekeeping retry.
    pub finished_on_retry: u64,
    /// Teardowns reported as stuck ([`REPORT_AFTER`] failures).
    pub stuck: u64,
}

fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(10);
    (RETRY_FIRST * factor).min(RETRY_MAX)
}

impl Capsules {
    /// Remembers that tearing down capsule `id` (of `team_id`; empty for a pooled capsule)
    /// failed with `error`, for housekeeping to retry.
    pub(super) fn leftover(&self, team_id: &str, id: &str, error: &RuntimeError) {
        self.leftovers.failures.fetch_add(1, Ordering::Relaxed);
        let mut pending = self
            .leftovers
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let e = pending.entry(id.to_owned()).or_insert_with(|| Leftover {
            team_id: team_id.to_owned(),
            attempts: 0,
            next: Instant::now(),
            error: String::new(),
        });
        e.attempts += 1;
        e.next = Instant::now() + backoff(e.attempts);
        e.error = chain(error);
        tracing::warn!(id, attempts = e.attempts, error = %e.error, "teardown left host resources; housekeeping retries it");
    }

    /// Counters of failed and retried teardowns.
    pub fn teardown_stats(&self) -> TeardownStats {
        TeardownStats {
            pending: self
                .leftovers
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            failures: self.leftovers.failures.load(Ordering::Relaxed),
            finished_on_retry: self.leftovers.finished.load(Ordering::Relaxed),
            stuck: self.leftovers.stuck.load(Ordering::Relaxed),
        }
    }

    /// Retries every failed teardown that is due, in the teardown queue; answers how many are
    /// still pending.
    pub async fn retry_teardowns(self: &Arc<Self>) -> usize {
        self.retry_teardowns_at(Instant::now()).await
    }

    /// [`Capsules::retry_teardowns`] as if it were `now` (tests move the clock forward).
    pub async fn retry_teardowns_at(self: &Arc<Self>, now: Instant) -> usize {
        let due: Vec<(String, String)> = self
            .leftovers
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.next <= now)
            .map(|(id, l)| (id.clone(), l.team_id.clone()))
            .collect();
        let attempts = due.into_iter().map(|(id, team_id)| {
            let place = self.stops.enter();
            async move {
                let result = {
                    let _turn = place.ready(&self.stops).await;
                    self.runtime.destroy(&id).await
                };
                (id, team_id, result)
            }
        });
        for (id, team_id, result) in futures_util::future::join_all(attempts).await {
            match result {
                Ok(()) => {
                    let attempts = self
                        .leftovers
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id)
                        .map_or(0, |l| l.attempts);
                    self.leftovers.finished.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(id = %id, attempts, "teardown finished on a retry");
                }
                Err(e) => {
                    self.leftover(&team_id, &id, &e);
                    let attempts = self
                        .leftovers
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&id)
                        .map_or(0, |l| l.attempts);
                    if attempts == REPORT_AFTER {
                        self.report_stuck(&team_id, &id, attempts, &e).await;
                    }
                }
            }
        }
        self.teardown_stats().pending
    }

    async fn report_stuck(&self, team_id: &str, id: &str, attempts: u32, e: &RuntimeError) {
        self.leftovers.stuck.fetch_add(1, Ordering::Relaxed);
        let reason = format!(
            "teardown keeps failing after {attempts} attempts: {}",
            chain(e)
        );
        tracing::error!(id, attempts, error = %chain(e), "teardown keeps failing; host resources are left behind");
        if team_id.is_empty() {
            return;
        }
        if let Ok(Some(row)) = self.store.get_capsule(id).await {
            let meta = BTreeMap::from([("attempts".to_owned(), attempts.to_string())]);
            self.events.capsule(
                team_id,
                &row.capsule,
                Action::failure(EventKind::CapsuleDestroy, reason).with_metadata(Some(meta)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), RETRY_FIRST);
        assert_eq!(backoff(2), RETRY_FIRST * 2);
        assert_eq!(backoff(3), RETRY_FIRST * 4);
        assert_eq!(backoff(40), RETRY_MAX);
    }
}
