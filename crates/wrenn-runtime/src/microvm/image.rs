//! Disks: a template's tree made into one ext4 image (built once, beside the tree, and only
//! ever opened read-only: QEMU opens a qcow2 overlay's backing file read-only), and each
//! capsule's qcow2 overlay over it.
//!
//! ```text
//! data_dir/templates/<name>/rootfs.ext4   the template's image (sparse)
//! data_dir/microvm/<id>/disk.qcow2        the capsule's writes
//! ```
//!
//! # Limitations
//! The guest's filesystem is the image's: its free space is the headroom the image was made
//! with ([`headroom_mb`]), shared by no one but not sized per capsule (growing it would need a
//! resize inside the guest, which has no `resize2fs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::templates::TemplateForm;
use crate::tree::dir_size;

/// File name of a template's image.
pub const IMAGE: &str = "rootfs.ext4";

/// Free space in a template image beyond its files, MiB: what a capsule can write.
pub fn headroom_mb() -> u64 {
    2048
}

/// Size of the image for a tree of `bytes`: the files plus a quarter for ext4's own metadata
/// and [`headroom_mb`], rounded up to MiB.
pub fn image_mb(bytes: u64) -> u64 {
    let mb = bytes.div_ceil(1 << 20);
    mb + mb / 4 + 64 + headroom_mb()
}

/// The template form of this backend: `rootfs.ext4` made from `rootfs/`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageForm;

impl TemplateForm for ImageForm {
    fn materialise(&self, dir: &Path) -> anyhow::Result<()> {
        make_image(&dir.join("rootfs"), &dir.join(IMAGE))
    }
}

/// Makes the image of template dir `dir` unless it is there already; its path.
pub fn ensure_image(dir: &Path) -> anyhow::Result<PathBuf> {
    let img = dir.join(IMAGE);
    if !img.exists() {
        make_image(&dir.join("rootfs"), &img)?;
    }
    Ok(img)
}

/// `mkfs.ext4 -d tree` into a temporary file renamed to `out`.
fn make_image(tree: &Path, out: &Path) -> anyhow::Result<()> {
    let mb = image_mb(dir_size(tree));
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let status = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "root",
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(tree)
        .arg(&tmp)
        .arg(format!("{mb}M"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("spawn mkfs.ext4")?;
    if !status.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "mkfs.ext4 -d {} failed: {}",
            tree.display(),
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    std::fs::rename(&tmp, out).context("rename image")?;
    Ok(())
}

/// Creates the qcow2 overlay `disk` over the raw image `base`.
pub async fn create_overlay(base: &Path, disk: &Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(disk)
        .stdin(Stdio::null())
        .output()
        .await
        .context("spawn qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Bytes the overlay holds on the host (allocated blocks).
pub fn allocated_bytes(disk: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(disk)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_covers_files_metadata_and_headroom() {
        assert_eq!(image_mb(0), 64 + headroom_mb());
        assert_eq!(image_mb(400 << 20), 400 + 100 + 64 + headroom_mb());
        assert_eq!(image_mb((1 << 20) + 1), 2 + 64 + headroom_mb());
    }
}
