//! Per-capsule directories and the overlay root.
//!
//! ```text
//! data_dir/capsules/<id>/
//!   capsule.json   what recovery needs (see super::record)
//!   upper/ work/   overlay upper and work dirs (without a disk)
//!   disk.img disk/ the capsule's own sized filesystem, with upper/ and work/ inside
//!                  (see super::disk)
//!   userns         the capsule's user namespace, bind-mounted (see super::ids)
//!   lower/         the template rootfs, idmapped through that namespace (never written)
//!   rootfs/        overlay mount point: lower = lower/, the runtime dir bound at .wrenn
//!   bundle/        config.json for libcontainer
//!   agent.sock     the agent's socket, bound by the launcher; never visible in the capsule
//! ```
//!
//! libcontainer's init resolves the capsule's root path as capsule root, an unprivileged host
//! uid that cannot enter the 0700 data dir, so the overlay is also bound at
//! `/run/wrenn/root/<id>` (`root/` 0711, the overlay's own root owned by capsule root) and the
//! spec names that path.
//!
//! Nothing here is mounted into the capsule: the capsule's root is the overlay at `rootfs/`
//! (pivoted into), so it can neither see nor replace `agent.sock`.
//!
//! Whatever capsule root writes lands on the host in `upper/` (and shows through the host-side
//! overlay mount at `rootfs/`), setuid and file-capability bits included. So `capsules/` and
//! each `capsules/<id>/` are mode 0700 (only host root, which runs every capsule step, enters
//! them), and the overlay is mounted `nosuid` (inside the capsule `no_new_privs` already
//! ignores setuid bits and file capabilities, so the flag costs the capsule nothing).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::disk::DiskError;
use crate::sys;
use crate::tree::{dir_size, private_dir, PRIVATE_DIR_MODE};

/// Paths of one capsule's directory.
#[derive(Debug, Clone)]
pub struct CapsuleDirs {
    /// `capsules/<id>`.
    pub root: PathBuf,
    /// Upper and work dirs live on the capsule's own disk (`disk/`).
    pub disk: bool,
}

impl CapsuleDirs {
    /// Dirs of capsule `id` under `capsules_dir`.
    pub fn new(capsules_dir: &Path, id: &str) -> Self {
        Self {
            root: capsules_dir.join(id),
            disk: false,
        }
    }
    /// The same dirs, with upper and work on the capsule's disk when `disk`.
    pub fn with_disk(mut self, disk: bool) -> Self {
        self.disk = disk;
        self
    }
    /// Where upper and work live: the disk's mount point, or the capsule dir.
    fn layer_dir(&self) -> PathBuf {
        if self.disk {
            self.disk_mount()
        } else {
            self.root.clone()
        }
    }
    /// Overlay upper dir.
    pub fn upper(&self) -> PathBuf {
        self.layer_dir().join("upper")
    }
    /// Overlay work dir.
    pub fn work(&self) -> PathBuf {
        self.layer_dir().join("work")
    }
    /// The disk image.
    pub fn disk_image(&self) -> PathBuf {
        self.root.join("disk.img")
    }
    /// The disk's mount point.
    pub fn disk_mount(&self) -> PathBuf {
        self.root.join("disk")
    }
    /// Overlay mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    /// Mount point of the idmapped template layer.
    pub fn lower(&self) -> PathBuf {
        self.root.join("lower")
    }
    /// Bind mount of the capsule's user namespace.
    pub fn userns(&self) -> PathBuf {
        self.root.join("userns")
    }
    /// The root path libcontainer is given: a bind of [`CapsuleDirs::rootfs`] outside the
    /// data dir.
    pub fn run_root(&self) -> PathBuf {
        Path::new(RUN_ROOTS).join(self.root.file_name().unwrap_or_default())
    }
    /// OCI bundle dir.
    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
    /// Host path of the agent socket (outside the capsule's root, so the capsule cannot touch
    /// it).
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    /// Recovery record.
    pub fn record(&self) -> PathBuf {
        self.root.join("capsule.json")
    }

    /// Creates the directories (the capsule dir itself must not exist yet); `capsules/` and
    /// the capsule dir get mode 0700.
    pub fn create(&self) -> io::Result<()> {
        private_dir(
            self.root.parent().unwrap_or(Path::new("/")),
            PRIVATE_DIR_MODE,
        )?;
        std::fs::DirBuilder::new()
            .mode(PRIVATE_DIR_MODE)
            .create(&self.root)?;
        // The umask may have taken bits away; never leave more than asked for.
        std::fs::set_permissions(
            &self.root,
            std::fs::Permissions::from_mode(PRIVATE_DIR_MODE),
        )?;
        let layers = if self.disk {
            // upper/ and work/ are made on the disk once it is mounted.
            vec![self.disk_mount()]
        } else {
            vec![self.upper(), self.work()]
        };
        for d in layers
            .into_iter()
            .chain([self.rootfs(), self.bundle(), self.lower()])
        {
            std::fs::create_dir(d)?;
        }
        std::fs::File::create(self.userns())?;
        Ok(())
    }

    /// Makes the capsule's user namespace (ids 0–65535 → `base..`) and gives capsule root its
    /// upper and work dirs. After [`CapsuleDirs::mount_disk`], before [`CapsuleDirs::seed_etc`].
    pub fn make_userns(&self, base: u32) -> io::Result<()> {
        sys::make_userns(base, super::ids::RANGE_SIZE, &self.userns())?;
        for d in [self.upper(), self.work()] {
            sys::lchown(&d, base, base)?;
        }
        Ok(())
    }

    /// Gives the capsule its disk of `mb` MiB (from `pool`), mounts it and makes upper and
    /// work on it. Only for dirs made [`CapsuleDirs::with_disk`].
    pub fn mount_disk(&self, pool: &super::disk::DiskPool, mb: u32) -> Result<(), DiskError> {
        pool.take_mounted(mb, &self.disk_image(), &self.disk_mount())
    }

    /// Mounts the overlay with `lower` (a template rootfs) as its only, read-only layer,
    /// `nosuid,nodev`, binds `runtime_dir` read-only at its `/.wrenn` and the whole at
    /// [`CapsuleDirs::run_root`].
    ///
    /// The template is shared by every capsule and owned by host ids 0–65535: it is idmapped
    /// through the capsule's user namespace at `lower/` first, so in the capsule (and in the
    /// overlay, which copies up with the ids it sees) its files belong to the capsule's ids.
    /// The runtime dir is bound here, in the host's mount namespace, and not by libcontainer:
    /// its source is inside the data dir, which capsule root cannot enter; bound here, the
    /// mount is locked in the capsule's namespace (capsule root can neither unmount nor remount
    /// it writable).
    ///
    /// The capsule reads the overlay's options in its `/proc/self/mountinfo`, so the layers are
    /// named through short-lived links `/run/wrenn/ov/<id>/{l,u,w}` (the kernel resolves them at
    /// mount time and shows the names given): the capsule sees its own id, never the data dir,
    /// a template's team or the disk.
    /// Each step is marked in `steps`.
    pub fn mount(
        &self,
        lower: &Path,
        runtime_dir: &Path,
        steps: &mut super::steps::Steps,
    ) -> io::Result<()> {
        let id = self
            .root
            .file_name()
            .ok_or_else(|| io::Error::other("capsule dir has no name"))?;
        let links = Path::new(LAYER_LINKS).join(id);
        let _ = std::fs::remove_dir_all(&links);
        std::fs::create_dir_all(&links)?;
        let userns = std::fs::File::open(self.userns())?;
        sys::mount_idmapped(lower, &userns, &self.lower())?;
        steps.mark("idmap");
        let made = (|| {
            let (l, u, w) = (links.join("l"), links.join("u"), links.join("w"));
            std::os::unix::fs::symlink(self.lower(), &l)?;
            std::os::unix::fs::symlink(self.upper(), &u)?;
            std::os::unix::fs::symlink(self.work(), &w)?;
            sys::mount_overlay(&l, &u, &w, &self.rootfs())
        })();
        let _ = std::fs::remove_dir_all(&links);
        made?;
        steps.mark("overlay");
        sys::bind_mount(
            runtime_dir,
            &self.rootfs().join(RUNTIME_MOUNT_DIR),
            true,
            false,
        )?;
        private_dir(Path::new(RUN_ROOTS), RUN_ROOTS_MODE)?;
        let run_root = self.run_root();
        std::fs::create_dir(&run_root)?;
        steps.mark("rtbind");
        sys::bind_mount(&self.rootfs(), &run_root, false, true)?;
        steps.mark("runroot");
        Ok(())
    }

    /// Seeds the capsule's own `/etc/hostname` and `/etc/hosts` (its id, never the host's
    /// name) and, with egress, `/etc/resolv.conf` from the host's so name resolution works.
    /// Written into the fresh upper layer (a tree only we have written, so no symlink can
    /// redirect it) before the overlay is mounted; host loopback resolvers are dropped because
    /// they are unreachable from the capsule's network namespace. Without a usable host
    /// resolver the template's own `resolv.conf` stays.
    /// Every file written is owned by capsule root (host uid `base`).
    pub fn seed_etc(&self, id: &str, host_conf: Option<&str>, base: u32) -> io::Result<()> {
        let etc = self.upper().join("etc");
        std::fs::create_dir_all(&etc)?;
        // The mount point of the runtime dir (see `mount`).
        let rt = self.upper().join(RUNTIME_MOUNT_DIR);
        std::fs::create_dir(&rt)?;
        for p in [&etc, &rt] {
            sys::lchown(p, base, base)?;
        }
        // debootstrap copies the host's hostname into a template: the capsule gets its own.
        std::fs::write(etc.join("hostname"), format!("{id}\n"))?;
        std::fs::write(etc.join("hosts"), wrenn_types::agent::etc_hosts(id))?;
        sys::lchown(&etc.join("hostname"), base, base)?;
        sys::lchown(&etc.join("hosts"), base, base)?;
        if let Some(conf) = host_conf.and_then(capsule_resolv_conf) {
            std::fs::write(etc.join("resolv.conf"), conf)?;
            sys::lchown(&etc.join("resolv.conf"), base, base)?;
        }
        Ok(())
    }

    /// Unmounts everything mounted under the capsule dir (the overlay, anything a crash left
    /// stacked on it, and the disk last), waits for the kernel to free the disk's loop device,
    /// then removes the dir (the image with it).
    pub fn remove(&self) -> io::Result<()> {
        let run_root = self.run_root();
        for m in sys::mounts_under(&run_root).into_iter().rev() {
            sys::unmount(&m)?;
        }
        match std::fs::remove_dir(&run_root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut mounts = sys::mounts_under(&self.root);
        let disk = self.disk_mount();
        // Deepest first; the disk (under the overlay's upper) after everything else.
        mounts.sort_by_key(|p| (*p == disk, std::cmp::Reverse(p.as_os_str().len())));
        for m in mounts {
            sys::unmount(&m)?;
        }
        super::disk::wait_released(&self.root, super::disk::RELEASE_TIMEOUT)?;
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Bytes in the upper layer (what the capsule wrote): the used bytes of its disk, or a
    /// walk of the upper dir without one.
    pub fn disk_bytes(&self) -> u64 {
        if self.disk {
            super::disk::used_bytes(&self.disk_mount()).unwrap_or(0)
        } else {
            dir_size(&self.upper())
        }
    }
}

/// Where the overlay's layer links are made for the moment of mounting.
const LAYER_LINKS: &str = "/run/wrenn/ov";
/// Where capsule roots are bound for libcontainer (see the module doc).
const RUN_ROOTS: &str = "/run/wrenn/root";
/// Mode of [`RUN_ROOTS`]: capsule root may pass through, nobody may list it.
const RUN_ROOTS_MODE: u32 = 0o711;
/// The runtime dir's mount point in a capsule's root, relative (see `super::spec`).
const RUNTIME_MOUNT_DIR: &str = ".wrenn";

/// The host resolver configuration minus loopback nameservers; `None` when no nameserver is
/// left.
pub fn capsule_resolv_conf(host_conf: &str) -> Option<String> {
    let mut out = String::new();
    let mut servers = 0;
    for line in host_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            let loopback = addr
                .parse::<std::net::IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(true);
            if loopback {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    (servers > 0).then_some(out)
}

#[cfg(test)]
mod resolv_tests {
    use super::capsule_resolv_conf;

    #[test]
    fn loopback_resolvers_are_dropped() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nsearch example\n";
        let got = capsule_resolv_conf(host).expect("one usable server");
        assert!(!got.contains("127.0.0.53"));
        assert!(got.contains("nameserver 10.1.2.3"));
        assert!(got.contains("search example"));
        assert_eq!(
            capsule_resolv_conf("nameserver 127.0.0.53\nnameserver ::1\n"),
            None
        );
        assert_eq!(capsule_resolv_conf(""), None);
    }
}
