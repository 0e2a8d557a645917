//! Shared helpers: one scratch-directory helper, a runtime per test on a fresh data dir, a guard
//! that destroys capsules on drop, polling with deadlines.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wrenn_agent_client::AgentClient;
use wrenn_runtime::container::{ContainerConfig, ContainerRuntime};
use wrenn_runtime::{AgentEndpoint, CapsuleHandle, CapsuleSpec, NetworkMode, Runtime, Source};

/// Whether we may run (root); prints the reason when not.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP {test}: needs root (run as root: capsules need namespaces and cgroups)");
    false
}

/// Whether the minimal (debootstrap) template may be used.
pub fn minimal_allowed(test: &str) -> bool {
    if std::env::var_os("WRENN_SKIP_MINIMAL").is_some() {
        eprintln!("SKIP {test}: WRENN_SKIP_MINIMAL is set");
        return false;
    }
    true
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("WRENN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/wrenn"))
}

pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WRENN_AGENT") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("target/x86_64-unknown-linux-gnu/release/wrenn-agent")
}

/// A fresh directory under the system temp dir (`wrenn-test-{tag}-{pid}-{seq}`), removed with
/// everything in it on drop. The one scratch helper of these tests.
pub struct Scratch(PathBuf);

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "wrenn-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create scratch dir");
        Self(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host path of a unix agent endpoint (the container runtime hands out only those).
pub fn socket_path(e: &AgentEndpoint) -> PathBuf {
    e.host_path().expect("a unix agent endpoint").to_owned()
}

/// A runtime on its own data dir, removed (with every capsule) on drop.
pub struct TestRuntime {
    pub rt: ContainerRuntime,
    pub data_dir: PathBuf,
    /// Removed after the capsules are destroyed (fields drop after `Drop::drop`).
    _scratch: Scratch,
}

impl TestRuntime {
    pub fn new() -> Self {
        Self::with_recipes(None)
    }

    /// A runtime that also knows the recipes of `dir` (`<dir>/<name>/recipe.toml`).
    pub fn with_recipes(dir: Option<&Path>) -> Self {
        let scratch = Scratch::new("rt");
        let data_dir = scratch.path().join("data");
        let agent = agent_binary();
        assert!(
            agent.exists(),
            "agent binary {} missing: run scripts/build-agent.sh or set WRENN_AGENT",
            agent.display()
        );
        let mut cfg = Self::config(&data_dir);
        cfg.extra_recipes = dir.map(Path::to_owned);
        let rt = ContainerRuntime::new(cfg).expect("runtime");
        if std::env::var_os("WRENN_TEST_NO_HEALTH").is_some() {
            rt.set_health_check(false);
        }
        Self {
            rt,
            data_dir,
            _scratch: scratch,
        }
    }

    pub fn config(data_dir: &Path) -> ContainerConfig {
        ContainerConfig {
            data_dir: data_dir.to_owned(),
            cache_dir: cache_dir(),
            agent_binary: agent_binary(),
            launcher: vec![env!("CARGO_BIN_EXE_wrenn-launcher").into()],
            extra_recipes: None,
        }
    }

    /// Creates a capsule and returns a guard that destroys it on drop.
    pub async fn capsule(&self, template: &str, network: NetworkMode) -> Capsule {
        self.capsule_with(template, network, 256, 128).await
    }

    pub async fn capsule_with(
        &self,
        template: &str,
        network: NetworkMode,
        memory_mb: u32,
        pids_limit: u32,
    ) -> Capsule {
        self.capsule_spec(spec(
            template,
            network,
            memory_mb,
            pids_limit,
            test_disk_mb(),
        ))
        .await
    }

    /// A capsule with a disk of `disk_mb` MiB (0: none).
    pub async fn capsule_disk(
        &self,
        template: &str,
        network: NetworkMode,
        disk_mb: u32,
    ) -> Capsule {
        self.capsule_spec(spec(template, network, 256, 128, disk_mb))
            .await
    }

    pub async fn capsule_spec(&self, spec: CapsuleSpec) -> Capsule {
        let handle = self.rt.create(&spec).await.expect("create capsule");
        Capsule {
            rt: self.rt.clone(),
            client: AgentClient::new(handle.agent.clone()),
            handle,
        }
    }
}

/// Disk size of test capsules: `WRENN_TEST_DISK_MB` (0: no disk), default 1024.
pub fn test_disk_mb() -> u32 {
    std::env::var("WRENN_TEST_DISK_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

pub fn spec(
    template: &str,
    network: NetworkMode,
    memory_mb: u32,
    pids_limit: u32,
    disk_mb: u32,
) -> CapsuleSpec {
    CapsuleSpec {
        id: new_id(),
        source: Source::Template(template.into()),
        vcpus: 1,
        memory_mb,
        pids_limit,
        network,
        disk_mb,
        backend: None,
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        let rt = self.rt.clone();
        let ids = rt.capsule_ids();
        block_on_side(async move {
            for id in ids {
                let _ = rt.destroy(&id).await;
            }
        });
        self.rt.wait_disk_pool_idle(Duration::from_secs(30));
    }
}

/// A capsule destroyed on drop, even when the test failed.
pub struct Capsule {
    pub rt: ContainerRuntime,
    pub handle: CapsuleHandle,
    pub client: AgentClient,
}

impl Capsule {
    pub fn id(&self) -> &str {
        &self.handle.id
    }
}

impl Drop for Capsule {
    fn drop(&mut self) {
        let (rt, id) = (self.rt.clone(), self.handle.id.clone());
        block_on_side(async move {
            if let Err(e) = rt.destroy(&id).await {
                eprintln!("guard: destroy {id}: {e:#}");
            }
        });
    }
}

/// Runs a future to completion on a fresh runtime in a scoped thread (usable from Drop inside
/// a tokio test).
pub fn block_on_side<F: std::future::Future<Output = ()> + Send>(f: F) {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("side runtime")
                .block_on(f)
        });
    });
}

/// `cl-` + 25 base36 chars, as the server makes them.
pub fn new_id() -> String {
    use rand::Rng;
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut r = rand::thread_rng();
    let s: String = (0..25)
        .map(|_| A[r.gen_range(0..A.len())] as char)
        .collect();
    format!("cl-{s}")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_until<T, Fut: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    mut f: impl FnMut() -> Fut,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Host-side leftovers of capsule `id`: mounts, cgroups, netns, processes named by it.
pub fn leftovers(data_dir: &Path, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mountinfo.contains(id) {
        out.push("mount".into());
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.filter_map(Result::ok) {
            if e.path().join("wrenn").join(id).exists() {
                out.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    if Path::new("/run/netns").join(id).exists() {
        out.push("netns".into());
    }
    if data_dir.join("capsules").join(id).exists() {
        out.push("capsule dir".into());
    }
    if data_dir.join("state").join(id).exists() {
        out.push("libcontainer state".into());
    }
    for n in loops_backed_by(&data_dir.join("capsules").join(id)) {
        out.push(format!("loop device {n}"));
    }
    out
}

/// A capsule's overlay upper dir on the host: on its disk when it has one.
pub fn upper_dir(data_dir: &Path, id: &str) -> PathBuf {
    let cdir = data_dir.join("capsules").join(id);
    if cdir.join("disk.img").exists() {
        cdir.join("disk/upper")
    } else {
        cdir.join("upper")
    }
}

/// Loop devices whose backing file is `prefix` or below it.
pub fn loops_backed_by(prefix: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = prefix.display().to_string();
    for e in std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .filter_map(Result::ok)
    {
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let b = backing.trim_end();
        if b == prefix || b.starts_with(&format!("{prefix}/")) {
            out.push(format!("{} -> {b}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// Runs a foreground command through the agent and returns its result.
pub async fn exec(
    c: &Capsule,
    req: wrenn_types::agent::ExecRequest,
) -> wrenn_types::agent::ExecResult {
    match c.client.exec(&req).await.expect("exec request") {
        wrenn_agent_client::ExecOutcome::Finished(r) => r,
        other => panic!("unexpected exec outcome {other:?}"),
    }
}

/// `sh -c script` through the agent, as root, in `/`.
pub async fn sh(c: &Capsule, script: &str) -> wrenn_types::agent::ExecResult {
    exec(
        c,
        wrenn_types::agent::ExecRequest {
            process: wrenn_types::agent::ProcessSpec {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                cwd: Some("/".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
}
