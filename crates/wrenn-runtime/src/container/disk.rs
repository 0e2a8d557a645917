//! Per-capsule disks: a sized ext4 filesystem holding a capsule's overlay upper and work dirs,
//! so a capsule cannot fill the host filesystem that holds the store and the other capsules.
//!
//! ```text
//! data_dir/capsules/<id>/
//!   disk.img       sparse image of the capsule's size, ext4 without journal
//!   disk/          its loop mount (nosuid,nodev): upper/ and work/ of the overlay
//! data_dir/pool/   (0700) up to POOL_SIZE formatted images of the last size asked for
//! ```
//!
//! An image is a sparse file formatted with `mkfs.ext4` (no journal, no resize inode, lazy
//! inode tables: ~5 ms for 10 GiB, ~230 KiB on the host) and mounted with `noinit_itable`, so
//! the kernel never zeroes the inode tables into the sparse file. The loop device is set up
//! here ([`sys::loop_attach`], `LO_FLAGS_AUTOCLEAR`): once the mount is gone the kernel frees
//! it, so unmounting is all destroy has to do. The host space an image takes grows with what the
//! capsule writes, up to its size; deleting files inside the capsule does not give it back.
//!
//! Creating takes a pre-formatted image from the pool (a rename: the pool and the capsule dirs
//! share the data dir's filesystem) and kicks a background refill (one thread, one image at a
//! time, nice 19 and idle I/O class); an empty pool formats on the spot.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

/// Formatted images kept ready in the pool.
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

    /// Puts a formatted image of `mb` MiB at `dst` (which must not exist): a pooled one when
    /// there is one, else one formatted now. Then starts refilling the pool in the background.
    pub fn take(&self, mb: u32, dst: &Path) -> Result<(), DiskError> {
        if !self.take_pooled(mb, dst) {
            format(dst, mb)?;
        }
        self.refill(mb);
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
            let mut have = 0;
            let rd = std::fs::read_dir(&self.dir).map_err(io_err("scan pool", &self.dir))?;
            for e in rd.filter_map(Result::ok) {
                match e.file_name().to_str().and_then(ready_size) {
                    Some(mb) if mb == want => have += 1,
                    // Images of a size nobody asks for any more.
                    Some(_) => {
                        let _ = std::fs::remove_file(e.path());
                    }
                    None => {}
                }
            }
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
            format(&tmp, want)?;
            let ready = self.dir.join(format!("{base}.img"));
            if let Err(e) = sys::rename_noreplace(&tmp, &ready) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err("add to pool", &ready)(e));
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

    /// Start-up sweep: removes half-made images of processes that are gone and anything in the
    /// pool that is not an image, and detaches loop devices backed by pool files (there should
    /// be none: pooled images are never attached).
    pub fn sweep(&self) -> io::Result<()> {
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        for e in std::fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let keep = match tmp_owner(&name) {
                Some(pid) => pid == me || sys::pid_exists(pid),
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
        for (n, _) in sys::loops_backed_by(&self.dir) {
            sys::loop_detach(n)?;
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
    }
}
