//! Create, destroy and recover: the verbs that make or remove host resources.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ids;
use super::launcher::{LaunchReply, LaunchRequest};
use super::net::{self, CapsuleNet};
use super::overlay::CapsuleDirs;
use super::record::CapsuleRecord;
use super::steps::Steps;
use super::watch::InitWatch;
use super::{health, host_err, spec, Capsule, ContainerRuntime, READY_TIMEOUT};
use crate::templates::RunConfig;
use crate::{
    services, sys, AgentEndpoint, CapsuleHandle, CapsuleSpec, NetworkMode, RecoveryReport,
    ResourceKind, RuntimeError, Source,
};
use wrenn_agent_client::AgentClient;

/// How long destroy waits for a capsule's tasks to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one TCP connect of a service's port probe.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Capsule ids become paths, hostnames, cgroup and netns names: keep them tame.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How often the host firewall table is checked.
const FIREWALL_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl ContainerRuntime {
    pub(super) async fn create_capsule(
        &self,
        s: &CapsuleSpec,
    ) -> Result<CapsuleHandle, RuntimeError> {
        let id = s.id.as_str();
        if !valid_id(id) {
            return Err(RuntimeError::Launch {
                id: id.to_owned(),
                source: anyhow::anyhow!("invalid capsule id"),
            });
        }
        let dirs = self.dirs(id).with_disk(s.disk_mb > 0);
        if self.lock().contains_key(id) || dirs.root.exists() {
            return Err(RuntimeError::AlreadyExists {
                kind: ResourceKind::Capsule,
                name: id.to_owned(),
            });
        }
        let template = s.source.name();
        // A snapshot is never a recipe's template; both boot the files fresh here.
        if matches!(s.source, Source::Snapshot(_)) && self.inner.templates.is_base(template) {
            return Err(RuntimeError::TemplateNotFound(template.to_owned()));
        }
        self.inner.templates.ensure(template).await?;
        let run = self.inner.templates.run_config(template)?;
        let lower = self.inner.templates.rootfs(template);
        if s.network == NetworkMode::Egress {
            self.inner
                .host_net
                .get_or_try_init(|| async {
                    let host = net::setup_host().await?;
                    self.spawn_firewall_watchdog();
                    Ok::<_, anyhow::Error>(host)
                })
                .await
                .map_err(|e| host_err("set up host network", id, e))?;
        }
        dirs.create()
            .map_err(|e| host_err("create capsule dir", id, e))?;
        let mut record = CapsuleRecord {
            id: id.to_owned(),
            template: template.to_owned(),
            lower,
            net: CapsuleNet {
                netns: id.to_owned(),
                slot: None,
            },
            ids: None,
            disk_mb: s.disk_mb,
            init_pid: None,
            init_start: None,
        };
        match self.start(s, &run, &dirs, &mut record).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                if let Err(ce) = self.teardown(&record, None).await {
                    tracing::error!(capsule = id, error = %ce, "cleanup after failed create");
                }
                Err(e)
            }
        }
    }

    /// The steps of create after the capsule dir exists; the caller cleans up on error.
    async fn start(
        &self,
        s: &CapsuleSpec,
        run: &RunConfig,
        dirs: &CapsuleDirs,
        record: &mut CapsuleRecord,
    ) -> Result<CapsuleHandle, RuntimeError> {
        let id = s.id.as_str();
        let t0 = Instant::now();
        if s.network == NetworkMode::Egress {
            record.net.slot = Some(
                net::claim_slot(&self.inner.cfg.data_dir, id)
                    .map_err(|e| host_err("allocate network slot", id, e))?,
            );
        }
        let range = ids::claim_range(&self.inner.cfg.data_dir, id)
            .map_err(|e| host_err("allocate id range", id, e))?;
        record.ids = Some(range);
        let base = ids::host_base(range);
        record
            .save(&dirs.record())
            .map_err(|e| host_err("write capsule.json", id, e))?;
        let host_conf = match s.network {
            NetworkMode::Egress => std::fs::read_to_string("/etc/resolv.conf").ok(),
            NetworkMode::Isolated => None,
        };
        let cid = id.to_owned();
        let (lower, d2, pool, disk_mb) = (
            record.lower.clone(),
            dirs.clone(),
            self.inner.disk_pool.clone(),
            s.disk_mb,
        );
        let runtime_dir = self.inner.runtime_dir.clone();
        // Disk (when asked for), resolv.conf and overlay, in parallel with the network. The
        // task returns the failed step with its cause.
        let root = tokio::task::spawn_blocking(move || {
            let mut steps = Steps::start();
            if disk_mb > 0 {
                d2.mount_disk(&pool, disk_mb)
                    .map_err(|e| ("set up disk", anyhow::Error::from(e)))?;
                steps.mark("disk");
            }
            d2.make_userns(base)
                .map_err(|e| ("make user namespace", e.into()))?;
            steps.mark("userns");
            d2.seed_etc(&cid, host_conf.as_deref(), base)
                .map_err(|e| ("write /etc files", e.into()))?;
            steps.mark("etc");
            d2.mount(&lower, &runtime_dir, &mut steps)
                .map_err(|e| ("mount overlay", e.into()))?;
            Ok(steps)
        });
        let host_net = self.inner.host_net.get().cloned().unwrap_or_default();
        let mut net_steps = Steps::start();
        let (net_res, root_res) = tokio::join!(
            net::create_timed(&record.net, &host_net, &mut net_steps),
            root
        );
        net_res.map_err(|e| host_err("create network", id, e))?;
        let root_steps = root_res
            .map_err(|e| host_err("prepare capsule root", id, e))?
            .map_err(|(step, e)| host_err(step, id, e))?;
        let t_prep = t0.elapsed();

        let config = spec::build(&spec::SpecInput {
            id,
            rootfs: &dirs.run_root(),
            userns: &dirs.userns(),
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            pids_limit: s.pids_limit,
            nofile: self.inner.nofile,
            cpus: &self.inner.cpus.pick(s.vcpus),
            mems: &self.inner.cpus.mems,
        });
        let bytes = serde_json::to_vec(&config).map_err(|e| host_err("write bundle", id, e))?;
        std::fs::write(dirs.bundle().join("config.json"), bytes)
            .map_err(|e| host_err("write bundle", id, e))?;

        let t_bundle = t0.elapsed();
        let (pid, launch_steps) = self
            .launch(&LaunchRequest {
                id: id.to_owned(),
                bundle: dirs.bundle(),
                root: self.state_root(),
                agent_socket: dirs.agent_socket(),
                netns: record.net.netns_path(),
                sysfs: dirs.run_root().join("sys"),
                cgroups: self.cgroup(id).view(),
                rootfs: dirs.run_root(),
            })
            .await
            .map_err(|source| RuntimeError::Launch {
                id: id.to_owned(),
                source,
            })?;
        let t_launch = t0.elapsed();
        record.init_pid = Some(pid);
        record.init_start = sys::pid_start_time(pid);
        record
            .save(&dirs.record())
            .map_err(|e| host_err("write capsule.json", id, e))?;
        let watch = InitWatch::start(id, pid).map_err(|e| host_err("watch capsule init", id, e))?;

        let mut guest = None;
        if self.inner.health_check.load(Ordering::Relaxed) {
            let w = watch.clone();
            (_, guest) = health::wait_ready(&dirs.agent_socket(), READY_TIMEOUT, move || w.alive())
                .await
                .map_err(|waited| RuntimeError::AgentNotReady {
                    id: id.to_owned(),
                    waited_ms: waited.as_millis() as u64,
                })?;
        }
        let t_ready = t0.elapsed();
        // Once the agent answers, not during the launch or the agent's start: the next
        // spare's exec would compete with them for the CPU. In a task: the spawn is not the
        // caller's wait.
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.launchers.refill() });
        if !run.services.is_empty() {
            let agent = AgentClient::new(dirs.agent_socket());
            let netns = record.net.netns_path();
            services::start_all(id, &agent, run, |port| {
                net::port_open(netns.clone(), port, PORT_PROBE_TIMEOUT)
            })
            .await?;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            capsule = id,
            total_ms = ms(t0.elapsed()),
            prep_ms = ms(t_prep),
            net = %net_steps,
            root = %root_steps,
            bundle_ms = ms(t_bundle - t_prep),
            launch_ms = ms(t_launch - t_bundle),
            launcher = %launch_steps,
            ready_ms = ms(t_ready - t_launch),
            services_ms = ms(t0.elapsed() - t_ready),
            "capsule created"
        );
        self.lock().insert(
            id.to_owned(),
            Capsule {
                record: record.clone(),
                watch,
            },
        );
        Ok(CapsuleHandle {
            id: id.to_owned(),
            agent: AgentEndpoint::Unix {
                path: dirs.agent_socket(),
            },
            ip: record.net.capsule_ip(),
            init_pid: pid,
            guest,
        })
    }

    /// Re-checks the host firewall table every [`FIREWALL_CHECK`] while this runtime lives, and
    /// restores it after a firewall reload removed or changed it.
    fn spawn_firewall_watchdog(&self) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FIREWALL_CHECK).await;
                if weak.strong_count() == 0 {
                    return;
                }
                match net::ensure_host().await {
                    Ok(true) => tracing::warn!(
                        "host firewall table inet wrenn was removed or changed; restored"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %wrenn_types::error::chain(e.as_ref()), "cannot restore host firewall table")
                    }
                }
            }
        });
    }

    /// Runs the launcher once (the spare one started ahead when there is one, see
    /// [`super::spare`]); returns the init pid and the launcher's own step timings.
    async fn launch(&self, req: &LaunchRequest) -> anyhow::Result<(i32, Steps)> {
        let mut child = self.inner.launchers.take().context("spawn launcher")?;
        let mut stdin = child.stdin.take().context("launcher stdin")?;
        stdin
            .write_all(&serde_json::to_vec(req)?)
            .await
            .context("write launch request")?;
        drop(stdin);
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .context("launcher stdout")?
            .read_to_end(&mut out)
            .await
            .context("read launch reply")?;
        let status = child.wait().await.context("wait launcher")?;
        let reply: LaunchReply = serde_json::from_slice(&out).with_context(|| {
            format!(
                "launcher ({status}) replied {:?}",
                String::from_utf8_lossy(&out)
            )
        })?;
        match reply {
            LaunchReply::Started { pid, steps } => Ok((pid, steps)),
            LaunchReply::Failed { error } => Err(anyhow::anyhow!("{}", error.join(": "))),
        }
    }

    pub(super) async fn destroy_capsule(&self, id: &str) -> Result<(), RuntimeError> {
        let live = self.lock().remove(id);
        let (record, watch) = match live {
            Some(c) => (c.record, Some(c.watch)),
            None => match CapsuleRecord::load(&self.dirs(id).record()) {
                Ok(r) => (r, None),
                Err(_) => {
                    // Nothing recorded; still sweep what a crash may have left under this id.
                    let r = CapsuleRecord {
                        id: id.to_owned(),
                        template: String::new(),
                        lower: Default::default(),
                        net: CapsuleNet {
                            netns: id.to_owned(),
                            slot: None,
                        },
                        ids: None,
                        disk_mb: 0,
                        init_pid: None,
                        init_start: None,
                    };
                    if !self.dirs(id).root.exists()
                        && !self.state_root().join(id).exists()
                        && !self.cgroup(id).exists()
                        && !r.net.netns_path().exists()
                    {
                        return Ok(());
                    }
                    (r, None)
                }
            },
        };
        self.teardown(&record, watch).await
    }

    /// Removes every host resource of a capsule. Each step tolerates its resource being gone.
    async fn teardown(
        &self,
        record: &CapsuleRecord,
        watch: Option<InitWatch>,
    ) -> Result<(), RuntimeError> {
        let id = record.id.as_str();
        let cg = self.cgroup(id);
        let init = record.init_pid.filter(|p| {
            sys::pid_start_time(*p).is_some() && sys::pid_start_time(*p) == record.init_start
        });
        tokio::task::spawn_blocking(move || {
            if let Some(pid) = init {
                sys::sigkill(pid)?;
            }
            cg.kill_and_remove(KILL_TIMEOUT)
        })
        .await
        .map_err(|e| host_err("kill capsule", id, e))?
        .map_err(|e| host_err("kill capsule", id, e))?;
        // Reap the init (it is our child when this process or its launcher started it).
        if let Some(w) = watch {
            let _ = tokio::time::timeout(KILL_TIMEOUT, w.exited()).await;
        } else if let Some(pid) = init {
            let deadline = Instant::now() + KILL_TIMEOUT;
            while sys::pid_exists(pid) && Instant::now() < deadline {
                match sys::reap_nohang(pid) {
                    Ok(sys::Reap::Running) => tokio::time::sleep(Duration::from_millis(1)).await,
                    // Not ours to reap (e.g. re-parented to the host's init after a restart).
                    _ => break,
                }
            }
        }
        let state = self.state_root().join(id);
        if state.exists() {
            std::fs::remove_dir_all(&state)
                .map_err(|e| host_err("remove container state", id, e))?;
        }
        let dirs = self.dirs(id);
        let removed = tokio::task::spawn_blocking(move || dirs.remove())
            .await
            .map_err(|e| host_err("remove capsule dir", id, e))
            .and_then(|r| r.map_err(|e| host_err("remove capsule dir", id, e)));
        // The network goes even when the dir could not (a loop device slow to free): a retry
        // then has less to do. The slot and id range stay claimed until both are gone.
        let net = net::destroy(&record.net)
            .await
            .map_err(|e| host_err("remove network", id, e));
        removed?;
        net?;
        if let Some(slot) = record.net.slot {
            net::release_slot(slot);
        }
        if let Some(range) = record.ids {
            ids::release_range(range);
        }
        Ok(())
    }

    pub(super) async fn recover_capsules(
        &self,
        known: &[String],
    ) -> Result<RecoveryReport, RuntimeError> {
        let mut report = RecoveryReport::default();
        let capsules_dir = self.inner.cfg.data_dir.join("capsules");
        let mut seen: Vec<String> = Vec::new();
        let entries =
            std::fs::read_dir(&capsules_dir).map_err(|e| host_err("scan capsules", "-", e))?;
        for e in entries.filter_map(Result::ok) {
            let Ok(id) = e.file_name().into_string() else {
                continue;
            };
            if self.lock().contains_key(&id) {
                seen.push(id);
                continue;
            }
            let dirs = self.dirs(&id);
            let record = CapsuleRecord::load(&dirs.record()).ok();
            let is_known = known.contains(&id);
            let alive = record.as_ref().and_then(|r| {
                let pid = r.init_pid?;
                (r.init_start.is_some() && sys::pid_start_time(pid) == r.init_start).then_some(pid)
            });
            // A capsule started before the agent socket moved to the host-only path serves on
            // a socket inside the capsule, which we no longer connect to: not adoptable.
            let alive = alive.filter(|_| {
                let ok = dirs.agent_socket().exists();
                if !ok {
                    tracing::warn!(capsule = %id, "no host-only agent socket; not adopting");
                }
                ok
            });
            match (is_known, alive, record) {
                (true, Some(pid), Some(record)) => {
                    let watch = InitWatch::start(&id, pid)
                        .map_err(|e| host_err("watch capsule init", &id, e))?;
                    report.adopted.push(crate::CapsuleHandle {
                        id: id.clone(),
                        agent: AgentEndpoint::Unix {
                            path: dirs.agent_socket(),
                        },
                        ip: record.net.capsule_ip(),
                        init_pid: pid,
                        guest: None,
                    });
                    self.lock()
                        .insert(id.clone(), super::Capsule { record, watch });
                }
                (is_known, _, _) => {
                    self.destroy_capsule(&id).await?;
                    if is_known {
                        report.lost.push(id.clone());
                    } else {
                        report.removed.push(id.clone());
                    }
                }
            }
            seen.push(id);
        }
        // Claims of runtimes whose data dir is gone (removed with everything in it): a range is
        // free then; a slot only once its namespace and veth are gone too.
        let freed = net::CLAIMS.free_orphans(|n, id| {
            std::path::Path::new("/run/netns").join(id).exists()
                || std::path::Path::new("/sys/class/net")
                    .join(net::veth_name(n))
                    .exists()
        }) + ids::CLAIMS.free_orphans(|_, _| false);
        if freed > 0 {
            tracing::info!(freed, "freed claims of data dirs that no longer exist");
        }
        // Remains without a capsule dir: libcontainer state and network slots of this runtime.
        let mut orphans: Vec<String> = std::fs::read_dir(self.state_root())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for (slot, id) in net::owned_slots(&self.inner.cfg.data_dir) {
            if !seen.contains(&id) {
                let _ = net::destroy(&CapsuleNet {
                    netns: id.clone(),
                    slot: Some(slot),
                })
                .await;
                net::release_slot(slot);
                orphans.push(id);
            }
        }
        for (range, id) in ids::owned_ranges(&self.inner.cfg.data_dir) {
            if !seen.contains(&id) {
                ids::release_range(range);
                orphans.push(id);
            }
        }
        orphans.sort();
        orphans.dedup();
        for id in orphans.into_iter().filter(|id| !seen.contains(id)) {
            self.destroy_capsule(&id).await?;
            if known.contains(&id) {
                report.lost.push(id);
            } else {
                report.removed.push(id);
            }
        }
        // Loop devices still backed by the (deleted) image of a capsule whose dir is gone, and
        // half-made pool images of a crashed runtime.
        for (n, image) in sys::loops_backed_by(&capsules_dir) {
            let id = image
                .strip_prefix(&capsules_dir)
                .ok()
                .and_then(|p| p.iter().next())
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !self.lock().contains_key(&id) && !self.dirs(&id).root.exists() {
                sys::loop_detach(n).map_err(|e| host_err("detach stray loop device", &id, e))?;
            }
        }
        self.inner
            .disk_pool
            .sweep()
            .map_err(|e| host_err("sweep disk pool", "-", e))?;
        for id in known {
            let accounted = report.adopted.iter().any(|h| &h.id == id)
                || report.lost.contains(id)
                || self.lock().contains_key(id);
            if !accounted {
                report.lost.push(id.clone());
            }
        }
        Ok(report)
    }
}
