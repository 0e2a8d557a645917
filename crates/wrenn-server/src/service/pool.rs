//! Warm pools: per template, a few capsules created ahead of demand with their services ready,
//! so that a create of that template answers with a running capsule at once.
//!
//! # Design
//! - A pooled capsule is an ordinary runtime capsule made with a fresh id and the default
//!   sizes. It is in no team's registry (no list, get, proxy or event sees it) and is not
//!   stored, but admission counts its memory and count ([`Capsules::reserve`]).
//! - Hand-out ([`Capsules::take_warm`]) removes it from the pool and the create verb then
//!   registers it under the caller's team with the caller's timeout and metadata, recording
//!   `starting` then `running` and publishing the usual events. Its id (and so its hostname)
//!   was drawn when it was pooled but never shown to anyone: no renaming is needed, and the
//!   hostname equals the id as for any capsule. It never served anyone: a pooled capsule is
//!   handed out once, and only the runtime, its services and one warm-up `sh -c true` have
//!   run in it. The warm-up makes the first exec of a handed-out capsule as quick as later
//!   ones (a microVM clone's first exec otherwise goes through an empty TCG translation cache).
//! - Only creates that ask for the pool's sizes (the defaults) of a base template are served
//!   from the pool; everything else is created cold.
//! - One background task fills every pool, one capsule at a time, and only while no cold
//!   create is in flight (low priority); it is woken after each hand-out. It never builds a
//!   template: a pool fills once its template is built (by `wrenn template build` or a first
//!   cold create).
//! - Pooled capsules are destroyed at shutdown: the filler finishes the capsule it is making
//!   ([`Capsules::stop_pools`]), then [`Capsules::drain_pool`] destroys them all. A server
//!   that died without draining finds them at start-up among the runtime's capsules the store
//!   does not know, and recovery removes them like any leftover.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wrenn_runtime::{CapsuleSpec, NetworkMode, Source};
use wrenn_types::error::chain;

use super::{Capsules, DEFAULT_MEMORY_MB, DEFAULT_VCPUS, PIDS_LIMIT};
use crate::ids;

/// Pool size of the code runners' templates ([`DEFAULT_WARM_TEMPLATES`]) when `--warm` does
/// not name them.
pub const DEFAULT_CODE_RUNNER_WARM: usize = 1;
/// Templates pooled by default: the code runners, whose first cell would wait seconds for
/// Jupyter. A pool costs nothing until its template is built (on first use).
pub const DEFAULT_WARM_TEMPLATES: [&str; 2] = ["code-runner-beta", "code-interpreter-v1"];
/// How often an idle filler looks again (a template not built yet, no room on the host).
const RECHECK: Duration = Duration::from_secs(3);
/// After a failed pooled create, wait this long before trying that template again.
const BACKOFF: Duration = Duration::from_secs(30);

/// How many warm capsules to keep per template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmTargets(pub BTreeMap<String, usize>);

impl WarmTargets {
    /// `--warm` values (`NAME=N`, repeated or comma-separated) over the defaults
    /// (`code-runner-beta=1,code-interpreter-v1=1`); `N = 0` turns a pool off.
    pub fn parse(specs: &[String]) -> Result<Self, String> {
        let mut map: BTreeMap<String, usize> = DEFAULT_WARM_TEMPLATES
            .iter()
            .map(|t| ((*t).to_owned(), DEFAULT_CODE_RUNNER_WARM))
            .collect();
        for spec in specs.iter().flat_map(|s| s.split(',')) {
            let spec = spec.trim();
            if spec.is_empty() {
                continue;
            }
            let (name, n) = spec
                .split_once('=')
                .ok_or_else(|| format!("--warm {spec:?}: expected TEMPLATE=COUNT"))?;
            if !ids::is_safe_name(name) {
                return Err(format!("--warm {spec:?}: invalid template name"));
            }
            let n: usize = n
                .parse()
                .map_err(|_| format!("--warm {spec:?}: COUNT must be a number"))?;
            if n > 64 {
                return Err(format!("--warm {spec:?}: at most 64 per template"));
            }
            map.insert(name.to_owned(), n);
        }
        map.retain(|_, n| *n > 0);
        Ok(Self(map))
    }
}

/// A capsule waiting in a pool.
#[derive(Debug, Clone)]
pub(super) struct Warm {
    pub(super) id: String,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) vcpus: u32,
    pub(super) memory_mb: u32,
}

/// The pools of one server.
#[derive(Debug, Default)]
pub(super) struct Pool {
    targets: BTreeMap<String, usize>,
    ready: Mutex<HashMap<String, VecDeque<Warm>>>,
    /// Memory of capsules being made for a pool (admission counts them too).
    pub(super) filling_mb: AtomicUsize,
    /// Cold creates in flight: the filler waits while there are any.
    pub(super) cold_creates: AtomicUsize,
    wake: tokio::sync::Notify,
    /// Set at shutdown: the filler finishes the capsule it is making and returns.
    stopping: AtomicBool,
}

impl Pool {
    pub(super) fn new(targets: WarmTargets) -> Self {
        Self {
            targets: targets.0,
            ..Self::default()
        }
    }

    /// Capsules and memory (MiB) the pools hold, including one being made.
    pub(super) fn reserved(&self) -> (usize, u64) {
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let filling = self.filling_mb.load(Ordering::Relaxed) as u64;
        let n = ready.values().map(VecDeque::len).sum::<usize>() + usize::from(filling > 0);
        let mb = ready
            .values()
            .flatten()
            .map(|w| u64::from(w.memory_mb))
            .sum::<u64>();
        (n, mb + filling)
    }

    fn len(&self, template: &str) -> usize {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(template)
            .map_or(0, VecDeque::len)
    }

    fn push(&self, template: &str, w: Warm) {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(template.to_owned())
            .or_default()
            .push_back(w);
    }

    fn take_all(&self) -> Vec<Warm> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.drain().flat_map(|(_, q)| q).collect()
    }
}

impl Capsules {
    /// A warm capsule of `template` with these sizes, taken out of its pool, if one is ready.
    /// One whose init has exited meanwhile is destroyed (in the background) instead.
    pub(super) fn take_warm(
        self: &Arc<Self>,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
    ) -> Option<Warm> {
        let mut dead = Vec::new();
        let found = {
            let mut ready = self.pool.ready.lock().unwrap_or_else(|p| p.into_inner());
            let q = ready.get_mut(template)?;
            let mut found = None;
            while let Some(i) = q
                .iter()
                .position(|w| w.vcpus == vcpus && w.memory_mb == memory_mb)
            {
                let Some(w) = q.remove(i) else { break };
                if self.runtime.exit_status(&w.id).is_some() {
                    dead.push(w);
                } else {
                    found = Some(w);
                    break;
                }
            }
            found
        };
        if !dead.is_empty() {
            let this = self.clone();
            tokio::spawn(async move {
                for w in dead {
                    tracing::warn!(id = %w.id, "a warm capsule died in the pool");
                    if let Err(e) = this.runtime.destroy(&w.id).await {
                        tracing::warn!(id = %w.id, error = %chain(&e), "destroying a dead warm capsule");
                        this.leftover("", &w.id, &e);
                    }
                }
            });
        }
        self.pool.wake.notify_one();
        found
    }

    /// Warm capsules ready in the pool of `template`.
    pub fn warm_ready(&self, template: &str) -> usize {
        self.pool.len(template)
    }

    /// Keeps every pool at its target, one capsule at a time, until the task is aborted.
    pub async fn fill_pools(self: Arc<Self>) {
        if self.pool.targets.is_empty() {
            return;
        }
        let mut backoff: HashMap<String, tokio::time::Instant> = HashMap::new();
        while !self.pool.stopping.load(Ordering::Relaxed) {
            let now = tokio::time::Instant::now();
            let mut next = None;
            for (t, n) in &self.pool.targets {
                if self.pool.len(t) < *n
                    && backoff.get(t).is_none_or(|until| *until <= now)
                    && self.built(t).await
                {
                    next = Some(t.clone());
                    break;
                }
            }
            let ready = next.filter(|_| {
                self.pool.cold_creates.load(Ordering::Relaxed) == 0
                    && self.reserve_fill(DEFAULT_MEMORY_MB)
            });
            let Some(template) = ready else {
                // Full, unbuilt, backing off, busy or no room: look again after a hand-out
                // or a while.
                let _ = tokio::time::timeout(RECHECK, self.pool.wake.notified()).await;
                continue;
            };
            if !self.make_warm(&template).await {
                backoff.insert(template, tokio::time::Instant::now() + BACKOFF);
            }
        }
    }

    /// Whether `template` is built (a pool never builds one).
    async fn built(&self, template: &str) -> bool {
        self.runtime.list_templates().await.is_ok_and(|ts| {
            ts.iter()
                .any(|t| t.name == template && t.created_at.is_some())
        })
    }

    /// Creates one capsule for the pool of `template`, in the room [`Capsules::reserve_fill`]
    /// held; false when that failed.
    async fn make_warm(&self, template: &str) -> bool {
        let (vcpus, memory_mb) = (DEFAULT_VCPUS, DEFAULT_MEMORY_MB);
        let spec = CapsuleSpec {
            id: ids::new_capsule_id(),
            source: Source::Template(template.to_owned()),
            vcpus,
            memory_mb,
            pids_limit: PIDS_LIMIT,
            network: NetworkMode::Egress,
            disk_mb: self.capacity.disk_mb,
            backend: None,
        };
        // The room was held by `reserve_fill`; it passes to the pooled capsule, or is freed.
        let started = std::time::Instant::now();
        let made = self.runtime.create(&spec).await;
        self.pool.filling_mb.store(0, Ordering::Relaxed);
        match made {
            Ok(handle) => {
                handle.warm_up().await;
                tracing::info!(
                    template,
                    id = %spec.id,
                    ms = started.elapsed().as_millis() as u64,
                    "warm capsule ready"
                );
                self.pool.push(
                    template,
                    Warm {
                        id: spec.id,
                        ip: handle.ip,
                        vcpus,
                        memory_mb,
                    },
                );
                true
            }
            Err(e) => {
                tracing::warn!(template, error = %chain(&e), "making a warm capsule failed");
                if let Err(e) = self.runtime.destroy(&spec.id).await {
                    tracing::warn!(id = %spec.id, error = %chain(&e), "cleanup of a warm capsule");
                    self.leftover("", &spec.id, &e);
                }
                false
            }
        }
    }

    /// Asks [`Capsules::fill_pools`] to return once the capsule it is making (if any) is
    /// pooled, so that [`Capsules::drain_pool`] then finds it.
    pub fn stop_pools(&self) {
        self.pool.stopping.store(true, Ordering::Relaxed);
        self.pool.wake.notify_one();
    }

    /// Destroys every pooled capsule (at shutdown, after the filler stopped).
    pub async fn drain_pool(&self) {
        for w in self.pool.take_all() {
            if let Err(e) = self.runtime.destroy(&w.id).await {
                tracing::warn!(id = %w.id, error = %chain(&e), "destroying a warm capsule");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_targets_default_and_override() {
        let d = WarmTargets::parse(&[]).expect("defaults");
        assert_eq!(d.0.get("code-runner-beta"), Some(&1));
        assert_eq!(d.0.get("code-interpreter-v1"), Some(&1));
        let t = WarmTargets::parse(&["code-runner-beta=2,minimal=1".into()]).expect("parse");
        assert_eq!(t.0.get("code-runner-beta"), Some(&2));
        assert_eq!(t.0.get("minimal"), Some(&1));
        let off =
            WarmTargets::parse(&["code-runner-beta=0,code-interpreter-v1=0".into()]).expect("off");
        assert!(off.0.is_empty());
        for bad in ["x", "a=b", "../x=1", "x=100"] {
            assert!(WarmTargets::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
