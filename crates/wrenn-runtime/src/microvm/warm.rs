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
//!     overlay.qcow2 an empty overlay over disk.qcow2, copied as each clone's disk
//! ```
//!
//! A warm image is made on the first create of its template with that guest size (that create
//! waits for it), once; the fingerprint in its name covers the template, the kernel, the
//! initramfs (agent and init script), QEMU and the accelerator, so any change makes a new one.
//! Every memory size and vCPU count used gets its own image: a clone's RAM must be the saved
//! RAM. Capsules without a network boot cold (a clone has the saved VM's devices).
//!
//! When an image is made, the images of the same template, memory and vCPUs with another
//! fingerprint are removed unless a capsule's disk (a running or paused clone) backs onto one.
//!
//! # Limitations
//! An old image still backing a capsule stays until the next image of its kind is made after
//! that capsule is gone.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::qemu::{self, files, Ram};
use super::saved::{self, Saved, SavedMeta, Start};
use super::{qmp, MicroVmRuntime};
use crate::{CapsuleSpec, NetworkMode};

/// The RAM file in a warm image.
const RAM: &str = "ram";
/// The overlay over the warm disk that clones copy, made by the first clone.
const OVERLAY: &str = "overlay.qcow2";
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
        let (vcpus, memory_mb) = super::guest_size(s.vcpus, s.memory_mb);
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
                let kind = format!("{template}-{memory_mb}m-{vcpus}c-");
                let capsules = self.inner.cfg.data_dir.join("microvm/capsules");
                for old in stale_images(&root, &kind, &dir, &backing_files(&capsules)) {
                    match std::fs::remove_dir_all(&old) {
                        Ok(()) => tracing::info!(image = %old.display(), "old warm image removed"),
                        Err(error) => {
                            tracing::warn!(%error, image = %old.display(), "cannot remove old warm image");
                        }
                    }
                }
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
        // Saved after one exec, so every clone finds the shell in its page cache and the
        // agent's exec path touched (a clone's first exec is the one a user waits for).
        handle.warm_up().await;
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
        let state = saved::StateFile {
            path: out.join(saved::STATE),
            compressed: false,
        };
        saved::migrate_out(&mut q, &state, true).await?;
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
        for p in [self.inner.kernel.vmlinux.as_path(), &qemu::binary()] {
            let m = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
            h.update(format!("{} {} {}\n", p.display(), m.len(), m.mtime()));
        }
        Ok(hex(&h.finalize()))
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
        state: saved::StateFile {
            path: dir.join(saved::STATE),
            compressed: meta.compressed,
        },
        meta,
        ram_file: Some(dir.join(RAM)),
        overlay: Some(dir.join(OVERLAY)),
    })
}

/// Warm images in `root` of the same kind (name prefix `kind`: template, memory, vCPUs) as
/// `current` but of another fingerprint that no disk in `backing` backs onto (a running or
/// paused clone's overlay reads its image's disk; a running clone also maps its RAM file).
fn stale_images(root: &Path, kind: &str, current: &Path, backing: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(kind))
                .is_some_and(|fp| !fp.is_empty() && !fp.contains('-'))
        })
        .filter(|p| p != current && !backing.iter().any(|b| b.starts_with(p)))
        .collect()
}

/// The backing files of the capsules' disks under `capsules` (`<id>/disk.qcow2`).
fn backing_files(capsules: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(capsules) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| qcow2_backing(&e.path().join("disk.qcow2")))
        .collect()
}

/// The backing file a qcow2 image names in its header, if any.
fn qcow2_backing(image: &Path) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::ffi::OsStringExt;
    let mut f = std::fs::File::open(image).ok()?;
    let mut head = [0u8; 20];
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(head[16..20].try_into().ok()?);
    if offset == 0 || len == 0 || len > 1023 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; len as usize];
    f.read_exact(&mut name).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_unreferenced_images_of_the_same_kind_are_stale() {
        let d = crate::test_utils::Scratch::new("warm-gc");
        let root = d.path().join("warm");
        for name in [
            "busybox-512m-1c-aaaa",
            "busybox-512m-1c-bbbb",
            "busybox-512m-1c-cccc",
            "busybox-1024m-1c-dddd",
            "busybox-512m-1c-x-y",
            ".build-eeee-1",
        ] {
            std::fs::create_dir_all(root.join(name)).expect("mkdir");
        }
        let base = root.join("busybox-512m-1c-bbbb").join(saved::DISK);
        std::fs::write(&base, b"").expect("base");
        let capsules = d.path().join("capsules");
        std::fs::create_dir_all(capsules.join("cl-1")).expect("mkdir");
        crate::microvm::image::create_overlay(&base, "raw", &capsules.join("cl-1/disk.qcow2"))
            .await
            .expect("overlay");
        let backing = backing_files(&capsules);
        assert_eq!(backing, std::slice::from_ref(&base));
        let current = root.join("busybox-512m-1c-cccc");
        assert_eq!(
            stale_images(&root, "busybox-512m-1c-", &current, &backing),
            [root.join("busybox-512m-1c-aaaa")]
        );
        assert!(qcow2_backing(&base).is_none());
    }
}
