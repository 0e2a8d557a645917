//! Warm templates: a template booted once, its services started, and saved with its RAM in a
//! file (`share=on`, so the guest's memory is the file) and its devices in a small stream
//! (`x-ignore-shared` leaves the RAM out). New capsules of the template are then clones: QEMU
//! maps the RAM file private (pages are shared until a clone writes them), loads the devices
//! (`-incoming defer`, `migrate-incoming`), and the guest continues with the capsule's own
//! identity (see `identity`). Under TCG that takes a fraction of a cold boot.
//!
//! ```text
//! data_dir/microvm/warm/<template>-<mem>m-<vcpus>c-<fingerprint>/
//!     ram          guest RAM (the template's; clones never write it)
//!     state        devices
//!     disk.qcow2   the warm VM's writes over the template image
//!     vmstate.json what it was (see `saved::SavedMeta`)
//! ```
//!
//! A warm image is made on the first create of its template with that guest size (that create
//! waits for it), once; the fingerprint in its name covers the template, the kernel, the
//! initramfs (agent and init script), QEMU and the accelerator, so any change makes a new one.
//! Every memory size and vCPU count used gets its own image: a clone's RAM must be the saved
//! RAM. Capsules without a network boot cold (a clone has the saved VM's devices).
//!
//! # Limitations
//! Images of an old fingerprint stay on disk until removed by hand (running clones may still
//! read them).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::qemu::{self, files, Ram};
use super::saved::{self, Saved, SavedMeta, Start};
use super::{qmp, MicroVmRuntime};
use crate::{CapsuleSpec, NetworkMode};
use wrenn_agent_client::AgentClient;

/// The RAM file in a warm image.
const RAM: &str = "ram";
/// How long the guest gets to see its host leave before it is saved, so a clone's agent waits
/// for a new host instead of holding the saved session.
const SETTLE: Duration = Duration::from_millis(300);
/// How long QEMU may take to end after `quit`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

impl MicroVmRuntime {
    /// The warm image for capsule `s`, made now if missing; `None` when `s` cannot be a clone.
    pub(super) async fn warm_image(&self, s: &CapsuleSpec) -> anyhow::Result<Option<Saved>> {
        if s.network != NetworkMode::Egress {
            return Ok(None);
        }
        let template = s.source.name();
        self.inner.templates.ensure(template).await?;
        let (vcpus, memory_mb) = (s.vcpus.max(1), s.memory_mb.max(128));
        let fp = self.fingerprint(template, vcpus, memory_mb, s.disk_mb)?;
        let root = self.inner.cfg.data_dir.join("microvm/warm");
        let dir = root.join(format!("{template}-{memory_mb}m-{vcpus}c-{fp}"));
        if let Some(w) = load(&dir) {
            return Ok(Some(w));
        }
        let _g = self.inner.warm_lock.lock().await;
        if let Some(w) = load(&dir) {
            return Ok(Some(w));
        }
        std::fs::create_dir_all(&root).context("create warm dir")?;
        let tmp = root.join(format!(".build-{fp}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).context("create warm build dir")?;
        let t0 = std::time::Instant::now();
        let made = self.make_warm(s, &fp, &tmp, vcpus, memory_mb).await;
        match made {
            Ok(()) => {
                std::fs::rename(&tmp, &dir).context("rename warm image")?;
                tracing::info!(
                    template,
                    memory_mb,
                    vcpus,
                    secs = t0.elapsed().as_secs_f64(),
                    "warm image made"
                );
                Ok(load(&dir))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Boots a capsule of `s`'s template with its RAM in `out/ram`, saves it into `out`, and
    /// removes the capsule (its disk moves into `out`).
    async fn make_warm(
        &self,
        s: &CapsuleSpec,
        fp: &str,
        out: &Path,
        vcpus: u32,
        memory_mb: u32,
    ) -> anyhow::Result<()> {
        let id = format!("warm-{fp}");
        // A leftover of a crashed server.
        let _ = self.destroy_vm(&id).await;
        let spec = CapsuleSpec {
            id: id.clone(),
            vcpus,
            memory_mb,
            ..s.clone()
        };
        let ram = Ram::File {
            path: out.join(RAM),
            share: true,
        };
        let handle = self
            .create_vm_from(&spec, Start::Cold { ram }, super::READY_TIMEOUT)
            .await?;
        warm_up(&handle.agent).await;
        let saved = self.save_warm(&id, out).await;
        let vm = self.lock().remove(&id);
        if let Some(vm) = vm {
            self.teardown(&vm.record).await?;
        }
        saved?;
        let meta = SavedMeta {
            vcpus,
            memory_mb,
            compressed: false,
            named_ram: true,
        };
        std::fs::write(out.join(saved::META), serde_json::to_vec_pretty(&meta)?)
            .context("write vmstate.json")?;
        Ok(())
    }

    /// Saves running VM `id` into `out` (devices in `state`, its disk moved to `disk.qcow2`)
    /// and ends its QEMU.
    async fn save_warm(&self, id: &str, out: &Path) -> anyhow::Result<()> {
        let dir = self.capsule_dir(id);
        let vm = self.get(id)?;
        let live = vm.live.context("warm vm is not running")?;
        self.set_live(id, None);
        drop(live.relay);
        tokio::time::sleep(SETTLE).await;
        let mut q = qmp::Qmp::connect(&dir.join(files::QMP)).await?;
        q.execute("stop", None).await?;
        let state = out.join(saved::STATE);
        saved::migrate_out(&mut q, &format!("exec:cat > {}", state.display()), true).await?;
        saved::sync_file(&state).await?;
        let _ = q.execute("quit", None).await;
        let _ = tokio::time::timeout(EXIT_TIMEOUT, live.watch.exited()).await;
        std::fs::rename(dir.join("disk.qcow2"), out.join(saved::DISK)).context("move warm disk")?;
        Ok(())
    }

    /// What a warm image depends on, hashed (16 hex digits).
    fn fingerprint(
        &self,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
        disk_mb: u32,
    ) -> anyhow::Result<String> {
        let parts = match self.inner.warm_parts.get() {
            Some(p) => p.clone(),
            None => {
                let p = self.boot_parts_hash()?;
                self.inner.warm_parts.get_or_init(|| p).clone()
            }
        };
        let mut h = Sha256::new();
        h.update(
            std::fs::read(self.inner.templates.dir_of(template).join("template.json"))
                .context("read template.json")?,
        );
        h.update(format!(
            "{parts} {} {vcpus} {memory_mb} {disk_mb}",
            self.inner.cfg.accel.as_str()
        ));
        Ok(hex(&h.finalize()[..8]))
    }

    /// Hash of the initramfs (agent, init script), the kernel and QEMU, which do not change
    /// while the runtime runs.
    fn boot_parts_hash(&self) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        h.update(std::fs::read(&self.inner.initrd).context("read initramfs")?);
        for p in [self.inner.kernel.vmlinux.as_path(), &which(qemu::QEMU)] {
            let m = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
            h.update(format!("{} {} {}\n", p.display(), m.len(), m.mtime()));
        }
        Ok(hex(&h.finalize()))
    }
}

/// Runs a shell once in the warm VM before it is saved, so every clone finds the shell in its
/// page cache and the agent's exec path touched (the clone's first exec is the one a user
/// waits for). A failure only costs that.
async fn warm_up(agent: &crate::AgentEndpoint) {
    let req = wrenn_types::agent::ExecRequest::from(wrenn_types::agent::ProcessSpec::new(
        "/bin/sh",
        ["-c", "true"],
    ));
    if let Err(error) = AgentClient::new(agent.clone()).exec(&req).await {
        tracing::warn!(%error, "warm-up exec in the warm vm failed");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The warm image in `dir`, if complete.
fn load(dir: &Path) -> Option<Saved> {
    let meta: SavedMeta =
        serde_json::from_slice(&std::fs::read(dir.join(saved::META)).ok()?).ok()?;
    Some(Saved {
        disk: dir.join(saved::DISK),
        incoming: saved::incoming_uri(&dir.join(saved::STATE), meta.compressed),
        meta,
        ram_file: Some(dir.join(RAM)),
    })
}

/// `prog` on `PATH` (itself when not found, so its metadata read fails clearly).
fn which(prog: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(prog))
}
