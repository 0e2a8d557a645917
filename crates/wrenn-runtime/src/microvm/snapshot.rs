//! Files snapshots of a VM: the guest syncs, QEMU stops, its disk (overlay over the template
//! image) is read out as a raw ext4 image, mounted read-only on the host and copied into a new
//! template like a container's tree (which then gets its own image); then the guest runs on.
//!
//! # Limitations
//! Files only ([`crate::SnapshotKind::Files`]): memory and processes are not kept yet.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use wrenn_agent_client::AgentClient;
use wrenn_types::agent::{ExecRequest, ProcessSpec, AGENT_SOCKET_NAME};

use super::{host_err, qemu::files, qmp, MicroVmRuntime};
use crate::{CapsuleState, RuntimeError, SnapshotInfo, SnapshotKind};

impl MicroVmRuntime {
    pub(super) async fn snapshot_vm(
        &self,
        id: &str,
        name: &str,
    ) -> Result<SnapshotInfo, RuntimeError> {
        let busy = self.busy(id);
        let _g = busy.lock().await;
        let vm = self.get(id)?;
        let dir = self.capsule_dir(id);
        let running = match &vm.live {
            Some(l) => match l.watch.exit_code() {
                Some(code) => {
                    return Err(RuntimeError::InvalidState {
                        id: id.to_owned(),
                        state: CapsuleState::Exited { code },
                    })
                }
                None => true,
            },
            None => false,
        };
        if running {
            // The guest's dirty pages reach its disk first.
            let agent = AgentClient::new(dir.join(AGENT_SOCKET_NAME));
            let req = ExecRequest {
                process: ProcessSpec {
                    cmd: "/bin/sync".into(),
                    ..Default::default()
                },
                timeout_sec: Some(30),
                ..Default::default()
            };
            agent
                .exec(&req)
                .await
                .map_err(|e| host_err("sync guest disk", id, e))?;
            let mut q = qmp::Qmp::connect(&dir.join(files::QMP))
                .await
                .map_err(|e| host_err("stop vm", id, e))?;
            q.execute("stop", None)
                .await
                .map_err(|e| host_err("stop vm", id, e))?;
        }
        let work = dir.join("snapshot");
        let made = async {
            let tree = export_tree(&dir.join("disk.qcow2"), &work)
                .await
                .map_err(|e| host_err("read vm disk", id, e))?;
            self.inner
                .templates
                .create_snapshot(name, &tree, &vm.record.template, None)
                .await
        }
        .await;
        let _ = cleanup(&work).await;
        if running {
            let mut q = qmp::Qmp::connect(&dir.join(files::QMP))
                .await
                .map_err(|e| host_err("continue vm", id, e))?;
            q.execute("cont", None)
                .await
                .map_err(|e| host_err("continue vm", id, e))?;
        }
        Ok(SnapshotInfo {
            template: made?,
            kind: SnapshotKind::Files,
        })
    }
}

/// Converts `disk` to `work/disk.raw` and mounts it read-only at `work/mnt`; the mount.
async fn export_tree(disk: &Path, work: &Path) -> anyhow::Result<std::path::PathBuf> {
    let _ = cleanup(work).await;
    std::fs::create_dir_all(work.join("mnt")).context("create snapshot work dir")?;
    let raw = work.join("disk.raw");
    // -U: QEMU (stopped) still holds the image's lock.
    run(
        "qemu-img",
        &[
            "convert".as_ref(),
            "-U".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            disk.as_os_str(),
            raw.as_os_str(),
        ],
    )
    .await?;
    run(
        "mount",
        &[
            "-t".as_ref(),
            "ext4".as_ref(),
            "-o".as_ref(),
            "loop,ro,noload".as_ref(),
            raw.as_os_str(),
            work.join("mnt").as_os_str(),
        ],
    )
    .await?;
    Ok(work.join("mnt"))
}

/// Unmounts and removes the work dir.
async fn cleanup(work: &Path) -> anyhow::Result<()> {
    let mnt = work.join("mnt");
    if crate::sys::mounts_under(&mnt).contains(&mnt) {
        run("umount", &[mnt.as_os_str()]).await?;
    }
    if work.exists() {
        std::fs::remove_dir_all(work).context("remove snapshot work dir")?;
    }
    Ok(())
}

async fn run(prog: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("spawn {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
