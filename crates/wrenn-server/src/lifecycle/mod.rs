//! The capsule service: validated requests in, state transitions recorded in the store before
//! they are acted on, runtime calls in background tasks, events out.
//!
//! Every verb follows one order: check the transition → record it → act (runtime) → record the
//! outcome → publish the event. One async lock per capsule serializes runtime work, and every
//! task re-reads the status after taking it (a destroy may have overtaken a pause).

mod freezer;
mod housekeeping;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use wrenn_agent_client::AgentClient;
use wrenn_runtime::{CapsuleSpec, NetworkMode, Runtime, Source};
use wrenn_types::api::{Actor, Capsule, CapsuleStatus, CreateCapsuleRequest, EventKind};

use crate::error::{ApiError, ApiResult};
use crate::events::{system_actor, Action, EventBus};
use crate::ids;
use crate::metrics::Metrics;
use crate::store::{CapsuleRow, Store};

/// Default template (contract §14; `minimal` is ours).
pub const DEFAULT_TEMPLATE: &str = "minimal";
/// Default CPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Upper bound on CPUs per capsule.
pub const MAX_VCPUS: i64 = 64;
/// Upper bound on memory per capsule (256 GiB).
pub const MAX_MEMORY_MB: i64 = 262_144;
/// Processes per capsule.
pub const PIDS_LIMIT: u32 = 1024;
/// How long a request waits for a `starting`/`resuming` capsule.
pub const READY_WAIT: Duration = Duration::from_secs(20);
/// Waits between destroy attempts after a failed one.
const DESTROY_RETRIES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];
/// Metadata keys the server sets itself.
pub const RESERVED_METADATA: [&str; 4] = [
    "kernel_version",
    "vmm_version",
    "agent_version",
    "envd_version",
];

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

/// A capsule the server is managing.
#[derive(Debug)]
pub struct LiveCapsule {
    team_id: String,
    record: Mutex<Capsule>,
    status: watch::Sender<CapsuleStatus>,
    op: tokio::sync::Mutex<()>,
    agent: AgentClient,
    active_dirty: Mutex<bool>,
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

    /// The capsule's agent.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The capsule's address on its veth (for the port proxy).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        *self.ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_ip(&self, ip: Option<Ipv4Addr>) {
        *self.ip.lock().unwrap_or_else(|p| p.into_inner()) = ip;
    }

    /// Current status.
    pub fn status(&self) -> CapsuleStatus {
        *self.status.borrow()
    }
}

/// The capsule service.
pub struct Capsules {
    store: Store,
    runtime: Arc<dyn Runtime>,
    events: EventBus,
    live: Mutex<HashMap<String, Arc<LiveCapsule>>>,
    kernel_version: String,
    metrics: Metrics,
    capacity: Capacity,
}

/// How much this host may hand out.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Host memory, MiB.
    pub host_memory_mb: u64,
    /// Memory limits of live capsules may add up to `host_memory_mb` × this.
    pub memory_overcommit: f64,
    /// Live capsules at most.
    pub max_capsules: usize,
    /// Size of every capsule's disk, MiB (reported as `disk_size_mb`); 0 = no limit.
    pub disk_mb: u32,
}

impl Capacity {
    /// This host's memory with the given policy; capsules get no disk limit (set
    /// [`Capacity::disk_mb`] for one).
    pub fn of_host(memory_overcommit: f64, max_capsules: usize) -> Self {
        let host_memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        Self {
            host_memory_mb,
            memory_overcommit,
            max_capsules,
            disk_mb: 0,
        }
    }

    /// Why a capsule with `memory_mb` cannot be admitted next to `live` capsules reserving
    /// `reserved_mb`, if it cannot.
    pub fn refuse(&self, live: usize, reserved_mb: u64, memory_mb: u32) -> Option<String> {
        if live >= self.max_capsules {
            return Some(format!(
                "this host runs its maximum of {} capsules",
                self.max_capsules
            ));
        }
        let budget = (self.host_memory_mb as f64 * self.memory_overcommit) as u64;
        if self.host_memory_mb > 0 && reserved_mb + u64::from(memory_mb) > budget {
            return Some(format!(
                "not enough memory on this host: {reserved_mb} MiB of {budget} MiB reserved, \
                 {memory_mb} MiB asked"
            ));
        }
        None
    }
}

impl std::fmt::Debug for Capsules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capsules")
            .field("runtime", &self.runtime.kind())
            .finish()
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Capsules {
    /// A service over `store` and `runtime`, admitting capsules within `capacity`.
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        events: EventBus,
        capacity: Capacity,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            runtime,
            events,
            live: Mutex::new(HashMap::new()),
            kernel_version: kernel_version(),
            metrics: Metrics::default(),
            capacity,
        })
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// A live capsule by id, whatever its team (the port proxy's URL is its capability).
    pub fn live_get(&self, id: &str) -> Option<Arc<LiveCapsule>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn register(&self, team_id: String, capsule: Capsule) -> Arc<LiveCapsule> {
        let live = Arc::new(LiveCapsule {
            team_id,
            status: watch::channel(capsule.status).0,
            agent: AgentClient::new(self.runtime.agent_endpoint(&capsule.id)),
            record: Mutex::new(capsule.clone()),
            op: tokio::sync::Mutex::new(()),
            active_dirty: Mutex::new(false),
            ip: Mutex::new(None),
        });
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(capsule.id, live.clone());
        live
    }

    fn unregister(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.metrics.forget(id);
    }

    /// The metrics store.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Moves `live` to `to` when its status is one of `from` (all statuses when empty), applies
    /// `edit`, persists, and publishes `capsule.state.changed`. Returns the new record, or the
    /// current status when the transition is not allowed.
    async fn transition(
        &self,
        live: &LiveCapsule,
        from: &[CapsuleStatus],
        to: CapsuleStatus,
        edit: impl FnOnce(&mut Capsule),
    ) -> Result<Capsule, CapsuleStatus> {
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
            tracing::error!(id = %capsule.id, error = %e, "persisting capsule failed");
        }
    }

    /// Validates `req` and starts creating a capsule; answers with it in `starting`.
    pub async fn create(
        self: &Arc<Self>,
        team_id: &str,
        actor: &Actor,
        req: CreateCapsuleRequest,
    ) -> ApiResult<Capsule> {
        let template = req.template.unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
        if !ids::is_safe_name(&template) {
            return Err(ApiError::InvalidRequest(format!(
                "invalid template name {template:?}"
            )));
        }
        let vcpus = match req.vcpus {
            None => DEFAULT_VCPUS,
            Some(v) if v <= 0 => DEFAULT_VCPUS,
            Some(v) if v > MAX_VCPUS => {
                return Err(ApiError::InvalidRequest(format!(
                    "vcpus must be at most {MAX_VCPUS}"
                )))
            }
            Some(v) => v as u32,
        };
        let memory_mb = match req.memory_mb {
            None => DEFAULT_MEMORY_MB,
            Some(v) if v <= 0 => DEFAULT_MEMORY_MB,
            Some(v) if v < 32 => {
                return Err(ApiError::InvalidRequest(
                    "memory_mb must be at least 32".into(),
                ))
            }
            Some(v) if v > MAX_MEMORY_MB => {
                return Err(ApiError::InvalidRequest(format!(
                    "memory_mb must be at most {MAX_MEMORY_MB}"
                )))
            }
            Some(v) => v as u32,
        };
        let timeout_sec = match req.timeout_sec.unwrap_or(0) {
            t if t <= 0 => 0,
            t if t < 60 => 60,
            t => u32::try_from(t).unwrap_or(u32::MAX),
        };
        let metadata = validate_metadata(req.metadata)?;
        let resolved = self.resolve_template(team_id, &template).await?;
        let (vcpus, memory_mb) = resolved.sizes.unwrap_or((vcpus, memory_mb));
        let (live_count, reserved_mb) = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let reserved = live
                .values()
                .map(|l| l.snapshot())
                .filter(|c| !c.status.is_terminal())
                .map(|c| u64::from(c.memory_mb))
                .sum::<u64>();
            (live.len(), reserved)
        };
        if let Some(why) = self.capacity.refuse(live_count, reserved_mb, memory_mb) {
            return Err(ApiError::HostUnavailable(why));
        }

        let now = Utc::now();
        let capsule = Capsule {
            id: ids::new_capsule_id(),
            status: CapsuleStatus::Starting,
            template: template.clone(),
            vcpus,
            memory_mb,
            timeout_sec,
            disk_size_mb: self.capacity.disk_mb,
            disk_used_mb: None,
            created_at: now,
            started_at: None,
            last_active_at: None,
            last_updated: now,
            metadata,
            error: None,
        };
        self.persist(team_id, &capsule).await;
        let live = self.register(team_id.to_owned(), capsule.clone());
        self.events.capsule(
            team_id,
            &capsule,
            Action::success(EventKind::CapsuleCreate, actor),
        );
        let spec = CapsuleSpec {
            id: capsule.id.clone(),
            source: if resolved.sizes.is_some() {
                Source::Snapshot(resolved.runtime_name)
            } else {
                Source::Template(resolved.runtime_name)
            },
            vcpus,
            memory_mb,
            pids_limit: PIDS_LIMIT,
            network: NetworkMode::Egress,
            disk_mb: self.capacity.disk_mb,
        };
        let this = self.clone();
        tokio::spawn(async move { this.run_create(live, spec).await });
        Ok(capsule)
    }

    async fn run_create(self: Arc<Self>, live: Arc<LiveCapsule>, spec: CapsuleSpec) {
        let _op = live.op.lock().await;
        let result = self.runtime.create(&spec).await;
        if live.status() != CapsuleStatus::Starting {
            // Destroyed meanwhile; the destroy task (waiting on the lock) cleans up.
            return;
        }
        match result {
            Ok(handle) => {
                live.set_ip(handle.ip);
                let agent_version = live.agent.health().await.map(|h| h.version).ok();
                let kernel = self.kernel_version.clone();
                let kind = self.runtime.kind();
                let rec = self
                    .transition(
                        &live,
                        &[CapsuleStatus::Starting],
                        CapsuleStatus::Running,
                        |c| {
                            let now = Utc::now();
                            c.started_at = Some(now);
                            c.last_active_at = Some(now);
                            let m = c.metadata.get_or_insert_with(BTreeMap::new);
                            m.insert("kernel_version".into(), kernel);
                            m.insert("vmm_version".into(), kind.into());
                            if let Some(v) = agent_version {
                                m.insert("agent_version".into(), v);
                            }
                        },
                    )
                    .await;
                if let Ok(rec) = rec {
                    self.events.capsule(
                        &live.team_id,
                        &rec,
                        Action::success(EventKind::CapsuleCreate, &system_actor()),
                    );
                }
            }
            Err(e) => {
                let reason = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(id = %spec.id, error = %reason, "capsule creation failed");
                if let Err(e) = self.runtime.destroy(&spec.id).await {
                    tracing::warn!(id = %spec.id, error = %e, "cleanup after failed create");
                }
                self.fail(&live, Some(EventKind::CapsuleCreate), reason)
                    .await;
            }
        }
    }

    /// Moves `live` to `error` with `reason`; publishes `kind` (an action event) as failed.
    async fn fail(&self, live: &LiveCapsule, kind: Option<EventKind>, reason: String) {
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

    /// The capsule `id` of `team_id`; another team's capsule is a missing one.
    pub async fn get(&self, team_id: &str, id: &str) -> ApiResult<Capsule> {
        check_id(id)?;
        if let Some(live) = self.live_get(id) {
            if live.team_id == team_id {
                return Ok(live.snapshot());
            }
            return Err(not_found(id));
        }
        match self
            .store
            .get_capsule(id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(row) if row.team_id == team_id => Ok(row.capsule),
            _ => Err(not_found(id)),
        }
    }

    /// The team's capsules except stopped and failed ones, newest first.
    pub fn list(&self, team_id: &str) -> Vec<Capsule> {
        let mut out: Vec<Capsule> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| l.team_id == team_id)
            .map(|l| l.snapshot())
            .filter(|c| !c.status.is_terminal())
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        out
    }

    fn live_for(&self, team_id: &str, id: &str) -> ApiResult<Arc<LiveCapsule>> {
        check_id(id)?;
        match self.live_get(id) {
            Some(l) if l.team_id == team_id => Ok(l),
            _ => Err(not_found(id)),
        }
    }

    /// Pause/resume of a capsule that is no longer live: 409 when it exists, else 404.
    async fn not_live(&self, team_id: &str, id: &str, missing: String) -> ApiResult<Capsule> {
        match self
            .store
            .get_capsule(id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(row) if row.team_id == team_id => Err(not_running(id, row.capsule.status)),
            _ => Err(ApiError::NotFound(missing)),
        }
    }

    /// Starts destroying; a no-op for stopped or failed capsules.
    pub async fn destroy(
        self: &Arc<Self>,
        team_id: &str,
        id: &str,
        actor: &Actor,
    ) -> ApiResult<()> {
        let live = match self.live_for(team_id, id) {
            Ok(l) => l,
            Err(ApiError::NotFound(m)) => {
                return match self
                    .store
                    .get_capsule(id)
                    .await
                    .map_err(ApiError::internal)?
                {
                    Some(row) if row.team_id == team_id => Ok(()),
                    _ => Err(ApiError::NotFound(m)),
                }
            }
            Err(e) => return Err(e),
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
        let this = self.clone();
        tokio::spawn(async move { this.run_destroy(live).await });
        Ok(())
    }

    async fn run_destroy(self: Arc<Self>, live: Arc<LiveCapsule>) {
        let _op = live.op.lock().await;
        let id = live.snapshot().id;
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
                let reason = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(id = %id, error = %reason, "destroy failed");
                self.fail(&live, Some(EventKind::CapsuleDestroy), reason)
                    .await;
            }
        }
    }

    /// The running capsule `id`, for work inside it. Waits (bounded) while it is starting or
    /// resuming; records activity.
    pub async fn running(&self, team_id: &str, id: &str) -> ApiResult<Arc<LiveCapsule>> {
        let live = match self.live_for(team_id, id) {
            Ok(l) => l,
            Err(ApiError::NotFound(m)) => {
                return Err(self
                    .not_live(team_id, id, m)
                    .await
                    .err()
                    .unwrap_or_else(|| not_found(id)))
            }
            Err(e) => return Err(e),
        };
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
            return Err(not_running(id, status));
        }
        self.touch(&live);
        Ok(live)
    }
}

/// 400 for a malformed id.
pub fn check_id(id: &str) -> ApiResult<()> {
    if ids::is_capsule_id(id) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "invalid capsule id {id:?}"
        )))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("capsule {id} not found"))
}

fn not_running(id: &str, status: CapsuleStatus) -> ApiError {
    ApiError::InvalidState(format!("capsule {id} is not running (status: {status})"))
}

fn validate_metadata(
    m: Option<BTreeMap<String, String>>,
) -> ApiResult<Option<BTreeMap<String, String>>> {
    let Some(m) = m else { return Ok(None) };
    if m.len() > 20 {
        return Err(ApiError::InvalidRequest(
            "metadata has more than 20 keys".into(),
        ));
    }
    for (k, v) in &m {
        if !ids::is_safe_name(k) {
            return Err(ApiError::InvalidRequest(format!(
                "invalid metadata key {k:?}"
            )));
        }
        if RESERVED_METADATA.contains(&k.as_str()) {
            return Err(ApiError::InvalidRequest(format!(
                "metadata key {k:?} is reserved"
            )));
        }
        if v.chars().count() > 64 {
            return Err(ApiError::InvalidRequest(format!(
                "metadata value of {k:?} is longer than 64 characters"
            )));
        }
    }
    Ok(if m.is_empty() { None } else { Some(m) })
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

    #[test]
    fn admission_within_memory_budget_and_count() {
        let cap = Capacity {
            host_memory_mb: 1000,
            memory_overcommit: 2.0,
            max_capsules: 3,
            disk_mb: 0,
        };
        assert!(cap.refuse(0, 0, 512).is_none());
        assert!(cap.refuse(2, 1488, 512).is_none(), "exactly at the budget");
        assert!(cap.refuse(2, 1489, 512).is_some());
        assert!(cap.refuse(3, 0, 32).is_some(), "count limit");
        let unknown = Capacity {
            host_memory_mb: 0,
            ..cap
        };
        assert!(
            unknown.refuse(0, 1 << 40, 512).is_none(),
            "no meminfo: no memory check"
        );
    }

    #[test]
    fn metadata_rules() {
        let ok = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert!(validate_metadata(Some(ok)).is_ok());
        let reserved = BTreeMap::from([("agent_version".to_owned(), "x".to_owned())]);
        assert!(validate_metadata(Some(reserved)).is_err());
        let long = BTreeMap::from([("k".to_owned(), "x".repeat(65))]);
        assert!(validate_metadata(Some(long)).is_err());
        let bad_key = BTreeMap::from([("a/b".to_owned(), "x".to_owned())]);
        assert!(validate_metadata(Some(bad_key)).is_err());
        let many: BTreeMap<_, _> = (0..21).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(validate_metadata(Some(many)).is_err());
    }
}
