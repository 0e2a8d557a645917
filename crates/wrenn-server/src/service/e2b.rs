//! E2B sandboxes: the E2B front end's facts about capsules it created ([`E2bRow`]), in memory
//! and written through to the store, and their absolute deadline.
//!
//! E2B's timeout differs from the Wrenn API's inactivity timeout: it fires at `endAt` whatever
//! the activity, and kills the sandbox (or pauses it when created with `autoPause`). E2B
//! sandboxes are created with no inactivity timeout; [`E2bSandboxes::reap`] enforces `endAt`
//! for running ones (a paused sandbox's clock stands still: connect sets a new `endAt`). A
//! sandbox resumed past its deadline by other means (the Wrenn API, the dashboard) gets
//! [`RESUMED_TIMEOUT`] from when the reaper first sees it running, not an instant re-pause.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use wrenn_types::api::CapsuleStatus;
use wrenn_types::error::chain;

use super::Capsules;
use crate::events::system_actor;
use crate::store::{E2bRow, Store, StoreError};

/// The timeout of a sandbox resumed past its deadline other than through E2B's connect
/// (which sets its own): E2B's default timeout.
pub const RESUMED_TIMEOUT: chrono::Duration = chrono::Duration::seconds(300);

/// The E2B sandboxes, by capsule id.
#[derive(Debug)]
pub struct E2bSandboxes {
    store: Store,
    by_id: Mutex<HashMap<String, E2bRow>>,
    /// Sandboxes seen not running past their deadline (paused by the reaper or otherwise).
    stood_still: Mutex<HashSet<String>>,
}

impl E2bSandboxes {
    /// An empty set over `store` (filled by [`E2bSandboxes::load`]).
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            by_id: Mutex::default(),
            stood_still: Mutex::default(),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, E2bRow>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn still(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.stood_still.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the records of capsules that are still live (at start-up).
    pub async fn load(&self) -> Result<usize, StoreError> {
        let rows = self.store.live_e2b().await?;
        let n = rows.len();
        let mut map = self.map();
        for row in rows {
            map.insert(row.capsule_id.clone(), row);
        }
        Ok(n)
    }

    /// The record of capsule `capsule_id`, if the E2B front end created it.
    pub fn get(&self, capsule_id: &str) -> Option<E2bRow> {
        self.map().get(capsule_id).cloned()
    }

    /// Records a new sandbox.
    pub async fn insert(&self, row: E2bRow) -> Result<(), StoreError> {
        self.map().insert(row.capsule_id.clone(), row.clone());
        self.store.put_e2b(row).await
    }

    /// Moves the deadline of `capsule_id` to `edit(old)`; the new record, `None` when unknown.
    pub async fn set_end(
        &self,
        capsule_id: &str,
        edit: impl FnOnce(DateTime<Utc>) -> DateTime<Utc>,
    ) -> Result<Option<E2bRow>, StoreError> {
        let row = {
            let mut map = self.map();
            let Some(row) = map.get_mut(capsule_id) else {
                return Ok(None);
            };
            row.end_at = edit(row.end_at);
            row.clone()
        };
        self.store.put_e2b(row.clone()).await?;
        Ok(Some(row))
    }

    /// Kills (or, with `autoPause`, pauses) running sandboxes past their deadline, and forgets
    /// the records of capsules that are gone.
    pub async fn reap(&self, capsules: &Arc<Capsules>, now: DateTime<Utc>) {
        let rows: Vec<E2bRow> = self.map().values().cloned().collect();
        for row in rows {
            let Some(live) = capsules.live_get(&row.capsule_id) else {
                self.map().remove(&row.capsule_id);
                self.still().remove(&row.capsule_id);
                continue;
            };
            if row.end_at > now {
                self.still().remove(&row.capsule_id);
                continue;
            }
            if live.status() != CapsuleStatus::Running {
                self.still().insert(row.capsule_id.clone());
                continue;
            }
            if self.still().remove(&row.capsule_id) {
                let end = now + RESUMED_TIMEOUT;
                if let Err(e) = self.set_end(&row.capsule_id, |_| end).await {
                    tracing::warn!(id = %row.capsule_id, error = %chain(&e), "recording a resumed e2b sandbox's deadline failed");
                }
                tracing::info!(id = %row.capsule_id, end = %end, "e2b sandbox resumed past its deadline: a fresh timeout");
                continue;
            }
            let team = live.team_id().to_owned();
            let actor = system_actor();
            let result = if row.auto_pause {
                capsules
                    .pause(&team, &row.capsule_id, &actor)
                    .await
                    .map(|_| ())
            } else {
                capsules.destroy(&team, &row.capsule_id, &actor).await
            };
            if row.auto_pause && result.is_ok() {
                self.still().insert(row.capsule_id.clone());
            }
            match result {
                Ok(()) => {
                    tracing::info!(id = %row.capsule_id, pause = row.auto_pause, "e2b sandbox timed out")
                }
                Err(e) => {
                    tracing::warn!(id = %row.capsule_id, error = %chain(&e), "ending a timed-out e2b sandbox failed")
                }
            }
        }
    }
}
