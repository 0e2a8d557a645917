//! Capsule runtimes: turn a template and limits into an isolated, running capsule with a
//! `wrenn-agent` inside, and back (pause, resume, destroy).
//!
//! The server only sees the [`Runtime`] trait; backends (`container`, `microvm`) are
//! chosen at start-up. The server decides from a backend's [`Capabilities`], never from its
//! name. Every backend hands out the [`AgentEndpoint`] the capsule's agent is reached through
//! ([`CapsuleHandle::agent`], [`Runtime::agent_endpoint`]).
//!
//! Templates are data (see [`templates`]): a recipe under `images/<name>/` is built once into
//! a tree, which each backend materialises in its own form.
#![warn(missing_docs)]

use std::net::Ipv4Addr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use wrenn_types::agent::AgentEndpoint;

pub mod error;

pub use error::{CapsuleState, Protection, ResourceKind, RuntimeError};

/// Whether a capsule may reach beyond its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Own network namespace, veth to the host, NAT egress.
    #[default]
    Egress,
    /// Own network namespace with loopback only.
    Isolated,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CapsuleSpec {
    /// `cl-` + 25 base36 chars; also the hostname.
    pub id: String,
    /// What to boot.
    pub source: Source,
    /// CPU quota in whole CPUs.
    pub vcpus: u32,
    /// Memory limit; an OOM kills inside the capsule only.
    pub memory_mb: u32,
    /// Maximum number of processes (pids cgroup).
    pub pids_limit: u32,
    /// Network mode.
    pub network: NetworkMode,
    /// Size of the capsule's own filesystem for what it writes, MiB: writes past it fail with
    /// `ENOSPC` inside the capsule only. 0 = no limit (writes land on the host filesystem).
    pub disk_mb: u32,
    /// The backend asked for; `None` = the runtime's default. Only a [`Runtimes`] serving
    /// several backends honours it; a single backend ignores it (callers check
    /// [`Runtime::backends`] first).
    pub backend: Option<Backend>,
}

/// A capsule backend, as a create request may name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Namespaces, cgroups and seccomp ([`ContainerRuntime`]).
    Container,
    /// QEMU guests ([`MicroVmRuntime`]).
    MicroVm,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 2] = [Backend::Container, Backend::MicroVm];

    /// The name used in the API and in [`Runtime::kind`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::MicroVm => "microvm",
        }
    }

    /// The backend called `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a capsule is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A template by name: a built-in recipe (built on first use) or any template on disk.
    Template(String),
    /// A snapshot template by name. Backends that keep full state resume its memory and
    /// processes; the others (see [`Capabilities::snapshot_keeps_memory`]) boot its files
    /// fresh.
    Snapshot(String),
}

impl Source {
    /// The template name.
    pub fn name(&self) -> &str {
        match self {
            Self::Template(n) | Self::Snapshot(n) => n,
        }
    }
}

/// What a backend can do; the server decides from this, never from [`Runtime::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Pause writes the capsule's state to disk and frees its memory (otherwise memory stays
    /// resident while paused).
    pub pause_releases_memory: bool,
    /// Snapshots keep memory and processes (otherwise files only: capsules made from one boot
    /// fresh on its files and start its template's services again).
    pub snapshot_keeps_memory: bool,
    /// A paused capsule can be resumed after the host rebooted.
    pub paused_survives_host_reboot: bool,
    /// Running and paused capsules survive a restart of the server process ([`Runtime::recover`]
    /// re-adopts them).
    pub survives_server_restart: bool,
}

/// Which kind of snapshot a backend made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// The filesystem only: capsules made from it boot fresh.
    Files,
    /// Filesystem, memory and processes: capsules made from it resume where it was taken.
    FullState,
}

/// A snapshot just made.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// The new template.
    pub template: TemplateInfo,
    /// What it holds.
    pub kind: SnapshotKind,
    /// The vCPUs and memory (MiB) every capsule made from it has, when the snapshot fixes them
    /// (a saved machine's RAM cannot change size).
    pub sizes: Option<(u32, u32)>,
}

/// A running capsule as the runtime reports it.
#[derive(Debug, Clone)]
pub struct CapsuleHandle {
    /// Capsule id.
    pub id: String,
    /// Where the host reaches the capsule's agent.
    pub agent: AgentEndpoint,
    /// The capsule's address on its veth, when it has one.
    pub ip: Option<Ipv4Addr>,
    /// Host pid of the capsule's init (the agent).
    pub init_pid: i32,
    /// The agent's answer to the runtime's readiness probe (`GET /health`), when the runtime
    /// read one: a caller that wants the guest's versions need not ask again.
    pub guest: Option<wrenn_types::agent::Health>,
}

impl CapsuleHandle {
    /// Runs one `sh -c true` in the capsule, so that its next exec finds the shell in the page
    /// cache and the agent's exec path run once (under TCG: translated). A failure only costs
    /// that, and is logged.
    pub async fn warm_up(&self) {
        let req = wrenn_types::agent::ExecRequest::from(wrenn_types::agent::ProcessSpec::new(
            "/bin/sh",
            ["-c", "true"],
        ));
        if let Err(error) = wrenn_agent_client::AgentClient::new(self.agent.clone())
            .exec(&req)
            .await
        {
            tracing::warn!(id = %self.id, %error, "warm-up exec failed");
        }
    }
}

/// Live resource use of one capsule.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceUsage {
    /// CPU time used since creation, nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use now, bytes.
    pub memory_bytes: u64,
    /// Bytes written to the capsule's own layer (with a disk: the bytes in use on it).
    pub disk_bytes: u64,
}

/// A template on disk.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    /// Name.
    pub name: String,
    /// Built-in base template (cannot be deleted) or a snapshot.
    pub base: bool,
    /// Size of the tree on disk; 0 until built.
    pub size_bytes: u64,
    /// When it was built; `None` until built.
    pub created_at: Option<DateTime<Utc>>,
}

/// What a start-up sweep found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Known capsules still alive and re-adopted.
    pub adopted: Vec<CapsuleHandle>,
    /// Known capsules whose remains were found dead and cleaned up.
    pub lost: Vec<String>,
    /// Unknown capsules (leftovers of a crash) that were removed.
    pub removed: Vec<String>,
}

/// One capsule backend. Every method is safe to call from the tokio runtime: backends that fork
/// do it in a helper process.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short backend name (`container`, `microvm`), for logs and metadata only.
    fn kind(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The backends a create may ask for ([`CapsuleSpec::backend`]); the first is the default.
    fn backends(&self) -> Vec<Backend> {
        Backend::parse(self.kind()).into_iter().collect()
    }

    /// Says which backend capsule `id` will be created on (`None`: the default), before
    /// anything asks for its [`Runtime::agent_endpoint`]; only a runtime serving several
    /// backends needs it.
    fn assign_backend(&self, _id: &str, _backend: Option<Backend>) {}

    /// The backend name of capsule `id` (differs from [`Runtime::kind`] only for a runtime
    /// serving several backends).
    fn kind_of(&self, _id: &str) -> &'static str {
        self.kind()
    }

    /// A capsule of this runtime that runs on template `name`, if any (such a template must
    /// not be deleted).
    fn template_user(&self, name: &str) -> Option<String>;

    /// The backend template `name` requires (its recipe's `runtime`), if any.
    fn template_backend(&self, _name: &str) -> Option<Backend> {
        None
    }

    /// The vCPUs and memory (MiB) a capsule asking for `vcpus` and `memory_mb` gets on
    /// `backend` (`None`: the default one): a backend with a floor raises what is below it.
    fn guest_size(&self, _backend: Option<Backend>, vcpus: u32, memory_mb: u32) -> (u32, u32) {
        (vcpus, memory_mb)
    }

    /// Creates and starts a capsule from `spec.source`; returns once its agent answers
    /// `/health` and every service of its template passed its readiness probe. On failure,
    /// everything made so far is removed.
    async fn create(&self, spec: &CapsuleSpec) -> Result<CapsuleHandle, RuntimeError>;

    /// Stops all execution; state (memory, processes, files) is kept.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;

    /// Undoes [`Runtime::pause`].
    async fn resume(&self, id: &str) -> Result<(), RuntimeError>;

    /// Kills everything and frees every resource the capsule had. Idempotent: destroying an
    /// unknown or already destroyed capsule succeeds.
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError>;

    /// Start-up sweep: re-adopts the `known` capsules that are still alive, cleans up the
    /// remains of dead ones and removes everything else this runtime once made.
    async fn recover(&self, known: &[String]) -> Result<RecoveryReport, RuntimeError>;

    /// Where the host reaches the agent of capsule `id`. Backends must hand out an endpoint the
    /// capsule cannot see or replace (the server connects to it and sends capsule-controlled
    /// bytes).
    fn agent_endpoint(&self, id: &str) -> AgentEndpoint;

    /// Exit status of the capsule's init when it died on its own (`None` while it runs, and
    /// for capsules this runtime does not know).
    fn exit_status(&self, id: &str) -> Option<i32>;

    /// Current resource use.
    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError>;

    /// Built-in base template names and the snapshots on disk.
    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, RuntimeError>;

    /// Makes a new template `name` from capsule `id` (running or paused), which is left as it
    /// was; says which [`SnapshotKind`] it made. An existing name is
    /// [`RuntimeError::AlreadyExists`].
    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, RuntimeError>;

    /// Deletes snapshot template `name`. Base templates and templates a capsule still runs on
    /// are refused with [`RuntimeError::Protected`]; an unknown name is
    /// [`RuntimeError::TemplateNotFound`].
    async fn delete_template(&self, name: &str) -> Result<(), RuntimeError>;

    /// Makes sure template `name` is on disk, building a built-in recipe on first use.
    /// [`RuntimeError::TemplateNotFound`] for names that are neither built-in nor on disk.
    async fn ensure_template(&self, name: &str) -> Result<TemplateInfo, RuntimeError>;
}

pub mod bench;
pub mod container;
pub mod microvm;
mod multi;
pub(crate) mod services;
pub(crate) mod sys;
pub mod templates;
#[cfg(test)]
pub(crate) mod test_utils;
pub(crate) mod tree;

pub use container::{ContainerConfig, ContainerRuntime};
pub use microvm::{MicroVmConfig, MicroVmRuntime};
pub use multi::Runtimes;
pub use sys::seal_inherited_fds;
