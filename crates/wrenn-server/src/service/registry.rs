//! The registry of live capsules and the one way to find a team's capsule: [`Lookup`].
//!
//! A capsule is live (in the registry) from create until it is stopped or failed; after that
//! only the store knows it. Every verb starts from [`Capsules::lookup`], so "missing", "another
//! team's" and "no longer live" are answered the same way everywhere.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use wrenn_agent_client::AgentClient;
use wrenn_types::api::{Capsule, CapsuleStatus};

use super::error::{CapsuleError, CapsuleResult, Needed};
use super::validate::check_id;
use super::{Capsules, READY_WAIT};

/// Metadata key that, set to `"true"` at create, opens the capsule's ports to anyone who knows
/// its proxy URL; without it the proxy wants the owning team's API key.
pub const PUBLIC_TRAFFIC_KEY: &str = "public_traffic";

/// A capsule the server is managing.
#[derive(Debug)]
pub struct LiveCapsule {
    pub(super) team_id: String,
    pub(super) record: Mutex<Capsule>,
    pub(super) status: watch::Sender<CapsuleStatus>,
    /// Serializes runtime work on this capsule; every task re-reads the status after taking it.
    pub(super) op: tokio::sync::Mutex<()>,
    /// Orders record writes: a transition holds it from the status change until the store has
    /// the record and the event is out, so the store and the events see changes in order.
    pub(super) writes: tokio::sync::Mutex<()>,
    agent: AgentClient,
    pub(super) active_dirty: Mutex<bool>,
    ip: Mutex<Option<Ipv4Addr>>,
}

impl LiveCapsule {
    /// The current record.
    pub fn snapshot(&self) -> Capsule {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The team that owns the capsule.
    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    /// Whether its creator let traffic through the port proxy without an API key (metadata
    /// [`PUBLIC_TRAFFIC_KEY`] = `"true"`).
    pub fn public_traffic(&self) -> bool {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .metadata
            .as_ref()
            .and_then(|m| m.get(PUBLIC_TRAFFIC_KEY))
            .is_some_and(|v| v == "true")
    }

    /// The capsule's agent.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The capsule's address on its veth (for the port proxy).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        *self.ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_ip(&self, ip: Option<Ipv4Addr>) {
        *self.ip.lock().unwrap_or_else(|p| p.into_inner()) = ip;
    }

    /// Current status.
    pub fn status(&self) -> CapsuleStatus {
        *self.status.borrow()
    }

    /// Waits, at most `within`, until the capsule is no longer on its way between two states
    /// (pending, starting, pausing, resuming, snapshotting); answers the status then.
    pub async fn settled(&self, within: Duration) -> CapsuleStatus {
        use CapsuleStatus::*;
        let mut rx = self.status.subscribe();
        let _ = tokio::time::timeout(
            within,
            rx.wait_for(|s| !matches!(s, Pending | Starting | Pausing | Resuming | Snapshotting)),
        )
        .await;
        self.status()
    }

    pub(super) fn id(&self) -> String {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }
}

/// Live capsules by id.
#[derive(Debug, Default)]
pub(super) struct Registry {
    by_id: Mutex<HashMap<String, Arc<LiveCapsule>>>,
}

impl Registry {
    pub(super) fn get(&self, id: &str) -> Option<Arc<LiveCapsule>> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every live capsule, at this instant.
    pub(super) fn all(&self) -> Vec<Arc<LiveCapsule>> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn insert(&self, live: Arc<LiveCapsule>) {
        let id = live.id();
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live);
    }

    fn remove(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Where a team's capsule is.
#[derive(Debug)]
pub enum Lookup {
    /// Live: the service is managing it.
    Live(Arc<LiveCapsule>),
    /// Only in the store (stopped or failed), with its last record.
    Stored(Box<Capsule>),
    /// Unknown, or another team's.
    Missing,
}

impl Capsules {
    /// A live capsule by id, whatever its team (the port proxy's URL is its capability).
    pub fn live_get(&self, id: &str) -> Option<Arc<LiveCapsule>> {
        self.live.get(id)
    }

    /// Where capsule `id` of `team_id` is. A malformed id is [`CapsuleError::Invalid`].
    pub async fn lookup(&self, team_id: &str, id: &str) -> CapsuleResult<Lookup> {
        check_id(id)?;
        if let Some(live) = self.live.get(id) {
            return Ok(if live.team_id == team_id {
                Lookup::Live(live)
            } else {
                Lookup::Missing
            });
        }
        Ok(match self.store.get_capsule(id).await? {
            Some(row) if row.team_id == team_id => Lookup::Stored(Box::new(row.capsule)),
            _ => Lookup::Missing,
        })
    }

    /// The live capsule `id`, or why the verb that `needed` it cannot have it.
    pub(super) async fn live_for(
        &self,
        team_id: &str,
        id: &str,
        needed: Needed,
    ) -> CapsuleResult<Arc<LiveCapsule>> {
        match self.lookup(team_id, id).await? {
            Lookup::Live(live) => Ok(live),
            Lookup::Stored(c) => Err(CapsuleError::InvalidState {
                id: id.to_owned(),
                status: c.status,
                needed,
            }),
            Lookup::Missing => Err(CapsuleError::NotFound(id.to_owned())),
        }
    }

    /// The capsule `id` of `team_id`; another team's capsule is a missing one.
    pub async fn get(&self, team_id: &str, id: &str) -> CapsuleResult<Capsule> {
        match self.lookup(team_id, id).await? {
            Lookup::Live(live) => Ok(live.snapshot()),
            Lookup::Stored(c) => Ok(*c),
            Lookup::Missing => Err(CapsuleError::NotFound(id.to_owned())),
        }
    }

    /// The team's capsules except stopped and failed ones, newest first.
    pub fn list(&self, team_id: &str) -> Vec<Capsule> {
        let mut out: Vec<Capsule> = self
            .live
            .all()
            .iter()
            .filter(|l| l.team_id == team_id)
            .map(|l| l.snapshot())
            .filter(|c| !c.status.is_terminal())
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        out
    }

    /// The running capsule `id`, for work inside it. Waits (bounded) while it is starting or
    /// resuming; records activity.
    pub async fn running(&self, team_id: &str, id: &str) -> CapsuleResult<Arc<LiveCapsule>> {
        let live = self.live_for(team_id, id, Needed::Running).await?;
        let mut rx = live.status.subscribe();
        let waited = tokio::time::timeout(
            READY_WAIT,
            rx.wait_for(|s| !matches!(s, CapsuleStatus::Starting | CapsuleStatus::Resuming)),
        )
        .await;
        let status = match waited {
            Ok(Ok(s)) => *s,
            _ => live.status(),
        };
        if status != CapsuleStatus::Running {
            return Err(CapsuleError::InvalidState {
                id: id.to_owned(),
                status,
                needed: Needed::Running,
            });
        }
        self.touch(&live);
        Ok(live)
    }

    /// How many live capsules are in each status (for `/metrics`).
    pub fn status_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut out = std::collections::BTreeMap::new();
        for l in self.live.all() {
            *out.entry(l.status().as_str()).or_insert(0) += 1;
        }
        out
    }

    pub(super) fn register(&self, team_id: String, capsule: Capsule) -> Arc<LiveCapsule> {
        let live = Arc::new(LiveCapsule {
            team_id,
            status: watch::channel(capsule.status).0,
            agent: AgentClient::new(self.runtime.agent_endpoint(&capsule.id)),
            record: Mutex::new(capsule),
            op: tokio::sync::Mutex::new(()),
            writes: tokio::sync::Mutex::new(()),
            active_dirty: Mutex::new(false),
            ip: Mutex::new(None),
        });
        self.live.insert(live.clone());
        live
    }

    pub(super) fn unregister(&self, id: &str) {
        self.live.remove(id);
        self.metrics.forget(id);
    }
}
