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

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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

/// A VM's saved devices (and RAM, unless it is in a RAM file) on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    /// The stream.
    pub path: PathBuf,
    /// zstd-compressed.
    pub compressed: bool,
}

/// A saved machine a capsule starts as.
#[derive(Debug, Clone)]
pub struct Saved {
    /// Disk the clone's overlay goes over (qcow2).
    pub disk: PathBuf,
    /// Its devices (and RAM, unless in `ram_file`).
    pub state: StateFile,
    /// What it was.
    pub meta: SavedMeta,
    /// Its RAM file (warm images): mapped private, not in the stream.
    pub ram_file: Option<PathBuf>,
    /// Where a ready-made overlay over `disk` is kept for clones to copy (warm images; see
    /// [`super::image::copy_overlay`]).
    pub overlay: Option<PathBuf>,
}

impl Saved {
    /// The snapshot template in `dir`, if it is a full-state one.
    pub fn of_snapshot(dir: &Path) -> Option<Self> {
        let meta: SavedMeta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
        Some(Self {
            disk: dir.join(DISK),
            state: StateFile {
                path: dir.join(STATE),
                compressed: meta.compressed,
            },
            meta,
            ram_file: None,
            overlay: None,
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
    pub fn incoming(&self) -> Option<StateFile> {
        match self {
            Self::Cold { .. } => None,
            Self::Clone(s) => Some(s.state.clone()),
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

/// Migration bandwidth cap (QEMU's default, 128 MiB/s, quadruples pause time).
const MIGRATE_BANDWIDTH: u64 = 10 << 30;
/// The fd name a state stream is handed to QEMU under.
const STATE_FD: &str = "wrenn-state";
/// How long the compressor may take to finish after QEMU is done with the stream.
const PIPE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets `x-ignore-shared` (RAM in a shared file stays out of the stream) on or off.
async fn ignore_shared(q: &mut qmp::Qmp, on: bool) -> anyhow::Result<()> {
    q.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] })),
    )
    .await
    .map(drop)
}

/// A zstd process on one end of a pipe whose other end QEMU gets.
fn zstd(
    args: &[&str],
    qemu_end_is_stdin: bool,
) -> anyhow::Result<(tokio::process::Child, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let (ours, theirs) = if qemu_end_is_stdin { (r, w) } else { (w, r) };
    let mut cmd = tokio::process::Command::new("zstd");
    cmd.args(args).stderr(std::process::Stdio::inherit());
    if qemu_end_is_stdin {
        cmd.stdin(std::process::Stdio::from(ours))
            .stdout(std::process::Stdio::null());
    } else {
        cmd.stdout(std::process::Stdio::from(ours))
            .stdin(std::process::Stdio::null());
    }
    // A compressor is killed with its handle (a failed save); a decompressor ends on its own
    // once QEMU has read the stream or closed its end.
    let child = cmd
        .kill_on_drop(qemu_end_is_stdin)
        .spawn()
        .context("start zstd")?;
    Ok((child, theirs))
}

/// Starts loading a `-incoming defer` VM from `state`. QEMU reads it from an fd it is handed
/// (the file, or a pipe from `zstd -d`), so it needs no access to the host's files. With
/// `shared`, its RAM is the private mapping of the saved RAM file and the stream holds devices
/// only (`x-ignore-shared`).
pub async fn migrate_in(qmp_sock: &Path, state: &StateFile, shared: bool) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    if shared {
        ignore_shared(&mut q, true).await?;
    }
    let path = state.path.display().to_string();
    let (child, fd) = if state.compressed {
        let (child, fd) = zstd(&["-q", "-dc", &path], false)?;
        (Some(child), fd)
    } else {
        let f = std::fs::File::open(&state.path).with_context(|| format!("open {path}"))?;
        (None, OwnedFd::from(f))
    };
    q.send_fd(STATE_FD, fd.as_fd()).await?;
    drop(fd);
    q.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("fd:{STATE_FD}") })),
    )
    .await?;
    if let Some(mut child) = child {
        // Reaped once QEMU has read the stream (or given up on it).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }
    Ok(())
}

/// Turns `x-ignore-shared` off again once a clone has loaded: with it on, QEMU writes every
/// RAM block's address into a stream, and the clone's own pauses and snapshots (loaded
/// without it) could not be read back.
pub async fn clear_ignore_shared(qmp_sock: &Path) -> anyhow::Result<()> {
    let mut q = qmp::Qmp::connect(qmp_sock).await?;
    ignore_shared(&mut q, false).await
}

/// Writes the stopped VM's state into `state` (through `zstd` when compressed) and waits until
/// it is complete and on disk; the VM stays stopped. QEMU writes to an fd it is handed, so it
/// needs no access to the host's files. With `shared`, RAM in a shared file is left out.
pub async fn migrate_out(q: &mut qmp::Qmp, state: &StateFile, shared: bool) -> anyhow::Result<()> {
    if shared {
        ignore_shared(q, true).await?;
    }
    q.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": MIGRATE_BANDWIDTH })),
    )
    .await?;
    let path = state.path.display().to_string();
    let (child, fd) = if state.compressed {
        let (child, fd) = zstd(&["-q", "-1", "-T1", "-f", "-o", &path], true)?;
        (Some(child), fd)
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&state.path)
            .with_context(|| format!("create {path}"))?;
        (None, OwnedFd::from(f))
    };
    q.send_fd(STATE_FD, fd.as_fd()).await?;
    drop(fd);
    let moved = async {
        q.execute("migrate", Some(json!({ "uri": format!("fd:{STATE_FD}") })))
            .await?;
        wait_migrated(q).await
    }
    .await;
    if let Err(e) = moved {
        drop(child);
        let _ = std::fs::remove_file(&state.path);
        return Err(e);
    }
    // QEMU closed its end: the compressor sees the end of the stream and finishes the file.
    if let Some(mut child) = child {
        let status = tokio::time::timeout(PIPE_TIMEOUT, child.wait())
            .await
            .context("zstd did not finish")?
            .context("wait for zstd")?;
        if !status.success() {
            let _ = std::fs::remove_file(&state.path);
            bail!("zstd writing {path}: {status}");
        }
    }
    // fsync through any fd of the file flushes it (the writer's may be zstd's).
    let f = std::fs::File::open(&state.path).with_context(|| format!("open {path}"))?;
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .context("sync saved state")?
        .with_context(|| format!("sync {path}"))
}

/// Polls an outgoing migration until QEMU says it completed.
async fn wait_migrated(q: &mut qmp::Qmp) -> anyhow::Result<()> {
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
        assert_eq!(
            s.state,
            StateFile {
                path: d.path().join(STATE),
                compressed: true
            }
        );
        let start = Start::Clone(s);
        assert_eq!(start.ram(), Ram::Anon);
        assert_eq!(start.memory_mb(), Some(512));
    }
}
