//! Create: validate → resolve the template → admit and reserve in one step (a warm capsule of
//! the pool, or room on the host) → record `starting` → answer; in a task, after its turn in
//! the start queue ([`super::lanes`]) and under the capsule's lock: the runtime creates it →
//! `running` (or `error`, cleaned up). A warm capsule is recorded `starting` then `running`
//! before the answer, with the same events.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;
use wrenn_runtime::{Backend, CapsuleSpec, NetworkMode, Source};
use wrenn_types::agent::Health;
use wrenn_types::api::{Actor, Capsule, CapsuleStatus, CreateCapsuleRequest, EventKind};
use wrenn_types::error::chain;

use super::error::{CapsuleError, CapsuleResult};
use super::lanes::Place;
use super::{Capsules, LiveCapsule, ValidCreate, PIDS_LIMIT};
use crate::events::{system_actor, Action};

impl Capsules {
    /// Validates `req` and starts creating a capsule; answers with it in `starting`.
    ///
    /// Runs to its end in a task of its own even when the caller goes away (a client that
    /// disconnects mid-create drops the handler): an admission or a warm capsule taken half-way
    /// is never stranded.
    pub async fn create(
        self: &Arc<Self>,
        team_id: &str,
        actor: &Actor,
        req: CreateCapsuleRequest,
    ) -> CapsuleResult<Capsule> {
        let this = Arc::clone(self);
        let (team_id, actor) = (team_id.to_owned(), actor.clone());
        let t0 = std::time::Instant::now();
        match tokio::spawn(async move { this.create_now(&team_id, &actor, req).await }).await {
            Ok(r) => {
                tracing::debug!(
                    accept_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "capsule create answered"
                );
                r
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(CapsuleError::NoCapacity("the server is stopping".into())),
        }
    }

    async fn create_now(
        self: &Arc<Self>,
        team_id: &str,
        actor: &Actor,
        req: CreateCapsuleRequest,
    ) -> CapsuleResult<Capsule> {
        let req = ValidCreate::try_from(req)?;
        let resolved = self.resolve_template(team_id, &req.template).await?;
        let backend = self.pick_backend(&req, &resolved.runtime_name)?;
        // A snapshot's sizes win over the request's (contract §5.1); the record holds what the
        // backend gives.
        let (vcpus, memory_mb) = match resolved.sizes {
            Some(sizes) => sizes,
            None => self.runtime.guest_size(backend, req.vcpus, req.memory_mb),
        };
        // Warm capsules run on the default backend.
        let warm_template = match (resolved.sizes, backend) {
            (None, None) => Some(resolved.runtime_name.as_str()),
            _ => None,
        };
        let (reservation, warm) = self.reserve(team_id, vcpus, memory_mb, warm_template)?;
        let now = Utc::now();
        let capsule = Capsule {
            id: reservation.id.clone(),
            status: CapsuleStatus::Starting,
            template: req.template,
            vcpus,
            memory_mb,
            timeout_sec: req.timeout_sec,
            disk_size_mb: self.capacity.disk_mb,
            disk_used_mb: None,
            created_at: now,
            started_at: None,
            last_active_at: None,
            last_updated: now,
            metadata: req.metadata,
            error: None,
        };
        self.persist(team_id, &capsule).await;
        if warm.is_none() {
            // Before the registry asks for its agent endpoint.
            self.runtime.assign_backend(&capsule.id, backend);
        }
        let live = self.register_admitted(reservation, team_id.to_owned(), capsule.clone());
        self.events.capsule(
            team_id,
            &capsule,
            Action::success(EventKind::CapsuleCreate, actor),
        );
        if let Some(w) = warm {
            live.set_ip(w.ip);
            tracing::info!(id = %capsule.id, template = %capsule.template, "capsule handed out from the warm pool");
            let _op = live.op.lock().await;
            return Ok(self.created(&live, true, None).await.unwrap_or(capsule));
        }
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
            backend,
        };
        let this = self.clone();
        self.pool.cold_creates.fetch_add(1, Ordering::Relaxed);
        // The place in the start queue is taken before answering: starts follow arrival order.
        let place = self.starts.enter();
        tokio::spawn(async move {
            this.run_create(live, spec, place).await;
            this.pool.cold_creates.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(capsule)
    }

    /// The backend a create runs on: the one it asks for or its template requires (`None`:
    /// the default one). Asking for a backend this server does not serve, or for another one
    /// than the template requires, is a 400.
    fn pick_backend(&self, req: &ValidCreate, template: &str) -> CapsuleResult<Option<Backend>> {
        let required = self.runtime.template_backend(template);
        let wanted = match (req.backend, required) {
            (Some(asked), Some(needed)) if asked != needed => {
                return Err(CapsuleError::Invalid(format!(
                    "template {} requires runtime {needed}, not {asked}",
                    req.template
                )))
            }
            (asked, needed) => asked.or(needed),
        };
        let Some(b) = wanted else { return Ok(None) };
        let served = self.runtime.backends();
        if !served.contains(&b) {
            let names: Vec<_> = served.iter().map(|s| s.as_str()).collect();
            return Err(CapsuleError::Invalid(format!(
                "runtime {b} is not available on this server (it serves: {})",
                names.join(", ")
            )));
        }
        // The default backend is asked for by naming none: warm capsules stay usable.
        Ok((served.first() != Some(&b)).then_some(b))
    }

    /// Records a started capsule `running` (with its runtime's versions in its metadata, and
    /// `warm_pool` when it came from one) and publishes the create's success. `guest` is the
    /// agent's health answer when the runtime read one while starting it; else the agent is
    /// asked.
    async fn created(
        &self,
        live: &LiveCapsule,
        warm: bool,
        guest: Option<Health>,
    ) -> Option<Capsule> {
        // Guest facts come from the capsule itself, never from the host's /proc.
        let health = match guest {
            Some(h) => Some(h),
            None => live.agent().health().await.ok(),
        };
        let kernel = health.as_ref().and_then(|h| h.kernel_version.clone());
        let agent_version = health.map(|h| h.version);
        let kind = self.runtime.kind_of(&live.id());
        let rec = self
            .transition(
                live,
                &[CapsuleStatus::Starting],
                CapsuleStatus::Running,
                |c| {
                    let now = Utc::now();
                    c.started_at = Some(now);
                    c.last_active_at = Some(now);
                    let m = c.metadata.get_or_insert_with(BTreeMap::new);
                    if let Some(k) = kernel {
                        m.insert("kernel_version".into(), k);
                    }
                    m.insert("vmm_version".into(), kind.into());
                    if let Some(v) = agent_version {
                        m.insert("agent_version".into(), v);
                    }
                    if warm {
                        m.insert("warm_pool".into(), "true".into());
                    }
                },
            )
            .await
            .ok()?;
        self.events.capsule(
            &live.team_id,
            &rec,
            Action::success(EventKind::CapsuleCreate, &system_actor()),
        );
        Some(rec)
    }

    async fn run_create(self: &Arc<Self>, live: Arc<LiveCapsule>, spec: CapsuleSpec, place: Place) {
        let t0 = std::time::Instant::now();
        // Wait for the turn, unless the capsule leaves `starting` (a destroy) meanwhile.
        let mut status = live.status.subscribe();
        let _turn = tokio::select! {
            turn = place.ready(&self.starts) => turn,
            _ = status.wait_for(|s| *s != CapsuleStatus::Starting) => return,
        };
        let _op = live.op.lock().await;
        if live.status() != CapsuleStatus::Starting {
            // Destroyed between the turn and the lock: never start it.
            return;
        }
        let t_turn = t0.elapsed();
        let result = self.runtime.create(&spec).await;
        if live.status() != CapsuleStatus::Starting {
            // Destroyed meanwhile; the destroy task (waiting on the lock) cleans up.
            return;
        }
        match result {
            Ok(handle) => {
                let t_runtime = t0.elapsed();
                live.set_ip(handle.ip);
                self.created(&live, false, handle.guest).await;
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                tracing::debug!(
                    id = %spec.id,
                    turn_ms = ms(t_turn),
                    runtime_ms = ms(t_runtime - t_turn),
                    running_ms = ms(t0.elapsed() - t_runtime),
                    "capsule started"
                );
            }
            Err(e) => {
                let reason = chain(&e);
                tracing::error!(id = %spec.id, error = %reason, "capsule creation failed");
                if let Err(e) = self.runtime.destroy(&spec.id).await {
                    tracing::warn!(id = %spec.id, error = %chain(&e), "cleanup after failed create");
                    self.leftover(&live.team_id, &spec.id, &e);
                }
                self.fail(&live, Some(EventKind::CapsuleCreate), reason)
                    .await;
            }
        }
    }
}
