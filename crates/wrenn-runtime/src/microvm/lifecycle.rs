//! Create, pause, resume, destroy and recover: the verbs that start or end QEMU processes.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wrenn_agent_client::AgentClient;
use wrenn_types::agent::{Health, AGENT_SOCKET_NAME};

use super::qemu::{files, Ram, VmArgs};
use super::saved::{self, Saved, Start, StateFile};
use super::{host_err, image, net, qemu, qmp, Live, MicroVmRuntime, Vm, VmRecord, READY_TIMEOUT};
use crate::container::cgroups::CapsuleCgroup;
use crate::container::net::{self as cnet, CapsuleNet};
use crate::container::watch::InitWatch;
use crate::container::{health, ids};
use crate::templates::RunConfig;
use crate::{
    services, sys, AgentEndpoint, CapsuleHandle, CapsuleSpec, CapsuleState, NetworkMode,
    RecoveryReport, ResourceKind, RuntimeError, Source,
};

/// How long QEMU may take to end after `quit` or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long saving or loading a VM's state may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of one TCP connect of a service's port probe.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Under TCG a template's service gets this many times its recipe's deadline: the recipes'
/// deadlines are set for native speed, and Jupyter with its kernel took 40-90 s to start in an
/// emulated guest on the 2-core development host.
const TCG_SERVICE_DEADLINE_FACTOR: u64 = 4;
/// The capsule's disk in its run dir.
const DISK: &str = "disk.qcow2";
/// Saved state while paused.
const STATE: &str = "state";
/// The recovery record.
const RECORD: &str = "vm.json";

/// Gives `run`'s services the time they need on `accel` (see [`TCG_SERVICE_DEADLINE_FACTOR`]).
fn stretch_service_deadlines(run: &mut RunConfig, accel: qemu::Accel) {
    if accel == qemu::Accel::Tcg {
        for svc in &mut run.services {
            svc.timeout_sec = svc.timeout_sec.saturating_mul(TCG_SERVICE_DEADLINE_FACTOR);
        }
    }
}

/// Capsule ids become paths, hostnames and netns names: keep them tame.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl MicroVmRuntime {
    /// Owner of this runtime's network slot claims (kept apart from the container runtime's).
    fn owner(&self) -> std::path::PathBuf {
        self.inner.cfg.data_dir.join("microvm")
    }

    /// Creates capsule `s` (a clone of its template's warm image where there is one), waiting
    /// up to `ready` for its agent.
    pub(super) async fn create_vm(
        &self,
        s: &CapsuleSpec,
        ready: Duration,
    ) -> Result<CapsuleHandle, RuntimeError> {
        let t0 = Instant::now();
        let start = self.start_of(s).await?;
        tracing::debug!(
            capsule = %s.id,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            clone = matches!(start, Start::Clone(_)),
            "microvm start chosen"
        );
        self.create_vm_from(s, start, ready).await
    }

    /// Creates capsule `s` booting cold or as a clone of a saved machine ([`Start`]), waiting
    /// up to `ready` for its agent.
    pub(super) async fn create_vm_from(
        &self,
        s: &CapsuleSpec,
        start: Start,
        ready: Duration,
    ) -> Result<CapsuleHandle, RuntimeError> {
        let id = s.id.as_str();
        if !valid_id(id) {
            return Err(host_err(
                "validate id",
                id,
                anyhow::anyhow!("invalid capsule id"),
            ));
        }
        let dir = self.capsule_dir(id);
        if self.lock().contains_key(id) || dir.exists() {
            return Err(RuntimeError::AlreadyExists {
                kind: ResourceKind::Capsule,
                name: id.to_owned(),
            });
        }
        let template = s.source.name();
        if matches!(s.source, Source::Snapshot(_)) && self.inner.templates.is_base(template) {
            return Err(RuntimeError::TemplateNotFound(template.to_owned()));
        }
        self.inner.templates.ensure(template).await?;
        let mut run = self.inner.templates.run_config(template)?;
        stretch_service_deadlines(&mut run, self.inner.cfg.accel);
        let tdir = self.inner.templates.dir_of(template);
        let disk_mb = s.disk_mb;
        let base = if let Start::Clone(saved) = &start {
            saved.disk.clone()
        } else {
            let _g = self.inner.image_lock.lock().await;
            tokio::task::spawn_blocking(move || image::ensure_image(&tdir, disk_mb))
                .await
                .map_err(|e| host_err("make template image", id, e))?
                .map_err(|e| host_err("make template image", id, e))?
        };
        if s.network == NetworkMode::Egress {
            self.inner
                .host_net
                .get_or_try_init(cnet::setup_host)
                .await
                .map_err(|e| host_err("set up host network", id, e))?;
        }
        private_dir(&dir).map_err(|e| host_err("create capsule dir", id, e))?;
        let asked = super::guest_size(s.vcpus, s.memory_mb);
        let mut record = VmRecord {
            id: id.to_owned(),
            template: template.to_owned(),
            vcpus: start.vcpus().unwrap_or(asked.0),
            memory_mb: start.memory_mb().unwrap_or(asked.1),
            net: CapsuleNet {
                netns: id.to_owned(),
                slot: None,
            },
            pid: None,
            pid_start: None,
            paused: false,
            state_compressed: false,
            named_ram: start.ram() != Ram::Default,
            ids: None,
        };
        let t0 = Instant::now();
        let mut steps = Steps::new();
        let started = async {
            record.ids = Some(
                ids::claim_range(&self.owner(), id)
                    .map_err(|e| host_err("allocate host ids", id, e))?,
            );
            if s.network == NetworkMode::Egress {
                record.net.slot = Some(
                    cnet::claim_slot(&self.owner(), id)
                        .map_err(|e| host_err("allocate network slot", id, e))?,
                );
            }
            record
                .save(&dir.join(RECORD))
                .map_err(|e| host_err("write vm.json", id, e))?;
            steps.mark("slot");
            match &start {
                Start::Clone(Saved {
                    overlay: Some(prepared),
                    ..
                }) => image::copy_overlay(&base, prepared, &dir.join(DISK)).await,
                Start::Clone(_) => image::create_overlay(&base, "qcow2", &dir.join(DISK)).await,
                Start::Cold { .. } => image::create_overlay(&base, "raw", &dir.join(DISK)).await,
            }
            .map_err(|e| host_err("create disk overlay", id, e))?;
            steps.mark("overlay");
            let (live, guest) = self
                .boot(
                    &mut record,
                    start.ram(),
                    start.incoming(),
                    ready,
                    &mut steps,
                )
                .await?;
            // A clone's services run already: they were saved running.
            if matches!(start, Start::Cold { .. }) && !run.services.is_empty() {
                let agent = AgentClient::new(dir.join(AGENT_SOCKET_NAME));
                let ip = record.net.capsule_ip();
                services::start_all(id, &agent, &run, |port| async move {
                    let Some(ip) = ip else { return false };
                    matches!(
                        tokio::time::timeout(
                            PORT_PROBE_TIMEOUT,
                            tokio::net::TcpStream::connect((ip, port))
                        )
                        .await,
                        Ok(Ok(_))
                    )
                })
                .await?;
            }
            Ok::<_, RuntimeError>((live, guest))
        }
        .await;
        let (live, guest) = match started {
            Ok(started) => started,
            Err(e) => {
                if matches!(e, RuntimeError::AgentNotReady { .. }) {
                    let console = self.console(id).await;
                    let tail: Vec<&str> = console.lines().rev().take(20).collect();
                    tracing::warn!(
                        capsule = id,
                        console = tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                        "guest console of a boot that did not reach the agent"
                    );
                }
                if let Err(ce) = self.teardown(&record).await {
                    tracing::error!(capsule = id, error = %ce, "cleanup after failed create");
                }
                return Err(e);
            }
        };
        tracing::debug!(
            capsule = id,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            steps = %steps,
            "microvm created"
        );
        let pid = record.pid.unwrap_or(0);
        let ip = record.net.capsule_ip();
        self.lock().insert(
            id.to_owned(),
            Vm {
                record,
                live: Some(live),
            },
        );
        Ok(CapsuleHandle {
            id: id.to_owned(),
            agent: AgentEndpoint::Unix {
                path: dir.join(AGENT_SOCKET_NAME),
            },
            ip,
            init_pid: pid,
            guest,
        })
    }

    /// Starts QEMU for `record` with guest RAM `ram` (fresh, or from the saved state
    /// `incoming`; into private RAM-file clones with `x-ignore-shared`), the relay, and waits
    /// for the agent, whose health answer it returns. The network namespace is made when
    /// missing (first boot, or a resume after a host reboot).
    pub(super) async fn boot(
        &self,
        record: &mut VmRecord,
        ram: Ram,
        incoming: Option<StateFile>,
        ready: Duration,
        steps: &mut Steps,
    ) -> Result<(Live, Option<Health>), RuntimeError> {
        let id = record.id.clone();
        let id = id.as_str();
        let dir = self.capsule_dir(id);
        let host_net = self.inner.host_net.get().cloned().unwrap_or_default();
        let net_args = if record.net.netns_path().exists() {
            self.net_args_of(record)
        } else {
            net::create(&record.net, &host_net)
                .await
                .map_err(|e| host_err("create network", id, e))?
        };
        steps.mark("network");
        let cow = matches!(ram, Ram::File { share: false, .. });
        let args = VmArgs {
            id: id.to_owned(),
            dir: dir.clone(),
            kernel: self.inner.kernel.vmlinux.clone(),
            initrd: self.inner.initrd.clone(),
            disk: dir.join(DISK),
            vcpus: record.vcpus,
            memory_mb: record.memory_mb,
            tsc_khz: self.inner.tsc_khz,
            accel: self.inner.cfg.accel,
            net: net_args,
            incoming: incoming.is_some(),
            ram,
            run_as: record.ids.map(ids::host_base),
        };
        let launch = |source| RuntimeError::Launch {
            id: id.to_owned(),
            source,
        };
        let cgroup = self
            .cgroup(id)
            .create(
                qemu::memory_limit(args.accel, args.memory_mb),
                qemu::MAX_TASKS,
            )
            .map_err(|e| host_err("create cgroup", id, e))?;
        let pid = qemu::start(
            &args,
            Some(&record.net.netns_path()),
            cgroup.into_iter().map(OwnedFd::from).collect(),
        )
        .await
        .map_err(launch)?;
        steps.mark("qemu_start");
        record.pid = Some(pid);
        record.pid_start = sys::pid_start_time(pid);
        record.paused = false;
        record
            .save(&dir.join(RECORD))
            .map_err(|e| host_err("write vm.json", id, e))?;
        let watch = InitWatch::start(id, pid).map_err(|e| host_err("watch qemu", id, e))?;
        if let Some(state) = incoming {
            saved::migrate_in(&dir.join(files::QMP), &state, cow)
                .await
                .map_err(launch)?;
            steps.mark("migrate_incoming");
            finish_incoming(&dir.join(files::QMP))
                .await
                .map_err(launch)?;
            steps.mark("load_and_cont");
            if cow {
                saved::clear_ignore_shared(&dir.join(files::QMP))
                    .await
                    .map_err(launch)?;
            }
        }
        let relay = self
            .start_relay(record)
            .map_err(|e| host_err("start agent relay", id, e))?;
        steps.mark("relay_start");
        let w = watch.clone();
        let (_, guest) = health::wait_ready(&dir.join(AGENT_SOCKET_NAME), ready, move || w.alive())
            .await
            .map_err(|waited| RuntimeError::AgentNotReady {
                id: id.to_owned(),
                waited_ms: waited.as_millis() as u64,
            })?;
        steps.mark("agent_ready");
        Ok((
            Live {
                watch,
                relay: Arc::new(relay),
            },
            guest,
        ))
    }

    pub(super) async fn pause_vm(&self, id: &str) -> Result<(), RuntimeError> {
        let busy = self.busy(id);
        let _g = busy.lock().await;
        let (mut record, live) = self.running(id)?;
        let dir = self.capsule_dir(id);
        let compress = self.inner.cfg.compress_state;
        let state = dir.join(STATE);
        // The guest sees the host leave and drops its session; the restored guest reconnects.
        self.set_live(id, None);
        drop(live.relay);
        match save_state(&dir.join(files::QMP), &state, compress).await {
            Ok(()) => {}
            Err(e) => {
                // Leave it running as it was.
                let _ = resume_in_place(&dir.join(files::QMP)).await;
                if let Ok(relay) = self.start_relay(&record) {
                    self.set_live(
                        id,
                        Some(Live {
                            watch: live.watch,
                            relay: Arc::new(relay),
                        }),
                    );
                }
                return Err(host_err("save vm state", id, e));
            }
        }
        if tokio::time::timeout(EXIT_TIMEOUT, live.watch.exited())
            .await
            .is_err()
        {
            if let Some(pid) = record.pid {
                let _ = sys::sigkill(pid);
            }
            let _ = tokio::time::timeout(EXIT_TIMEOUT, live.watch.exited()).await;
        }
        self.remove_cgroup(id);
        record.pid = None;
        record.pid_start = None;
        record.paused = true;
        record.state_compressed = compress;
        record
            .save(&dir.join(RECORD))
            .map_err(|e| host_err("write vm.json", id, e))?;
        self.lock().insert(id.to_owned(), Vm { record, live: None });
        Ok(())
    }

    pub(super) async fn resume_vm(&self, id: &str) -> Result<(), RuntimeError> {
        let busy = self.busy(id);
        let _g = busy.lock().await;
        let vm = self.get(id)?;
        if vm.live.is_some() {
            // Resuming a running capsule is a no-op, as for containers.
            return self.running(id).map(|_| ());
        }
        let mut record = vm.record;
        let dir = self.capsule_dir(id);
        let state = dir.join(STATE);
        let saved_state = StateFile {
            path: state.clone(),
            compressed: record.state_compressed,
        };
        let ram = if record.named_ram {
            Ram::Anon
        } else {
            Ram::Default
        };
        let mut steps = Steps::new();
        let (live, _) = match self
            .boot(
                &mut record,
                ram,
                Some(saved_state),
                READY_TIMEOUT,
                &mut steps,
            )
            .await
        {
            Ok(l) => l,
            Err(e) => {
                // Back to paused: the state file is still there.
                if let Some(pid) = record.pid.take() {
                    let _ = sys::sigkill(pid);
                }
                self.remove_cgroup(id);
                record.pid_start = None;
                record.paused = true;
                let _ = record.save(&dir.join(RECORD));
                let _ = std::fs::remove_file(dir.join(AGENT_SOCKET_NAME));
                return Err(e);
            }
        };
        tracing::debug!(capsule = id, steps = %steps, "microvm resumed");
        let _ = std::fs::remove_file(&state);
        self.lock().insert(
            id.to_owned(),
            Vm {
                record,
                live: Some(live),
            },
        );
        Ok(())
    }

    pub(super) async fn destroy_vm(&self, id: &str) -> Result<(), RuntimeError> {
        let busy = self.busy(id);
        let _g = busy.lock().await;
        let vm = self.lock().remove(id);
        let record = match vm {
            Some(vm) => {
                if let Some(live) = vm.live {
                    drop(live.relay);
                    if let Some(pid) = vm.record.pid.filter(|_| live.watch.alive()) {
                        let _ = sys::sigkill(pid);
                    }
                    let _ = tokio::time::timeout(EXIT_TIMEOUT, live.watch.exited()).await;
                }
                vm.record
            }
            None => match VmRecord::load(&self.capsule_dir(id).join(RECORD)) {
                Ok(r) => r,
                Err(_) => {
                    // Unknown: nothing of ours may be left but the directory.
                    let dir = self.capsule_dir(id);
                    if valid_id(id) && dir.exists() {
                        std::fs::remove_dir_all(&dir)
                            .map_err(|e| host_err("remove capsule dir", id, e))?;
                    }
                    return Ok(());
                }
            },
        };
        self.teardown(&record)
            .await
            .map_err(|e| host_err("destroy capsule", id, e))?;
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Kills QEMU if it still runs, removes the network, the slot claim and the run dir.
    pub(super) async fn teardown(&self, record: &VmRecord) -> anyhow::Result<()> {
        if record.qemu_alive() {
            if let Some(pid) = record.pid {
                let _ = sys::sigkill(pid);
                let t0 = Instant::now();
                while sys::pid_exists(pid) && t0.elapsed() < EXIT_TIMEOUT {
                    let _ = sys::reap_nohang(pid);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        self.cgroup(&record.id)
            .kill_and_remove(EXIT_TIMEOUT)
            .context("remove cgroup")?;
        net::destroy(&record.net).await.context("remove network")?;
        if let Some(slot) = record.net.slot {
            cnet::release_slot(slot);
        }
        if let Some(range) = record.ids {
            ids::release_range(range);
        }
        let dir = self.capsule_dir(&record.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).context("remove capsule dir")?;
        }
        Ok(())
    }

    /// The cgroups QEMU of capsule `id` runs in.
    pub(super) fn cgroup(&self, id: &str) -> CapsuleCgroup {
        CapsuleCgroup::new(self.inner.cgroups, id)
    }

    /// Removes the cgroups of a QEMU that has ended (its VM paused, or a resume failed).
    fn remove_cgroup(&self, id: &str) {
        if let Err(error) = self.cgroup(id).kill_and_remove(EXIT_TIMEOUT) {
            tracing::warn!(capsule = id, %error, "removing the cgroup of a stopped qemu");
        }
    }

    pub(super) async fn recover_vms(
        &self,
        known: &[String],
    ) -> Result<RecoveryReport, RuntimeError> {
        let mut report = RecoveryReport::default();
        let root = self.inner.cfg.data_dir.join("microvm/capsules");
        let entries: Vec<String> = std::fs::read_dir(&root)
            .map_err(|e| host_err("list capsules", "-", e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        for id in entries {
            let dir = root.join(&id);
            let record = match VmRecord::load(&dir.join(RECORD)) {
                Ok(r) if r.id == id => r,
                _ => {
                    let _ = std::fs::remove_dir_all(&dir);
                    report.removed.push(id);
                    continue;
                }
            };
            if self.lock().contains_key(&id) {
                continue;
            }
            if !known.contains(&id) {
                let _ = self.teardown(&record).await;
                report.removed.push(id);
                continue;
            }
            if record.paused && dir.join(STATE).exists() {
                // Kept as it was: only files, resumed on demand.
                report.adopted.push(CapsuleHandle {
                    id: id.clone(),
                    agent: self.agent_endpoint_of(&id),
                    ip: record.net.capsule_ip(),
                    init_pid: 0,
                    guest: None,
                });
                self.lock().insert(id, Vm { record, live: None });
                continue;
            }
            match self.adopt(&record) {
                Ok(live) => {
                    report.adopted.push(CapsuleHandle {
                        id: id.clone(),
                        agent: self.agent_endpoint_of(&id),
                        ip: record.net.capsule_ip(),
                        init_pid: record.pid.unwrap_or(0),
                        guest: None,
                    });
                    self.lock().insert(
                        id,
                        Vm {
                            record,
                            live: Some(live),
                        },
                    );
                }
                Err(_) => {
                    let _ = self.teardown(&record).await;
                    report.lost.push(id);
                }
            }
        }
        // Id ranges and slots claimed by a crashed run of this runtime for capsules that are
        // gone.
        for (range, id) in ids::owned_ranges(&self.owner()) {
            if !self.lock().contains_key(&id) {
                ids::release_range(range);
            }
        }
        for (slot, id) in cnet::owned_slots(&self.owner()) {
            if !self.lock().contains_key(&id) {
                let _ = net::destroy(&CapsuleNet {
                    netns: id,
                    slot: Some(slot),
                })
                .await;
                cnet::release_slot(slot);
            }
        }
        Ok(report)
    }

    /// Re-attaches to a VM whose QEMU still runs.
    fn adopt(&self, record: &VmRecord) -> anyhow::Result<Live> {
        if !record.qemu_alive() {
            bail!("qemu is gone");
        }
        let pid = record.pid.context("no pid")?;
        let watch = InitWatch::start(&record.id, pid)?;
        let relay = self.start_relay(record)?;
        Ok(Live {
            watch,
            relay: Arc::new(relay),
        })
    }

    fn agent_endpoint_of(&self, id: &str) -> AgentEndpoint {
        AgentEndpoint::Unix {
            path: self.capsule_dir(id).join(AGENT_SOCKET_NAME),
        }
    }

    pub(super) fn set_live(&self, id: &str, live: Option<Live>) {
        if let Some(vm) = self.lock().get_mut(id) {
            vm.live = live;
        }
    }

    /// The state of capsule `id` as the server should report it (for tests and logs).
    pub fn state(&self, id: &str) -> Option<CapsuleState> {
        let vm = self.lock().get(id).cloned()?;
        Some(match vm.live {
            None => CapsuleState::Paused,
            Some(l) => match l.watch.exit_code() {
                Some(code) => CapsuleState::Exited { code },
                None => CapsuleState::Running,
            },
        })
    }
}

/// Milliseconds each step of a create or resume took, for the debug log.
pub(super) struct Steps {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    pub(super) fn new() -> Self {
        Self {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends step `name` now.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done
            .push((name, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, ms)) in self.done.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={ms:.1}")?;
        }
        Ok(())
    }
}

/// `dir` for root only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Stops the guest, writes its state to `state` and quits QEMU.
pub(super) async fn save_state(
    qmp_sock: &Path,
    state: &Path,
    compress: bool,
) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    q.execute("stop", None).await?;
    let tmp = StateFile {
        path: state.with_extension("tmp"),
        compressed: compress,
    };
    saved::migrate_out(&mut q, &tmp, false).await?;
    std::fs::rename(&tmp.path, state).context("rename saved state")?;
    // QEMU answers `quit` and then exits; the connection closing is expected.
    let _ = q.execute("quit", None).await;
    Ok(())
}

/// After a failed save: lets the guest run again.
async fn resume_in_place(qmp_sock: &Path) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    q.execute("cont", None).await?;
    Ok(())
}

/// Waits until an `-incoming` QEMU has loaded its state, then lets it run.
pub(super) async fn finish_incoming(qmp_sock: &Path) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    let t0 = Instant::now();
    loop {
        let status = q.status().await?;
        match status.as_str() {
            "inmigrate" if t0.elapsed() < MIGRATE_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            "inmigrate" => bail!("state not loaded in {MIGRATE_TIMEOUT:?}"),
            "paused" | "postmigrate" | "prelaunch" => break,
            "running" => return Ok(()),
            other => bail!("unexpected vm status {other} while loading state"),
        }
    }
    let (mstatus, error) = q.migrate_status().await?;
    if mstatus == "failed" {
        bail!("loading state failed: {}", error.unwrap_or_default());
    }
    q.execute("cont", None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_tame() {
        assert!(valid_id("cl-0123456789abcdefghijklmno"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
    }

    #[test]
    fn emulated_guests_get_longer_service_deadlines() {
        let recipe: RunConfig = serde_json::from_value(serde_json::json!({
            "services": [{"name": "jupyter", "cmd": "python3", "timeout_sec": 90}]
        }))
        .expect("parses");
        let mut kvm = recipe.clone();
        stretch_service_deadlines(&mut kvm, qemu::Accel::Kvm);
        assert_eq!(kvm, recipe);
        let mut tcg = recipe;
        stretch_service_deadlines(&mut tcg, qemu::Accel::Tcg);
        assert_eq!(
            tcg.services[0].timeout_sec,
            90 * TCG_SERVICE_DEADLINE_FACTOR
        );
    }
}
