//! The `container` backend: Linux namespaces, cgroups, seccomp and an overlay root, started by
//! youki's `libcontainer` in a single-threaded launcher process.
//!
//! # Design
//! One module per concern: `spec` (OCI config), [`launcher`] (the forking part, out of
//! process), `cgroups` (freeze, usage, kill), `overlay` (capsule dirs and root), `disk`
//! (the capsule's sized filesystem for its writes, and the pool of formatted images),
//! `seccomp` (filter compiled once per runtime), `net` (netns, veth, nft), `watch`
//! (pidfd exit watch), `record` (what recovery reads); raw syscalls are the crate's `sys`.
//!
//! Create: template → network ∥ (disk → overlay) → bundle → launcher (binds the agent socket on a
//! host-only path, passes it to the agent as fd 3) → wait for `GET /health` → start the
//! template's services and wait for their probes (see the crate's `services`).
//! Destroy: thaw, kill the cgroup, remove cgroups, unmount (overlay, then disk: its loop device
//! frees itself), delete libcontainer state, network and the capsule dir (image included).
//!
//! # Limitations
//! Pause is a cgroup freeze: memory stays resident and nothing survives a host reboot.
//! Snapshots are files only. Network setup is rtnetlink plus one `nft` run per capsule;
//! teardown still shells out to `ip` (see `net`).
//!
//! Everything but [`ContainerRuntime`], [`ContainerConfig`], [`launcher::launcher_main`] and
//! [`DISK_POOL_SIZE`] is internal to the crate.

pub(crate) mod cgroups;
mod claims;
mod cpuset;
pub(crate) mod disk;
pub(crate) mod ids;
pub mod launcher;
pub(crate) mod net;
pub(crate) mod overlay;
pub(crate) mod record;
mod rtnl;
pub(crate) mod seccomp;
mod spare;
pub(crate) mod spec;
pub(crate) mod steps;
pub(crate) mod watch;

pub(crate) mod health;
mod lifecycle;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::sys;
use crate::templates::{DirectoryForm, Recipes, Templates};
use crate::tree::{private_dir, PRIVATE_DIR_MODE};
use crate::{
    AgentEndpoint, Capabilities, CapsuleHandle, CapsuleSpec, CapsuleState, Protection,
    RecoveryReport, ResourceUsage, Runtime, RuntimeError, SnapshotInfo, SnapshotKind, TemplateInfo,
};
use cgroups::{CapsuleCgroup, CgroupVersion};
use overlay::CapsuleDirs;
use record::CapsuleRecord;
use watch::InitWatch;

/// Disk images the runtime keeps formatted, attached and mounted ahead (see `disk::DiskPool`).
pub const DISK_POOL_SIZE: usize = disk::POOL_SIZE;

/// What the container backend can do.
const CAPABILITIES: Capabilities = Capabilities {
    pause_releases_memory: false,
    snapshot_keeps_memory: false,
    paused_survives_host_reboot: false,
    survives_server_restart: true,
};

/// How long `create` waits for the agent's `/health`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long freeze/thaw may take before it is an error.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the container runtime keeps its files and finds its helpers.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Root of templates, capsules and runtime state (e.g. `/var/lib/wrenn`).
    pub data_dir: PathBuf,
    /// Cache kept across data dirs (built base trees), e.g. `/var/cache/wrenn`.
    pub cache_dir: PathBuf,
    /// The static `wrenn-agent` binary copied into every capsule at `/.wrenn/wrenn-agent`.
    pub agent_binary: PathBuf,
    /// Program and arguments that run [`launcher::launcher_main`] (e.g. `["/usr/bin/wrenn",
    /// "__launch"]`).
    pub launcher: Vec<OsString>,
    /// A directory of more template recipes (`<dir>/<name>/recipe.toml`), beside the built-in
    /// ones of the repository's `images/`; a name that is built in is refused.
    pub extra_recipes: Option<PathBuf>,
}

/// Set to `0`, the runtime leaves the host's cgroup2 mount options alone (no `favordynmods`).
pub const FAVOR_DYNMODS_ENV: &str = "WRENN_CGROUP_FAVORDYNMODS";

/// Mode of a runtime dir (see [`runtime_dir_for`]).
const RUNTIME_DIR_MODE: u32 = 0o755;
/// Where runtime dirs live: outside the data dir, whose path a capsule must not learn.
const RUNTIME_DIRS: &str = "/run/wrenn/rt";

/// The dir bound read-only at every capsule's `/.wrenn` (the agent binary and the seccomp
/// program), one per data dir: `/run/wrenn/rt/<16 hex digits of a hash of data_dir>`.
///
/// A bind mount shows its source's path in the capsule's `/proc/self/mountinfo`, so the source
/// lives here rather than in the data dir: the capsule learns a hash, not where the host keeps
/// its capsules, templates and disks.
pub fn runtime_dir_for(data_dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across builds, so a restarted server finds the same dir.
    let hash = data_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    Path::new(RUNTIME_DIRS).join(format!("{hash:016x}"))
}

/// Makes `dir` (a [`runtime_dir_for`] dir) and records its data dir beside it in
/// `<dir>.owner` (outside the bound dir, so no capsule reads it). Runtime dirs whose data dir
/// is gone (a removed test or e2e data dir) are removed on the way.
fn make_runtime_dir(dir: &Path, data_dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let parent = Path::new(RUNTIME_DIRS);
    private_dir(parent, PRIVATE_DIR_MODE)?;
    for entry in std::fs::read_dir(parent)?.flatten() {
        let owner_file = entry.path();
        if owner_file.extension().is_none_or(|e| e != "owner") {
            continue;
        }
        let Ok(owner) = std::fs::read(&owner_file) else {
            continue;
        };
        if !Path::new(std::ffi::OsStr::from_bytes(&owner)).exists() {
            let _ = std::fs::remove_dir_all(owner_file.with_extension(""));
            let _ = std::fs::remove_file(&owner_file);
        }
    }
    private_dir(dir, RUNTIME_DIR_MODE)?;
    std::fs::write(dir.with_extension("owner"), data_dir.as_os_str().as_bytes())
}

/// OOM score adjustment of the process that runs the runtime (the server).
pub const HOST_OOM_SCORE_ADJ: i32 = -1000;

/// Open-files limit of capsule processes (lower where the host's hard limit is lower).
pub const CAPSULE_NOFILE: u64 = 65_536;

/// The `container` [`Runtime`].
///
/// ```no_run
/// # async fn f() -> Result<(), wrenn_runtime::RuntimeError> {
/// use wrenn_runtime::container::{ContainerConfig, ContainerRuntime};
/// use wrenn_runtime::{CapsuleSpec, NetworkMode, Runtime, Source};
/// let rt = ContainerRuntime::new(ContainerConfig {
///     data_dir: "/var/lib/wrenn".into(),
///     cache_dir: "/var/cache/wrenn".into(),
///     agent_binary: "/usr/lib/wrenn/wrenn-agent".into(),
///     launcher: vec!["/usr/bin/wrenn".into(), "__launch".into()],
///     extra_recipes: None,
/// })?;
/// let h = rt
///     .create(&CapsuleSpec {
///         id: "cl-0123456789abcdefghijklmno".into(),
///         source: Source::Template("busybox".into()),
///         vcpus: 1,
///         memory_mb: 256,
///         pids_limit: 256,
///         network: NetworkMode::Egress,
///         disk_mb: 10240,
///         backend: None,
///     })
///     .await?;
/// rt.destroy(&h.id).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ContainerConfig,
    cgroup_version: CgroupVersion,
    templates: Templates,
    capsules: Mutex<HashMap<String, Capsule>>,
    nofile: u64,
    cpus: cpuset::CpuSpread,
    health_check: AtomicBool,
    /// Set up on the first egress capsule; its watchdog keeps the host table in place.
    host_net: tokio::sync::OnceCell<net::HostNet>,
    disk_pool: disk::DiskPool,
    /// The configured launcher, one started ahead of the next create.
    launchers: spare::Launchers,
    /// See [`runtime_dir_for`].
    runtime_dir: PathBuf,
}

/// A live capsule this runtime manages.
#[derive(Debug, Clone)]
struct Capsule {
    record: CapsuleRecord,
    watch: InitWatch,
}

fn host_err(step: &'static str, id: &str, e: impl Into<anyhow::Error>) -> RuntimeError {
    RuntimeError::Host {
        id: id.to_owned(),
        step,
        source: e.into(),
    }
}

impl ContainerRuntime {
    /// Prepares the data dir, copies the agent, compiles the seccomp filter and marks this
    /// process a child subreaper. Cheap enough to call at start-up (a few ms).
    pub fn new(cfg: ContainerConfig) -> Result<Self, RuntimeError> {
        let err = |step, e| host_err(step, "-", e);
        if cfg.launcher.is_empty() {
            return Err(err(
                "configure launcher",
                anyhow::anyhow!("launcher command is empty"),
            ));
        }
        sys::set_child_subreaper().map_err(|e| err("set child subreaper", e.into()))?;
        // Under host memory pressure the kernel kills a capsule process (+500), never the
        // process that manages them. Lowering the score needs CAP_SYS_RESOURCE; without it
        // capsules are still ranked above us.
        if let Err(e) = sys::set_oom_score_adj(HOST_OOM_SCORE_ADJ) {
            tracing::warn!(error = %e, "cannot lower this process's oom_score_adj (no CAP_SYS_RESOURCE?); capsules still run at +500");
        }
        let cgroup_version =
            CgroupVersion::detect().map_err(|e| err("detect cgroup version", e.into()))?;
        // A host-wide mount option: an operator may keep the host's mount as it is.
        let favor = std::env::var_os(FAVOR_DYNMODS_ENV).is_none_or(|v| v != "0");
        match favor.then(cgroups::favor_dynmods) {
            Some(Ok(true)) => tracing::info!(
                "turned on favordynmods on the host's cgroup2 mount: moving a capsule into its \
                 cgroups no longer waits for an RCU grace period ({FAVOR_DYNMODS_ENV}=0 leaves \
                 the mount alone)"
            ),
            Some(Ok(false)) | None => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot turn on cgroup2 favordynmods; creates are slower")
            }
        }
        let mut recipes =
            Recipes::embedded().map_err(|e| err("load template recipes", e.into()))?;
        if let Some(dir) = &cfg.extra_recipes {
            recipes = recipes
                .with_dir(dir)
                .map_err(|e| err("load template recipes", e.into()))?;
        }
        // Capsule uppers (setuid files of capsule root included), templates and libcontainer
        // state are for host root only.
        for d in ["capsules", "templates", "state", "pool"] {
            private_dir(&cfg.data_dir.join(d), PRIVATE_DIR_MODE)
                .map_err(|e| err("create data dir", e.into()))?;
        }
        private_dir(&cfg.cache_dir.join("templates"), PRIVATE_DIR_MODE)
            .map_err(|e| err("create template cache dir", e.into()))?;
        // Bind-mounted read-only at /.wrenn: capsule root (an unprivileged host uid in its
        // user namespace) must read and run what is in it, through the mount. It holds only
        // the agent binary and the seccomp program, and sits in a 0700 dir, so no other host
        // user can reach it.
        let runtime_dir = runtime_dir_for(&cfg.data_dir);
        make_runtime_dir(&runtime_dir, &cfg.data_dir)
            .map_err(|e| err("create runtime dir", e.into()))?;
        install_agent(&cfg.agent_binary, &runtime_dir.join("wrenn-agent"))
            .map_err(|e| err("install agent binary", e))?;
        seccomp::write_filter(&runtime_dir.join("seccomp.bpf"))
            .map_err(|e| err("compile seccomp filter", e.into()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                templates: Templates::new(
                    &cfg.data_dir,
                    &cfg.cache_dir,
                    recipes,
                    Arc::new(DirectoryForm),
                ),
                cgroup_version,
                capsules: Mutex::new(HashMap::new()),
                nofile: sys::nofile_hard_limit().min(CAPSULE_NOFILE),
                cpus: cpuset::CpuSpread::detect(),
                health_check: AtomicBool::new(true),
                host_net: tokio::sync::OnceCell::new(),
                disk_pool: disk::DiskPool::new(cfg.data_dir.join("pool")),
                launchers: spare::Launchers::new(cfg.launcher.clone()),
                runtime_dir,
                cfg,
            }),
        })
    }

    /// Test knob: do not wait for the agent's `/health` in `create` (for stand-in agents).
    #[doc(hidden)]
    pub fn set_health_check(&self, on: bool) {
        self.inner.health_check.store(on, Ordering::Relaxed);
    }

    /// Waits (up to `timeout`) until the disk pool's background refill is done, e.g. before
    /// removing the data dir.
    pub fn wait_disk_pool_idle(&self, timeout: Duration) {
        self.inner.disk_pool.wait_idle(timeout);
    }

    /// Builds template `name` from its recipe ahead of first use (a no-op when built), or
    /// from scratch with `force` (see [`Templates::rebuild`]).
    pub async fn build_template(
        &self,
        name: &str,
        force: bool,
    ) -> Result<TemplateInfo, RuntimeError> {
        if force {
            self.inner.templates.rebuild(name).await
        } else {
            self.inner.templates.ensure(name).await
        }
    }

    /// The configuration this runtime was built with.
    pub fn config(&self) -> &ContainerConfig {
        &self.inner.cfg
    }

    /// Host-side address of a capsule's veth (the capsule's gateway), if it has one.
    pub fn host_ip(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        self.get(id).ok().and_then(|c| c.record.net.host_ip())
    }

    /// Exit code of the capsule's init if it died on its own (`None` while it runs).
    pub fn init_exit(&self, id: &str) -> Option<i32> {
        self.get(id).ok().and_then(|c| c.watch.exit_code())
    }

    /// Ids of the capsules this runtime manages now.
    pub fn capsule_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Removes the host-wide nft table `inet wrenn` (for tests and uninstall; capsules that
    /// still run lose their egress).
    pub async fn teardown_host_network() -> Result<(), RuntimeError> {
        net::teardown_host()
            .await
            .map_err(|e| host_err("remove nft table", "-", e))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Capsule>> {
        self.inner
            .capsules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Capsule, RuntimeError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::CapsuleNotFound(id.to_owned()))
    }

    fn dirs(&self, id: &str) -> CapsuleDirs {
        CapsuleDirs::new(&self.inner.cfg.data_dir.join("capsules"), id)
    }

    fn state_root(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("state")
    }

    fn cgroup(&self, id: &str) -> CapsuleCgroup {
        CapsuleCgroup::new(self.inner.cgroup_version, id)
    }

    /// A live capsule, or `InvalidState` when its init has died.
    fn running(&self, id: &str) -> Result<Capsule, RuntimeError> {
        let c = self.get(id)?;
        if let Some(code) = c.watch.exit_code() {
            return Err(RuntimeError::InvalidState {
                id: id.to_owned(),
                state: CapsuleState::Exited { code },
            });
        }
        Ok(c)
    }
}

/// Copies the agent to `dst` through a temp file + rename, so running capsules that still
/// execute the old inode are unaffected.
fn install_agent(src: &Path, dst: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).map_err(|e| anyhow::anyhow!("copy {}: {e}", src.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

#[async_trait]
impl Runtime for ContainerRuntime {
    fn kind(&self) -> &'static str {
        "container"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn create(&self, spec: &CapsuleSpec) -> Result<CapsuleHandle, RuntimeError> {
        self.create_capsule(spec).await
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.running(id)?;
        let cg = self.cgroup(id);
        tokio::task::spawn_blocking(move || cg.freeze(FREEZE_TIMEOUT))
            .await
            .map_err(|e| host_err("freeze cgroup", id, e))?
            .map_err(|e| host_err("freeze cgroup", id, e))
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.running(id)?;
        let cg = self.cgroup(id);
        tokio::task::spawn_blocking(move || cg.thaw(FREEZE_TIMEOUT))
            .await
            .map_err(|e| host_err("thaw cgroup", id, e))?
            .map_err(|e| host_err("thaw cgroup", id, e))
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        self.destroy_capsule(id).await
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, RuntimeError> {
        let capsule = self.running(id)?;
        let cg = self.cgroup(id);
        let was_frozen = cg.is_frozen();
        if !was_frozen {
            let c = cg.clone();
            tokio::task::spawn_blocking(move || c.freeze(FREEZE_TIMEOUT))
                .await
                .map_err(|e| host_err("freeze cgroup", id, e))?
                .map_err(|e| host_err("freeze cgroup", id, e))?;
        }
        let made = self
            .inner
            .templates
            .create_snapshot(
                name,
                &self.dirs(id).rootfs(),
                &capsule.record.template,
                capsule
                    .record
                    .ids
                    .map(|n| (ids::host_base(n), ids::RANGE_SIZE)),
            )
            .await;
        if !was_frozen {
            let c = cg.clone();
            tokio::task::spawn_blocking(move || c.thaw(FREEZE_TIMEOUT))
                .await
                .map_err(|e| host_err("thaw cgroup", id, e))?
                .map_err(|e| host_err("thaw cgroup", id, e))?;
        }
        Ok(SnapshotInfo {
            template: made?,
            kind: SnapshotKind::Files,
            sizes: None,
        })
    }

    fn template_backend(&self, name: &str) -> Option<crate::Backend> {
        self.inner.templates.required_backend(name)
    }

    fn template_user(&self, name: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|c| c.record.template == name)
            .map(|c| c.record.id.clone())
    }

    async fn delete_template(&self, name: &str) -> Result<(), RuntimeError> {
        if let Some(capsule) = self.template_user(name) {
            return Err(RuntimeError::Protected {
                name: name.to_owned(),
                reason: Protection::InUse { capsule },
            });
        }
        self.inner.templates.delete_snapshot(name).await
    }

    async fn recover(&self, known: &[String]) -> Result<RecoveryReport, RuntimeError> {
        self.recover_capsules(known).await
    }

    fn agent_endpoint(&self, id: &str) -> AgentEndpoint {
        AgentEndpoint::Unix {
            path: self.dirs(id).agent_socket(),
        }
    }

    fn exit_status(&self, id: &str) -> Option<i32> {
        self.init_exit(id)
    }

    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError> {
        let c = self.running(id)?;
        let cg = self.cgroup(id);
        let dirs = self.dirs(id).with_disk(c.record.disk_mb > 0);
        tokio::task::spawn_blocking(move || {
            let (cpu_ns, memory_bytes) = cg.usage()?;
            Ok::<_, std::io::Error>(ResourceUsage {
                cpu_ns,
                memory_bytes,
                disk_bytes: dirs.disk_bytes(),
            })
        })
        .await
        .map_err(|e| host_err("read usage", id, e))?
        .map_err(|e| host_err("read usage", id, e))
    }

    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, RuntimeError> {
        Ok(self.inner.templates.list())
    }

    async fn ensure_template(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        self.inner.templates.ensure(name).await
    }
}
