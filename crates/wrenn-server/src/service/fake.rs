//! A runtime without capsules, for tests that need no root (`test-support` feature).
//!
//! It keeps only what the server can observe: which capsules exist and whether they are paused,
//! the templates, and every call made. Tests steer it: a delay or a failure per operation, an
//! init that exits on its own, what a start-up sweep finds. It has no agent: the socket it hands
//! out does not exist, so agent calls fail as for an unreachable agent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use wrenn_runtime::{
    Backend, Capabilities, CapsuleHandle, CapsuleSpec, Protection, RecoveryReport, ResourceUsage,
    Runtime, RuntimeError, SnapshotInfo, SnapshotKind, TemplateInfo,
};
use wrenn_types::agent::AgentEndpoint;

/// The operations a test can slow down, fail or count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Runtime::create`].
    Create,
    /// [`Runtime::pause`].
    Pause,
    /// [`Runtime::resume`].
    Resume,
    /// [`Runtime::destroy`].
    Destroy,
    /// [`Runtime::snapshot`].
    Snapshot,
    /// [`Runtime::list_templates`].
    ListTemplates,
}

#[derive(Debug, Default)]
struct Inner {
    delays: HashMap<Op, Duration>,
    failing: HashSet<Op>,
    /// Failures still to come per operation ([`FakeRuntime::fail_times`]).
    fail_next: HashMap<Op, u32>,
    calls: Vec<(Op, String)>,
    /// Capsule id → paused.
    capsules: HashMap<String, bool>,
    exits: HashMap<String, i32>,
    recovery: RecoveryReport,
    templates: Vec<TemplateInfo>,
    agent: Option<std::path::PathBuf>,
    /// What [`Runtime::kind`] answers.
    kind: &'static str,
    /// Template name → the backend it requires.
    required: HashMap<String, Backend>,
}

/// A controllable in-memory [`Runtime`].
#[derive(Debug)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    /// A runtime with the base template `minimal` and nothing running.
    pub fn new() -> Arc<Self> {
        Self::named("fake")
    }

    /// [`FakeRuntime::new`] whose [`Runtime::kind`] is `kind` (a [`Backend`] name lets it
    /// stand for that backend in [`wrenn_runtime::Runtimes`]).
    pub fn named(kind: &'static str) -> Arc<Self> {
        let minimal = TemplateInfo {
            name: "minimal".into(),
            base: true,
            size_bytes: 1 << 20,
            created_at: Some(Utc::now()),
        };
        Arc::new(Self {
            inner: Mutex::new(Inner {
                templates: vec![minimal],
                kind,
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes template `name` require backend `b` ([`Runtime::template_backend`]).
    pub fn require(&self, name: &str, b: Backend) {
        self.lock().required.insert(name.to_owned(), b);
    }

    /// Points every capsule's agent endpoint at the unix socket `path` (a test's fake agent).
    pub fn agent_at(&self, path: impl Into<std::path::PathBuf>) {
        self.lock().agent = Some(path.into());
    }

    /// Makes every later `op` take `delay` before it acts.
    pub fn delay(&self, op: Op, delay: Duration) {
        self.lock().delays.insert(op, delay);
    }

    /// Makes every later `op` fail (`true`) or succeed again (`false`).
    pub fn fail(&self, op: Op, failing: bool) {
        let mut inner = self.lock();
        if failing {
            inner.failing.insert(op);
        } else {
            inner.failing.remove(&op);
        }
    }

    /// Makes the next `n` calls of `op` fail, then succeed again.
    pub fn fail_times(&self, op: Op, n: u32) {
        self.lock().fail_next.insert(op, n);
    }

    /// Makes the init of capsule `id` exit with `code`, as an OOM kill or a crash would.
    pub fn exit(&self, id: &str, code: i32) {
        self.lock().exits.insert(id.to_owned(), code);
    }

    /// What the next [`Runtime::recover`] reports; its adopted capsules exist, running.
    pub fn recover_with(&self, report: RecoveryReport) {
        self.lock().recovery = report;
    }

    /// The capsule ids `op` was called with, in order.
    pub fn calls(&self, op: Op) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Whether capsule `id` exists, and if so whether it is paused.
    pub fn paused(&self, id: &str) -> Option<bool> {
        self.lock().capsules.get(id).copied()
    }

    /// Records the call, waits its delay, and answers whether it should fail.
    async fn enter(&self, op: Op, id: &str) -> bool {
        let delay = {
            let mut inner = self.lock();
            inner.calls.push((op, id.to_owned()));
            inner.delays.get(&op).copied()
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut inner = self.lock();
        if let Some(n) = inner.fail_next.get_mut(&op).filter(|n| **n > 0) {
            *n -= 1;
            return true;
        }
        inner.failing.contains(&op)
    }

    fn host_error(id: &str, step: &'static str) -> RuntimeError {
        RuntimeError::Host {
            id: id.to_owned(),
            step,
            source: anyhow::anyhow!("fake {step} failure"),
        }
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<(), RuntimeError> {
        match self.lock().capsules.get_mut(id) {
            Some(p) => {
                *p = paused;
                Ok(())
            }
            None => Err(RuntimeError::CapsuleNotFound(id.to_owned())),
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        self.lock().kind
    }

    fn template_backend(&self, name: &str) -> Option<Backend> {
        self.lock().required.get(name).copied()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause_releases_memory: false,
            snapshot_keeps_memory: false,
            paused_survives_host_reboot: false,
            survives_server_restart: true,
        }
    }

    async fn create(&self, spec: &CapsuleSpec) -> Result<CapsuleHandle, RuntimeError> {
        if self.enter(Op::Create, &spec.id).await {
            return Err(RuntimeError::Launch {
                id: spec.id.clone(),
                source: anyhow::anyhow!("fake launch failure"),
            });
        }
        self.lock().capsules.insert(spec.id.clone(), false);
        Ok(CapsuleHandle {
            id: spec.id.clone(),
            agent: self.agent_endpoint(&spec.id),
            ip: None,
            init_pid: 0,
            guest: None,
        })
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        if self.enter(Op::Pause, id).await {
            return Err(Self::host_error(id, "freeze cgroup"));
        }
        self.set_paused(id, true)
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        if self.enter(Op::Resume, id).await {
            return Err(Self::host_error(id, "thaw cgroup"));
        }
        self.set_paused(id, false)
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        if self.enter(Op::Destroy, id).await {
            return Err(Self::host_error(id, "destroy"));
        }
        let mut inner = self.lock();
        inner.capsules.remove(id);
        inner.exits.remove(id);
        Ok(())
    }

    async fn recover(&self, _known: &[String]) -> Result<RecoveryReport, RuntimeError> {
        let mut inner = self.lock();
        let report = inner.recovery.clone();
        for h in &report.adopted {
            inner.capsules.insert(h.id.clone(), false);
        }
        Ok(report)
    }

    fn agent_endpoint(&self, id: &str) -> AgentEndpoint {
        let path = self
            .lock()
            .agent
            .clone()
            .unwrap_or_else(|| format!("/nonexistent/wrenn-fake/{id}/agent.sock").into());
        AgentEndpoint::Unix { path }
    }

    fn exit_status(&self, id: &str) -> Option<i32> {
        self.lock().exits.get(id).copied()
    }

    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError> {
        if self.lock().capsules.contains_key(id) {
            Ok(ResourceUsage::default())
        } else {
            Err(RuntimeError::CapsuleNotFound(id.to_owned()))
        }
    }

    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, RuntimeError> {
        if self.enter(Op::ListTemplates, "-").await {
            return Err(Self::host_error("-", "list templates"));
        }
        Ok(self.lock().templates.clone())
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, RuntimeError> {
        if self.enter(Op::Snapshot, id).await {
            return Err(Self::host_error(id, "copy tree"));
        }
        let info = TemplateInfo {
            name: name.to_owned(),
            base: false,
            size_bytes: 4096,
            created_at: Some(Utc::now()),
        };
        self.lock().templates.push(info.clone());
        Ok(SnapshotInfo {
            template: info,
            kind: SnapshotKind::Files,
            sizes: None,
        })
    }

    fn template_user(&self, _name: &str) -> Option<String> {
        None
    }

    async fn delete_template(&self, name: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        match inner.templates.iter().position(|t| t.name == name) {
            Some(i) if inner.templates[i].base => Err(RuntimeError::Protected {
                name: name.to_owned(),
                reason: Protection::Base,
            }),
            Some(i) => {
                inner.templates.remove(i);
                Ok(())
            }
            None => Err(RuntimeError::TemplateNotFound(name.to_owned())),
        }
    }

    async fn ensure_template(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        self.lock()
            .templates
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| RuntimeError::TemplateNotFound(name.to_owned()))
    }
}
