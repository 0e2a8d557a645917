//! The `microvm` backend: each capsule is a QEMU `microvm` guest with its own kernel, booted
//! from the template's ext4 image under a qcow2 overlay, with the same static `wrenn-agent` as
//! PID 1, reached over a virtio-serial port.
//!
//! # Design
//! One module per concern: `qemu` (command line, start), `qmp` (the control socket), `guest`
//! (kernel, initramfs, TSC rate), `image` (template image, capsule overlay), `relay` (the host
//! side of the agent channel: a unix socket per VM whose connections become yamux streams over
//! the one serial connection), `net` (a tap bridged to the capsule's veth in its own network
//! namespace), `lifecycle` (create, pause, resume, destroy, recover) and `snapshot`.
//!
//! ```text
//! data_dir/microvm/boot/initrd.cpio          busybox, virtio modules, init script, agent
//! data_dir/microvm/capsules/<id>/vm.json     what recovery reads
//! data_dir/microvm/capsules/<id>/disk.qcow2  the capsule's writes over the template image
//! data_dir/microvm/capsules/<id>/state       saved devices and memory while paused
//! data_dir/microvm/capsules/<id>/{qmp,serial,agent}.sock, qemu.pid
//! ```
//!
//! Pause stops the guest, migrates its state into a file (zstd by default) and ends QEMU, so a
//! paused capsule holds no memory and survives a server restart and a host reboot; resume
//! starts QEMU with `-incoming` from that file.
//!
//! # Limitations
//! One accelerator per runtime (KVM or TCG, see [`MicroVmRuntime::probe_boot`]); a server
//! serving containers too puts both behind [`crate::Runtimes`]. A snapshot keeps the
//! guest's memory and processes (`snapshot`), so capsules made from it keep its vCPUs and
//! memory and need this backend. A capsule's disk limit is its root
//! filesystem's size, the template's files included (see `image`).

pub mod guest;
mod identity;
pub mod image;
mod lifecycle;
mod net;
mod probe;
pub mod qemu;
pub mod qmp;
pub mod relay;
mod saved;
mod snapshot;
mod warm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::container::net::CapsuleNet;
use crate::container::watch::InitWatch;
use crate::templates::{DirectoryForm, Recipes, Templates};
use crate::tree::{private_dir, PRIVATE_DIR_MODE};
use crate::{
    AgentEndpoint, Capabilities, CapsuleState, Protection, RecoveryReport, ResourceUsage, Runtime,
    RuntimeError, SnapshotInfo, TemplateInfo,
};
pub use qemu::Accel;

/// What the microvm backend can do.
const CAPABILITIES: Capabilities = Capabilities {
    pause_releases_memory: true,
    snapshot_keeps_memory: true,
    paused_survives_host_reboot: true,
    survives_server_restart: true,
};

/// How long `create` and `resume` wait for the agent (a TCG boot takes 2-3 s on an idle host).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a create's first boot may take to reach the agent before it is booted again
/// (~5x the slowest TCG boot seen on the loaded 2-core host).
pub const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(15);

/// The least memory a guest gets, MiB: the guest kernel and its agent need about this much.
pub const MIN_MEMORY_MB: u32 = 128;

/// The vCPUs and memory a guest asking for `vcpus` and `memory_mb` gets.
fn guest_size(vcpus: u32, memory_mb: u32) -> (u32, u32) {
    (vcpus.max(1), memory_mb.max(MIN_MEMORY_MB))
}

/// Where the microvm runtime keeps its files and finds its parts.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// Root of templates and capsules (shared with the container runtime's templates).
    pub data_dir: PathBuf,
    /// Cache of built trees and the prepared guest kernel (`microvm/kernel`).
    pub cache_dir: PathBuf,
    /// The static `wrenn-agent`, the guest's PID 1.
    pub agent_binary: PathBuf,
    /// More template recipes (as for containers).
    pub extra_recipes: Option<PathBuf>,
    /// KVM or TCG.
    pub accel: Accel,
    /// Compress saved state with zstd on pause (smaller files, slower pause).
    pub compress_state: bool,
    /// New capsules of a template are copy-on-write clones of its warm image (see `warm`).
    pub warm_templates: bool,
}

/// The recovery record of one VM (`vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmRecord {
    /// Capsule id.
    pub id: String,
    /// Template name.
    pub template: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mb: u32,
    /// Network namespace and slot.
    pub net: CapsuleNet,
    /// QEMU's pid while it runs.
    pub pid: Option<i32>,
    /// Its start time (ticks since boot), to tell pid reuse apart.
    pub pid_start: Option<u64>,
    /// Paused: the state is in `state` and no QEMU runs.
    pub paused: bool,
    /// Whether `state` is zstd-compressed.
    #[serde(default)]
    pub state_compressed: bool,
    /// Guest RAM is the named block of a clone ([`qemu::Ram::Anon`] when resumed).
    #[serde(default)]
    pub named_ram: bool,
    /// Its host id range (`container::ids`): QEMU runs as the range's first uid and gid.
    /// `None` in records of VMs started before QEMU was confined.
    #[serde(default)]
    pub ids: Option<u32>,
}

impl VmRecord {
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }

    fn load(path: &Path) -> std::io::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    /// Whether the recorded QEMU is still the process with that pid.
    fn qemu_alive(&self) -> bool {
        match (self.pid, self.pid_start) {
            (Some(pid), Some(start)) => crate::sys::pid_start_time(pid) == Some(start),
            _ => false,
        }
    }
}

/// A running VM's host-side parts.
#[derive(Debug, Clone)]
struct Live {
    watch: InitWatch,
    relay: Arc<relay::Relay>,
}

/// A VM this runtime manages.
#[derive(Debug, Clone)]
struct Vm {
    record: VmRecord,
    /// `None` while paused.
    live: Option<Live>,
}

/// The `microvm` [`Runtime`].
#[derive(Debug, Clone)]
pub struct MicroVmRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: MicroVmConfig,
    templates: Templates,
    kernel: guest::Kernel,
    initrd: PathBuf,
    tsc_khz: u64,
    vms: Mutex<HashMap<String, Vm>>,
    /// Serialises template image builds.
    image_lock: tokio::sync::Mutex<()>,
    /// Serialises warm image builds.
    warm_lock: tokio::sync::Mutex<()>,
    /// Hash of the boot parts a warm image depends on (computed once).
    warm_parts: std::sync::OnceLock<String>,
    /// Per-capsule verbs (pause, resume, destroy) never overlap.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    host_net: tokio::sync::OnceCell<crate::container::net::HostNet>,
    /// The host's cgroup layout (each QEMU runs in a group of its own).
    cgroups: crate::container::cgroups::CgroupVersion,
}

pub(crate) fn host_err(step: &'static str, id: &str, e: impl Into<anyhow::Error>) -> RuntimeError {
    RuntimeError::Host {
        id: id.to_owned(),
        step,
        source: e.into(),
    }
}

impl MicroVmRuntime {
    /// Checks the kernel is prepared, writes the initramfs (with the agent) and measures the
    /// TSC rate.
    pub fn new(cfg: MicroVmConfig) -> Result<Self, RuntimeError> {
        let err = |step, e| host_err(step, "-", e);
        crate::sys::set_child_subreaper().map_err(|e| err("set child subreaper", e.into()))?;
        let kernel =
            guest::Kernel::find(&cfg.cache_dir).map_err(|e| err("find guest kernel", e))?;
        let mut recipes =
            Recipes::embedded().map_err(|e| err("load template recipes", e.into()))?;
        if let Some(dir) = &cfg.extra_recipes {
            recipes = recipes
                .with_dir(dir)
                .map_err(|e| err("load template recipes", e.into()))?;
        }
        for d in ["templates", "microvm", "microvm/boot", "microvm/capsules"] {
            private_dir(&cfg.data_dir.join(d), PRIVATE_DIR_MODE)
                .map_err(|e| err("create data dir", e.into()))?;
        }
        private_dir(&cfg.cache_dir.join("templates"), PRIVATE_DIR_MODE)
            .map_err(|e| err("create template cache dir", e.into()))?;
        let initrd = cfg.data_dir.join("microvm/boot/initrd.cpio");
        guest::write_initrd(
            &kernel,
            Path::new("/bin/busybox"),
            &cfg.agent_binary,
            &initrd,
        )
        .map_err(|e| err("write guest initramfs", e))?;
        let tsc_khz = guest::tsc_khz(Duration::from_millis(50))
            .map_err(|e| err("measure TSC rate", e.into()))?;
        let cgroups = crate::container::cgroups::CgroupVersion::detect()
            .map_err(|e| err("detect cgroup layout", e.into()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                templates: Templates::new(
                    &cfg.data_dir,
                    &cfg.cache_dir,
                    recipes,
                    Arc::new(DirectoryForm),
                ),
                kernel,
                initrd,
                tsc_khz,
                vms: Mutex::new(HashMap::new()),
                image_lock: tokio::sync::Mutex::new(()),
                warm_lock: tokio::sync::Mutex::new(()),
                warm_parts: std::sync::OnceLock::new(),
                busy: Mutex::new(HashMap::new()),
                cgroups,
                host_net: tokio::sync::OnceCell::new(),
                cfg,
            }),
        })
    }

    /// Boots the guest kernel and initramfs with `accel` as a probe (`wrenn.probe=1`: the
    /// init script reports and powers off); the time it took, or why it failed within `bound`.
    /// Nested or partial KVM can open `/dev/kvm` and still hang every guest, so only a boot
    /// says KVM works.
    pub async fn probe_boot(&self, accel: Accel, bound: Duration) -> Result<Duration, String> {
        use tokio::io::AsyncReadExt;
        if accel == Accel::Kvm {
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
            {
                return Err(format!("/dev/kvm: {e}"));
            }
        }
        let t0 = std::time::Instant::now();
        let args = qemu::probe_args(
            &self.inner.kernel.vmlinux,
            &self.inner.initrd,
            self.inner.tsc_khz,
            accel,
        );
        let mut child = tokio::process::Command::new(qemu::QEMU)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", qemu::QEMU))?;
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let read = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = out.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                buf.extend_from_slice(&chunk[..n]);
                if String::from_utf8_lossy(&buf).contains(guest::PROBE_OK) {
                    return true;
                }
            }
        };
        let ok = tokio::time::timeout(bound, read).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        match ok {
            Ok(true) => Ok(t0.elapsed()),
            Ok(false) => Err(format!(
                "the {} probe guest ended without booting",
                accel.as_str()
            )),
            Err(_) => Err(format!(
                "the {} probe guest did not boot within {bound:?}",
                accel.as_str()
            )),
        }
    }

    /// [`Self::probe_boot`] with KVM, unless this host already answered it since its last boot
    /// with the same QEMU, guest kernel and `/dev/kvm` (see `probe`); `true` with a remembered
    /// answer.
    pub async fn probe_kvm(&self, bound: Duration) -> (Result<Duration, String>, bool) {
        let cache = &self.inner.cfg.cache_dir;
        let key = probe::ProbeKey::current(&self.inner.kernel.vmlinux);
        if let Some(answer) = probe::recall(cache, &key) {
            return (answer, true);
        }
        let answer = self.probe_boot(Accel::Kvm, bound).await;
        probe::remember(cache, &key, &answer);
        (answer, false)
    }

    /// Capsule `id`'s guest console: its newest output while its QEMU runs, else empty.
    pub async fn console(&self, id: &str) -> String {
        let sock = self.capsule_dir(id).join(qemu::files::QMP);
        match qmp::Qmp::connect(&sock).await {
            Ok(mut q) => q.console().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The accelerator VMs run with.
    pub fn accel(&self) -> Accel {
        self.inner.cfg.accel
    }

    /// Ids of the capsules this runtime manages now.
    pub fn capsule_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Host pid of capsule `id`'s QEMU (`None` while paused or unknown).
    pub fn qemu_pid(&self, id: &str) -> Option<i32> {
        self.lock().get(id).and_then(|v| v.record.pid)
    }

    /// The run directory of capsule `id`.
    pub fn capsule_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.data_dir.join("microvm/capsules").join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vm>> {
        self.inner.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Vm, RuntimeError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::CapsuleNotFound(id.to_owned()))
    }

    /// The per-capsule lock of the verbs that change a VM's state.
    fn busy(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(id.to_owned()).or_default())
    }

    /// A running VM, or `InvalidState` when paused or dead.
    fn running(&self, id: &str) -> Result<(VmRecord, Live), RuntimeError> {
        let vm = self.get(id)?;
        let Some(live) = vm.live else {
            return Err(RuntimeError::InvalidState {
                id: id.to_owned(),
                state: CapsuleState::Paused,
            });
        };
        if let Some(code) = live.watch.exit_code() {
            return Err(RuntimeError::InvalidState {
                id: id.to_owned(),
                state: CapsuleState::Exited { code },
            });
        }
        Ok((vm.record, live))
    }
}

#[async_trait]
impl Runtime for MicroVmRuntime {
    fn kind(&self) -> &'static str {
        "microvm"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn create(
        &self,
        spec: &crate::CapsuleSpec,
    ) -> Result<crate::CapsuleHandle, RuntimeError> {
        // About one fresh boot in 30-50 never reaches the agent under TCG here (cause not found
        // yet; the guest's console is logged): such a boot gets one more try.
        match self.create_vm(spec, FIRST_BOOT_TIMEOUT).await {
            Err(RuntimeError::AgentNotReady { waited_ms, .. }) => {
                tracing::warn!(
                    capsule = %spec.id,
                    waited_ms,
                    "microvm guest did not reach its agent; booting it once more"
                );
                self.create_vm(spec, READY_TIMEOUT).await
            }
            r => r,
        }
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.pause_vm(id).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.resume_vm(id).await
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        self.destroy_vm(id).await
    }

    async fn recover(&self, known: &[String]) -> Result<RecoveryReport, RuntimeError> {
        self.recover_vms(known).await
    }

    fn agent_endpoint(&self, id: &str) -> AgentEndpoint {
        AgentEndpoint::Unix {
            path: self
                .capsule_dir(id)
                .join(wrenn_types::agent::AGENT_SOCKET_NAME),
        }
    }

    fn exit_status(&self, id: &str) -> Option<i32> {
        self.lock()
            .get(id)
            .and_then(|v| v.live.as_ref())
            .and_then(|l| l.watch.exit_code())
    }

    async fn usage(&self, id: &str) -> Result<ResourceUsage, RuntimeError> {
        let vm = self.get(id)?;
        let disk_bytes = image::allocated_bytes(&self.capsule_dir(id).join("disk.qcow2"));
        let Some(pid) = vm.record.pid.filter(|_| vm.live.is_some()) else {
            return Ok(ResourceUsage {
                disk_bytes,
                ..Default::default()
            });
        };
        let (cpu_ns, memory_bytes) = proc_usage(pid).unwrap_or((0, 0));
        Ok(ResourceUsage {
            cpu_ns,
            memory_bytes,
            disk_bytes,
        })
    }

    async fn list_templates(&self) -> Result<Vec<TemplateInfo>, RuntimeError> {
        Ok(self.inner.templates.list())
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo, RuntimeError> {
        self.snapshot_vm(id, name).await
    }

    fn template_backend(&self, name: &str) -> Option<crate::Backend> {
        self.inner.templates.required_backend(name)
    }

    fn guest_size(&self, _: Option<crate::Backend>, vcpus: u32, memory_mb: u32) -> (u32, u32) {
        guest_size(vcpus, memory_mb)
    }

    fn template_user(&self, name: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|v| v.record.template == name)
            .map(|v| v.record.id.clone())
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

    async fn ensure_template(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        self.inner.templates.ensure(name).await
    }
}

/// QEMU's CPU time (user + system, ns) and resident memory (bytes), from `/proc/<pid>`.
fn proc_usage(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(((utime + stime) * 1_000_000_000 / hz, rss_kb * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process_is_read() {
        let (cpu, rss) = proc_usage(std::process::id() as i32).expect("usage");
        assert!(rss > 0);
        let _ = cpu;
    }

    #[test]
    fn record_round_trips() {
        let r = VmRecord {
            id: "cl-x".into(),
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 256,
            net: CapsuleNet {
                netns: "cl-x".into(),
                slot: Some(3),
            },
            pid: None,
            pid_start: None,
            paused: true,
            state_compressed: true,
            named_ram: false,
            ids: Some(7),
        };
        let p = std::env::temp_dir().join(format!("wrenn-vmrec-{}.json", std::process::id()));
        r.save(&p).expect("save");
        let back = VmRecord::load(&p).expect("load");
        assert!(back.paused && back.state_compressed && back.net.slot == Some(3));
        assert!(!back.qemu_alive());
        let _ = std::fs::remove_file(&p);
    }
}
