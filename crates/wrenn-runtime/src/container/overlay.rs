//! Per-capsule directories and the overlay root.
//!
//! ```text
//! data_dir/capsules/<id>/
//!   capsule.json   what recovery needs (see super::record)
//!   upper/ work/   overlay upper and work dirs
//!   rootfs/        overlay mount point: lower = template rootfs (never written)
//!   bundle/        config.json for libcontainer
//!   agent.sock     the agent's socket, bound by the launcher; never visible in the capsule
//! ```
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

use super::sys;

/// Paths of one capsule's directory.
#[derive(Debug, Clone)]
pub struct CapsuleDirs {
    /// `capsules/<id>`.
    pub root: PathBuf,
}

impl CapsuleDirs {
    /// Dirs of capsule `id` under `capsules_dir`.
    pub fn new(capsules_dir: &Path, id: &str) -> Self {
        Self {
            root: capsules_dir.join(id),
        }
    }
    /// Overlay upper dir.
    pub fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }
    /// Overlay work dir.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    /// Overlay mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
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
        for d in [self.upper(), self.work(), self.rootfs(), self.bundle()] {
            std::fs::create_dir(d)?;
        }
        Ok(())
    }

    /// Mounts the overlay with `lower` (a template rootfs) as its only, read-only layer,
    /// `nosuid,nodev`.
    pub fn mount(&self, lower: &Path) -> io::Result<()> {
        sys::mount_overlay(lower, &self.upper(), &self.work(), &self.rootfs())
    }

    /// Seeds the capsule's `/etc/resolv.conf` from the host's, so name resolution works with
    /// egress. Written into the fresh upper layer (a tree only we have written, so no symlink
    /// can redirect it) before the overlay is mounted; host loopback resolvers are dropped
    /// because they are unreachable from the capsule's network namespace. Without a usable
    /// host resolver the template's own file stays.
    pub fn seed_resolv_conf(&self, host_conf: &str) -> io::Result<()> {
        let Some(conf) = capsule_resolv_conf(host_conf) else {
            return Ok(());
        };
        let etc = self.upper().join("etc");
        std::fs::create_dir(&etc)?;
        std::fs::write(etc.join("resolv.conf"), conf)
    }

    /// Unmounts everything mounted under the capsule dir (the overlay, and anything a crash left
    /// stacked on it), then removes the dir.
    pub fn remove(&self) -> io::Result<()> {
        let mut mounts = sys::mounts_under(&self.root);
        // Deepest first.
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in mounts {
            sys::unmount(&m)?;
        }
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Bytes in the upper layer (what the capsule wrote).
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.upper())
    }
}

/// Mode of the runtime's own dirs under `data_dir` and `cache_dir`: only host root enters.
/// (Nothing needs traversal by another user: libcontainer resolves the rootfs, bundle and the
/// `runtime/` bind-mount source as root, the agent in the capsule runs as root, and the server
/// connects to `agent.sock` as root.)
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and missing parents, then sets `dir`'s mode to `mode` (also when it already
/// existed with a wider one).
pub(crate) fn private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Apparent size of a tree, not following symlinks.
pub fn dir_size(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.filter_map(Result::ok).map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

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
