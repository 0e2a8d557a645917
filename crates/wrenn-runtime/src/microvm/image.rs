//! Disks: a template's tree made into an ext4 image per disk size (built at the first create
//! that needs it, beside the tree, and only ever opened read-only: QEMU opens a qcow2
//! overlay's backing file read-only), and each capsule's qcow2 overlay over it.
//!
//! ```text
//! data_dir/templates/<name>/rootfs-<mb>M.ext4  the image for disk limit <mb> (sparse)
//! data_dir/templates/<name>/rootfs.ext4        the image for capsules without a limit
//! data_dir/microvm/<id>/disk.qcow2             the capsule's writes
//! ```
//!
//! The image's filesystem is as large as the disk limit ([`image_mb`]), so the guest's root is
//! the limit from its first boot and a boot does no work for it. On this host `mkfs.ext4 -d`
//! of code-interpreter-v1's 850 MiB tree takes the same 2.4 s for a 10 GiB image as for a
//! 1.2 GiB one and holds 36 MiB more (its inode tables stay uninitialised; the guest mounts
//! with `noinit_itable` so no background thread zeroes them). Growing a small image inside
//! the guest at boot instead (`EXT4_IOC_RESIZE_FS` from the agent) was measured at ~180 ms
//! per GiB under TCG: 1.8-2.2 s more per create at the default 10 GiB limit.
//!
//! # Limitations
//! The limit covers the template's files too; a limit smaller than they need gives an image
//! of their size plus [`headroom_mb`]. Every disk size in use costs one image per template
//! (its files once more on the host: sizes are server-wide, so usually one).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::tree::dir_size;

/// Free space in an image beyond its files when it has no disk limit, MiB.
pub const UNLIMITED_HEADROOM_MB: u64 = 2048;

/// Free space beyond its files in an image whose disk limit is smaller than they need, MiB.
pub fn headroom_mb() -> u64 {
    64
}

/// File name of a template's image for disk limit `disk_mb` (0: none).
pub fn image_name(disk_mb: u32) -> String {
    match disk_mb {
        0 => "rootfs.ext4".to_owned(),
        mb => format!("rootfs-{mb}M.ext4"),
    }
}

/// Size of the image for a tree of `bytes` and disk limit `disk_mb`, MiB: the limit, but at
/// least the files plus a quarter for ext4's own metadata and [`headroom_mb`]; with no limit
/// the files, metadata and [`UNLIMITED_HEADROOM_MB`].
pub fn image_mb(bytes: u64, disk_mb: u32) -> u64 {
    let mb = bytes.div_ceil(1 << 20);
    let files = mb + mb / 4 + 64;
    match disk_mb {
        0 => files + UNLIMITED_HEADROOM_MB,
        limit => u64::from(limit).max(files + headroom_mb()),
    }
}

/// Makes the image of template dir `dir` for disk limit `disk_mb` unless it is there
/// already; its path.
pub fn ensure_image(dir: &Path, disk_mb: u32) -> anyhow::Result<PathBuf> {
    let img = dir.join(image_name(disk_mb));
    if !img.exists() {
        make_image(&dir.join("rootfs"), &img, disk_mb)?;
    }
    Ok(img)
}

/// `mkfs.ext4 -d tree` into a temporary file renamed to `out`.
fn make_image(tree: &Path, out: &Path, disk_mb: u32) -> anyhow::Result<()> {
    let mb = image_mb(dir_size(tree), disk_mb);
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

/// Creates the qcow2 overlay `disk` over the image `base`, whose format is `base_format`
/// (`raw` for a template image, `qcow2` for a saved machine's disk).
pub async fn create_overlay(base: &Path, base_format: &str, disk: &Path) -> anyhow::Result<()> {
    run_qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        base_format.as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        disk.as_os_str(),
    ])
    .await
}

/// Makes `disk`, an empty qcow2 overlay over the qcow2 `base`, as a copy of `prepared`, which
/// is made the first time: every overlay over one base is the same few header blocks, and a
/// copy costs a fraction of starting `qemu-img`. `prepared` is never opened by QEMU.
pub async fn copy_overlay(base: &Path, prepared: &Path, disk: &Path) -> anyhow::Result<()> {
    if !prepared.exists() {
        // Creates racing for it each rename a whole file of their own into place.
        let tmp = prepared.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
        let made = create_overlay(base, "qcow2", &tmp).await;
        let placed = made
            .and_then(|()| std::fs::rename(&tmp, prepared).context("place the prepared overlay"));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    tokio::fs::copy(prepared, disk)
        .await
        .with_context(|| format!("copy {}", prepared.display()))?;
    Ok(())
}

/// Runs `qemu-img` with `args`; its stderr is the error when it fails.
pub(super) async fn run_qemu_img(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("spawn qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img failed: {}",
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
    fn image_is_the_limit_but_holds_the_files() {
        assert_eq!(image_mb(0, 0), 64 + UNLIMITED_HEADROOM_MB);
        assert_eq!(
            image_mb(400 << 20, 0),
            400 + 100 + 64 + UNLIMITED_HEADROOM_MB
        );
        assert_eq!(image_mb((1 << 20) + 1, 0), 2 + 64 + UNLIMITED_HEADROOM_MB);
        assert_eq!(image_mb(400 << 20, 10240), 10240);
        assert_eq!(image_mb(400 << 20, 512), 400 + 100 + 64 + headroom_mb());
        assert_eq!(image_name(0), "rootfs.ext4");
        assert_eq!(image_name(10240), "rootfs-10240M.ext4");
    }
}
