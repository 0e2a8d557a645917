//! [`Runtimes`]: several backends behind one [`Runtime`], so a server can serve containers and
//! microVMs at once. A create goes to the backend its [`CapsuleSpec::backend`] names (the first
//! backend when it names none); every later verb goes to the backend that made the capsule.
//!
//! The backends share the data directory: each keeps its capsules in its own place, and the
//! template trees are common (a snapshot taken on one backend boots on the other).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::microvm::host_err;
use crate::{
    AgentEndpoint, Backend, Capabilities, CapsuleHandle, CapsuleSpec, Protection, RecoveryReport,
    ResourceUsage, Runtime, RuntimeError, SnapshotInfo, TemplateInfo,
};

/// Several backends behind one [`Runtime`]; the first is the default.
pub struct Runtimes {
    backends: Vec<(Backend, Arc<dyn Runtime>)>,
    /// Which backend (index into `backends`) made each capsule.
    owners: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.backends.iter().map(|(b, _)| b.as_str()).collect();
        f.debug_struct("Runtimes")
            .field("backends", &names)
            .finish()
    }
}

impl Runtimes {
    /// `default` serves creates that name no backend; `others` those that name theirs. A
    /// runtime whose [`Runtime::kind`] is no [`Backend`] is refused, as is a backend given twice.
    pub fn new(
        default: Arc<dyn Runtime>,
        others: Vec<Arc<dyn Runtime>>,
    ) -> Result<Self, RuntimeError> {
        let mut backends: Vec<(Backend, Arc<dyn Runtime>)> = Vec::new();
        for rt in std::iter::once(default).chain(others) {
            let kind = rt.kind();
            let b = Backend::parse(kind).ok_or_else(|| {
                host_err(
                    "combine runtimes",
                    "-",
                    anyhow::anyhow!("{kind} is not a capsule backend"),
                )
            })?;
            if backends.iter().any(|(have, _)| *have == b) {
                return Err(host_err(
                    "combine runtimes",
                    "-",
                    anyhow::anyhow!("backend {b} given twice"),
                ));
            }
            backends.push((b, rt));
        }
        Ok(Self {
            backends,
            owners: Mutex::new(HashMap::new()),
        })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn default_rt(&self) -> &Arc<dyn Runtime> {
        &self.backends[0].1
    }

    /// Index of `backend` (`None`: the default one), if served.
    fn index(&self, backend: Option<Backend>) -> Option<usize> {
        match backend {
            None => Some(0),
            Some(b) => self.backends.iter().position(|(have, _)| *have == b),
        }
    }

    /// The backend that made capsule `id`; the default one for unknown ids (which answers
    /// them as its own unknown capsules).
    fn of(&self, id: &str) -> &Arc<dyn Runtime> {
        let i = self.owners().get(id).copied().unwrap_or(0);
        &self.backends[i].1
    }
}

#[async_trait]
impl Runtime for Runtimes {
    fn kind(&self) -> &'static str {
        self.backends[0].0.as_str()
    }

    fn capabilities(&self) -> Capabilities {
        self.default_rt().capabilities()
    }

    fn backends(&self) -> Vec<Backend> {
        self.backends.iter().map(|(b, _)| *b).collect()
    }

    fn assign_backend(&self, id: &str, backend: Option<Backend>) {
        if let Some(i) = self.index(backend) {
            self.owners().insert(id.to_owned(), i);
        }
    }

    fn kind_of(&self, id: &str) -> &'static str {
        self.of(id).kind()
    }

    fn template_backend(&self, name: &str) -> Option<Backend> {
        self.default_rt().template_backend(name)
    }

    fn guest_size(&self, backend: Option<Backend>, vcpus: u32, memory_mb: u32) -> (u32, u32) {
        match self.index(backend) {
            Some(i) => self.backends[i].1.guest_size(None, vcpus, memory_mb),
            None => (vcpus, memory_mb),
        }
    }

    fn template_user(&self, name: &str) -> Option<String> {
        self.backends
            .iter()
            .find_map(|(_, rt)| rt.template_user(name))
    }

    async fn create(&self, spec: &CapsuleSpec) -> Result<CapsuleHandle, RuntimeError> {
        let i = self.index(spec.backend).ok_or_else(|| {
            host_err(
                "pick backend",
                &spec.id,
                anyhow::anyhow!("backend {:?} is not served here", spec.backend),
            )
        })?;
        if i != 0 {
            // Each backend has its own template store over the same directory: building
            // through the default one only keeps two builds of one template from racing.
            self.default_rt()
                .ensure_template(spec.source.name())
                .await?;
        }
        // Recorded before the create, so the destroy that follows a failed one finds it.
        self.owners().insert(spec.id.clone(), i);
        self.backends[i].1.create(spec).await
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.of(id).pause(id).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.of(id).resume(id).await
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let owner = self.owners().get(id).copied();
        match owner {
            Some(i) => self.backends[i].1.destroy(id).await?,
            // Unknown here: whatever any backend still has of it goes.
            None => {
                for (_, rt) in &self.backends {
                    rt.destroy(id).await?;
                }
            }
        }
        self.owners().remove(id);
        Ok(())
    }

    async fn recover(&self, known: &[String]) -> Result<RecoveryReport, RuntimeError> {
        let mut all = RecoveryReport::default();
        for (i, (_, rt)) in self.backends.iter().enumerate() {
            let r = rt.recover(known).await?;
            {
                let mut owners = self.owners();
                for h in &r.adopted {
                    owners.insert(h.id.clone(), i);
                }
            }
            all.adopted.extend(r.adopted);
            all.lost.extend(r.lost);
            all.removed.extend(r.removed);
        }
        Ok(all)
    }

    fn agent_endpoint(&self, id: &str) -> AgentEndpoint {
        self.of(id).agent_endpoint(id)
    }

    fn exit_status(&self, id: &str) -> Option<i32> {
        self.of(id).exit_status(id)
    }

    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError> {
        self.of(id).usage(id).await
    }

    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, RuntimeError> {
        self.default_rt().list_templates().await
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, RuntimeError> {
        self.of(id).snapshot(id, name).await
    }

    async fn delete_template(&self, name: &str) -> Result<(), RuntimeError> {
        if let Some(capsule) = self.template_user(name) {
            return Err(RuntimeError::Protected {
                name: name.to_owned(),
                reason: Protection::InUse { capsule },
            });
        }
        self.default_rt().delete_template(name).await
    }

    async fn ensure_template(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        self.default_rt().ensure_template(name).await
    }
}
