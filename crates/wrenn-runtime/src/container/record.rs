//! `capsules/<id>/capsule.json`: what a restarted runtime needs to re-adopt or clean a capsule.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::net::CapsuleNet;

/// The recovery record of one capsule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleRecord {
    /// Capsule id.
    pub id: String,
    /// Template name.
    pub template: String,
    /// Template rootfs used as overlay lower dir.
    pub lower: PathBuf,
    /// Network resources.
    pub net: CapsuleNet,
    /// The capsule's host id range (see `super::ids`), once claimed.
    #[serde(default)]
    pub ids: Option<u32>,
    /// Size of the capsule's own disk (`disk.img`, holding upper and work), MiB; 0 = none.
    #[serde(default)]
    pub disk_mb: u32,
    /// Host pid of the init, once started.
    pub init_pid: Option<i32>,
    /// Its start time (ticks since boot), to tell pid reuse apart.
    pub init_start: Option<u64>,
}

impl CapsuleRecord {
    /// Writes the record atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }

    /// Reads a record.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }
}
