//! Saved machines that new capsules start as: a full-state snapshot template (its disk and a
//! stream of its devices and RAM) or a template's warm image (its disk, devices, and RAM in a
//! file that clones map private with `x-ignore-shared`). Either way the new capsule's disk is a
//! qcow2 overlay over the saved disk, and its identity is its own once the relay connects
//! (see `identity`).
//!
//! ```text
//! data_dir/templates/<snapshot>/template.json   name, run config, `runtime: microvm`
//! data_dir/templates/<snapshot>/vmstate.json    [`SavedMeta`]
//! data_dir/templates/<snapshot>/disk.qcow2      the flattened disk (no backing file)
//! data_dir/templates/<snapshot>/state           devices and RAM, zstd
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::image::run_qemu_img;
use super::qemu::Ram;
use super::{qmp, MicroVmRuntime};
use crate::{CapsuleSpec, RuntimeError, Source};

/// A snapshot template's description of its saved machine.
pub const META: &str = "vmstate.json";
/// Its disk.
pub const DISK: &str = "disk.qcow2";
/// Its devices and RAM.
pub const STATE: &str = "state";
/// How long polling a migration may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a saved machine was (`vmstate.json`): a clone must match it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SavedMeta {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mb: u32,
    /// `state` is zstd-compressed.
    pub compressed: bool,
    /// Its RAM was the named block (see [`Ram`]).
    pub named_ram: bool,
}

/// A saved machine a capsule starts as.
#[derive(Debug, Clone)]
pub struct Saved {
    /// Disk the clone's overlay goes over (qcow2).
    pub disk: PathBuf,
    /// The `-incoming` URI reading devices (and RAM, unless in `ram_file`).
    pub incoming: String,
    /// What it was.
    pub meta: SavedMeta,
    /// Its RAM file (warm images): mapped private, not in the stream.
    pub ram_file: Option<PathBuf>,
}

impl Saved {
    /// The snapshot template in `dir`, if it is a full-state one.
    pub fn of_snapshot(dir: &Path) -> Option<Self> {
        let meta: SavedMeta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
        Some(Self {
            disk: dir.join(DISK),
            incoming: incoming_uri(&dir.join(STATE), meta.compressed),
            meta,
            ram_file: None,
        })
    }
}

/// How a capsule starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Boots its template's image.
    Cold {
        /// Guest RAM.
        ram: Ram,
    },
    /// Continues a saved machine.
    Clone(Saved),
}

impl Start {
    /// Guest RAM of the new VM.
    pub fn ram(&self) -> Ram {
        match self {
            Self::Cold { ram } => ram.clone(),
            Self::Clone(s) => match &s.ram_file {
                Some(p) => Ram::File {
                    path: p.clone(),
                    share: false,
                },
                None if s.meta.named_ram => Ram::Anon,
                None => Ram::Default,
            },
        }
    }

    /// The state to load, if any.
    pub fn incoming(&self) -> Option<String> {
        match self {
            Self::Cold { .. } => None,
            Self::Clone(s) => Some(s.incoming.clone()),
        }
    }

    /// vCPUs the saved machine fixes.
    pub fn vcpus(&self) -> Option<u32> {
        match self {
            Self::Cold { .. } => None,
            Self::Clone(s) => Some(s.meta.vcpus),
        }
    }

    /// Memory the saved machine fixes.
    pub fn memory_mb(&self) -> Option<u32> {
        match self {
            Self::Cold { .. } => None,
            Self::Clone(s) => Some(s.meta.memory_mb),
        }
    }
}

/// `exec:` URI reading a saved state file.
pub fn incoming_uri(state: &Path, compressed: bool) -> String {
    if compressed {
        format!("exec:zstd -q -dc {}", state.display())
    } else {
        format!("exec:cat {}", state.display())
    }
}

impl MicroVmRuntime {
    /// How capsule `s` starts: as a clone of its full-state snapshot, of its template's warm
    /// image (when warm templates are on and one can be made), or cold.
    pub(super) async fn start_of(&self, s: &CapsuleSpec) -> Result<Start, RuntimeError> {
        let name = s.source.name();
        if let Some(saved) = Saved::of_snapshot(&self.inner.templates.dir_of(name)) {
            return Ok(Start::Clone(saved));
        }
        if self.inner.cfg.warm_templates && matches!(s.source, Source::Template(_)) {
            match self.warm_image(s).await {
                Ok(Some(saved)) => return Ok(Start::Clone(saved)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(template = name, error = %e, "no warm image; booting cold");
                }
            }
        }
        Ok(Start::Cold { ram: Ram::Default })
    }
}

/// Copies the disk chain ending in `disk` into one qcow2 image `out` with no backing file (so
/// it outlives the capsule and its template). `-U`: the (stopped) QEMU holds the image lock.
pub async fn flatten(disk: &Path, out: &Path) -> anyhow::Result<()> {
    run_qemu_img(&[
        "convert".as_ref(),
        "-U".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        disk.as_os_str(),
        out.as_os_str(),
    ])
    .await
}

/// Starts loading a `-incoming defer` VM from `uri`, its RAM being the private mapping of the
/// saved RAM file (`x-ignore-shared`: the stream holds devices only).
pub async fn migrate_incoming_shared(qmp_sock: &Path, uri: &str) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    q.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })),
    )
    .await?;
    q.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await?;
    Ok(())
}

/// Turns `x-ignore-shared` off again once a clone has loaded: with it on, QEMU writes every
/// RAM block's address into a stream, and the clone's own pauses and snapshots (loaded
/// without it) could not be read back.
pub async fn clear_ignore_shared(qmp_sock: &Path) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    q.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": false }] })),
    )
    .await?;
    Ok(())
}

/// Writes the stopped VM's state to `uri` (an `exec:` writer) and waits until QEMU says it
/// completed; the VM stays stopped. With `ignore_shared`, RAM in a shared file is left out.
pub async fn migrate_out(q: &mut qmp::Qmp, uri: &str, ignore_shared: bool) -> anyhow::Result<()> {
    if ignore_shared {
        q.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })),
        )
        .await?;
    }
    q.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": 10u64 << 30 })),
    )
    .await?;
    q.execute("migrate", Some(json!({ "uri": uri }))).await?;
    let t0 = Instant::now();
    loop {
        let (status, error) = q.migrate_status().await?;
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                bail!("migration {status}: {}", error.unwrap_or_default())
            }
            _ if t0.elapsed() > MIGRATE_TIMEOUT => {
                let _ = q.execute("migrate_cancel", None).await;
                bail!("migration did not complete in {MIGRATE_TIMEOUT:?}");
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Flushes a file an `exec:` writer made (it may still be writing when QEMU says completed).
pub async fn sync_file(path: &Path) -> anyhow::Result<()> {
    tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?
        .sync_all()
        .await
        .with_context(|| format!("sync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_dir_with_meta_is_a_saved_machine() {
        let d = crate::test_utils::Scratch::new("saved");
        assert!(Saved::of_snapshot(d.path()).is_none());
        let meta = SavedMeta {
            vcpus: 1,
            memory_mb: 512,
            compressed: true,
            named_ram: true,
        };
        std::fs::write(
            d.path().join(META),
            serde_json::to_vec(&meta).expect("json"),
        )
        .expect("write");
        let s = Saved::of_snapshot(d.path()).expect("saved");
        assert_eq!(s.meta, meta);
        assert!(s.incoming.starts_with("exec:zstd -q -dc "));
        let start = Start::Clone(s);
        assert_eq!(start.ram(), Ram::Anon);
        assert_eq!(start.memory_mb(), Some(512));
    }
}
