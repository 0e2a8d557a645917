//! Per-capsule disks: a sized ext4 filesystem holding a capsule's overlay upper and work dirs,
//! so a capsule cannot fill the host filesystem that holds the store and the other capsules.
//!
//! ```text
//! data_dir/capsules/<id>/
//!   disk.img       sparse image of the capsule's size, ext4 without journal
//!   disk/          its loop mount (nosuid,nodev): upper/ and work/ of the overlay
//! data_dir/pool/   (0700) up to POOL_SIZE images of the last size asked for, ready to mount
//! ```
//!
//! An image is a sparse file formatted with `mkfs.ext4` (no journal, no resize inode, lazy
//! inode tables: ~5 ms for 10 GiB, ~230 KiB on the host) and mounted with `noinit_itable`, so
//! the kernel never zeroes the inode tables into the sparse file. The loop device is set up
//! here ([`sys::loop_attach`], `LO_FLAGS_AUTOCLEAR`): once the mount is gone the kernel frees
//! it, so unmounting is all destroy has to do. The host space an image takes grows with what the
//! capsule writes, up to its size; deleting files inside the capsule does not give it back.
//!
//! The pool's images are *armed*: formatted, attached to a loop device and mounted, but the
//! mount is attached nowhere (fsmount(2)): only this process holds it, by an fd, and the layer
//! dirs are made on it. Attaching a loop device and mounting ext4 take 1–25 ms each on a busy
//! host (the kernel waits for the device's queue to freeze and for the superblock to be read);
//! arming does both ahead of need. Creating takes an armed image (a rename of its file, which
//! the loop device follows: the pool and the capsule dirs share the data dir's filesystem, and
//! move_mount(2) of its mount to the capsule's `disk/`) and kicks a background refill (one
//! thread, one image at a time, nice 19 and idle I/O class). An empty pool falls back to a
//! formatted, unattached image (`<mb>m-….img`, which an older runtime on this data dir may have
//! left) and then to formatting on the spot. Armed images are named `<mb>m-<pid>-<seq>.mnt`,
//! taken by their process only; when it exits their mounts go and their loop devices with them.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

/// Armed images kept ready in the pool.
pub const POOL_SIZE: usize = 4;
/// How long destroy waits for the kernel to free a capsule's loop device after the unmount
/// (the server retries a destroy that gave up: the wait is bounded, not the release).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest pause between two looks at the loop devices while waiting for their release.
const RELEASE_POLL_MAX: Duration = Duration::from_millis(50);

/// `mkfs.ext4` options: fast to make, small on the host (see the module docs).
const MKFS_ARGS: &[&str] = &[
    "-q",
    "-F",
    "-b",
    "4096",
    "-m",
    "0",
    "-O",
    "^has_journal,^resize_inode",
    "-E",
    "lazy_itable_init=1,nodiscard",
];

/// Why setting up a disk failed, with the step.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file or device operation failed.
    #[error("{step} {}", path.display())]
    Io {
        /// What was being done, e.g. `attach loop device for`.
        step: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 {} failed ({status}): {stderr}", path.display())]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// Exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

fn mkfs_program() -> &'static str {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mkfs.ext4")
}

/// Makes `image` (which must not exist) a sparse ext4 image of `mb` MiB; removes it again on
/// failure.
pub fn format(image: &Path, mb: u32) -> Result<(), DiskError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(io_err("create image", image))?;
    let made = file
        .set_len(u64::from(mb) << 20)
        .map_err(io_err("size image", image))
        .and_then(|()| {
            drop(file);
            let out = std::process::Command::new(mkfs_program())
                .args(MKFS_ARGS)
                .arg(image)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(io_err("run mkfs.ext4 on", image))?;
            if out.status.success() {
                return Ok(());
            }
            Err(DiskError::Mkfs {
                path: image.to_owned(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        });
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made
}

/// Attaches `image` to a loop device and mounts it at `target` (`nosuid,nodev`). The device
/// frees itself once `target` is unmounted (or right away if the mount fails).
pub fn mount(image: &Path, target: &Path) -> Result<(), DiskError> {
    let dev = sys::loop_attach(image).map_err(io_err("attach loop device for", image))?;
    sys::mount_ext4(&dev.path(), target).map_err(io_err("mount disk at", target))?;
    drop(dev);
    Ok(())
}

/// The overlay's layer dirs on a capsule disk, made when it is armed or mounted.
pub const LAYER_DIRS: [&std::ffi::CStr; 2] = [c"upper", c"work"];

/// A pool image attached to a loop device and mounted nowhere (see the module docs).
#[derive(Debug)]
struct Armed {
    /// Size in MiB.
    mb: u32,
    /// The image, `<mb>m-<pid>-<seq>.mnt` in the pool.
    image: PathBuf,
    /// The detached mount of its filesystem: closing it unmounts it and frees the device.
    mnt: std::os::fd::OwnedFd,
}

/// Attaches the formatted image `tmp` to a loop device, mounts it detached, makes the layer
/// dirs on it and renames it to `ready`.
fn arm(tmp: &Path, mb: u32, ready: &Path) -> Result<Armed, DiskError> {
    let dev = sys::loop_attach(tmp).map_err(io_err("attach loop device for", tmp))?;
    let mnt = sys::mount_ext4_detached(&dev.path()).map_err(io_err("mount disk", tmp))?;
    // The mount holds the device now; it frees itself when the mount goes.
    drop(dev);
    for d in LAYER_DIRS {
        sys::mkdir_at(&mnt, d).map_err(io_err("create layer dir on", tmp))?;
    }
    sys::rename_noreplace(tmp, ready).map_err(io_err("add to pool", ready))?;
    Ok(Armed {
        mb,
        image: ready.to_owned(),
        mnt,
    })
}

/// Waits until no loop device is backed by a file at or below `prefix` (the kernel frees an
/// autoclear device when its last mount goes, which under load can take seconds: a lazy
/// unmount ends only when the filesystem's last user does). Polls with a growing pause (1 ms
/// up to [`RELEASE_POLL_MAX`]); after a short grace period, and again every second, each
/// remaining device is told to detach (`LOOP_CLR_FD`: at once when unused, when its last user
/// goes otherwise). Fails after `timeout` with the devices still attached; destroying again
/// later picks up where this left off.
pub fn wait_released(prefix: &Path, timeout: Duration) -> io::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut next_clear = Duration::from_millis(100);
    loop {
        let left = sys::loops_backed_by(prefix);
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= next_clear {
            for (n, _) in &left {
                sys::loop_detach(*n)?;
            }
            next_clear = start.elapsed() + Duration::from_secs(1);
        }
        if start.elapsed() > timeout {
            return Err(io::Error::other(format!(
                "loop devices still attached after {:?}: {:?}",
                timeout,
                left.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(RELEASE_POLL_MAX);
    }
}

/// Bytes in use on the disk mounted at `mount_point` (`statvfs`, no tree walk).
pub fn used_bytes(mount_point: &Path) -> io::Result<u64> {
    sys::fs_used_bytes(mount_point)
}

/// Pre-formatted images in `data_dir/pool/`, refilled in the background. Safe to share between
/// runtimes on one data dir: taking an image is a rename, so each image goes to one capsule.
#[derive(Debug, Clone)]
pub struct DiskPool {
    dir: PathBuf,
    shared: Arc<(Mutex<PoolState>, Condvar)>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Size the refill makes images of: the last one asked for.
    want_mb: u32,
    /// A refill thread runs.
    running: bool,
    /// Armed images, oldest first.
    armed: Vec<Armed>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// `<mb>m-<pid>-<seq>.img` → `mb`.
fn ready_size(name: &str) -> Option<u32> {
    name.strip_suffix(".img")?.split_once("m-")?.0.parse().ok()
}

/// `.<mb>m-<pid>-<seq>.tmp` → `pid`.
fn tmp_owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    rest.split('-').nth(1)?.parse().ok()
}

/// `<mb>m-<pid>-<seq>.mnt` → `pid`.
fn armed_owner(name: &str) -> Option<i32> {
    let rest = name.strip_suffix(".mnt")?;
    rest.split('-').nth(1)?.parse().ok()
}

impl DiskPool {
    /// The pool in `dir` (which must exist).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            shared: Arc::new((Mutex::new(PoolState::default()), Condvar::new())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a formatted image of `mb` MiB at `image` (which must not exist), mounted at
    /// `target` with the [`LAYER_DIRS`] on it: an armed one when there is one, else a pooled
    /// unattached one or one formatted now, attached and mounted now. Then starts refilling the
    /// pool in the background.
    pub fn take_mounted(&self, mb: u32, image: &Path, target: &Path) -> Result<(), DiskError> {
        let armed = {
            let mut st = self.state();
            let i = st.armed.iter().position(|a| a.mb == mb);
            i.map(|i| st.armed.remove(i))
        };
        let done = match armed {
            // Its file gone (a sweep of another runtime): dropped, which frees it.
            Some(a) if sys::rename_noreplace(&a.image, image).is_ok() => {
                sys::attach_mount(&a.mnt, target).map_err(io_err("mount disk at", target))
            }
            _ => self.take_unarmed(mb, image, target),
        };
        self.refill(mb);
        done
    }

    fn take_unarmed(&self, mb: u32, image: &Path, target: &Path) -> Result<(), DiskError> {
        if !self.take_pooled(mb, image) {
            format(image, mb)?;
        }
        mount(image, target)?;
        for d in LAYER_DIRS {
            let p = target.join(std::ffi::OsStr::from_bytes(d.to_bytes()));
            std::fs::create_dir(&p).map_err(io_err("create layer dir", &p))?;
        }
        Ok(())
    }

    fn take_pooled(&self, mb: u32, dst: &Path) -> bool {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return false;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name();
            if name.to_str().and_then(ready_size) != Some(mb) {
                continue;
            }
            // Another runtime on this data dir may win the race for it: try the next.
            if sys::rename_noreplace(&e.path(), dst).is_ok() {
                return true;
            }
        }
        false
    }

    /// Starts the refill thread for images of `mb` MiB unless one runs (it then switches to
    /// `mb`).
    pub fn refill(&self, mb: u32) {
        let mut st = self.state();
        st.want_mb = mb;
        if st.running {
            return;
        }
        st.running = true;
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wrenn-disk-pool".into())
            .spawn(move || {
                sys::lower_thread_priority();
                if let Err(e) = pool.refill_loop() {
                    tracing::warn!(error = %e, "refilling the disk pool failed");
                    pool.state().running = false;
                    pool.shared.1.notify_all();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "starting the disk pool refill failed");
            st.running = false;
        }
    }

    fn refill_loop(&self) -> Result<(), DiskError> {
        loop {
            let want = self.state().want_mb;
            let rd = std::fs::read_dir(&self.dir).map_err(io_err("scan pool", &self.dir))?;
            for e in rd.filter_map(Result::ok) {
                match e.file_name().to_str().and_then(ready_size) {
                    // Images of a size nobody asks for any more.
                    Some(mb) if mb != want => {
                        let _ = std::fs::remove_file(e.path());
                    }
                    _ => {}
                }
            }
            let have = {
                let mut st = self.state();
                st.armed.retain(|a| {
                    let keep = a.mb == want;
                    if !keep {
                        let _ = std::fs::remove_file(&a.image);
                    }
                    keep
                });
                st.armed.len()
            };
            if have >= POOL_SIZE {
                let mut st = self.state();
                // Under the lock, so a refill asked for meanwhile (another size) is not lost.
                if st.want_mb == want {
                    st.running = false;
                    self.shared.1.notify_all();
                    return Ok(());
                }
                continue;
            }
            let base = format!(
                "{want}m-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let tmp = self.dir.join(format!(".{base}.tmp"));
            // A formatted image left unattached (by an older runtime) first.
            if !self.take_pooled(want, &tmp) {
                format(&tmp, want)?;
            }
            match arm(&tmp, want, &self.dir.join(format!("{base}.mnt"))) {
                Ok(a) => self.state().armed.push(a),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
    }

    /// Blocks until no refill runs (or `timeout` passes); for shutdown and tests.
    pub fn wait_idle(&self, timeout: Duration) {
        let st = self.state();
        let _ = self
            .shared
            .1
            .wait_timeout_while(st, timeout, |s| s.running)
            .map(drop);
    }

    /// Start-up sweep: removes half-made and armed images of processes that are gone and
    /// anything in the pool that is not an image, and detaches loop devices backed by pool
    /// files other than live processes' armed images (there should be none: the others are
    /// never attached, and the armed ones of a process that exited have freed theirs).
    pub fn sweep(&self) -> io::Result<()> {
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        let live = |pid: i32| pid == me || sys::pid_exists(pid);
        for e in std::fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let keep = match tmp_owner(&name).or_else(|| armed_owner(&name)) {
                Some(pid) => live(pid),
                None => ready_size(&name).is_some(),
            };
            if !keep {
                tracing::info!(file = %name, "removing stray pool entry");
                let p = e.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
        }
        for (n, image) in sys::loops_backed_by(&self.dir) {
            let armed = image
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(armed_owner)
                .is_some_and(live);
            if !armed {
                sys::loop_detach(n)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_parse() {
        assert_eq!(ready_size("10240m-123-4.img"), Some(10240));
        assert_eq!(ready_size(".10240m-123-4.tmp"), None);
        assert_eq!(ready_size("junk"), None);
        assert_eq!(tmp_owner(".64m-123-4.tmp"), Some(123));
        assert_eq!(tmp_owner("64m-123-4.img"), None);
        assert_eq!(armed_owner("64m-123-4.mnt"), Some(123));
        assert_eq!(armed_owner("64m-123-4.img"), None);
        assert_eq!(ready_size("64m-123-4.mnt"), None);
    }
}
