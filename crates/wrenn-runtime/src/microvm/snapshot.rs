//! Full-state snapshots of a VM: a snapshot template holding the capsule's disk flattened into
//! one qcow2 image and its devices and RAM as a zstd stream (see `saved` for the layout).
//! A running capsule is stopped for the copy and then runs on; a paused one's saved state is
//! copied. Capsules created from the snapshot continue where it was taken, processes and all;
//! only the microvm backend can start them (the template says `runtime: microvm`).
//!
//! # Limitations
//! The copy is whole: a snapshot holds the template's files too, and the source is stopped
//! while its disk is flattened (about a second per GiB written on this host).

use std::time::Instant;

use super::saved::{self, SavedMeta};
use super::{host_err, qemu::files, qmp, MicroVmRuntime};
use crate::{Backend, CapsuleState, RuntimeError, SnapshotInfo, SnapshotKind};

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
        let draft =
            self.inner
                .templates
                .draft_snapshot(name, &vm.record.template, Backend::MicroVm)?;
        let out = draft.path().to_owned();
        let t0 = Instant::now();
        let compressed = if running {
            true
        } else {
            vm.record.state_compressed
        };
        if running {
            let mut q = qmp::Qmp::connect(&dir.join(files::QMP))
                .await
                .map_err(|e| host_err("stop vm", id, e))?;
            q.execute("stop", None)
                .await
                .map_err(|e| host_err("stop vm", id, e))?;
            let state = saved::StateFile {
                path: out.join(saved::STATE),
                compressed: true,
            };
            let copied = async {
                saved::migrate_out(&mut q, &state, false).await?;
                saved::flatten(&dir.join("disk.qcow2"), &out.join(saved::DISK)).await
            }
            .await;
            // The source runs on whatever happened.
            let cont = q.execute("cont", None).await;
            copied.map_err(|e| host_err("save vm state", id, e))?;
            cont.map_err(|e| host_err("continue vm", id, e))?;
        } else {
            std::fs::copy(dir.join("state"), out.join(saved::STATE))
                .map_err(|e| host_err("copy saved state", id, e))?;
            saved::flatten(&dir.join("disk.qcow2"), &out.join(saved::DISK))
                .await
                .map_err(|e| host_err("copy vm disk", id, e))?;
        }
        let meta = SavedMeta {
            vcpus: vm.record.vcpus,
            memory_mb: vm.record.memory_mb,
            compressed,
            named_ram: vm.record.named_ram,
        };
        std::fs::write(
            out.join(saved::META),
            serde_json::to_vec_pretty(&meta).map_err(|e| host_err("write vmstate.json", id, e))?,
        )
        .map_err(|e| host_err("write vmstate.json", id, e))?;
        let template = draft.commit()?;
        tracing::debug!(
            capsule = id,
            snapshot = name,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "full-state snapshot made"
        );
        Ok(SnapshotInfo {
            template,
            kind: SnapshotKind::FullState,
            sizes: Some((meta.vcpus, meta.memory_mb)),
        })
    }
}
